"""A red-team pass on the gateway's own fast paths, from the outside.

The gateway replaced stock Twisted paths with its own under ``_twisted/``:
coalescing TCP transports and a lean reactor, TLS records read and written
without pyOpenSSL's buffers (``tls_direct``), the HTTP/1.1 head to render and
response end in one frame each, and the master's framed relay of its workers'
access lines (``workers/log_relay``, ``workers/log_stream``). The first
red-team pass (``test_rewrites_red_team``) attacked request framing, identity
headers, the upstream pool and HPACK; this one attacks what it left:

- TLS: pipelined requests behind the gate split at every byte (one TLS record
  per byte), SNI naming another site than Host (421), ALPN the listener does
  not speak, a connection cut without close_notify mid-body, very large
  records, a client that never reads a large response (what the gateway takes
  from the upstream stays bounded);
- crossing: pipelined requests of a client that aborts mid-response never hand
  a byte to another client, and each access line names its own user;
- the log relay: user names (vouched for by a session) and targets holding the
  relay's frame mark, line breaks, NULs, lone surrogates, 64 KiB of text: the
  master's log stays one line per request, nothing forged;
- ``//other.host/path``: forwarded upstream as it is (one reading, judged both
  ways), but no redirect of the gateway's (after a real login at the
  WSO2-shaped provider), nor an upstream's path redirect built from that
  target, sends a browser to another host.

A real gateway (two workers, its log as text on the master's stdout, as under
systemd) between raw client sockets and a raw upstream (h11 frames requests).
Sessions are sealed with the route's key; only the login cases start the
provider.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import h11
import pytest

from idgateway.server.channel import CLOSE_GRACE
from tests.certs import make_ca
from tests.processes import GatewayProcess, free_port, rss_kib
from tests.security.test_rewrites_red_team import (
    SESSION_KEY,
    parse_answers,
    seal_cookie,
)

# What a never-reading client may make the gateway take from the upstream:
# socket buffers on both sides and the transports' own high-water marks.
UNREAD_BOUND = 48 * 1024 * 1024
BIG_RESPONSE = 256 * 1024 * 1024
PATTERN_SIZE = 12 * 1024 * 1024

FORGED = "2026-12-07T12:00:00+0000 [idgateway.access#info] [worker 0] GET /admin 200 0B"

# A line of the master's text log written for a worker's access line.
ACCESS_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[idgateway\.access#info\] \[worker \d\] "
)


# Locations an upstream may send, as written (a field value may hold tabs),
# and whether a browser reading them stays on the site as they are.
UPSTREAM_LOCATIONS = [
    b"//evil.example/dir/",
    b"/\\evil.example/dir/",
    b"\\\\evil.example/dir/",
    b"/\t/evil.example/dir/",
    b"\t//evil.example/dir/",
    b"///evil.example/dir/",
    b"/app/next",
    b"https://idp.example/login?next=//evil.example",
]


def pattern(size: int) -> bytes:
    """Bytes in which any shift, loss or repeat shows: a counter per 8 bytes."""
    return b"".join(b"%07x\n" % n for n in range(size // 8))[:size]


# -- the upstream: raw, threaded, h11-framed ------------------------------------------------


class Upstream:
    """Answers each request with a JSON document naming its target and user.

    ``?slash``: a path redirect as frameworks make them (Django's APPEND_SLASH,
    a directory without its slash): ``Location: <the path it read>/``.
    ``?big``: ``BIG_RESPONSE`` bytes, counting what the gateway accepted.
    ``?location=N``: a 302 to ``UPSTREAM_LOCATIONS[N]``.
    ``?slow``: the answer half a second late.
    ``?stall``: reads the head only, then nothing for 3 s, then closes.
    ``?pattern``: ``PATTERN_SIZE`` bytes of ``pattern()``, in odd-sized pieces.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[tuple[bytes, bytes, bytes]] = []  # (target, user, body)
        self.big_sent = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.big_sent = 0

    def targets(self) -> list[bytes]:
        with self._lock:
            return [target for target, _, _ in self.seen]

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        # (Heads up to 1 MiB: the identity headers of a hostile user name.)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        with sock:
            try:
                while self._one(sock, conn):
                    conn.start_next_cycle()
            except (OSError, h11.ProtocolError):
                return

    def _one(self, sock: socket.socket, conn: h11.Connection) -> bool:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                if not data:
                    return False
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
                if event.target.endswith(b"?stall"):
                    time.sleep(3.0)  # reads nothing of the body meanwhile
                    return False
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return False
        assert request is not None
        user = b",".join(v for n, v in request.headers if n == b"x-forwarded-user")
        with self._lock:
            self.seen.append((request.target, user, body))
        path, _, query = request.target.partition(b"?")
        if query == b"slow":
            time.sleep(0.5)
        if query.startswith(b"location="):
            # A Location as a hostile or broken upstream writes it.
            location = UPSTREAM_LOCATIONS[int(query[len(b"location=") :])]
            head = b"HTTP/1.1 302 Found\r\nLocation: %s\r\n" % location
            sock.sendall(head + b"Content-Length: 0\r\n\r\n")
        elif query == b"slash":
            head = b"HTTP/1.1 301 Moved Permanently\r\nLocation: %s/\r\n" % path
            sock.sendall(head + b"Content-Length: 0\r\n\r\n")
        elif query == b"pattern":
            size = PATTERN_SIZE
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            data = pattern(size)
            for at in range(0, size, 100_003):  # (pieces that straddle every buffer size)
                sock.sendall(data[at : at + 100_003])
        elif query == b"big":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG_RESPONSE)
            piece = b"x" * 65536
            for _ in range(BIG_RESPONSE // len(piece)):
                sock.sendall(piece)  # blocks while the gateway does not read
                with self._lock:
                    self.big_sent += len(piece)
        else:
            document = b'{"target": "%s", "user": "%s", "body": %d}' % (
                request.target.replace(b"\\", b"\\\\").replace(b'"', b'\\"'),
                user,
                len(body),
            )
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(document), document)
            )
        conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())
        return conn.our_state is not h11.MUST_CLOSE and conn.their_state is not h11.MUST_CLOSE

    def close(self) -> None:
        self.listener.close()


# -- the gateway ------------------------------------------------------------------------------

# Users a provider could vouch for (the session holds what the ID token said).
HOSTILE_USERS = {
    "forged-line": "mallory\n" + FORGED,
    "cr-forged-line": "mallory\r" + FORGED,
    "frame-header": "mallory\x1d12\nabcdefghijk\n",
    "record-mark": "mallory\x1f1.0\tGET /forged",
    "nul-and-escape": "mallory\x00\x1b[2J",
    "u2028-and-nel": "mallory\u2028\x85" + FORGED,
    # (A session cookie is compressed: this is a 72 KiB access line, escaped.)
    "72k-of-frames-and-forged-lines": "mallory" + ("\n\x1d99\n" + FORGED) * 800,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fast-paths-red-team")
    ca = make_ca(tmp / "pki")
    leaf = ca.issue(tmp / "pki", ["app.localhost", "open.localhost"], name="sites")
    upstream = Upstream()
    plain, tls = free_port(), free_port()
    issuer = f"https://127.0.0.1:{free_port()}/oauth2/token"
    config = tmp / "gateway.yaml"
    config.write_text(
        f"""
workers: 2
listeners:
  - address: 127.0.0.1:{plain}
  - address: 127.0.0.1:{tls}
    tls:
      certificates: [{{cert: {leaf.cert_path}, key: {leaf.key_path}}}]
providers:
  down: {{issuer: "{issuer}"}}
routes:
  - name: app
    hosts: [app.localhost]
    upstream: http://127.0.0.1:{upstream.port}
    max_header_size: 60KB
    oidc: {{provider: down, client_id: c, client_secret: s}}
    session: {{keys: [{SESSION_KEY}]}}
    headers: oauth2-proxy
  - name: open
    hosts: [open.localhost]
    upstream: http://127.0.0.1:{upstream.port}
"""
    )
    gateway = GatewayProcess(config, tmp / "gateway.log", log_to_stdout=True)
    try:
        gateway.start([plain, tls])
        _until_both_workers_serve(gateway)
        users = {"alice": "alice", "bob": "bob", **HOSTILE_USERS}
        yield {
            "gateway": gateway,
            "upstream": upstream,
            "plain": plain,
            "tls": tls,
            "ca": str(ca.cert_path),
            "issuer": issuer,
            "cookies": {
                (name, secure): seal_cookie(issuer, user, None, f"{index:032x}", secure=secure)
                for index, (name, user) in enumerate(users.items())
                for secure in (False, True)
            },
        }
    finally:
        gateway.stop()
        upstream.close()
    log = gateway.log()
    assert "Traceback" not in log, log[-3000:]


def _until_both_workers_serve(gateway: GatewayProcess) -> None:
    # (The listening port is open before each worker serves: a first request
    # may wait on a worker still starting.)
    deadline = time.monotonic() + 20
    while not all(f"[worker {n}] worker {n} serving" in gateway.log() for n in (0, 1)):
        assert time.monotonic() < deadline, "the workers did not start serving in time"
        time.sleep(0.05)


@pytest.fixture
def upstream(world: dict[str, Any]) -> Upstream:
    recording: Upstream = world["upstream"]
    recording.reset()
    return recording


# -- clients ----------------------------------------------------------------------------------


def tls_context(world: dict[str, Any], alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=world["ca"])
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def connect(world: dict[str, Any], tls: bool, sni: str | None = "app.localhost") -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", world["tls" if tls else "plain"]), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not tls:
        return raw
    context = tls_context(world)
    if sni is None:
        context.check_hostname = False
    return context.wrap_socket(raw, server_hostname=sni)


def read_all(sock: socket.socket, settle: float = 1.0) -> bytes:
    """Read until the gateway closes or goes quiet for ``settle`` seconds."""
    sock.settimeout(settle)
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return received
        except (ConnectionResetError, ssl.SSLError):
            return received
        if not data:
            return received
        received += data


def get(
    host: bytes, target: bytes, cookie: bytes | None = None, extra: bytes = b"", close: bool = False
) -> bytes:
    head = b"GET %s HTTP/1.1\r\nHost: %s\r\n" % (target, host)
    if cookie is not None:
        head += b"Cookie: " + cookie + b"\r\n"
    head += b"Accept: application/json\r\n" + extra
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n"


def session(world: dict[str, Any], who: str, tls: bool) -> bytes:
    """``who``'s session cookie as a browser sends it on a plain or TLS listener."""
    cookie: bytes = world["cookies"][who, tls]
    return cookie


def access_lines(gateway: GatewayProcess) -> list[str]:
    return [line for line in gateway.log().split("\n") if "[idgateway.access#info]" in line]


def wait_for_access_lines(gateway: GatewayProcess, count: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = access_lines(gateway)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# -- TLS: pipelined requests behind the gate, split at every byte ---------------------------


@pytest.mark.parametrize("split", ["whole", "every-byte"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_pipelined_requests_behind_the_gate_are_answered_in_order_whatever_the_split(
    world: dict[str, Any], upstream: Upstream, tls: bool, split: str
) -> None:
    alice = session(world, "alice", tls)
    stream = (
        get(b"app.localhost", b"/one", alice)
        + get(b"app.localhost", b"/two")  # no session: 401, never upstream
        + b"POST /three HTTP/1.1\r\nHost: app.localhost\r\nCookie: %s\r\n"
        b"Accept: application/json\r\nContent-Length: 5\r\n\r\nhello"
        % alice
        + get(b"app.localhost", b"/four", alice, close=True)
    )
    with connect(world, tls) as sock:
        if split == "whole":
            sock.sendall(stream)
        else:
            for at in range(len(stream)):  # one TCP segment (one TLS record) per byte
                sock.sendall(stream[at : at + 1])
        answers = parse_answers(read_all(sock, 3.0))
    assert [answer.status for answer in answers] == [200, 401, 200, 200]
    assert [answers[i].json()["target"] for i in (0, 2, 3)] == ["/one", "/three", "/four"]
    assert {answers[i].json()["user"] for i in (0, 2, 3)} == {"alice"}
    assert answers[2].json()["body"] == 5
    assert upstream.targets() == [b"/one", b"/three", b"/four"]


# -- TLS: the server name and the Host header ------------------------------------------------

SNI_CASES = [
    pytest.param("app.localhost", [b"open.localhost"], [421], id="sni-app-host-open"),
    pytest.param("app.localhost", [b"OPEN.Localhost."], [421], id="sni-app-host-open-spelled"),
    pytest.param("open.localhost", [b"app.localhost:443"], [421], id="sni-open-host-app-port"),
    pytest.param(
        "open.localhost", [b"open.localhost", b"app.localhost"], [200, 421], id="pipelined-switch"
    ),
    pytest.param("app.localhost", [b"app.localhost"], [401], id="same-site"),
    pytest.param("APP.localhost", [b"app.localhost."], [401], id="same-site-spelled"),
]


@pytest.mark.parametrize("sni, hosts, statuses", SNI_CASES)
def test_a_tls_server_name_never_reaches_another_sites_route(
    world: dict[str, Any], upstream: Upstream, sni: str, hosts: list[bytes], statuses: list[int]
) -> None:
    last = get(hosts[-1], b"/sni", close=True)
    stream = b"".join(get(host, b"/sni") for host in hosts[:-1]) + last
    with connect(world, True, sni) as sock:
        sock.sendall(stream)
        answers = parse_answers(read_all(sock))
    assert [answer.status for answer in answers] == statuses
    # Only the open site's own request (SNI and Host agreeing) went upstream.
    assert upstream.targets() == [b"/sni"] * statuses.count(200)


@pytest.mark.parametrize(
    "sni, status",
    [
        pytest.param(b"OPEN.LOCALHOST.", 200, id="spelled-as-host"),
        pytest.param(b"open.localhost:443", 200, id="with-a-port-as-host"),
        pytest.param(b"app.localhost:443", 421, id="other-site-with-a-port"),
        pytest.param(b"open.localhost..", 200, id="two-trailing-dots"),
        pytest.param(b"a" * 250, 421, id="250-bytes"),
        pytest.param(b"\xff\xfe", 421, id="not-ascii"),
        pytest.param(b"*.localhost", 421, id="wildcard"),
        pytest.param(b"127.0.0.1", 421, id="an-address"),
    ],
)
def test_a_hostile_server_name_is_read_as_a_host_or_misdirected(
    world: dict[str, Any], upstream: Upstream, sni: bytes, status: int
) -> None:
    # (pyOpenSSL sends any name; the ssl module refuses these.)
    from OpenSSL import SSL

    raw = socket.create_connection(("127.0.0.1", world["tls"]), timeout=5)
    raw.settimeout(None)  # (pyOpenSSL wants a blocking socket)
    conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), raw)
    conn.set_tlsext_host_name(sni)
    conn.set_connect_state()
    conn.do_handshake()
    conn.sendall(get(b"open.localhost", b"/sni", close=True))
    received = b""
    with contextlib.suppress(SSL.ZeroReturnError, SSL.SysCallError):
        while data := conn.recv(65536):
            received += data
    raw.close()
    assert [answer.status for answer in parse_answers(received)] == [status]
    assert upstream.targets() == [b"/sni"] * (status == 200)
    assert "Traceback" not in world["gateway"].log()


@pytest.mark.parametrize(
    "alpn",
    [
        pytest.param(["h2"], id="h2-only-on-an-http-1-1-listener"),
        pytest.param(["spdy/3", "http/1.1"], id="unknown-first"),
        pytest.param(["\x00" * 10], id="nul-protocol"),
        pytest.param(["x" * 255], id="longest-name"),
    ],
)
def test_alpn_the_listener_does_not_speak_never_skips_the_gate(
    world: dict[str, Any], upstream: Upstream, alpn: list[str]
) -> None:
    raw = socket.create_connection(("127.0.0.1", world["tls"]), timeout=10)
    try:
        sock = tls_context(world, alpn).wrap_socket(raw, server_hostname="app.localhost")
    except (ssl.SSLError, ConnectionResetError):
        raw.close()
        assert upstream.targets() == []  # refused at the handshake: fine
        return
    with sock:
        chosen = sock.selected_alpn_protocol()
        sock.sendall(get(b"app.localhost", b"/alpn", close=True))
        received = read_all(sock)
    if chosen == "h2":
        # HTTP/1.1 bytes on an h2 connection: refused as a bad preface.
        assert not received.startswith(b"HTTP/1.1")
    else:
        assert chosen in (None, "http/1.1")
        assert [answer.status for answer in parse_answers(received)] == [401]
    assert upstream.targets() == []


# -- TLS: truncation, large records, a client that never reads --------------------------------


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param("tcp-fin-mid-body", id="fin-mid-body"),
        pytest.param("rst-mid-body", id="rst-mid-body"),
        pytest.param("close-notify-mid-body", id="close-notify-mid-body"),
        pytest.param("half-record", id="half-a-record-then-fin"),
    ],
)
def test_a_tls_connection_cut_mid_body_never_completes_the_request_upstream(
    world: dict[str, Any], upstream: Upstream, cut: str
) -> None:
    alice = session(world, "alice", True)
    head = (
        b"POST /cut HTTP/1.1\r\nHost: app.localhost\r\nCookie: %s\r\n"
        b"Content-Length: 100000\r\n\r\n" % alice
    )
    raw = socket.create_connection(("127.0.0.1", world["tls"]), timeout=10)
    sock = tls_context(world).wrap_socket(raw, server_hostname="app.localhost")
    sock.sendall(head + b"a" * 50000)
    time.sleep(0.2)
    if cut == "rst-mid-body":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    elif cut == "close-notify-mid-body":
        sock.unwrap().close()
    elif cut == "half-record":
        # A record header announcing 16 KiB, and a few bytes of it.
        os.write(sock.fileno(), b"\x17\x03\x03\x40\x00" + b"\x00" * 100)
        sock.shutdown(socket.SHUT_WR)
        time.sleep(0.2)
        sock.close()
    else:
        sock.shutdown(socket.SHUT_WR)
        time.sleep(0.2)
        sock.close()
    time.sleep(0.5)
    # The upstream may have seen the head and part of the body, never a whole
    # request of 100000 bytes of which 50000 were never sent.
    complete = [body for target, _, body in upstream.seen if target == b"/cut"]
    assert all(len(body) == 100000 and set(body) == {ord("a")} for body in complete)
    assert complete == []
    # The worker is fine: the next client is served.
    with connect(world, True) as again:
        again.sendall(get(b"app.localhost", b"/after", alice, close=True))
        assert [a.status for a in parse_answers(read_all(again))] == [200]


@pytest.mark.parametrize(
    "size, piece",
    [
        pytest.param(8 * 1024 * 1024, 16384, id="8mb-in-full-records"),
        pytest.param(1024 * 1024, 1024 * 1024, id="1mb-in-one-write"),
        pytest.param(64 * 1024, 7, id="64kb-in-7-byte-records"),
    ],
)
def test_a_large_tls_body_reaches_the_upstream_byte_for_byte(
    world: dict[str, Any], upstream: Upstream, size: int, piece: int
) -> None:
    alice = session(world, "alice", True)
    body = bytes(range(256)) * (size // 256)
    head = (
        b"POST /large HTTP/1.1\r\nHost: app.localhost\r\nCookie: %s\r\nAccept: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (alice, len(body))
    )
    with connect(world, True) as sock:
        sock.sendall(head)
        for at in range(0, len(body), piece):
            sock.sendall(body[at : at + piece])  # (one TLS record per write, at most 16 KiB)
        answers = parse_answers(read_all(sock, 5.0))
    assert [a.status for a in answers] == [200]
    assert answers[0].json()["body"] == len(body)
    seen = [b for target, _, b in upstream.seen if target == b"/large"]
    assert seen == [body]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_client_that_never_reads_keeps_what_the_gateway_takes_bounded(
    world: dict[str, Any], upstream: Upstream, tls: bool
) -> None:
    gateway: GatewayProcess = world["gateway"]
    before = sum(rss_kib(pid) for pid in _worker_pids(gateway))
    sock = connect(world, tls)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        sock.sendall(get(b"app.localhost", b"/download?big", session(world, "alice", tls)))
        time.sleep(2.5)  # read nothing meanwhile
        taken = upstream.big_sent
        grown = sum(rss_kib(pid) for pid in _worker_pids(gateway)) - before
    assert taken < UNREAD_BOUND, taken
    assert grown < UNREAD_BOUND // 1024, grown


def _worker_pids(gateway: GatewayProcess) -> list[int]:
    children = f"/proc/{gateway.pid}/task/{gateway.pid}/children"
    with open(children) as listed:
        return [gateway.pid] + [int(pid) for pid in listed.read().split()]


# -- crossing: an aborting client next to a steady one ---------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize(
    "abort_after", [0, 1, 200], ids=["before-reading", "after-one-byte", "mid-response"]
)
def test_an_aborting_pipeliner_never_hands_a_byte_to_another_client(
    world: dict[str, Any], upstream: Upstream, tls: bool, abort_after: int
) -> None:
    gateway: GatewayProcess = world["gateway"]
    hostile, steady = session(world, "forged-line", tls), session(world, "bob", tls)
    logged = len(access_lines(gateway))
    mallory = connect(world, tls)
    mallory.sendall(
        get(b"app.localhost", b"/m1", hostile)
        + get(b"app.localhost", b"/m2?big", hostile)
        + get(b"app.localhost", b"/m3", hostile)
    )
    bob = connect(world, tls)
    bob.sendall(get(b"app.localhost", b"/b1", steady))
    if abort_after:
        mallory.settimeout(5)
        got = b""
        while len(got) < abort_after:
            got += mallory.recv(abort_after - len(got))
    mallory.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    mallory.close()
    bob.sendall(get(b"app.localhost", b"/b2", steady, close=True))
    with bob:
        answers = parse_answers(read_all(bob, 3.0))
    assert [a.status for a in answers] == [200, 200]
    assert [(a.json()["target"], a.json()["user"]) for a in answers] == [
        ("/b1", "bob"),
        ("/b2", "bob"),
    ]
    lines = wait_for_access_lines(gateway, logged + 3)[logged:]
    for line in lines:
        if " /b1 " in line or " /b2 " in line:
            assert " user=bob " in line, line
        if " /m1 " in line or " /m2 " in line or " /m3 " in line:
            assert " user=mallory\\x0A2026" in line, line


# -- the log relay: one line per request in the master's log ---------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("who", list(HOSTILE_USERS))
def test_a_hostile_user_name_is_one_line_of_the_masters_log(
    world: dict[str, Any], upstream: Upstream, who: str, tls: bool
) -> None:
    mark = os.urandom(6).hex().encode()
    with connect(world, tls) as sock:
        sock.sendall(
            get(b"app.localhost", b"/before-" + mark, session(world, "alice", tls))
            + get(b"app.localhost", b"/hostile-" + mark, session(world, who, tls))
            + get(b"app.localhost", b"/after-" + mark, session(world, "alice", tls), close=True)
        )
        answers = parse_answers(read_all(sock, 3.0))
    assert [a.status for a in answers] == [200, 200, 200]
    lines = _one_line_each(world["gateway"], mark, 3)
    assert " user=alice " in lines[0] and " user=alice " in lines[2]
    assert " user=mallory" in lines[1]


HOSTILE_TARGETS = [
    pytest.param(b"%0A" + FORGED.replace(" ", "%20").encode(), id="encoded-forged-line"),
    pytest.param(b"%1D12%0Aabcdefghijk", id="encoded-frame-header"),
    pytest.param(b"%00%1B%FF%C0%80", id="encoded-nul-esc-invalid-utf-8"),
    pytest.param(b"\xc3\xa9\xff\xfe", id="raw-invalid-utf-8"),
    pytest.param(b"\x1d12", id="raw-frame-mark"),
    pytest.param(b"%0A" * 2000, id="many-encoded-newlines"),
    pytest.param(b"a" * 60000, id="60k-target"),
]


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_a_hostile_target_is_one_line_of_the_masters_log(
    world: dict[str, Any], upstream: Upstream, target: bytes
) -> None:
    mark = os.urandom(6).hex().encode()
    with connect(world, False) as sock:
        sock.sendall(get(b"open.localhost", b"/hostile-" + mark + target, close=True))
        answers = parse_answers(read_all(sock, 3.0))
    # Proxied, or refused (a request the head reader refuses has no access line).
    assert [a.status for a in answers] in ([200], [400], [414], [431], [])
    proxied = bool(answers) and answers[0].status == 200
    _one_line_each(world["gateway"], mark, 1, allow_none=not proxied)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize(
    "before", [None, b"/before", b"/before?slow"], ids=["alone", "pipelined", "behind-a-slow-one"]
)
@pytest.mark.parametrize(
    "target, cookie, status",
    [
        pytest.param(b"/" + b"a" * 17000, None, 414, id="17k-request-line"),
        pytest.param(b"/c", b"a=" + b"b" * 17000, 431, id="17k-cookie-line"),
        pytest.param(b"/c", b"a=" + b"\n" * 17000, 431, id="17k-of-line-feeds"),
    ],
)
def test_an_oversize_line_gets_a_clear_answer_after_what_came_before(
    world: dict[str, Any],
    upstream: Upstream,
    tls: bool,
    before: bytes | None,
    target: bytes,
    cookie: bytes | None,
    status: int,
) -> None:
    # (Before: twisted.web's line parser closed the connection without a word.)
    stream = get(b"open.localhost", target, cookie, close=True)
    if before is not None:
        stream = get(b"open.localhost", before) + stream
    with connect(world, tls, "open.localhost") as sock:
        sock.sendall(stream)
        answers = parse_answers(read_all(sock, 3.0))
    statuses = [a.status for a in answers]
    if before is not None:
        assert statuses[0] == 200 and answers[0].json()["target"] == before.decode()
        statuses = statuses[1:]
    assert statuses == [status]
    assert upstream.targets() == ([] if before is None else [before])


def _one_line_each(
    gateway: GatewayProcess, mark: bytes, count: int, *, allow_none: bool = False
) -> list[str]:
    """The master's access lines naming ``mark``: ``count`` whole lines, escaped
    (``allow_none``: or none at all)."""
    # (A refused request may have no line: a second is enough to see one come.)
    deadline = time.monotonic() + (1.0 if allow_none else 5.0)
    while True:
        lines = [line for line in access_lines(gateway) if mark.decode() in line]
        if len(lines) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.2)  # (and nothing more comes)
    log = gateway.log()
    lines = [line for line in log.split("\n") if mark.decode() in line]
    assert len(lines) == count or (allow_none and not lines), lines
    assert all(ACCESS_LINE.match(line) for line in lines), lines
    assert all(all(" " <= char <= "~" for char in line) for line in lines), lines
    assert [line for line in log.split("\n") if line.startswith(FORGED[:30])] == []
    return lines


# -- //other.host/path: no redirect of the gateway's or an upstream's leaves the site ---------


OFF_SITE_TARGETS = [
    pytest.param(b"//evil.example/x", id="double-slash"),
    pytest.param(b"//evil.example", id="double-slash-bare"),
    pytest.param(b"/\\evil.example/x", id="slash-backslash"),
    pytest.param(b"///evil.example/x", id="triple-slash"),
    pytest.param(b"//evil.example%2Fx", id="double-slash-encoded-rest"),
    pytest.param(b"//evil.example@open.localhost/x", id="userinfo"),
    pytest.param(b"/%2Fevil.example/x", id="slash-encoded-slash"),
    pytest.param(b"/%5Cevil.example/x", id="slash-encoded-backslash"),
    pytest.param(b"//evil.example:443/x", id="double-slash-port"),
]


def _location(answer: Any) -> bytes | None:
    value = answer.header(b"location")
    return value if value is None else bytes(value)


def _off_site(location: bytes, host: bytes) -> bool:
    """Whether a browser on ``host`` would leave it following ``location``."""
    from urllib.parse import urlsplit

    # As the WHATWG URL parser reads it: leading/trailing C0 and spaces
    # stripped, tab and newlines removed, "\\" a "/" in http(s) URLs.
    text = location.decode("latin-1").strip("\x00\x01\x02\x03\x04\x05\x06\x07\x08 ")
    text = re.sub(r"[\t\n\r]", "", text).replace("\\", "/")
    if text.startswith("//"):
        return urlsplit("http:" + text).hostname != host.decode()
    parts = urlsplit(text)
    return bool(parts.scheme) and parts.hostname != host.decode()


@pytest.fixture(scope="module")
def login_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A gateway whose app route logs in at the WSO2-shaped provider (node)."""
    from tests.login_env import registered_client
    from tests.provider_process import ProviderProcess, node_binary

    if node_binary() is None:
        pytest.skip("node is not installed")
    tmp = tmp_path_factory.mktemp("fast-paths-login")
    port = free_port()
    client = registered_client("app-client", "s", "app.localhost", port, "client_secret_basic")
    upstream = Upstream()
    with ProviderProcess(tmp / "op", {"tenants": {"carbon.super": {"clients": [client]}}}) as op:
        config = tmp / "gateway.yaml"
        config.write_text(
            f"""
listeners: [{{address: 127.0.0.1:{port}}}]
providers:
  wso2: {{discovery_url: "{op.discovery_url()}", ca_file: "{op.ca_file}"}}
routes:
  - name: app
    hosts: [app.localhost]
    upstream: http://127.0.0.1:{upstream.port}
    oidc: {{provider: wso2, client_id: app-client, client_secret: s, par: "off"}}
"""
        )
        gateway = GatewayProcess(config, tmp / "gateway.log").start([port])
        try:
            from tests.login_env import wait_until_login_offered

            wait_until_login_offered(port, ("app.localhost",))
            yield {"op": op, "port": port, "upstream": upstream}
        finally:
            gateway.stop()
            upstream.close()


@pytest.mark.parametrize("target", OFF_SITE_TARGETS)
def test_the_redirect_after_login_of_an_off_site_looking_target_stays_on_site(
    login_world: dict[str, Any], target: bytes
) -> None:
    from urllib.parse import urlsplit

    from tests.login_env import Client

    port = login_world["port"]
    browser = Client(port, "app.localhost")
    status, headers, _ = browser.get(target.decode("latin-1"), {"Accept": "text/html"})
    if status == 400:
        return  # refused before any login (not a path the gate reads one way)
    assert status == 302, status
    callback = login_world["op"].scripted_login(headers["Location"], "alice", "alice123")
    parts = urlsplit(callback)
    assert parts.netloc == f"app.localhost:{port}"
    status, headers, _ = browser.get(f"{parts.path}?{parts.query}")
    assert status == 302
    location = headers["Location"].encode("latin-1")
    assert not _off_site(location, b"app.localhost"), location
    # Signed in, the target itself: the upstream's path redirect stays on site too.
    status, headers, _ = browser.get(target.decode("latin-1") + "?slash", {"Accept": "text/html"})
    assert status in (301, 400)
    if status == 301:
        assert not _off_site(headers["Location"].encode("latin-1"), b"app.localhost")


@pytest.mark.parametrize("target", OFF_SITE_TARGETS)
def test_an_upstreams_path_redirect_of_an_off_site_looking_target_stays_on_site(
    world: dict[str, Any], upstream: Upstream, target: bytes
) -> None:
    with connect(world, False) as sock:
        sock.sendall(get(b"open.localhost", target + b"?slash", close=True))
        answers = parse_answers(read_all(sock))
    assert len(answers) == 1
    location = _location(answers[0])
    if answers[0].status == 301:
        assert location is not None
        assert not _off_site(location, b"open.localhost"), location
    else:
        assert answers[0].status == 400 and upstream.targets() == []


# -- TLS renegotiation, half-close, a slow reader, users taking turns --------------------------


@pytest.mark.parametrize("second_name", [b"open.localhost", b"app.localhost"])
def test_tls_renegotiation_is_refused_and_carries_no_request(
    world: dict[str, Any], upstream: Upstream, second_name: bytes
) -> None:
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)  # (TLS 1.3 has no renegotiation)
    context.load_verify_locations(world["ca"])
    raw = socket.create_connection(("127.0.0.1", world["tls"]), timeout=5)
    raw.settimeout(None)  # (pyOpenSSL wants a blocking socket)
    conn = SSL.Connection(context, raw)
    conn.set_tlsext_host_name(b"open.localhost")
    conn.set_connect_state()
    conn.do_handshake()
    conn.sendall(get(b"open.localhost", b"/first"))
    assert conn.recv(65536).startswith(b"HTTP/1.1 200")
    conn.set_tlsext_host_name(second_name)
    conn.renegotiate()
    with pytest.raises(SSL.Error):
        conn.do_handshake()
        conn.sendall(get(second_name, b"/second", close=True))
        while conn.recv(65536):
            pass
    raw.close()
    assert upstream.targets() == [b"/first"]


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_half_closed_client_gets_its_answer_and_nothing_more(
    world: dict[str, Any], upstream: Upstream, tls: bool, close: bool
) -> None:
    sock = connect(world, tls, "open.localhost")
    with sock:
        sock.sendall(get(b"open.localhost", b"/half", close=close))
        time.sleep(0.05)
        # (Over TLS: the TCP FIN alone, no close_notify; the answer is then
        # read as records, as the ssl module has let go of the connection.)
        sock.shutdown(socket.SHUT_WR)
        received = read_all(sock, 2.0)
    if tls:
        assert received[:1] == b"\x17"  # application data: the answer
    else:
        answers = parse_answers(received)
        assert [(a.status, a.json()["target"]) for a in answers] == [(200, "/half")]
    assert upstream.targets() == [b"/half"]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_slow_reader_gets_every_byte_in_order_through_pause_and_resume(
    world: dict[str, Any], upstream: Upstream, tls: bool
) -> None:
    size = PATTERN_SIZE
    sock = connect(world, tls, "open.localhost")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    with sock:
        sock.sendall(get(b"open.localhost", b"/pattern?pattern", close=True))
        received = bytearray()
        sock.settimeout(10)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
            if len(received) % (2 * 1024 * 1024) < 65536:
                time.sleep(0.2)  # stalls: the gateway pauses the upstream, then resumes
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == size and body == pattern(size)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_users_taking_turns_on_one_connection_each_get_their_own_identity_and_line(
    world: dict[str, Any], upstream: Upstream, tls: bool
) -> None:
    mark = os.urandom(6).hex()
    turns = ["alice", "bob", None, "alice", "frame-header", "bob", "alice"]
    stream = b"".join(
        get(
            b"app.localhost",
            f"/turn-{index}-{mark}".encode(),
            None if who is None else session(world, who, tls),
            close=index == len(turns) - 1,
        )
        for index, who in enumerate(turns)
    )
    with connect(world, tls) as sock:
        sock.sendall(stream)
        answers = parse_answers(read_all(sock, 3.0))
    assert [a.status for a in answers] == [401 if who is None else 200 for who in turns]
    users = {"alice": "alice", "bob": "bob", "frame-header": HOSTILE_USERS["frame-header"]}
    for index, (who, answer) in enumerate(zip(turns, answers, strict=True)):
        if who is not None:
            assert answer.json()["target"] == f"/turn-{index}-{mark}"
            assert answer.json()["user"] == quote(users[who], safe="")
    lines = _one_line_each(world["gateway"], mark.encode(), len(turns))
    by_turn = {int(line.split("/turn-")[1].split("-")[0]): line for line in lines}
    for index, who in enumerate(turns):
        expected = (
            "-" if who is None else users[who].replace("\n", "\\x0A").replace("\x1d", "\\x1D")
        )
        assert f" user={expected} " in by_turn[index], by_turn[index]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_an_upload_to_an_upstream_that_does_not_read_keeps_what_the_gateway_takes_bounded(
    world: dict[str, Any], upstream: Upstream, tls: bool
) -> None:
    size = 96 * 1024 * 1024  # (under the route's max_body_size, 100 MB)
    sent = [0]
    sock = connect(world, tls, "open.localhost")

    def upload() -> None:
        piece = b"u" * 65536
        try:
            sock.sendall(
                b"POST /upload?stall HTTP/1.1\r\nHost: open.localhost\r\n"
                b"Content-Length: %d\r\n\r\n" % size
            )
            while sent[0] < size:
                sock.sendall(piece)  # blocks once the gateway stops reading
                sent[0] += len(piece)
        except OSError:
            return

    with sock:
        sock.settimeout(10)
        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        time.sleep(2.5)
        taken = sent[0]
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    thread.join(5)
    assert taken < UNREAD_BOUND, taken


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_body_refused_with_413_cannot_keep_the_connection_going(
    world: dict[str, Any], upstream: Upstream, tls: bool
) -> None:
    # (Over TLS the gateway waited for close_notify while decrypting and
    # parsing all the Content-Length announced, then logged a traceback.)
    gateway: GatewayProcess = world["gateway"]
    sent: list[Any] = [0, None]
    sock = connect(world, tls, "open.localhost")

    def upload() -> None:
        piece = b"u" * 65536
        try:
            sock.sendall(
                b"POST /refused HTTP/1.1\r\nHost: open.localhost\r\n"
                b"Content-Length: 999999999999999999\r\n\r\n"
            )
            while True:
                sock.sendall(piece)
                sent[0] += len(piece)
        except OSError as error:
            sent[1] = time.monotonic()
            del error

    with sock:
        sock.settimeout(15)
        started = time.monotonic()
        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        thread.join(CLOSE_GRACE + 4)
        cut = sent[1]
    assert cut is not None, f"still sending after {CLOSE_GRACE + 4} s: {sent[0]} bytes"
    assert cut - started < CLOSE_GRACE + 3
    assert upstream.targets() == []
    assert "Traceback" not in gateway.log()


@pytest.mark.parametrize("h2", [False, True], ids=["http-1.1", "h2"])
@pytest.mark.parametrize("index", range(len(UPSTREAM_LOCATIONS)), ids=lambda i: f"location-{i}")
def test_an_upstream_location_never_sends_a_browser_off_site_without_a_scheme(
    world: dict[str, Any], upstream: Upstream, index: int, h2: bool
) -> None:
    from tests.h2_client import H2Client

    sent = UPSTREAM_LOCATIONS[index]
    target = f"/moved?location={index}"
    if h2:
        with H2Client(world["tls"], ca=world["ca"], server_name="open.localhost") as client:
            assert client.alpn == "h2"
            response = client.get(target)
        status, location = response.status, response.header(b"location")
    else:
        with connect(world, True, "open.localhost") as sock:
            sock.sendall(get(b"open.localhost", target.encode(), close=True))
            answers = parse_answers(read_all(sock))
        status, location = answers[0].status, answers[0].header(b"location")
    assert status == 302 and location is not None
    if sent.startswith(b"https:") or not _off_site(sent, b"open.localhost"):
        assert location == sent  # (an absolute URL or a path: as the upstream wrote it)
    else:
        assert not _off_site(location, b"open.localhost"), location
        assert location.endswith(sent.lstrip(b" \t"))  # the same path, on this site


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_burst_of_pipelined_requests_in_one_record_is_answered_in_order_each_its_own(
    world: dict[str, Any], upstream: Upstream, tls: bool
) -> None:
    # 120 requests of two users and no user in one write (over TLS: in as
    # few records as fit 16 KiB): the answers leave coalesced, in order.
    who = ["alice", "bob", None]
    cookies = [None if user is None else session(world, user, tls) for user in who]
    stream = b"".join(
        get(b"app.localhost", b"/burst-%d" % n, cookies[n % 3], close=n == 119) for n in range(120)
    )
    with connect(world, tls) as sock:
        sock.sendall(stream)
        answers = parse_answers(read_all(sock, 3.0))
    assert len(answers) == 120
    for n, answer in enumerate(answers):
        if who[n % 3] is None:
            assert answer.status == 401
        else:
            assert answer.status == 200
            assert (answer.json()["target"], answer.json()["user"]) == (f"/burst-{n}", who[n % 3])


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("leave", ["fin", "rst"])
def test_an_answer_for_a_client_gone_never_reaches_the_next_one_on_its_descriptor(
    world: dict[str, Any], upstream: Upstream, tls: bool, leave: str
) -> None:
    # Each gone client's answer comes from the upstream half a second later,
    # when its descriptor number may already be a new client's.
    gone = []
    for n in range(8):
        sock = connect(world, tls)
        sock.sendall(get(b"app.localhost", b"/gone-%d?slow" % n, session(world, "alice", tls)))
        if leave == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01" + b"\x00" * 7)
        gone.append(sock)
    time.sleep(0.1)
    for sock in gone:
        sock.close()
    steady = [connect(world, tls) for _ in range(8)]
    for n, sock in enumerate(steady):
        sock.sendall(get(b"app.localhost", b"/steady-%d" % n, session(world, "bob", tls)))
    time.sleep(0.6)  # (the gone clients' answers arrive meanwhile)
    for n, sock in enumerate(steady):
        with sock:
            sock.sendall(
                get(b"app.localhost", b"/again-%d" % n, session(world, "bob", tls), close=True)
            )
            answers = parse_answers(read_all(sock, 2.0))
        assert [(a.status, a.json()["target"], a.json()["user"]) for a in answers] == [
            (200, f"/steady-{n}", "bob"),
            (200, f"/again-{n}", "bob"),
        ]
