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
from tests.login_env import Client, registered_client
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
        registered_client(
            f"{n}-client", f"{n}-secret", f"{n}.localhost", port, "client_secret_basic"
        )
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


def _gateway_yaml(port: int, op: Any, backend: int, key: str, client_id: str) -> str:
    return f"""
listeners: [{{address: 127.0.0.1:{port}}}]
providers:
  wso2: {{discovery_url: "{op.discovery_url()}", ca_file: "{op.ca_file}"}}
routes:
  - name: cookie
    hosts: [cookie.localhost]
    upstream: http://127.0.0.1:{backend}
    oidc:
      provider: wso2
      client_id: {client_id}
      client_secret: cookie-secret
      scopes: [openid, profile]
      user_claim: username
    session: {{keys: [{key}]}}
"""


@pytest.mark.parametrize("change", ["keys", "client", "nothing"])
def test_a_reload_that_ends_the_routes_sessions_ends_their_tunnels(
    tmp_path: Path, change: str
) -> None:
    """New session keys, or another client: old cookies get the login, and the
    tunnels they opened close too; a reload that changes neither keeps them."""
    import signal

    port = free_port()
    clients = [
        registered_client(name, "cookie-secret", "cookie.localhost", port, "client_secret_basic")
        for name in ("cookie-client", "other-client")
    ]
    key = base64.b64encode(os.urandom(32)).decode()
    with (
        ProviderProcess(tmp_path / "op", {"tenants": {"carbon.super": {"clients": clients}}}) as op,
        BackendProcess(name="ws") as backend,
    ):
        path = tmp_path / "gateway.yaml"
        path.write_text(_gateway_yaml(port, op, backend.port, key, "cookie-client"))
        gateway = GatewayProcess(path, tmp_path / "gateway.log").start([port])
        try:
            deadline = time.monotonic() + 20
            while Client(port, "cookie.localhost").get("/")[0] != 302:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            env = {"port": port, "op": op}
            client = _signed_in(env, "cookie")
            ws = _tunnel(env, client)
            new_key = base64.b64encode(os.urandom(32)).decode() if change == "keys" else key
            client_id = "other-client" if change == "client" else "cookie-client"
            path.write_text(_gateway_yaml(port, op, backend.port, new_key, client_id))
            before = gateway.log().count("configuration reloaded")
            gateway.signal(signal.SIGHUP)
            while gateway.log().count("configuration reloaded") <= before:
                assert time.monotonic() < deadline + 20, gateway.log()[-2000:]
                time.sleep(0.1)
            if change == "nothing":
                time.sleep(2.5)  # two sweeps
                ws.send("kept")
                assert ws.recv(timeout=5) == "kept"
                ws.close()
            else:
                assert client.get("/", {"Accept": "application/json"})[0] == 401
                assert _closed_with_1008(ws) < 4
        finally:
            gateway.stop()
