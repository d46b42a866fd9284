"""WSO2 IS 7 organizations (issue 15 §4): one gateway, two routes, each logging
its users into another sub-organization of the same root (super tenant), whose
endpoints and issuer live under /t/carbon.super/o/<org-id>/ at the test provider."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from tests.http_helpers import header_values
from tests.login_env import Client, registered_client, session_key
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

ORG_A = "6f1c2b7e-0a51-4d2e-9a8b-1c2d3e4f5a6b"
ORG_B = "9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f6a"
SECRET_A, SECRET_B = "org-a-client-secret-0123456789", "org-b-client-secret-0123456789"


@attrs.frozen
class Env:
    op: ProviderProcess
    gateway: GatewayProcess
    port: int


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp("organizations")
    port = free_port()

    def org(name: str, user: str, client_id: str, secret: str, host: str) -> dict[str, Any]:
        return {
            "name": name,
            "users": [
                {"username": user, "password": f"{user}123", "email": f"{user}@{host}"},
                # The same user name in both organizations: different people.
                {"username": "sam", "password": f"sam-{host}", "email": f"sam@{host}"},
            ],
            "clients": [registered_client(client_id, secret, host, port, "client_secret_basic")],
        }

    config = {
        "tenants": {
            "carbon.super": {
                "organizations": {
                    ORG_A: org("Customer A", "carol", "app-a", SECRET_A, "a.localhost"),
                    ORG_B: org("Customer B", "dave", "app-b", SECRET_B, "b.localhost"),
                }
            }
        }
    }
    with ProviderProcess(tmp / "op", config) as op, BackendProcess(name="echo") as backend:
        (tmp / "gateway.yaml").write_text(
            f"""\
listeners: [{{address: 127.0.0.1:{port}}}]
providers:
  wso2: {{issuer: "{op.issuer()}", ca_file: "{op.ca_file}"}}
routes:
  - name: customer-a
    hosts: [a.localhost]
    upstream: http://127.0.0.1:{backend.port}
    oidc: {{provider: wso2, organization: {ORG_A}, client_id: app-a, client_secret: {SECRET_A}}}
    session: {{keys: [{session_key()}]}}
    authorize: {{claims: {{org_id: [{ORG_A}]}}}}
  - name: customer-b
    hosts: [b.localhost]
    upstream: http://127.0.0.1:{backend.port}
    oidc: {{provider: wso2, organization: {ORG_B}, client_id: app-b, client_secret: {SECRET_B}}}
    session: {{keys: [{session_key()}]}}
    headers: {{preset: mod_auth_openidc}}
    authorize: {{claims: {{org_name: ["Customer B"]}}}}
"""
        )
        gateway = GatewayProcess(tmp / "gateway.yaml", tmp / "gateway.log").start([port])
        try:
            deadline = time.monotonic() + 20
            while any(Client(port, h).get("/")[0] != 302 for h in ("a.localhost", "b.localhost")):
                assert time.monotonic() < deadline, gateway.log()[-3000:]
                time.sleep(0.2)
            yield Env(op, gateway, port)
        finally:
            gateway.stop()


def echo(client: Client) -> dict[str, Any]:
    status, _, body = client.get("/echo", {"Accept": "application/json"})
    assert status == 200, status
    return json.loads(body)


def test_two_users_of_two_organizations_on_two_routes_at_once(env: Env) -> None:
    results: dict[str, Any] = {}

    def log_in(host: str, user: str) -> None:
        client = Client(env.port, host)
        status, body = client.login(env.op, "/echo", user, f"{user}123")
        results[host] = (client, status, body)

    threads = [
        threading.Thread(target=log_in, args=("a.localhost", "carol")),
        threading.Thread(target=log_in, args=("b.localhost", "dave")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    carol, status_a, _ = results["a.localhost"]
    dave, status_b, _ = results["b.localhost"]
    assert (status_a, status_b) == (200, 200), env.gateway.log()[-3000:]
    a, b = echo(carol), echo(dave)
    assert header_values(a, "x-forwarded-org") == [ORG_A]
    assert header_values(a, "x-forwarded-email") == ["carol@a.localhost"]
    assert header_values(b, "oidc_claim_org_id") == [ORG_B]
    assert header_values(b, "oidc_claim_org_name") == ["Customer B"]
    # Each route talks to its organization's own endpoints.
    status, headers, _ = Client(env.port, "a.localhost").get("/")
    assert f"/t/carbon.super/o/{ORG_A}/oauth2/authorize" in headers["Location"]


def test_a_user_of_one_organization_cannot_sign_in_to_the_other(env: Env) -> None:
    client = Client(env.port, "a.localhost")
    with pytest.raises(Exception, match="login failed"):
        client.login(env.op, "/echo", "dave", "dave123")


def test_the_same_name_in_two_organizations_is_two_people(env: Env) -> None:
    a, b = Client(env.port, "a.localhost"), Client(env.port, "b.localhost")
    status, body = a.login(env.op, "/echo", "sam", "sam-a.localhost")
    assert status == 200
    status, body = b.login(env.op, "/echo", "sam", "sam-b.localhost")
    assert status == 200
    assert header_values(echo(a), "x-forwarded-org") == [ORG_A]
    assert header_values(echo(b), "oidc_claim_org_id") == [ORG_B]


def test_a_session_cookie_of_one_organizations_route_is_useless_on_the_other(env: Env) -> None:
    carol = Client(env.port, "a.localhost")
    carol.login(env.op, "/echo", "carol", "carol123")
    thief = Client(env.port, "b.localhost")
    thief.cookies = dict(carol.cookies)
    assert thief.get("/echo", {"Accept": "application/json"})[0] == 401


def test_a_logout_token_of_another_organization_ends_nothing(env: Env) -> None:
    """Signed by organization B (its own keys and issuer), addressed to route A's
    client: refused, and carol's session on A stays."""
    import http.client
    from urllib.parse import urlencode

    carol = Client(env.port, "a.localhost")
    carol.login(env.op, "/echo", "carol", "carol123")
    sub = next(
        s["sub"] for s in env.op.sessions(f"carbon.super/o/{ORG_A}") if s["username"] == "carol"
    )
    for tenant in (f"carbon.super/o/{ORG_B}", "carbon.super"):
        token = env.op.logout_token(tenant, client_id="app-a", sub=sub)
        conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
        conn.request(
            "POST",
            "/oauth2/backchannel_logout",
            body=urlencode({"logout_token": token}),
            headers={"Host": "a.localhost", "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert conn.getresponse().status == 400
    assert carol.get("/echo", {"Accept": "application/json"})[0] == 200
