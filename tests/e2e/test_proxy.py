"""The gateway as users run it (twistd), in front of real back ends."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time

import pytest

from tests.http_helpers import echo_json, header_values, request
from tests.processes import free_port, wait_for_port


def two_app_config(port: int, backend_a: int, backend_b: int, extra_route: str = "") -> str:
    return f"""
listeners:
  - address: 127.0.0.1:{port}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend_a}
    paths:
      - {{prefix: /api/, upstream: http://127.0.0.1:{backend_b}}}
  - name: app2
    hosts: [app2.localhost, "*.apps.localhost"]
    upstream: http://127.0.0.1:{backend_b}
    preserve_host: true
{extra_route}
"""


@pytest.fixture
def two_apps(start_gateway, backend, backend_b):
    port = free_port()
    start_gateway(two_app_config(port, backend.port, backend_b.port), [port])
    return port, backend, backend_b


def test_hosts_and_paths_pick_their_upstreams(two_apps):
    port, backend, backend_b = two_apps
    echo = echo_json(port, "app1.localhost", "/echo?x=1")
    assert header_values(echo, "host") == [f"127.0.0.1:{backend.port}"]
    assert echo["path"].startswith("/echo")
    api = echo_json(port, "app1.localhost", "/api/things")
    assert header_values(api, "host") == [f"127.0.0.1:{backend_b.port}"]
    # preserve_host passes the client's Host through, checked and normalised
    # (lower case, no trailing dot: nginx's $host); wildcard hosts match.
    app2 = echo_json(port, "App2.Localhost.:8080", "/echo")
    assert header_values(app2, "host") == ["app2.localhost:8080"]
    wild = echo_json(port, "x.apps.localhost", "/echo")
    assert header_values(wild, "host") == ["x.apps.localhost"]


def test_unknown_host_gets_421_html_and_json(two_apps):
    port, _, _ = two_apps
    status, headers, body = request(port, "nope.localhost", "/")
    assert status == 421
    assert headers["Content-Type"].startswith("text/html")
    assert b"no site by that name" in body
    status, headers, body = request(
        port, "nope.localhost", "/", headers={"Accept": "application/json"}
    )
    assert status == 421
    assert json.loads(body)["error"] == "unknown_host"


def test_forwarding_headers_are_set_and_spoofs_overwritten(two_apps):
    port, _, _ = two_apps
    echo = echo_json(
        port,
        "app1.localhost",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Request-Id": "trace-123",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
        },
    )
    assert header_values(echo, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(echo, "x-forwarded-proto") == ["http"]
    assert header_values(echo, "x-forwarded-host") == ["app1.localhost"]
    assert header_values(echo, "x-forwarded-port") == [str(port)]
    assert header_values(echo, "x-request-id") == ["trace-123"]
    assert header_values(echo, "x-drop-me") == []
    minted = echo_json(port, "app1.localhost")
    assert len(header_values(minted, "x-request-id")[0]) == 32


def test_response_headers_repeated_in_order_and_hop_by_hop_dropped(two_apps):
    port, _, _ = two_apps
    status, headers, _ = request(port, "app1.localhost", "/set-cookies")
    assert status == 200
    assert headers.get_all("Set-Cookie") == ["a=1", "b=2", "c=3"]
    assert headers.get_all("X-Multi") == ["one", "two"]
    status, headers, _ = request(port, "app1.localhost", "/hop")
    assert status == 200
    assert headers.get("X-Secret-Hop") is None
    assert headers.get("Keep-Alive") is None
    assert headers.get("Proxy-Authenticate") is None


def test_keep_alive_client_connection_serves_many_requests(two_apps):
    port, _, _ = two_apps
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for i in range(20):
        conn.request(
            "GET", f"/echo?i={i}", headers={"Host": "app1.localhost", "Accept": "application/json"}
        )
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["query"] == f"i={i}"
    conn.close()


def test_post_body_is_forwarded(two_apps):
    port, _, _ = two_apps
    status, _, body = request(port, "app1.localhost", "/upload", method="POST", body=b"x" * 300_000)
    assert status == 200
    assert json.loads(body)["length"] == 300_000


def test_chunked_request_body_is_forwarded(two_apps):
    port, _, _ = two_apps
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: app1.localhost\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        data = _read_all(sock)
    assert data.startswith(b"HTTP/1.1 200")
    assert b'"length": 11' in data or b'"length":11' in data


def test_conflicting_length_headers_are_rejected(two_apps):
    port, _, _ = two_apps
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: app1.localhost\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        data = _read_all(sock)
    assert data.startswith(b"HTTP/1.1 400")


def test_http11_without_host_is_400(two_apps):
    port, _, _ = two_apps
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert _read_all(sock).startswith(b"HTTP/1.1 400")


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


LIMITS_ROUTE = """
  - name: limited
    hosts: [limited.localhost]
    upstream: http://127.0.0.1:{backend}
    max_body_size: 1KB
    max_header_size: 2KB
    response_timeout: 1s
  - name: dead
    hosts: [dead.localhost]
    upstream: http://127.0.0.1:{dead}
"""


@pytest.fixture
def limits(start_gateway, backend, backend_b):
    port = free_port()
    extra = LIMITS_ROUTE.format(backend=backend.port, dead=free_port())
    gateway = start_gateway(two_app_config(port, backend.port, backend_b.port, extra), [port])
    return port, gateway, backend


def test_body_over_limit_is_413_by_length_and_by_chunks(limits):
    port, _, _ = limits
    status, _, _ = request(port, "limited.localhost", "/upload", method="POST", body=b"x" * 2000)
    assert status == 413
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: limited.localhost\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(4):
            sock.sendall(b"400\r\n" + b"y" * 1024 + b"\r\n")
        data = _read_all(sock)
    assert data.startswith(b"HTTP/1.1 413")
    status, _, _ = request(port, "limited.localhost", "/upload", method="POST", body=b"x" * 500)
    assert status == 200


def test_headers_over_route_limit_are_431(limits):
    port, _, _ = limits
    status, _, _ = request(port, "limited.localhost", "/", headers={"X-Big": "b" * 3000})
    assert status == 431


def test_refused_upstream_is_502_and_slow_upstream_is_504(limits):
    port, _, _ = limits
    status, headers, body = request(port, "dead.localhost", "/")
    assert status == 502
    assert b"not reachable" in body
    status, _, body = request(port, "dead.localhost", "/", headers={"Accept": "application/json"})
    assert status == 502 and json.loads(body)["error"] == "upstream_connect"
    started = time.monotonic()
    status, _, _ = request(port, "limited.localhost", "/slow-headers?delay=5")
    assert status == 504
    assert time.monotonic() - started < 4


def test_upstream_dying_mid_response_aborts_the_client(limits):
    port, _, _ = limits
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/die-midway?size=200000", headers={"Host": "app1.localhost"})
    response = conn.getresponse()
    assert response.status == 200
    # An abort (RST) or a short read: never a body that looks complete.
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        response.read()


def _established_to(port: int) -> int:
    """ESTABLISHED TCP connections whose remote end is 127.0.0.1:port."""
    count = 0
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


def test_client_disconnect_cancels_the_upstream_request(limits):
    port, _, backend = limits
    before = _established_to(backend.port)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /slow-headers?delay=30 HTTP/1.1\r\nHost: app1.localhost\r\n\r\n")
    deadline = time.monotonic() + 5
    while _established_to(backend.port) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _established_to(backend.port) == before + 1
    sock.close()
    deadline = time.monotonic() + 5
    while _established_to(backend.port) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _established_to(backend.port) == before


def test_websocket_is_proxied_both_ways(start_gateway, backend):
    from websockets.sync.client import connect

    port = free_port()
    gateway = start_gateway(
        f"""
listeners:
  - address: 127.0.0.1:{port}
routes:
  - name: fallback
    default: true
    upstream: http://127.0.0.1:{backend.port}
""",
        [port],
    )
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        ws.send("hello through the gateway")
        assert ws.recv(timeout=10) == "hello through the gateway"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=10) == b"\x00\x01binary"
        big = "z" * 500_000
        ws.send(big)
        assert ws.recv(timeout=10) == big
        # The upgrade has its access line while the tunnel is open.
        deadline = time.monotonic() + 5
        while " GET /ws 101 " not in gateway.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [line for line in gateway.log().splitlines() if "[idgateway.access#info]" in line]
        assert [line for line in lines if " GET /ws 101 0B route=fallback " in line], lines


def test_unix_socket_upstream(start_gateway, tmp_path):
    from tests.backends import BackendProcess

    sock_path = tmp_path / "backend.sock"
    with BackendProcess(listen=[f"unix:{sock_path}"], name="unix-backend"):
        port = free_port()
        start_gateway(
            f"""
listeners:
  - address: 127.0.0.1:{port}
routes:
  - name: unixy
    hosts: [unix.localhost]
    upstream: unix:{sock_path}
""",
            [port],
        )
        echo = echo_json(port, "unix.localhost", "/echo")
        assert header_values(echo, "x-forwarded-host") == ["unix.localhost"]


def test_sighup_reload_swaps_routes_and_refuses_bad_config(
    start_gateway, backend, backend_b, tmp_path
):
    port = free_port()
    gateway = start_gateway(two_app_config(port, backend.port, backend_b.port), [port])
    assert header_values(echo_json(port, "app1.localhost"), "host") == [f"127.0.0.1:{backend.port}"]
    gateway.config_path.write_text(two_app_config(port, backend_b.port, backend.port))
    gateway.signal(signal.SIGHUP)
    _wait_for(lambda: "configuration reloaded" in gateway.log())
    assert header_values(echo_json(port, "app1.localhost"), "host") == [
        f"127.0.0.1:{backend_b.port}"
    ]
    gateway.config_path.write_text("listeners: [\n")
    gateway.signal(signal.SIGHUP)
    _wait_for(lambda: "reload refused" in gateway.log())
    assert header_values(echo_json(port, "app1.localhost"), "host") == [
        f"127.0.0.1:{backend_b.port}"
    ]
    assert gateway.process.poll() is None


def _wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_bad_config_does_not_start(tmp_path):
    import subprocess
    import sys

    from tests.processes import REPO, TWISTD

    port = free_port()
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"listeners:\n  - address: 127.0.0.1:{port}\nroutes:\n  - name: a\n"
        "    hosts: [a.localhost]\n    upstrem: http://x\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "idgateway", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "upstrem" in result.stderr and "upstream" in result.stderr
    assert f"{config}:6" in result.stderr
    with pytest.raises(OSError):
        wait_for_port(port, timeout=0.5)
