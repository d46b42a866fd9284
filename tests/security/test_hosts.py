"""Issue 11, section 2 against the real gateway process: the Host header never
steers where authorization codes, users or X-Forwarded-Host go."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.backends import BackendProcess
from tests.http_helpers import send_raw
from tests.processes import GatewayProcess, free_port

ATTACKS = [
    b"app1.localhost:PORT@evil.example",
    b"app1.localhost@evil.example",
    b"evil.example#@app1.localhost",
    b"app1.localhost:PORT/evil",
    b"app1.localhost\\evil.example",
    b"app1.localhost:PORT?x=1",
    b"app1.localhost:PORTevil",
    b"app1.localhost:99999",
    b"app1.localhost:-1",
    b"app1..localhost",
    b"app1.localhost%2eevil.example",
    b"app1.localhost, evil.example",
    b"[::1",
    b"user:pass@app1.localhost",
]


def raw(port: int, head: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    data = send_raw(port, head)
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(b" ")[1]), headers, body


def get(port: int, host: bytes, target: bytes = b"/", extra: bytes = b"") -> tuple:
    return raw(
        port,
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: "
        + host
        + b"\r\n"
        + extra
        + b"Connection: close\r\n\r\n",
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = Path(tmp_path_factory.mktemp("hosts"))
    port = free_port()
    with BackendProcess(name="echo") as echo:
        (tmp / "gateway.yaml").write_text(
            f"""
listeners: [{{address: 127.0.0.1:{port}}}]
routes:
  - name: app1
    hosts: [app1.localhost, "*.wild.localhost"]
    upstream: http://127.0.0.1:{echo.port}
  - name: secure
    hosts: [secure.localhost]
    upstream: http://127.0.0.1:{echo.port}
    https_redirect: true
  - name: fallback
    default: true
    upstream: http://127.0.0.1:{echo.port}
    https_redirect: true
"""
        )
        gateway = GatewayProcess(tmp / "gateway.yaml", tmp / "gateway.log").start([port])
        try:
            yield {"port": port}
        finally:
            gateway.stop()


@pytest.mark.parametrize("host", ATTACKS, ids=lambda h: h.decode("latin-1"))
def test_a_host_header_that_is_not_host_port_gets_400(env, host) -> None:
    port = env["port"]
    status, headers, body = get(port, host.replace(b"PORT", b"%d" % port))
    assert status == 400, body
    assert b"location" not in headers


def test_a_space_inside_the_host_header_gets_400(env) -> None:
    status, _, _ = get(env["port"], b"app1.localhost evil.example")
    assert status == 400


def test_two_host_headers_get_400(env) -> None:
    status, _, _ = get(env["port"], b"app1.localhost", extra=b"Host: evil.example\r\n")
    assert status == 400


def test_x_forwarded_host_is_the_normalised_host(env) -> None:
    port = env["port"]
    status, _, body = get(port, b"App1.LocalHost.:%d" % port, b"/echo", b"Accept: */*\r\n")
    assert status == 200
    headers = {name: value for name, value in json.loads(body)["headers"]}
    assert headers["x-forwarded-host"] == f"app1.localhost:{port}"


def test_https_redirect_runs_after_the_host_and_target_checks(env) -> None:
    port = env["port"]
    status, headers, _ = get(port, b"secure.localhost", b"@evil.com/")
    assert status == 400 and b"location" not in headers
    status, headers, _ = get(port, b"secure.localhost:%d@evil.com" % port, b"/x")
    assert status == 400 and b"location" not in headers
    status, headers, _ = get(port, b"Secure.Localhost.:%d" % port, b"/a/../x?q=1")
    assert status == 308
    assert headers[b"location"] == b"https://secure.localhost/x?q=1"


def test_unknown_hosts_go_to_the_default_route(env) -> None:
    status, headers, _ = get(env["port"], b"evil.example", b"/x")
    assert status == 308 and headers[b"location"] == b"https://evil.example/x"


def test_an_empty_host_never_builds_a_url(env) -> None:
    # HTTP/1.1 with an empty Host, and HTTP/1.0 without one, on a route that
    # would build a URL (https_redirect): never "Location: https:////evil/x".
    status, headers, _ = get(env["port"], b"", b"//evil.example/x")
    assert status == 400 and b"location" not in headers
    status, headers, _ = raw(env["port"], b"GET //evil.example/x HTTP/1.0\r\n\r\n")
    assert status == 400 and b"location" not in headers


def test_login_redirect_uses_the_normalised_host(tmp_path: Path) -> None:
    """The redirect_uri sent to the provider is built from the normalised host."""
    from tests.login_env import Client, registered_client
    from tests.provider_process import ProviderProcess, node_binary

    if node_binary() is None:
        pytest.skip("node is not installed")
    port = free_port()
    config = {
        "tenants": {
            "carbon.super": {
                "clients": [
                    registered_client(
                        "app1-client", "s", "app1.localhost", port, "client_secret_basic"
                    )
                ]
            }
        }
    }
    with ProviderProcess(tmp_path / "op", config) as op, BackendProcess(name="e") as echo:
        (tmp_path / "gw.yaml").write_text(
            f"""
listeners: [{{address: 127.0.0.1:{port}}}]
providers:
  wso2: {{discovery_url: "{op.discovery_url()}", ca_file: "{op.ca_file}"}}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{echo.port}
    oidc: {{provider: wso2, client_id: app1-client, client_secret: s, par: "off"}}
"""
        )
        gateway = GatewayProcess(tmp_path / "gw.yaml", tmp_path / "gw.log").start([port])
        try:
            client = Client(port, "app1.localhost")
            deadline = time.monotonic() + 20
            while client.get("/")[0] != 302:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            status, headers, _ = get(port, b"APP1.localhost.:%d" % port, b"/x")
            assert status == 302
            query = parse_qs(urlsplit(headers[b"location"].decode()).query)
            assert query["redirect_uri"] == [f"http://app1.localhost:{port}/oauth2/callback"]
            status, headers, _ = get(port, b"app1.localhost:%d@evil.example" % port, b"/x")
            assert status == 400 and b"location" not in headers
        finally:
            gateway.stop()


@pytest.mark.parametrize(
    "target, host",
    [
        (b"/a/%2e%2e/b", b"app1.localhost"),
        (b"/x", b"app1.localhost@evil"),
        (b"/x", b"nope.example"),
    ],
    ids=["ambiguous-path", "bad-host", "unknown-host"],
)
def test_no_100_continue_after_a_final_answer(env, target: bytes, host: bytes) -> None:
    """A request refused at once is not followed by a stray '100 Continue'."""
    status, _, body = raw(
        env["port"],
        b"POST " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\n",
    )
    assert status in (400, 308, 421)
    assert b"100 Continue" not in body


def test_100_continue_still_comes_for_a_request_that_reads_its_body(env) -> None:
    with socket.create_connection(("127.0.0.1", env["port"]), timeout=10) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: app1.localhost\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\n"
        )
        first = sock.recv(100)
        assert first.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert (first + rest).count(b"HTTP/1.1 200") == 1
