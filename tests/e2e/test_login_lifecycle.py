"""Token refresh (rotating refresh tokens, one refresh for concurrent requests) and
a provider that is down while other routes keep working."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.http_helpers import header_values
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


@pytest.fixture(scope="module")
def short_tokens(tmp_path_factory):
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp("refresh")
    port = free_port()
    config = app1_provider_config(port, "s3cret", access_ttl=ACCESS_TTL)
    with ProviderProcess(tmp / "op", config) as op, BackendProcess(name="echo") as backend:
        gateway_config = tmp / "gateway.yaml"
        gateway_config.write_text(
            refreshing_app1_yaml(
                port,
                op,
                backend.port,
                "s3cret",
                providers=f"  down: {{issuer: https://127.0.0.1:{free_port()}/oauth2/token}}\n",
                routes=f"""\
  - name: broken
    hosts: [broken.localhost]
    upstream: http://127.0.0.1:{backend.port}
    oidc: {{provider: down, client_id: x, client_secret: y}}
    public_paths: [/healthz]
  - name: open
    hosts: [open.localhost]
    upstream: http://127.0.0.1:{backend.port}
""",
            )
        )
        gateway = GatewayProcess(gateway_config, tmp / "gateway.log").start([port])
        try:
            wait_until_login_offered(port, ("app1.localhost",), gateway.log)
            yield op, gateway, port
        finally:
            gateway.stop()


def test_access_token_is_refreshed_and_the_rotated_refresh_token_kept(short_tokens):
    op, gateway, port = short_tokens
    client = Client(port, "app1.localhost")
    status, _ = client.login(op, "/echo", "alice", "alice123")
    assert status == 200
    first = forwarded_access_token(client)
    time.sleep(ACCESS_TTL)
    second = forwarded_access_token(client)
    assert second != first, "the expired access token was not refreshed"
    # WSO2 rotates refresh tokens: a second refresh only works if the
    # gateway stored the new one from the first.
    time.sleep(ACCESS_TTL)
    third = forwarded_access_token(client)
    assert third not in (first, second)


def test_a_request_with_the_pre_refresh_cookie_is_not_logged_out(short_tokens):
    """A parallel page load still carrying the old cookie must not refresh again
    with the already-rotated refresh token (WSO2 would answer invalid_grant)."""
    op, gateway, port = short_tokens
    client = Client(port, "app1.localhost")
    client.login(op, "/echo", "alice", "alice123")
    old_cookies = dict(client.cookies)
    time.sleep(ACCESS_TTL)
    refreshed = forwarded_access_token(client)
    late = Client(port, "app1.localhost")
    late.cookies = old_cookies
    assert forwarded_access_token(late) == refreshed
    assert "invalid_grant" not in gateway.log()


def test_concurrent_requests_share_one_refresh(short_tokens):
    op, _, port = short_tokens
    client = Client(port, "app1.localhost")
    client.login(op, "/echo", "alice", "alice123")
    time.sleep(ACCESS_TTL)
    results: list[tuple[int, str]] = []
    cookies = dict(client.cookies)

    def fetch() -> None:
        worker = Client(port, "app1.localhost")
        worker.cookies = dict(cookies)
        status, _, body = worker.get("/echo", {"Accept": "application/json"})
        token = (
            header_values(json.loads(body), "x-forwarded-access-token")[0] if status == 200 else ""
        )
        results.append((status, token))

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [status for status, _ in results] == [200] * 6, results
    assert len({token for _, token in results}) == 1, "concurrent requests refreshed separately"


def test_provider_down_gives_503_and_other_routes_work(short_tokens):
    _, gateway, port = short_tokens
    status, headers, body = Client(port, "broken.localhost").get("/")
    assert status == 503
    assert b"identity provider cannot be reached" in body
    assert headers["Retry-After"] == "30"
    status, _, body = Client(port, "broken.localhost").get("/x", {"Accept": "application/json"})
    assert status in (401, 503)
    assert Client(port, "broken.localhost").get("/healthz")[0] == 200
    assert Client(port, "open.localhost").get("/echo")[0] == 200
    assert gateway.process.poll() is None


def test_open_route_never_sees_gateway_cookies_or_identity_headers(short_tokens):
    op, _, port = short_tokens
    app1 = Client(port, "app1.localhost")
    app1.login(op, "/echo", "alice", "alice123")
    open_route = Client(port, "open.localhost")
    open_route.cookies = {**app1.cookies, "theirs": "kept"}
    status, _, body = open_route.get(
        "/echo",
        {"Accept": "application/json", "X-Forwarded-User": "mallory", "OIDC_CLAIM_sub": "root"},
    )
    assert status == 200
    echo = json.loads(body)
    assert echo["cookies"] == {"theirs": "kept"}
    assert header_values(echo, "x-forwarded-user") == []
    assert header_values(echo, "oidc_claim_sub") == []
