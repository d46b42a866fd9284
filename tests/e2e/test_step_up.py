"""Step-up per path (issue 15 §3) end to end: paths[].login {acr_values,
max_age} against the test provider, which answers acr "mfa" when asked and the
user can, else "pwd"."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest

from tests.http_helpers import header_values
from tests.login_env import Client, registered_client, session_key
from tests.processes import GatewayProcess, free_port
from tests.provider_process import Browser, ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

SECRET = "step-up-client-secret-0123456789"
MAX_AGE = 3


@attrs.frozen
class Env:
    op: ProviderProcess
    gateway: GatewayProcess
    port: int


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp("step-up")
    port = free_port()
    users = [
        {"username": "alice", "password": "alice123", "groups": ["engineering"]},
        {"username": "bob", "password": "bob123", "groups": ["engineering"], "mfa": False},
    ]
    client = registered_client("app1-client", SECRET, "app1.localhost", port, "client_secret_basic")
    config = {"tenants": {"carbon.super": {"users": users, "clients": [client]}}}
    with ProviderProcess(tmp / "op", config) as op, BackendProcess(name="echo") as backend:
        (tmp / "gateway.yaml").write_text(
            f"""\
listeners: [{{address: 127.0.0.1:{port}}}]
providers:
  op: {{discovery_url: "{op.discovery_url()}", ca_file: "{op.ca_file}"}}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend.port}
    oidc: {{provider: op, client_id: app1-client, client_secret: {SECRET}, par: "off"}}
    session: {{keys: [{session_key()}]}}
    headers: {{preset: mod_auth_openidc}}
    paths:
      - prefix: /admin/
        upstream: http://127.0.0.1:{backend.port}
        login: {{acr_values: [mfa]}}
      - prefix: /recent/
        upstream: http://127.0.0.1:{backend.port}
        login: {{max_age: {MAX_AGE}s}}
"""
        )
        gateway = GatewayProcess(tmp / "gateway.yaml", tmp / "gateway.log").start([port])
        try:
            deadline = time.monotonic() + 20
            while Client(port, "app1.localhost").get("/")[0] != 302:
                assert time.monotonic() < deadline, gateway.log()[-3000:]
                time.sleep(0.2)
            yield Env(op, gateway, port)
        finally:
            gateway.stop()


def follow_login(env: Env, client: Client, browser: Browser, path: str, user: str) -> int:
    """GET ``path``, log in at the provider with ``browser``, come back: the
    callback's status (302 back to ``path`` when the login was accepted)."""
    status, headers, _ = client.get(path)
    assert status == 302, status
    callback = env.op.scripted_login(headers["Location"], user, f"{user}123", browser)
    status, headers, _ = client.get(callback.split(f":{env.port}", 1)[1])
    if status == 302:
        assert headers["Location"] == path
    return status


def authorize_query(client: Client, path: str) -> dict[str, list[str]]:
    status, headers, _ = client.get(path)
    assert status == 302
    return parse_qs(urlsplit(headers["Location"]).query)


def echo(client: Client, path: str) -> tuple[int, dict[str, Any], Any]:
    status, headers, body = client.get(path, {"Accept": "application/json"})
    return status, (json.loads(body) if status == 200 else {}), headers


def test_a_browser_steps_up_and_keeps_its_session(env: Env) -> None:
    client, browser = Client(env.port, "app1.localhost"), env.op.browser()
    assert follow_login(env, client, browser, "/echo", "alice") == 302
    status, body, _ = echo(client, "/echo")
    assert status == 200 and header_values(body, "oidc_claim_acr") == ["pwd"]
    # /admin/ needs acr mfa: a new login asking for it, though the provider
    # session is still there.
    query = authorize_query(client, "/admin/x")
    assert query["acr_values"] == ["mfa"]
    assert follow_login(env, client, browser, "/admin/x", "alice") == 302
    status, body, _ = echo(client, "/admin/x")
    assert status == 200 and header_values(body, "oidc_claim_acr") == ["mfa"]
    # The same session, upgraded: the rest of the route works as before.
    assert echo(client, "/echo")[0] == 200


def test_an_api_client_gets_rfc_9470s_challenge(env: Env) -> None:
    client, browser = Client(env.port, "app1.localhost"), env.op.browser()
    follow_login(env, client, browser, "/echo", "alice")
    status, headers, body = client.get("/admin/x", {"Accept": "application/json"})
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert 'acr_values="mfa"' in challenge
    assert json.loads(body)["error"] == "insufficient_user_authentication"


def test_the_first_login_already_asks_for_the_step_up(env: Env) -> None:
    client, browser = Client(env.port, "app1.localhost"), env.op.browser()
    assert authorize_query(client, "/admin/y")["acr_values"] == ["mfa"]
    assert follow_login(env, client, browser, "/admin/y", "alice") == 302
    assert echo(client, "/admin/y")[0] == 200


def test_a_lower_acr_from_the_provider_is_403_never_a_loop(env: Env) -> None:
    client, browser = Client(env.port, "app1.localhost"), env.op.browser()
    follow_login(env, client, browser, "/echo", "bob")
    assert follow_login(env, client, browser, "/admin/x", "bob") == 403
    assert "step-up refused" in env.gateway.log()
    # bob's session is as it was: the rest of the route works, /admin/ asks again
    # only when bob goes there again.
    assert echo(client, "/echo")[0] == 200
    assert client.get("/admin/x")[0] == 302


def test_an_old_login_is_refreshed_for_a_max_age_path(env: Env) -> None:
    client, browser = Client(env.port, "app1.localhost"), env.op.browser()
    assert follow_login(env, client, browser, "/recent/a", "alice") == 302
    assert echo(client, "/recent/a")[0] == 200
    time.sleep(MAX_AGE + 1)
    query = authorize_query(client, "/recent/a")
    assert query["max_age"] == [str(MAX_AGE)]
    assert follow_login(env, client, browser, "/recent/a", "alice") == 302
    assert echo(client, "/recent/a")[0] == 200
