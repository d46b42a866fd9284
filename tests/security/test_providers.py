"""Attacks on the provider features of issue 15: logout without sid, userinfo
claims, pushed authorization requests, private_key_jwt assertions.

Each attack vector is one parametrised case. The end-to-end ones run the real
gateway against the WSO2-shaped test provider (two routes, two clients, one
provider; and a "strict" tenant that takes private_key_jwt only).
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import attrs
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from idgateway.config.client_keys import client_key_from_pem
from idgateway.oidc.client_assertion import ASSERTION_TYPE, ClientAssertionSigner
from tests.http_helpers import header_values
from tests.login_env import Client, registered_client, session_key
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary
from tests.unit.test_userinfo_auto import (
    log_in,
    make_login,
    provider,  # noqa: F401 - a fixture
    session_claims,
)

SECRET1 = "security-app1-secret-0123456789"
SECRET2 = "security-app2-secret-0123456789"
EVIL_SECRET = "evil-app-secret-0123456789abcd"
STRICT = "strict.example"

needs_node = pytest.mark.skipif(node_binary() is None, reason="node is not installed")


# ---- userinfo cannot speak for the ID token (in memory) --------------------------------


@pytest.mark.parametrize(
    ("claim", "forged"),
    [
        ("acr", "urn:mfa"),  # a step-up level claimed in an unsigned place
        ("amr", ["hwk", "mfa"]),
        ("auth_time", 4_000_000_000),
        ("sid", "someone-elses-sid"),  # would tie the session to another provider session
        ("iss", "https://evil.example/oauth2/token"),
        ("aud", "another-client"),
    ],
)
def test_userinfo_cannot_forge_id_token_claims(provider, claim: str, forged: Any) -> None:  # noqa: F811
    provider["id_token_claims"] = {"sub": "u1", "sid": "p1"}
    provider["userinfo"] = {"sub": "u1", "email": "a@x", "groups": ["g"], claim: forged}
    login = make_login()
    request, _ = log_in(login)
    assert request.code == 302
    claims = session_claims(login, request)
    assert claims.get(claim) != forged
    assert claims["groups"] == ["g"], "userinfo still adds the claims it may"


@pytest.mark.parametrize(
    ("id_token", "userinfo"),
    [
        ({"sub": "u1", "groups": ["staff"]}, {"sub": "u1", "groups": ["admins"]}),
        ({"sub": "u1", "email": "a@x"}, {"sub": "u1", "email": "admin@corp"}),
    ],
    ids=["groups", "email"],
)
def test_userinfo_cannot_override_what_the_id_token_says(provider, id_token, userinfo) -> None:  # noqa: F811
    provider["id_token_claims"], provider["userinfo"] = id_token, userinfo
    login = make_login(userinfo=True)
    request, _ = log_in(login)
    claims = session_claims(login, request)
    for name, value in id_token.items():
        assert claims.get(name, value) == value


def test_userinfo_about_another_user_is_refused(provider) -> None:  # noqa: F811
    provider["userinfo"] = {"sub": "admin", "groups": ["admins"]}
    request, _ = log_in(make_login())
    assert request.code == 401 and not request.responseHeaders.getRawHeaders(b"set-cookie", [])[1:]


# ---- private_key_jwt assertions are never reused (in memory) ---------------------------


def test_every_client_assertion_is_fresh() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signer = ClientAssertionSigner(client_key_from_pem(pem, "k"))
    seen = set()
    for _ in range(50):
        body = signer.assertion("c", "https://op/oauth2/token", 1000.0).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        assert claims["exp"] - claims["iat"] == 60 and claims["aud"] == "https://op/oauth2/token"
        seen.add(claims["jti"])
    assert len(seen) == 50


# ---- end to end -----------------------------------------------------------------------


@attrs.frozen
class World:
    op: ProviderProcess
    gateway: GatewayProcess
    port: int
    strict_key: bytes


def _jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return {"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e), "use": "sig"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from tests.backends import BackendProcess

    if node_binary() is None:
        pytest.skip("node is not installed")
    tmp = tmp_path_factory.mktemp("providers-security")
    port = free_port()
    strict_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    evil = registered_client("evil-app", EVIL_SECRET, "app1.localhost", port, "client_secret_basic")
    strict_client = {
        "client_id": "strict-app",
        "redirect_uris": [f"http://app1.localhost:{port}/oauth2/callback"],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [_jwk(strict_key)]},
    }
    config = {
        "tenants": {
            "carbon.super": {
                "clients": [
                    registered_client(
                        "app1-client", SECRET1, "app1.localhost", port, "client_secret_basic"
                    ),
                    registered_client(
                        "app2-client", SECRET2, "app2.localhost", port, "client_secret_basic"
                    ),
                    evil,
                ]
            },
            STRICT: {"profile": "strict", "clients": [strict_client]},
        }
    }
    with ProviderProcess(tmp / "op", config) as op, BackendProcess(name="echo") as backend:
        routes = "".join(
            f"""\
  - name: {name}
    hosts: [{name}.localhost]
    upstream: http://127.0.0.1:{backend.port}
    oidc: {{provider: op, client_id: {name}-client, client_secret: {secret}}}
    session: {{keys: [{session_key()}]}}
"""
            for name, secret in (("app1", SECRET1), ("app2", SECRET2))
        )
        (tmp / "gateway.yaml").write_text(
            f"""\
listeners: [{{address: 127.0.0.1:{port}}}]
providers:
  op: {{discovery_url: "{op.discovery_url()}", ca_file: "{op.ca_file}"}}
routes:
{routes}"""
        )
        gateway = GatewayProcess(tmp / "gateway.yaml", tmp / "gateway.log").start([port])
        try:
            deadline = time.monotonic() + 20
            while any(Client(port, f"{h}.localhost").get("/")[0] != 302 for h in ("app1", "app2")):
                assert time.monotonic() < deadline, gateway.log()[-3000:]
                time.sleep(0.2)
            pem = strict_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            yield World(op, gateway, port, pem)
        finally:
            gateway.stop()


def signed_in(world: World, host: str = "app1") -> Client:
    client = Client(world.port, f"{host}.localhost")
    status, body = client.login(world.op, "/echo", "alice", "alice123")
    assert status == 200, (status, body[:300])
    return client


def alive(client: Client) -> bool:
    return client.get("/echo", {"Accept": "application/json"})[0] == 200


def post_logout(world: World, host: str, body: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=10)
    conn.request(
        "POST",
        "/oauth2/backchannel_logout",
        body=body,
        headers={"Host": f"{host}.localhost", "Content-Type": "application/x-www-form-urlencoded"},
    )
    return conn.getresponse().status


def alice_sub(world: World) -> str:
    return next(s["sub"] for s in world.op.sessions() if s["username"] == "alice")


@needs_node
@pytest.mark.parametrize(
    ("audience", "posted_to", "app1_survives", "app2_survives"),
    [
        # app2's token (aud app2-client) posted to app1: refused, nothing ends.
        ("app2-client", "app1", True, True),
        # app2's token posted to app2: only app2's session of that subject ends.
        ("app2-client", "app2", True, False),
        # A token for a client no route has: nothing ends anywhere.
        ("evil-app", "app1", True, True),
    ],
    ids=["other-route-aud", "scoped-to-its-route", "foreign-client"],
)
def test_a_sub_only_logout_token_ends_only_its_routes_sessions(
    world: World, audience: str, posted_to: str, app1_survives: bool, app2_survives: bool
) -> None:
    app1, app2 = signed_in(world, "app1"), signed_in(world, "app2")
    token = world.op.logout_token(client_id=audience, sub=alice_sub(world))
    status = post_logout(world, posted_to, urlencode({"logout_token": token}))
    assert status == (200 if (posted_to == "app2" and audience == "app2-client") else 400)
    time.sleep(1.2)  # past any per-process reuse of a loaded session
    assert alive(app1) is app1_survives
    assert alive(app2) is app2_survives


@needs_node
@pytest.mark.parametrize(
    "replay",
    ["same-token", "token-twice-in-the-form", "token-with-padding"],
)
def test_a_replayed_sub_only_logout_token_ends_nothing_new(world: World, replay: str) -> None:
    first = signed_in(world)
    token = world.op.logout_token(client_id="app1-client", sub=alice_sub(world))
    assert post_logout(world, "app1", urlencode({"logout_token": token})) == 200
    assert not alive(first)
    # alice signs in again; the captured token, replayed, must not end the new session.
    again = signed_in(world)
    body = {
        "same-token": urlencode({"logout_token": token}),
        "token-twice-in-the-form": urlencode([("logout_token", token), ("logout_token", token)]),
        "token-with-padding": urlencode({"logout_token": token + "=="}),
    }[replay]
    assert post_logout(world, "app1", body) == 400
    assert alive(again)


@needs_node
@pytest.mark.parametrize("victim_started_a_login", [False, True], ids=["cold", "with-own-flow"])
def test_a_pushed_request_of_another_client_cannot_log_in(
    world: World, victim_started_a_login: bool
) -> None:
    """evil-app (whose redirect_uri is app1's callback) pushes its own request and
    lures alice to it: the code comes back with a state no flow of app1 has."""
    response = world.op.request(
        "POST",
        world.op.endpoint("/oauth2/par"),
        form={
            "response_type": "code",
            "client_id": "evil-app",
            "redirect_uri": f"http://app1.localhost:{world.port}/oauth2/callback",
            "scope": "openid",
            "state": "evil-state",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        },
        headers={
            "Authorization": "Basic "
            + base64.b64encode(f"evil-app:{EVIL_SECRET}".encode()).decode()
        },
    )
    assert response.status == 201, response.text
    request_uri = response.json()["request_uri"]
    victim = Client(world.port, "app1.localhost")
    if victim_started_a_login:
        assert victim.get("/echo")[0] == 302  # app1's own flow cookie is set
    authorize = (
        world.op.endpoint("/oauth2/authorize")
        + "?"
        + urlencode({"client_id": "evil-app", "request_uri": request_uri})
    )
    callback = world.op.scripted_login(authorize, "alice", "alice123")
    status, _, _ = victim.get(callback.split(f":{world.port}", 1)[1])
    assert status == 400
    assert not alive(victim)
    # app1's client id with evil's request_uri: the provider refuses it outright.
    stolen = (
        world.op.endpoint("/oauth2/authorize")
        + "?"
        + urlencode({"client_id": "app1-client", "request_uri": request_uri})
    )
    refused = world.op.browser().request("GET", stolen)
    assert refused.status in (302, 303, 400)
    if refused.status != 400:
        assert "error=" in (refused.location or "")


def _token_call(world: World, assertion: str) -> tuple[int, dict[str, Any]]:
    response = world.op.request(
        "POST",
        world.op.endpoint("/oauth2/token", STRICT),
        form={
            "grant_type": "authorization_code",
            "code": "not-a-code",
            "redirect_uri": f"http://app1.localhost:{world.port}/oauth2/callback",
            "client_id": "strict-app",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
    return response.status, response.json()


@needs_node
@pytest.mark.parametrize(
    "vector", ["replayed", "another-audience", "expired", "another-clients-key"]
)
def test_a_client_assertion_cannot_be_reused_or_redirected(world: World, vector: str) -> None:
    signer = ClientAssertionSigner(client_key_from_pem(world.strict_key, "k"))
    token_endpoint = world.op.endpoint("/oauth2/token", STRICT)
    now = time.time()
    genuine = signer.assertion("strict-app", token_endpoint, now)
    # The genuine assertion authenticates (the made-up code is then refused).
    status, body = _token_call(world, genuine)
    assert body.get("error") == "invalid_grant", body
    if vector == "replayed":
        attack = genuine
    elif vector == "another-audience":
        attack = signer.assertion("strict-app", world.op.endpoint("/oauth2/token"), now)
    elif vector == "expired":
        attack = signer.assertion("strict-app", token_endpoint, now - 300)
    else:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        attack = ClientAssertionSigner(client_key_from_pem(pem, "o")).assertion(
            "strict-app", token_endpoint, now
        )
    status, body = _token_call(world, attack)
    assert status in (400, 401) and body.get("error") == "invalid_client", body


@needs_node
def test_identity_headers_still_come_from_the_session(world: World) -> None:
    client = signed_in(world)
    status, _, body = client.get(
        "/echo", {"Accept": "application/json", "X-Forwarded-User": "mallory"}
    )
    assert status == 200
    assert header_values(json.loads(body), "x-forwarded-user") != ["mallory"]


# ---- step-up: an acr from anywhere but the signed ID token counts for nothing ------------


@pytest.mark.parametrize("where", ["userinfo", "callback-query", "callback-iss-param"])
def test_a_forged_acr_does_not_pass_a_step_up(provider, where: str) -> None:  # noqa: F811
    from twisted.internet import defer

    from idgateway.gate import endpoints
    from tests.unit.test_userinfo_auto import FakeFlows, FakeRequest

    provider["id_token_claims"] = {"sub": "u1", "acr": "pwd", "email": "a@x", "groups": ["g"]}
    uri = b"/oauth2/callback?code=c&state=st"
    if where == "userinfo":
        provider["id_token_claims"].pop("acr")
        provider["userinfo"] = {"sub": "u1", "acr": "mfa", "email": "a@x", "groups": ["g"]}
    elif where == "callback-query":
        uri += b"&acr=mfa&acr_values=mfa"
    else:
        uri += b"&id_token=eyJhbGciOiJub25lIn0.eyJhY3IiOiJtZmEifQ."
    login = make_login(userinfo=True)
    login.flows = {s: FakeFlows(acr_values=("mfa",)) for s in (False, True)}  # type: ignore[misc]
    request = FakeRequest(uri)
    d = defer.ensureDeferred(endpoints.callback(login, request, b"app.localhost", False))  # type: ignore[arg-type]
    assert d.called
    assert request.code == 403
    assert not request.responseHeaders.getRawHeaders(b"location")
