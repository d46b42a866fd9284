"""A session refreshed for a WebSocket upgrade: the 101 carries the new cookie.

What the soak (issue 16) found: a browser whose only traffic was WebSockets kept
the pre-refresh cookie (the 101 did not carry the re-issued one), the gateway
handed it the refresh's result for a minute, then spent the rotated refresh
token again; the provider answered invalid_grant and the upgrade got 302.
Real gateway, real WSO2-shaped provider with 4 s access tokens, the echo back
end's WebSocket; the client keeps one cookie jar, as a browser does.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from http.cookies import SimpleCookie

import pytest

from tests.login_env import (
    Client,
    app1_provider_config,
    forwarded_access_token,
    refreshing_app1_yaml,
    wait_until_login_offered,
)
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

ACCESS_TTL = 4
COOKIE = "_idgw_app1"
SECRET = "s3cret-s3cret-s3cret"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp("ws-refresh")
    port = free_port()
    config = app1_provider_config(port, SECRET, access_ttl=ACCESS_TTL)
    with ProviderProcess(tmp / "op", config) as op, BackendProcess(name="echo") as backend:
        gateway_config = tmp / "gateway.yaml"
        gateway_config.write_text(refreshing_app1_yaml(port, op, backend.port, SECRET))
        gateway = GatewayProcess(gateway_config, tmp / "gateway.log").start([port])
        try:
            wait_until_login_offered(port, ("app1.localhost",), gateway.log)
            yield op, gateway, port
        finally:
            gateway.stop()


def upgrade(client: Client, port: int) -> tuple[int, list[str]]:
    """A WebSocket handshake with the client's cookies; the status and its Set-Cookies,
    which the client's jar takes as a browser's does."""
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: app1.localhost:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"closed before the handshake's answer: {head!r}"
            head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    set_cookies = [
        line.split(":", 1)[1].strip()
        for line in lines[1:]
        if line.lower().startswith("set-cookie:")
    ]
    for value in set_cookies:
        jar: SimpleCookie = SimpleCookie()
        jar.load(value)
        for name, morsel in jar.items():
            if morsel["max-age"] == "0" or not morsel.value:
                client.cookies.pop(name, None)
            else:
                client.cookies[name] = morsel.value
    return int(lines[0].split(" ", 2)[1]), set_cookies


def test_a_refresh_for_an_upgrade_reissues_the_cookie_on_the_101(env):
    op, gateway, port = env
    client = Client(port, "app1.localhost")
    status, _ = client.login(op, "/echo", "alice", "alice123")
    assert status == 200
    first_token = forwarded_access_token(client)
    signed_in = client.cookies[COOKIE]
    time.sleep(ACCESS_TTL + 0.5)

    status, set_cookies = upgrade(client, port)
    assert status == 101
    assert [c for c in set_cookies if c.startswith(COOKIE + "=")], set_cookies
    assert client.cookies[COOKIE] != signed_in

    # Only WebSockets from here on: the next refresh needs the refresh token the
    # first one rotated, which only the 101's cookie carries.
    time.sleep(ACCESS_TTL + 0.5)
    status, set_cookies = upgrade(client, port)
    assert status == 101
    assert [c for c in set_cookies if c.startswith(COOKIE + "=")], set_cookies
    assert forwarded_access_token(client) != first_token
    assert "invalid_grant" not in gateway.log()


def test_an_upgrade_that_needs_no_refresh_sets_no_cookie(env):
    op, _, port = env
    client = Client(port, "app1.localhost")
    client.login(op, "/echo", "alice", "alice123")
    status, set_cookies = upgrade(client, port)
    assert status == 101
    assert set_cookies == []
