"""The interop matrix (issue 15 §1): login, refresh, sign-out and provider logout
against three provider profiles of the same test provider (tests/provider,
config.mjs "profile"):

- ``wso2``: the WSO2-shaped provider (sid in ID tokens, back-channel logout,
  client_secret_basic, PAR offered);
- ``generic``: an independent provider with its defaults: claims in userinfo
  only, no sid, front-channel logout only, client_secret_post, short access
  tokens, rotating refresh tokens;
- ``strict``: PKCE required, private_key_jwt only, PAR required, 10 s codes.

One parametrised fixture, ``profile``, runs every test below against each.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from idgateway.gate.endpoints import PAR_RESTART_AFTER
from tests.http_helpers import header_values
from tests.login_env import Client, registered_client, session_key
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

SECRET = "matrix-client-secret-0123456789"
ACCESS_TTL = 4
PROFILES = ("wso2", "generic", "strict")


@attrs.frozen
class Environment:
    profile: str
    op: ProviderProcess
    gateway: GatewayProcess
    port: int
    admin: int


def _jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return {"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e), "use": "sig"}


def _client(profile: str, port: int, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    method = {
        "wso2": "client_secret_basic",
        "generic": "client_secret_post",
        "strict": "private_key_jwt",
    }[profile]
    client = registered_client("matrix-app", SECRET, "app1.localhost", port, method)
    if profile == "generic":
        del client["backchannel_logout_uri"]  # front-channel only
    if profile == "strict":
        del client["client_secret"]
        client["jwks"] = {"keys": [_jwk(key)]}
    return client


def _oidc(profile: str, op: ProviderProcess, key_file: str) -> str:
    common = (
        "provider: op, client_id: matrix-app, user_claim: username, "
        "post_logout_redirect: /, scopes: [openid, email, profile, groups]"
    )
    if profile == "wso2":
        return f"{{{common}, client_secret: {SECRET}}}"
    if profile == "generic":
        return (
            f"{{{common}, client_secret: {SECRET}, client_auth: client_secret_post, "
            "frontchannel_logout: true}"
        )
    return (
        f"{{{common}, client_auth: private_key_jwt, private_key_file: {key_file}, par: required}}"
    )


@pytest.fixture(scope="module", params=PROFILES)
def profile(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Environment]:
    from tests.backends import BackendProcess

    name = request.param
    tmp = tmp_path_factory.mktemp(f"matrix-{name}")
    port, admin = free_port(), free_port()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp / "client.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    config = {
        "ttl": {"AccessToken": ACCESS_TTL},
        "tenants": {"carbon.super": {"profile": name, "clients": [_client(name, port, key)]}},
    }
    with ProviderProcess(tmp / "op", config) as op, BackendProcess(name="echo") as backend:
        (tmp / "gateway.yaml").write_text(
            f"""\
listeners: [{{address: 127.0.0.1:{port}}}]
admin: {{address: 127.0.0.1:{admin}}}
providers:
  op: {{discovery_url: "{op.discovery_url()}", ca_file: "{op.ca_file}"}}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend.port}
    oidc: {_oidc(name, op, str(key_file))}
    session: {{keys: [{session_key()}]}}
    headers: {{preset: oauth2-proxy, pass_access_token: true}}
    authorize: {{groups: [engineering]}}
"""
        )
        gateway = GatewayProcess(tmp / "gateway.yaml", tmp / "gateway.log").start([port, admin])
        try:
            deadline = time.monotonic() + 20
            while Client(port, "app1.localhost").get("/")[0] != 302:
                assert time.monotonic() < deadline, gateway.log()[-3000:]
                time.sleep(0.2)
            yield Environment(name, op, gateway, port, admin)
        finally:
            gateway.stop()


def logged_in(env: Environment, user: str = "alice") -> Client:
    client = Client(env.port, "app1.localhost")
    status, body = client.login(env.op, "/echo", user, f"{user}123")
    assert status == 200, (status, body[:500], env.gateway.log()[-3000:])
    return client


def echo(client: Client) -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
    status, headers, body = client.get("/echo", {"Accept": "application/json"})
    return status, (json.loads(body) if status == 200 else {}), headers


def access_token(client: Client) -> str:
    status, body, _ = echo(client)
    assert status == 200
    (token,) = header_values(body, "x-forwarded-access-token")
    return token


def provider_calls(env: Environment, call: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", env.admin, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    prefix = f'idgateway_provider_request_seconds_count{{call="{call}",provider="op"}} '
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(found[0].split()[-1]) if found else 0.0


def test_login(profile: Environment) -> None:
    client = Client(profile.port, "app1.localhost")
    status, headers, _ = client.get("/echo")
    query = parse_qs(urlsplit(headers["Location"]).query)
    if profile.profile == "strict":
        assert set(query) == {"client_id", "request_uri"}, "PAR is required"
    client = logged_in(profile)
    _, body, _ = echo(client)
    # generic: username and groups come from userinfo only (oidc.userinfo: auto).
    assert header_values(body, "x-forwarded-user") == ["alice"]
    assert header_values(body, "x-forwarded-groups") == ["engineering"]
    assert header_values(body, "x-forwarded-email") == ["alice@example.com"]
    # Userinfo was asked only where the ID token lacked the claims.
    calls = provider_calls(profile, "userinfo")
    assert (calls > 0) if profile.profile == "generic" else (calls == 0), calls
    if profile.profile in ("strict", "wso2"):
        assert provider_calls(profile, "par") > 0, "the login was pushed"
    # bob is not in engineering: the rule reads the same claims.
    bob = Client(profile.port, "app1.localhost")
    bob.login(profile.op, "/x", "bob", "bob123")
    assert echo(bob)[0] == 403


def test_refresh(profile: Environment) -> None:
    client = logged_in(profile)
    first = access_token(client)
    # Tokens shorter than the leeway (4 s vs 60 s): no refresh at login nor per
    # request, and no new cookie on every answer.
    for _ in range(5):
        status, body, headers = echo(client)
        assert header_values(body, "x-forwarded-access-token") == [first]
        assert not headers.get_all("Set-Cookie")
    time.sleep(ACCESS_TTL + 0.5)
    second = access_token(client)
    assert second != first, "the expired access token was not refreshed"
    # Rotating refresh tokens: a second refresh works only with the stored new one.
    time.sleep(ACCESS_TTL + 0.5)
    third = access_token(client)
    assert third not in (first, second)
    log = profile.gateway.log()
    assert "invalid_grant" not in log
    assert "less than twice session.refresh_leeway" in log


def test_sign_out(profile: Environment) -> None:
    client = logged_in(profile)
    status, headers, _ = client.get("/oauth2/sign_out")
    assert status == 302
    target = urlsplit(headers["Location"])
    assert target.path == "/oidc/logout"
    assert "id_token_hint" in parse_qs(target.query)
    assert echo(client)[0] == 401


def test_provider_logout(profile: Environment) -> None:
    client = logged_in(profile)
    if profile.profile == "generic":
        # No sid: the provider (or a back-channel sender for it) ends the
        # subject's sessions with a sub-only logout token.
        sub = next(s["sub"] for s in profile.op.sessions() if s["username"] == "alice")
        token = profile.op.logout_token(client_id="matrix-app", sub=sub)
        conn = http.client.HTTPConnection("127.0.0.1", profile.port, timeout=10)
        conn.request(
            "POST",
            "/oauth2/backchannel_logout",
            body=f"logout_token={token}",
            headers={
                "Host": "app1.localhost",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert conn.getresponse().status == 200
        assert "cannot end this session by sid" in profile.gateway.log()
    else:
        profile.op.admin_logout("carbon.super", "alice")
    deadline = time.monotonic() + 5
    while echo(client)[0] == 200:
        assert time.monotonic() < deadline, profile.gateway.log()[-3000:]
        time.sleep(0.1)


def test_status_lists_the_logout_paths(profile: Environment) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", profile.admin, timeout=10)
    conn.request("GET", "/status", headers={"Accept": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    (route,) = json.loads(response.read())["routes"]
    paths = route["logout"]
    assert paths["RP-initiated"].startswith("works")
    if profile.profile == "generic":
        assert paths["back-channel"].startswith("not advertised")
        assert paths["front-channel"].startswith("works")
    else:
        assert paths["back-channel"].startswith("works")
        assert paths["front-channel"].startswith("off")


def _dead_request_uri(profile: Environment, client: Client) -> str:
    """Start a login and use its pushed request up elsewhere (the provider treats
    "already used" exactly like "expired"): where the provider then sends the
    browser that arrives late, relative to the gateway."""
    status, headers, _ = client.get("/echo")
    assert status == 302
    authorize = headers["Location"]
    assert "request_uri=" in authorize
    profile.op.scripted_login(authorize, "alice", "alice123", profile.op.browser())
    late = profile.op.browser().request("GET", authorize)
    assert late.status in (302, 303), late.text[:300]
    location = late.location or ""
    assert location.startswith(f"http://app1.localhost:{profile.port}/oauth2/callback?")
    assert "error=invalid_request_uri" in location
    return location.split(f":{profile.port}", 1)[1]


def test_a_dead_request_uri_soon_after_is_the_error_page(profile: Environment) -> None:
    client = Client(profile.port, "app1.localhost")
    status, _, _ = client.get(_dead_request_uri(profile, client))
    assert status == 401
    # Visiting the application again starts a new login that works.
    status, body = client.login(profile.op, "/echo", "alice", "alice123")
    assert status == 200, body[:300]


def test_a_request_uri_that_expired_on_the_way_starts_a_new_login(profile: Environment) -> None:
    if profile.profile != "wso2":
        pytest.skip("one profile is enough to wait for")
    client = Client(profile.port, "app1.localhost")
    callback = _dead_request_uri(profile, client)
    time.sleep(PAR_RESTART_AFTER + 0.5)
    status, headers, _ = client.get(callback)
    assert status == 302, "a new login"
    authorize = headers["Location"]
    assert "request_uri=" in authorize
    back = profile.op.scripted_login(authorize, "alice", "alice123", profile.op.browser())
    status, headers, _ = client.get(back.split(f":{profile.port}", 1)[1])
    assert status == 302 and headers["Location"] == "/echo"
    assert echo(client)[0] == 200
