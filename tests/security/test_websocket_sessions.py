"""Issue 18: WebSocket tunnels end with their session. A sign-out, a
back-channel logout or the session's end closes the user's open tunnels with
close code 1008 within about a second, on cookie and Redis sessions alike."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import BackendProcess
from tests.e2e.test_login import Client
from tests.login_env import registered_client
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary
from tests.redis_process import RedisProcess

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

ROUTES = ("cookie", "redis")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = Path(tmp_path_factory.mktemp("wss"))
    port = free_port()
    clients = [
        registered_client(f"{n}-client", f"{n}-secret", f"{n}.localhost", port,
                          "client_secret_basic")
        for n in ROUTES
    ]
    config = {"tenants": {"carbon.super": {"clients": clients}}}
    key = base64.b64encode(os.urandom(32)).decode()
    with (
        ProviderProcess(tmp / "op", config) as op,
        BackendProcess(name="ws") as backend,
        RedisProcess(tmp / "redis") as redis,
    ):
        routes = ""
        for name in ROUTES:
            store = f", store: redis, url: '{redis.url}'" if name == "redis" else ""
            routes += f"""
  - name: {name}
    hosts: [{name}.localhost]
    upstream: http://127.0.0.1:{backend.port}
    oidc:
      provider: wso2
      client_id: {name}-client
      client_secret: {name}-secret
      scopes: [openid, profile]
      user_claim: username
    session: {{keys: [{key}], max_duration: 1h{store}}}
"""
        (tmp / "gateway.yaml").write_text(
            f"""
listeners: [{{address: 127.0.0.1:{port}}}]
providers:
  wso2: {{discovery_url: "{op.discovery_url()}", ca_file: "{op.ca_file}"}}
routes:{routes}"""
        )
        gateway = GatewayProcess(tmp / "gateway.yaml", tmp / "gateway.log").start([port])
        try:
            deadline = time.monotonic() + 20
            while Client(port, "cookie.localhost").get("/")[0] != 302:
                assert time.monotonic() < deadline, "the provider was not discovered in time"
                time.sleep(0.2)
            yield {"port": port, "op": op, "log": tmp / "gateway.log"}
        finally:
            gateway.stop()


def _signed_in(env: dict[str, Any], route: str, user: str = "alice") -> Client:
    client = Client(env["port"], f"{route}.localhost")
    status, _ = client.login(env["op"], "/", user, f"{user}123")
    assert status == 200
    return client


def _tunnel(env: dict[str, Any], client: Client) -> Any:
    import socket

    from websockets.sync.client import connect

    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    sock = socket.create_connection(("127.0.0.1", env["port"]), timeout=10)
    ws = connect(
        f"ws://{client.host}/ws",  # the Host header; the socket goes to the gateway
        sock=sock,
        additional_headers={"Cookie": cookie},
        open_timeout=10,
        ping_interval=None,
    ).__enter__()
    ws.send("ping")
    assert ws.recv(timeout=10) == "ping"
    return ws


def _closed_with_1008(ws: Any, within: float = 4.0) -> float:
    from websockets.exceptions import ConnectionClosed

    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        while time.monotonic() - started < within:
            ws.send("still there?")
            ws.recv(timeout=within)
    assert closed.value.rcvd is not None, "closed without a close frame"
    assert closed.value.rcvd.code == 1008
    return time.monotonic() - started


@pytest.mark.parametrize("route", ROUTES)
def test_sign_out_closes_the_users_tunnels(env, route) -> None:
    client = _signed_in(env, route)
    ws, other = _tunnel(env, client), _tunnel(env, client)
    status, _, _ = client.get("/oauth2/sign_out")
    assert status == 302
    assert _closed_with_1008(ws) < 4
    assert _closed_with_1008(other) < 4


@pytest.mark.parametrize("route", ROUTES)
def test_back_channel_logout_closes_the_users_tunnels(env, route) -> None:
    client = _signed_in(env, route, "bob")
    ws = _tunnel(env, client)
    env["op"].admin_logout("carbon.super", "bob")
    assert _closed_with_1008(ws) < 4


def test_another_users_tunnel_stays_open(env) -> None:
    alice = _signed_in(env, "cookie", "alice")
    bob = _signed_in(env, "cookie", "bob")
    kept = _tunnel(env, alice)
    ended = _tunnel(env, bob)
    bob.get("/oauth2/sign_out")
    _closed_with_1008(ended)
    kept.send("still here")
    assert kept.recv(timeout=5) == "still here"
    kept.close()
