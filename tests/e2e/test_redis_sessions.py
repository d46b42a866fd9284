"""Redis sessions across gateway instances, back-channel logout, and Redis faults.

Two separate twistd processes on their own ports share one real redis-server:
log in through one, use the session through the other, log out at the provider
(which POSTs a logout token to one of them), and both refuse the cookie.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.http_helpers import header_values
from tests.login_env import Client, session_key, two_gateways_config
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary
from tests.redis_process import RedisProcess

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")


def gateway_yaml(
    port: int,
    op: ProviderProcess,
    backend_port: int,
    redis_url: str,
    key: str,
    extra: str = "",
    store: str = "redis",
) -> str:
    if store == "redis":
        session = f"""      store: redis
      url: {redis_url}
      command_timeout: 500ms"""
        top = ""
    else:
        # Cookie sessions; the shared Redis only coordinates refreshes and logouts.
        session = "      store: cookie"
        top = f"redis: {{url: '{redis_url}'}}\n"
    return f"""{top}
listeners:
  - address: 127.0.0.1:{port}
providers:
  wso2: {{discovery_url: {op.discovery_url()}, ca_file: {op.ca_file}}}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend_port}
    oidc: {{provider: wso2, client_id: app1-client, client_secret: s3cret, user_claim: username}}
    session:
{session}
      keys: [{key}]
      inactivity_timeout: 1h
      max_duration: 24h
      refresh_leeway: 1s
    public_paths: [/healthz]
{extra}"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from _cluster(tmp_path_factory, "redis-sessions", ttl=None)


@pytest.fixture(scope="module")
def short_token_cluster(tmp_path_factory):
    yield from _cluster(
        tmp_path_factory,
        "redis-refresh",
        ttl=4,
        extra="    headers: {preset: oauth2-proxy, pass_access_token: true}\n",
    )


@pytest.fixture(scope="module")
def short_token_cookie_cluster(tmp_path_factory):
    yield from _cluster(
        tmp_path_factory,
        "cookie-refresh",
        ttl=4,
        extra="    headers: {preset: oauth2-proxy, pass_access_token: true}\n",
        store="cookie",
    )


def _cluster(tmp_path_factory, name, ttl, extra="", store="redis"):
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp(name)
    port_a, port_b = free_port(), free_port()
    config = two_gateways_config(port_a, port_b, ttl)
    key = session_key()
    with (
        RedisProcess(tmp / "redis", password="s3cret") as redis,
        ProviderProcess(tmp / "op", config) as op,
        BackendProcess(name="echo") as backend,
    ):
        url = f"redis://:s3cret@127.0.0.1:{redis.port}/1"
        gateways = []
        for name, port in (("a", port_a), ("b", port_b)):
            path = tmp / f"gateway-{name}.yaml"
            path.write_text(gateway_yaml(port, op, backend.port, url, key, extra, store))
            gateways.append(GatewayProcess(path, tmp / f"gateway-{name}.log").start([port]))
        try:
            for port in (port_a, port_b):
                deadline = time.monotonic() + 20
                while Client(port, "app1.localhost").get("/")[0] != 302:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            yield op, redis, gateways, (port_a, port_b)
        finally:
            for gateway in gateways:
                gateway.stop()


def echo(client: Client) -> tuple[int, dict]:
    status, _, body = client.get("/echo", {"Accept": "application/json"})
    return status, (json.loads(body) if status == 200 else {})


def test_session_made_on_one_instance_works_on_the_other(cluster):
    op, redis, _, (port_a, port_b) = cluster
    a = Client(port_a, "app1.localhost")
    status, _ = a.login(op, "/echo", "alice", "alice123")
    assert status == 200
    b = Client(port_b, "app1.localhost")
    b.cookies = dict(a.cookies)
    status, body = echo(b)
    assert status == 200
    assert header_values(body, "x-forwarded-user") == ["alice"]
    # The cookie is an opaque id; Redis holds only hashes and ciphertext.
    cookie_value = next(v for n, v in a.cookies.items() if "_idgw_app1" in n)
    dump = repr(redis.all_data(db=1))
    assert cookie_value not in dump
    assert "alice" not in dump


def test_backchannel_logout_through_either_instance_ends_it_on_both(cluster):
    op, _, gateways, (port_a, port_b) = cluster
    a = Client(port_a, "app1.localhost")
    a.login(op, "/echo", "alice", "alice123")
    b = Client(port_b, "app1.localhost")
    b.cookies = dict(a.cookies)
    assert echo(a)[0] == 200 and echo(b)[0] == 200
    # The provider ends alice's session and POSTs a logout token to instance B.
    op.admin_logout("carbon.super", "alice")
    deadline = time.monotonic() + 5
    while echo(a)[0] == 200:
        assert time.monotonic() < deadline, gateways[1].log()[-3000:]
        time.sleep(0.1)
    assert echo(a)[0] == 401
    assert echo(b)[0] == 401
    assert "back-channel logout" in gateways[1].log()


def test_forged_and_replayed_logout_tokens_are_refused(cluster):
    import http.client

    _, _, _, (port_a, _) = cluster
    for body in (b"logout_token=not.a.jwt", b"", b"other=1"):
        conn = http.client.HTTPConnection("127.0.0.1", port_a, timeout=10)
        conn.request(
            "POST",
            "/oauth2/backchannel_logout",
            body=body,
            headers={
                "Host": f"app1.localhost:{port_a}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        response = conn.getresponse()
        payload = json.loads(response.read())
        assert response.status == 400
        assert payload["error"] == "invalid_request"


def test_garbage_session_ids_are_no_session(cluster):
    _, _, _, (port_a, _) = cluster
    for value in ("garbage", "A" * 43, ""):
        client = Client(port_a, "app1.localhost")
        client.cookies = {"_idgw_app1": value}
        assert echo(client)[0] == 401


def test_redis_down_gives_503_then_recovers(cluster):
    op, redis, gateways, (port_a, _) = cluster
    a = Client(port_a, "app1.localhost")
    a.login(op, "/echo", "alice", "alice123")
    assert echo(a)[0] == 200
    redis.pause()  # hung, not refused: the command timeout must answer
    try:
        time.sleep(1.1)  # past the one second a process reuses a loaded session
        started = time.monotonic()
        status, headers, body = a.get("/echo", {"Accept": "application/json"})
        assert status == 503
        assert json.loads(body)["error"] == "session_store_unavailable"
        assert time.monotonic() - started < 3
        status, _, _ = a.get("/echo")
        assert status == 503, "a browser gets a 503 page, never a login redirect loop"
        assert a.get("/healthz")[0] == 200, "public paths keep working"
    finally:
        redis.resume()
    deadline = time.monotonic() + 10
    while echo(a)[0] != 200:
        assert time.monotonic() < deadline, "no recovery after Redis came back"
        time.sleep(0.2)
    assert gateways[0].process.poll() is None


def test_redis_restarted_empty_means_logging_in_again(cluster):
    op, redis, _, (port_a, _) = cluster
    a = Client(port_a, "app1.localhost")
    a.login(op, "/echo", "alice", "alice123")
    redis.restart()
    deadline = time.monotonic() + 10
    while True:
        status, _ = echo(a)
        if status == 401:
            break
        assert status in (200, 503) and time.monotonic() < deadline, status
        time.sleep(0.2)
    status, _ = a.login(op, "/echo", "alice", "alice123")
    assert status == 200


@pytest.mark.parametrize("store", ["redis", "cookie"])
def test_two_processes_refreshing_one_session_at_once_lose_nothing(store, request):
    """WSO2 rotates refresh tokens: if both instances refreshed with the same
    token, one would get invalid_grant and log the user out. With Redis sessions
    a lock in Redis serialises them; with cookie sessions the shared Redis does."""
    import threading

    fixture = "short_token_cluster" if store == "redis" else "short_token_cookie_cluster"
    op, _, gateways, (port_a, port_b) = request.getfixturevalue(fixture)
    a = Client(port_a, "app1.localhost")
    a.login(op, "/echo", "alice", "alice123")
    cookies = dict(a.cookies)
    for round_ in range(2):
        time.sleep(4)
        results: list[tuple[int, str]] = []

        def fetch(port: int, results: list[tuple[int, str]] = results) -> None:
            client = Client(port, "app1.localhost")
            client.cookies = dict(cookies)
            status, body = echo(client)
            token = header_values(body, "x-forwarded-access-token")[0] if status == 200 else ""
            results.append((status, token))

        threads = [threading.Thread(target=fetch, args=(p,)) for p in (port_a, port_b) * 3]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [s for s, _ in results] == [200] * 6, (round_, results)
        assert len({t for _, t in results}) == 1, results
    for gateway in gateways:
        assert "invalid_grant" not in gateway.log()
