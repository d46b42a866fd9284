"""Sessions bound to what made them, bounded cookie clearing, linear-time config
regexes: against the real gateway, the WSO2-shaped provider, redis-server and
the echo back end.

- A reload that moves a route to another client id or provider ends its old
  sessions (cookie and Redis): the old cookie gets the login, not the app; a
  reload that changes nothing of the sort keeps them.
- 780 forged flow cookies (or session chunks) draw a bounded number of
  clearing Set-Cookie headers, not 781.
- A catastrophic ``~`` public path answers in linear time; what RE2 cannot run
  is refused by ``idgateway check``.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from idgateway.sessions.flows import MAX_CLEARED_FLOWS
from tests.backends import BackendProcess
from tests.login_env import (
    APP1_SECRET,
    APP2_SECRET,
    Client,
    two_tenant_config,
    two_tenant_gateway_yaml,
    wait_until_login_offered,
)
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary
from tests.redis_process import REDIS_SERVER, RedisProcess

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

SESSION_KEY = base64.b64encode(os.urandom(32)).decode()
# The session codec's max_chunks (CookieSettings' default, not configurable).
MAX_CHUNKS = 8
EVIL_PATTERN = r"^/pub/(a+)+$"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sessions")
    port = free_port()
    with (
        ProviderProcess(tmp / "op", two_tenant_config(port)) as op,
        BackendProcess(name="echo") as backend,
    ):
        (tmp / "app2-secret").write_text(APP2_SECRET + "\n")
        yield {"op": op, "backend": backend, "port": port, "tmp": tmp}


def gateway_yaml(
    world: dict[str, Any],
    *,
    provider: str = "wso2",
    client_id: str = "app1-client",
    session: str = "{keys: [${APP1_SESSION_KEY}]}",
    public_paths: str = "[/healthz]",
) -> str:
    return two_tenant_gateway_yaml(
        world["port"],
        world["op"],
        world["backend"].port,
        world["tmp"] / "app2-secret",
        SESSION_KEY,
        app1_provider=provider,
        app1_client_id=client_id,
        app1_session=session,
        app1_more=f"    public_paths: {public_paths}\n",
        # The moves below name a client the provider does not know: a pushed
        # request (oidc.par) would be refused before any redirect, and this is
        # about the redirect the gateway itself sends.
        app1_oidc_more='      par: "off"\n',
    )


@pytest.fixture
def start(world: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def start_gateway(text: str) -> GatewayProcess:
        path = tmp_path / "gateway.yaml"
        path.write_text(text)
        env = {"APP1_CLIENT_SECRET": APP1_SECRET, "APP1_SESSION_KEY": SESSION_KEY}
        gateway = GatewayProcess(path, tmp_path / "gateway.log", env=env)
        started.append(gateway)
        gateway.start([world["port"]])
        wait_until_login_offered(world["port"])
        return gateway

    yield start_gateway
    for gateway in started:
        gateway.stop()


def reload(gateway: GatewayProcess, text: str) -> None:
    reloads = gateway.log().count("configuration reloaded")
    tmp = gateway.config_path.with_suffix(".new")
    tmp.write_text(text)
    tmp.replace(gateway.config_path)
    gateway.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gateway.log().count("configuration reloaded") == reloads:
        assert "reload refused" not in gateway.log(), gateway.log()[-2000:]
        assert time.monotonic() < deadline, "the gateway did not reload"
        time.sleep(0.05)


STORES = {
    "cookie": lambda world: "{keys: [${APP1_SESSION_KEY}]}",
    "redis": lambda world: (
        f"{{store: redis, url: '{world['redis'].url}', keys: [${{APP1_SESSION_KEY}}]}}"
    ),
}
# Reloads that move the route to what did not make its sessions.
MOVES = {
    "client id": {"client_id": "app1-client-v2"},
    "provider": {"provider": "acme"},
}


@pytest.fixture(params=STORES.keys())
def store(request: pytest.FixtureRequest, world: dict[str, Any]) -> Iterator[str]:
    if request.param == "redis":
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed")
        with RedisProcess(world["tmp"] / f"redis-{free_port()}") as redis:
            world["redis"] = redis
            yield STORES["redis"](world)
        return
    yield STORES["cookie"](world)


@pytest.mark.parametrize("move", MOVES.values(), ids=MOVES.keys())
def test_reload_moving_the_route_ends_its_sessions(
    world: dict[str, Any], start: Any, store: str, move: dict[str, str]
) -> None:
    port, op = world["port"], world["op"]
    gateway = start(gateway_yaml(world, session=store))
    client = Client(port, "app1.localhost")
    status, _ = client.login(op, "/echo", "alice", "alice123")
    assert status == 200
    old_cookies = dict(client.cookies)

    # A reload that leaves provider and client alone keeps the session.
    reload(gateway, gateway_yaml(world, session=store, public_paths="[/healthz, /status]"))
    assert client.get("/echo", {"Accept": "application/json"})[0] == 200

    reload(gateway, gateway_yaml(world, session=store, **move))
    replay = Client(port, "app1.localhost")
    replay.cookies = dict(old_cookies)
    status, headers, _ = replay.get("/echo")
    assert status == 302, status
    authorize = urlsplit(headers["Location"])
    expected = "acme.com" if move.get("provider") == "acme" else "/oauth2/authorize"
    assert expected in headers["Location"]
    assert parse_qs(authorize.query)["client_id"] == [move.get("client_id", "app1-client")]
    replay.cookies = dict(old_cookies)
    status, _, _ = replay.get("/echo", {"Accept": "application/json"})
    assert status == 401


def set_cookie_count(port: int, host: str, cookie: str) -> tuple[int, int, int]:
    """(status, Set-Cookie headers, their bytes) for GET / with ``cookie``."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", "/", headers={"Host": f"{host}:{port}", "Cookie": cookie})
        response = conn.getresponse()
        response.read()
        values = response.headers.get_all("Set-Cookie") or []
        return response.status, len(values), sum(len(v) for v in values)
    finally:
        conn.close()


FORGED = {
    # 780 cookies in about 15 KB: inside the default max_header_size.
    "flow cookies": (780, lambda i: f"_idgw_flow_{i}=x", 1 + MAX_CLEARED_FLOWS),
    "session chunks": (780, lambda i: f"_idgw_app1_{i}=x", 1 + MAX_CHUNKS),
    "both": (
        780,
        lambda i: f"_idgw_flow_{i}=x" if i % 2 else f"_idgw_app1_{i}=x",
        1 + MAX_CLEARED_FLOWS + MAX_CHUNKS,
    ),
    # Values that pass the cheap checks and need AES-GCM to be refused.
    "sealed-looking flow values": (
        250,
        lambda i: f"_idgw_flow_{i}=AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        1 + MAX_CLEARED_FLOWS,
    ),
}


@pytest.mark.parametrize("count, cookie, most", FORGED.values(), ids=FORGED.keys())
def test_forged_cookies_draw_a_bounded_number_of_clearing_headers(
    world: dict[str, Any], start: Any, count: int, cookie: Any, most: int
) -> None:
    start(gateway_yaml(world))
    header = "; ".join(cookie(i) for i in range(1, count + 1))
    assert 10_000 < len(header) < 16_000
    status, headers, size = set_cookie_count(world["port"], "app1.localhost", header)
    assert status == 302
    assert headers <= most, headers
    assert size < 2000 * most, size


def test_catastrophic_public_path_answers_in_linear_time(world: dict[str, Any], start: Any) -> None:
    port = world["port"]
    start(gateway_yaml(world, public_paths=f"['~ {EVIL_PATTERN}']"))
    client = Client(port, "app1.localhost")
    assert client.get("/pub/aaaa")[0] == 200  # public: the pattern still works
    started = time.monotonic()
    status, _, _ = client.get("/pub/" + "a" * 30 + "!")
    assert time.monotonic() - started < 0.5
    assert status == 302  # not public: the login
    # Several at once, and the other route answers meanwhile.
    started = time.monotonic()
    for _ in range(5):
        client.get("/pub/" + "a" * 40 + "!")
    assert Client(port, "app2.localhost").get("/")[0] == 302
    assert time.monotonic() - started < 1.0


REFUSED = {
    "backreference": r"^/(a)\1$",
    "lookahead": r"^/(?!admin)",
    "lookbehind": r"(?<=/pub)/x",
    "python end of text": r"^/pub\Z",
}


@pytest.mark.parametrize("pattern", REFUSED.values(), ids=REFUSED.keys())
def test_check_refuses_what_re2_cannot_run(
    world: dict[str, Any], tmp_path: Path, pattern: str
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_yaml(world, public_paths=f"['~ {pattern}']"))
    env = {**os.environ, "APP1_CLIENT_SECRET": APP1_SECRET, "APP1_SESSION_KEY": SESSION_KEY}
    result = subprocess.run(
        [sys.executable, "-m", "idgateway.cli", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"{path}:" in result.stderr and "routes[0].public_paths[0]" in result.stderr
    assert "bad regular expression" in result.stderr and "RE2" in result.stderr
    assert "re2.cc" not in result.stderr
