"""HTTP/2 attacks against the real gateway process (issue 14, "Hardened").

Each attack is played with a raw client on the ``h2`` library (tests/h2_client.py),
frames written by hand where a well-behaved library would refuse to send them.
After each one the gateway must still be up, answer a fresh client, and have
held its memory: RSS grows by less than ``RSS_BOUND_KIB`` over the attack.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.backends import BackendProcess
from tests.certs import make_ca
from tests.h2_client import ConnectionClosed, H2Client
from tests.processes import GatewayProcess, free_port, rss_kib

MAX_STREAMS = 8
MAX_RESETS = 20
SEND_TIMEOUT = 2.0
# client_header_timeout of the "slow_tls" listener (the others keep the default).
HEADER_TIMEOUT = 2.0
RSS_BOUND_KIB = 30 * 1024
CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("http2-attacks")
    ca = make_ca(tmp / "pki")
    leaf = ca.issue(tmp / "pki", ["app1.localhost"], name="app1")
    tls_port, h2c_port, plain_port = free_port(), free_port(), free_port()
    slow_tls_port = free_port()
    with BackendProcess(name="echo") as backend:
        config = tmp / "gateway.yaml"
        config.write_text(
            f"""
listeners:
  - address: 127.0.0.1:{tls_port}
    client_send_timeout: {SEND_TIMEOUT}s
    tls:
      certificates:
        - {{cert: {leaf.cert_path}, key: {leaf.key_path}}}
  - address: 127.0.0.1:{h2c_port}
    http2: prior_knowledge
  - address: 127.0.0.1:{plain_port}
  - address: 127.0.0.1:{slow_tls_port}
    client_header_timeout: {HEADER_TIMEOUT}s
    tls:
      certificates:
        - {{cert: {leaf.cert_path}, key: {leaf.key_path}}}
http2:
  max_concurrent_streams: {MAX_STREAMS}
  initial_window_size: 64KB
  max_header_list_size: 16KB
  max_resets_per_minute: {MAX_RESETS}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend.port}
    max_body_size: 1MB
"""
        )
        process = GatewayProcess(config, tmp / "gateway.log").start(
            [tls_port, h2c_port, plain_port, slow_tls_port]
        )
        try:
            yield {
                "tls": tls_port,
                "h2c": h2c_port,
                "plain": plain_port,
                "slow_tls": slow_tls_port,
                "ca": ca.cert_path,
                "process": process,
            }
        finally:
            process.stop()
        log = process.log()
        assert "Traceback" not in log, log[-3000:]


def _client(gateway: dict[str, Any], **kwargs: Any) -> H2Client:
    return H2Client(gateway["tls"], ca=gateway["ca"], **kwargs)


def _raw_headers(
    client: H2Client, stream_id: int, block: list[tuple[bytes, bytes]], *, end: bool = True
) -> None:
    """A HEADERS frame encoded as given: no client-side checks, no lower-casing."""
    frame = HeadersFrame(stream_id)
    frame.data = client.h2.encoder.encode(block)
    frame.flags.add("END_HEADERS")
    if end:
        frame.flags.add("END_STREAM")
    client.send_raw(frame.serialize())


def _headers_frame(client: H2Client, stream_id: int, block: list[tuple[bytes, bytes]]) -> Any:
    """A HEADERS frame with END_STREAM, encoded as given."""
    frame = HeadersFrame(stream_id)
    frame.data = client.h2.encoder.encode(block)
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    return frame


def _request_block(path: bytes = b"/echo") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"app1.localhost"),
        (b":path", path),
    ]


def _refused(client: H2Client, error_code: int | None = None) -> None:
    """The gateway ends the connection (GOAWAY, then close), with ``error_code`` if given."""
    client.read_until_closed(timeout=10)
    if error_code is not None:
        assert client.goaway is not None, "no GOAWAY before the close"
        assert client.goaway.error_code == error_code


def _no_success(client: H2Client) -> None:
    """Nothing the client sent got a 2xx."""
    assert all(r.status is None or r.status >= 400 for r in client.responses.values())


# -- the attacks: each plays one and checks how this connection was treated -----


def rapid_reset(gateway: dict[str, Any]) -> None:
    """CVE-2023-44487: open a stream and cancel it at once, in a loop."""
    with _client(gateway) as client:
        closed = False
        for stream_id in range(1, 2 * (MAX_RESETS * 5), 2):
            try:
                _raw_headers(client, stream_id, _request_block(b"/slow-headers?delay=5"))
                client.send_raw(RstStreamFrame(stream_id, error_code=8).serialize())
            except OSError:
                closed = True
                break
        if not closed:
            _refused(client, CALM)
        else:
            assert client.goaway is None or client.goaway.error_code == CALM


def _made_you_reset(frame: Callable[[H2Client, int], Any]) -> Callable[[dict[str, Any]], None]:
    """CVE-2025-8671 ("MadeYouReset"): a request whose upstream work is under
    way, then a frame that makes the server reset the stream itself, in a
    loop. The gateway either ends the connection at the first such frame (a
    connection error) or counts its resets as the client's own (GOAWAY
    ENHANCE_YOUR_CALM past the limit); each stream's upstream exchange ends
    with it (the RSS bound and the other clients' service, checked after
    every attack, show nothing piles up)."""

    def attack(gateway: dict[str, Any]) -> None:
        with _client(gateway) as client:
            sent = 0
            try:
                for _ in range(MAX_RESETS * 5):
                    stream_id = client.request("/slow-headers?delay=5")
                    client.send_raw(frame(client, stream_id).serialize())
                    sent += 1
            except OSError:
                pass
            try:
                client.read_until_closed(timeout=10)
            except TimeoutError:
                raise AssertionError(f"the connection stayed open after {sent} resets") from None
            assert client.goaway is not None, "no GOAWAY before the close"
            assert client.goaway.error_code in (PROTOCOL_ERROR, CALM)
            if client.goaway.error_code == CALM:
                assert client.goaway.last_stream_id <= 2 * (MAX_RESETS + 1) + 1

    return attack


def continuation_flood(gateway: dict[str, Any]) -> None:
    """CVE-2024-27316 family: a header block that never ends."""
    with _client(gateway) as client:
        first = HeadersFrame(1)
        first.data = client.h2.encoder.encode(_request_block())
        client.send_raw(first.serialize())  # no END_HEADERS
        try:
            for _ in range(10_000):
                continuation = ContinuationFrame(1)
                continuation.data = b"\x00" * 1024
                client.send_raw(continuation.serialize())
        except OSError:
            return  # cut off mid-flood
        _refused(client)


def hpack_bomb(gateway: dict[str, Any]) -> None:
    """A small block that decodes to far more than max_header_list_size."""
    with _client(gateway) as client:
        block = _request_block() + [(b"x-bomb", b"a" * 4000)] * 200
        encoded = client.h2.encoder.encode(block)
        assert len(encoded) < 12_000  # small on the wire...
        frame = HeadersFrame(1)
        frame.data = encoded
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        client.send_raw(frame.serialize())  # ...800 KB decoded
        _refused(client)
        _no_success(client)


def settings_flood(gateway: dict[str, Any]) -> None:
    """SETTINGS frames in a loop, each to be acknowledged, the answers never read."""
    with _client(gateway) as client:
        frame = SettingsFrame(0, settings={h2.settings.SettingCodes.ENABLE_PUSH: 0})
        data = frame.serialize() * 100
        try:
            for _ in range(100):
                client.send_raw(data)
        except OSError:
            return
        _refused(client, CALM)


def ping_flood(gateway: dict[str, Any]) -> None:
    """PING frames in a loop, each to be answered, the answers never read."""
    with _client(gateway) as client:
        data = b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(100))
        try:
            for _ in range(100):
                client.send_raw(data)
        except OSError:
            return
        _refused(client, CALM)


def empty_data_flood(gateway: dict[str, Any]) -> None:
    """Empty DATA frames on an open stream: work for nothing (CVE-2019-9518)."""
    with _client(gateway) as client:
        stream_id = client.request("/upload", method="PUT", end=False)
        data = DataFrame(stream_id, data=b"").serialize() * 500
        try:
            for _ in range(20):
                client.send_raw(data)
        except OSError:
            return
        _refused(client, CALM)


def zero_window_stall(gateway: dict[str, Any]) -> None:
    """The client never opens its window while the upstream sends 200 MB."""
    process = gateway["process"]
    with _client(gateway, auto_window=False) as client:
        stream_id = client.request("/download?size=200000000")
        started = time.monotonic()
        response = client.responses[stream_id]
        before = peak = rss_kib(process.pid)
        while response.reset is None and time.monotonic() - started < SEND_TIMEOUT + 8:
            try:
                client.read_once(timeout=0.5)
            except TimeoutError:
                pass
            peak = max(peak, rss_kib(process.pid))
        # The stalled response is cut at client_send_timeout (plus the sweep).
        assert response.reset is not None, "the stalled stream was never cut"
        assert len(response.body) <= 65535
        assert peak - before < RSS_BOUND_KIB
        # Another stream on the same connection works once the client opens
        # the connection's window again.
        client.h2.increment_flow_control_window(len(response.body))
        assert client.get("/echo").status == 200


def too_many_streams(gateway: dict[str, Any]) -> None:
    """More concurrent streams than max_concurrent_streams (sent before its SETTINGS)."""
    with _client(gateway) as client:
        for index in range(MAX_STREAMS + 2):
            _raw_headers(client, 1 + 2 * index, _request_block(b"/slow-headers?delay=3"))
        _refused(client)
        _no_success(client)


def stream_id_reuse(gateway: dict[str, Any]) -> None:
    """A second request on a stream that already ended."""
    with _client(gateway) as client:
        assert client.get("/echo").status == 200
        _raw_headers(client, 1, _request_block())
        _refused(client)


def _malformed(block: list[tuple[bytes, bytes]]) -> Callable[[dict[str, Any]], None]:
    def attack(gateway: dict[str, Any]) -> None:
        with _client(gateway) as client:
            _stream_refused(client, client.send_unchecked(block))
            # A stream error: the same connection serves the next request.
            assert client.get("/echo").status == 200
            assert client.goaway is None

    return attack


def _stream_refused(client: H2Client, stream_id: int) -> None:
    """The gateway reset the stream with PROTOCOL_ERROR and answered nothing on it."""
    response = client.wait(stream_id)
    assert response.reset == PROTOCOL_ERROR, response
    assert response.status is None


def malformed_trailers(gateway: dict[str, Any]) -> None:
    """A body, then a trailer block carrying a pseudo-header (RFC 9113 8.1)."""
    with _client(gateway) as client:
        stream_id = client.request("/upload", method="POST", end=False)
        client.send_body(stream_id, b"x" * 10, end=False)
        client.send_unchecked([(b":path", b"/admin")], stream_id=stream_id)
        _stream_refused(client, stream_id)
        assert client.get("/echo").status == 200


def content_length_mismatch(gateway: dict[str, Any]) -> None:
    """content-length says 10, DATA carries 100."""
    with _client(gateway) as client:
        stream_id = client.request(
            "/upload", method="PUT", headers=[("content-length", "10")], end=False
        )
        client.send_raw(DataFrame(stream_id, data=b"x" * 100, flags=["END_STREAM"]).serialize())
        _refused(client, PROTOCOL_ERROR)
        _no_success(client)


def oversize_body(gateway: dict[str, Any]) -> None:
    """A body past max_body_size without content-length: 413 on that stream only."""
    with _client(gateway) as client:
        stream_id = client.request("/upload", method="PUT", end=False)
        client.send_body(stream_id, b"x" * (2 * 1024 * 1024))
        response = client.wait(stream_id)
        assert response.status == 413
        assert client.get("/echo").status == 200


def h2c_upgrade_refused(gateway: dict[str, Any]) -> None:
    """Upgrade: h2c and the bare preface on a listener without h2c stay HTTP/1.1."""
    with socket.create_connection(("127.0.0.1", gateway["plain"]), timeout=5) as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: app1.localhost\r\nConnection: Upgrade, HTTP2-Settings"
            b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    with socket.create_connection(("127.0.0.1", gateway["plain"]), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 4"), answer[:100]


ATTACKS = {
    "rapid-reset": rapid_reset,
    # DATA and HEADERS on a stream the client already ended (half-closed remote).
    "made-you-reset-data": _made_you_reset(lambda client, sid: DataFrame(sid, data=b"x")),
    "made-you-reset-headers": _made_you_reset(
        lambda client, sid: _headers_frame(client, sid, [(b"x-late", b"1")])
    ),
    "made-you-reset-window-update-zero": _made_you_reset(
        lambda client, sid: WindowUpdateFrame(sid, window_increment=0)
    ),
    "continuation-flood": continuation_flood,
    "hpack-bomb": hpack_bomb,
    "settings-flood": settings_flood,
    "ping-flood": ping_flood,
    "empty-data-flood": empty_data_flood,
    "zero-window-stall": zero_window_stall,
    "too-many-streams": too_many_streams,
    "stream-id-reuse": stream_id_reuse,
    "unknown-pseudo-header": _malformed(_request_block() + [(b":evil", b"1")]),
    "pseudo-header-after-regular": _malformed(
        [
            (b":method", b"GET"),
            (b"x-a", b"1"),
            (b":path", b"/echo"),
            (b":scheme", b"https"),
            (b":authority", b"app1.localhost"),
        ]
    ),
    "duplicate-path": _malformed(_request_block() + [(b":path", b"/other")]),
    "missing-path": _malformed(_request_block()[:3]),
    "uppercase-header-name": _malformed(_request_block() + [(b"X-Upper", b"1")]),
    "te-not-trailers": _malformed(_request_block() + [(b"te", b"gzip")]),
    "connection-header": _malformed(_request_block() + [(b"connection", b"keep-alive")]),
    "transfer-encoding": _malformed(_request_block() + [(b"transfer-encoding", b"chunked")]),
    "host-differs-from-authority": _malformed(_request_block() + [(b"host", b"other.localhost")]),
    "non-token-header-name": _malformed(_request_block() + [(b"x(y", b"1")]),
    "space-in-header-name": _malformed(_request_block() + [(b"x-auth user", b"1")]),
    "crlf-in-header-value": _malformed(
        _request_block() + [(b"x-a", b"1\r\nx-auth-request-user: admin")]
    ),
    "lf-in-cookie": _malformed(_request_block() + [(b"cookie", b"a=1\nx-admin: 1")]),
    "nul-in-header-value": _malformed(_request_block() + [(b"x-a", b"1\x002")]),
    "space-around-header-value": _malformed(_request_block() + [(b"x-a", b" 1")]),
    "status-pseudo-header-in-request": _malformed(_request_block() + [(b":status", b"200")]),
    "empty-path": _malformed(_request_block(b"")),
    "two-host-headers": _malformed(
        _request_block() + [(b"host", b"app1.localhost"), (b"host", b"app1.localhost")]
    ),
    "connect-with-path": _malformed(
        [(b":method", b"CONNECT"), (b":authority", b"app1.localhost:443"), (b":path", b"/")]
    ),
    "protocol-without-connect": _malformed(_request_block() + [(b":protocol", b"websocket")]),
    "pseudo-header-in-trailers": malformed_trailers,
    "content-length-mismatch": content_length_mismatch,
    "oversize-body": oversize_body,
    "h2c-upgrade-without-h2c": h2c_upgrade_refused,
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_attack_is_contained(gateway: dict[str, Any], attack: str) -> None:
    process = gateway["process"]
    before = rss_kib(process.pid)
    ATTACKS[attack](gateway)
    # Still up, still serving others, over both h2 listeners.
    with _client(gateway) as other:
        assert other.alpn == "h2"
        assert other.get("/echo").status == 200
    with H2Client(gateway["h2c"]) as other:
        assert other.get("/echo").status == 200
    grown = rss_kib(process.pid) - before
    assert grown < RSS_BOUND_KIB, f"RSS grew by {grown} KiB during {attack}"


def _ended_after(client: H2Client, seconds: float) -> bool:
    """Read for ``seconds``: whether the gateway sent GOAWAY or closed meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client.read_once(timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
        except (ConnectionClosed, h2.exceptions.ProtocolError):
            return True
        if client.goaway is not None:
            return True
    return False


def _silent_after_preface(client: H2Client) -> None:
    """The preface and SETTINGS (sent on connect), then nothing."""


def _headers_never_ended(client: H2Client) -> None:
    """A HEADERS frame without END_HEADERS, then a CONTINUATION a second, never the last."""
    # The SETTINGS exchange first: its ACK inside the header block would be a
    # protocol error of its own.
    assert not _ended_after(client, 0.3)
    first = HeadersFrame(1)
    first.data = client.h2.encoder.encode(_request_block())
    client.send_raw(first.serialize())
    for _ in range(int(HEADER_TIMEOUT) + 3):
        if _ended_after(client, 1.0):
            return
        continuation = ContinuationFrame(1)
        continuation.data = b"\x40\x01a\x01b"  # one small literal field, never END_HEADERS
        try:
            client.send_raw(continuation.serialize())
        except OSError:
            return


def _pings_but_no_request(client: H2Client) -> None:
    """Frames that keep the connection busy (PING), but no request."""
    for index in range(int(HEADER_TIMEOUT) * 2 + 6):
        if _ended_after(client, 0.5):
            return
        try:
            client.send_raw(PingFrame(0, opaque_data=b"%08d" % index).serialize())
        except OSError:
            return


SLOW_FIRST_REQUESTS = {
    "silent-after-preface": _silent_after_preface,
    "headers-never-ended": _headers_never_ended,
    "pings-but-no-request": _pings_but_no_request,
}


@pytest.mark.parametrize("play", list(SLOW_FIRST_REQUESTS), ids=list(SLOW_FIRST_REQUESTS))
def test_a_first_request_that_never_completes_is_cut_at_client_header_timeout(
    gateway: dict[str, Any], play: str
) -> None:
    """As an HTTP/1.1 connection that sends no complete head: closed at the deadline."""
    started = time.monotonic()
    with H2Client(gateway["slow_tls"], ca=gateway["ca"]) as client:
        assert client.alpn == "h2"
        SLOW_FIRST_REQUESTS[play](client)
        client.read_until_closed(timeout=HEADER_TIMEOUT + 5)
        took = time.monotonic() - started
        assert client.goaway is not None, "no GOAWAY before the close"
        assert client.goaway.last_stream_id == 0  # nothing was processed
        _no_success(client)
    # The sweep runs once a second.
    assert HEADER_TIMEOUT - 0.5 <= took <= HEADER_TIMEOUT + 3, took


def test_a_connection_whose_first_request_came_in_time_is_not_cut(
    gateway: dict[str, Any],
) -> None:
    with H2Client(gateway["slow_tls"], ca=gateway["ca"]) as client:
        assert client.get("/echo").status == 200
        time.sleep(HEADER_TIMEOUT + 1.5)
        # Still open (the idle timeout, 75 s, is what applies now).
        assert client.get("/echo").status == 200
        assert client.goaway is None


def test_host_and_authority_that_differ_never_reach_an_upstream(gateway: dict[str, Any]) -> None:
    """Whichever way the client spells the site twice, no request goes upstream:
    a stream error, as the issue and RFC 9113 8.1.1 ask, and the connection goes on."""
    with _client(gateway) as client:
        for block in (
            _request_block() + [(b"host", b"other.localhost")],
            [(b"host", b"other.localhost")] + _request_block(),
            _request_block() + [(b"host", b"APP1.localhost")],
            _request_block() + [(b"host", b"app1.localhost:443")],
        ):
            _stream_refused(client, client.send_unchecked(block))
        assert not any(isinstance(event, h2.events.ResponseReceived) for event in client.events)
        assert client.get("/echo").status == 200
        assert client.goaway is None


def test_a_flood_of_malformed_requests_is_a_rapid_reset(gateway: dict[str, Any]) -> None:
    """Resets the gateway sends for malformed requests count against
    max_resets_per_minute ("MadeYouReset", CVE-2025-8671): past it, GOAWAY."""
    with _client(gateway) as client:
        bad = _request_block() + [(b"te", b"gzip")]
        for _ in range(MAX_RESETS):
            _stream_refused(client, client.send_unchecked(bad))
        assert client.goaway is None
        client.send_unchecked(bad)
        _refused(client, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)


def test_cookie_crumbs_reach_the_upstream_as_one_cookie_header(gateway: dict[str, Any]) -> None:
    """RFC 9113 8.2.3: split cookie fields are joined with "; " for HTTP/1.1."""
    with _client(gateway) as client:
        response = client.get("/echo", headers=[("cookie", "a=1"), ("cookie", "b=2")])
        assert response.status == 200
        echoed = json.loads(bytes(response.body))
        cookies = [value for name, value in echoed["headers"] if name == "cookie"]
        assert cookies == ["a=1; b=2"]


def test_sni_and_authority_naming_different_sites_is_421(gateway: dict[str, Any]) -> None:
    with _client(gateway) as client:
        response = client.get("/echo", authority="unknown.localhost")
        assert response.status == 421


def test_a_client_that_closes_mid_attack_leaves_nothing_behind(gateway: dict[str, Any]) -> None:
    client = _client(gateway)
    for _ in range(MAX_STREAMS):
        client.request("/slow-headers?delay=1")
    client.close()
    time.sleep(0.5)
    with _client(gateway) as other:
        assert other.get("/echo").status == 200
    # The streams' upstream exchanges were cancelled: nothing is logged as
    # finished for them, and nothing failed (the fixture checks for tracebacks).
    assert "/slow-headers 499" in gateway["process"].log()
