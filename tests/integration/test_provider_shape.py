"""The WSO2-shaped test provider (tests/provider) really looks like WSO2 IS.

Starts the real node provider once for the module and checks, over HTTPS, the
behaviour /work/shared/WSO2.md describes: discovery at both URLs with the token
endpoint as issuer, per-tenant keys with _RS256/_PS256 kids, the login callback's
extra parameters, WSO2's ID token claims, rotating refresh tokens, introspection's
shape, RP-initiated and back-channel logout.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import queue
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.provider_process import ProviderError, ProviderProcess, pkce_pair

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None,
    reason="node is not installed: the WSO2-shaped test provider runs on node (oidc-provider)",
)

CALLBACK = "http://app1.localhost:8080/oauth2/callback"
POST_LOGOUT = "http://app1.localhost:8080/"
ACME_CALLBACK = "https://acme.localhost:8443/oauth2/callback"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
ACCESS_TOKEN_TTL = 120


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(b64decode(header)), json.loads(b64decode(payload))


def verify_jwt(token: str, jwks: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check an RS256/PS256 signature against the key named by ``kid``."""
    header, claims = jwt_parts(token)
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    assert jwk["alg"] == header["alg"]
    key = rsa.RSAPublicNumbers(
        int.from_bytes(b64decode(jwk["e"]), "big"), int.from_bytes(b64decode(jwk["n"]), "big")
    ).public_key()
    signing_input, signature = token.rsplit(".", 1)
    if header["alg"] == "RS256":
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
    else:
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    key.verify(b64decode(signature), signing_input.encode(), pad, hashes.SHA256())
    return header, claims


class BackchannelReceiver:
    """A little HTTP server standing in for the gateway's back-channel logout URL."""

    def __init__(self) -> None:
        self.requests: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                received.put(
                    {
                        "path": self.path,
                        "host": self.headers.get("Host"),
                        "content_type": self.headers.get("Content-Type"),
                        "form": parse_qs(self.rfile.read(length).decode()),
                    }
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://app1.localhost:{self.port}/oauth2/backchannel_logout"

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.requests.get(timeout=timeout)

    def drain(self) -> None:
        while not self.requests.empty():
            self.requests.get_nowait()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def backchannel() -> Iterator[BackchannelReceiver]:
    receiver = BackchannelReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def op(
    tmp_path_factory: pytest.TempPathFactory, backchannel: BackchannelReceiver
) -> Iterator[ProviderProcess]:
    config = {
        "ttl": {"AccessToken": ACCESS_TOKEN_TTL},
        "tenants": {
            "carbon.super": {
                "clients": [
                    {
                        "client_id": "app1",
                        "client_secret": "app1-secret",
                        "redirect_uris": [CALLBACK],
                        "post_logout_redirect_uris": [POST_LOGOUT],
                        "backchannel_logout_uri": backchannel.url,
                        "token_endpoint_auth_method": "client_secret_basic",
                    },
                    {
                        "client_id": "app2",
                        "client_secret": "app2-secret",
                        "redirect_uris": ["regexp=(http://app2\\.localhost:\\d+/cb|https://x/cb)"],
                        "token_endpoint_auth_method": "client_secret_post",
                        "access_token_format": "jwt",
                    },
                    {
                        # An app without WSO2's "Mandatory PKCE" (mod_auth_openidc's
                        # defaults send no code_challenge).
                        "client_id": "legacy",
                        "client_secret": "legacy-secret",
                        "redirect_uris": [CALLBACK],
                        "pkce_required": False,
                    },
                ]
            },
            "acme.com": {
                "clients": [
                    {
                        "client_id": "acme-app",
                        "client_secret": "acme-secret",
                        "redirect_uris": [ACME_CALLBACK],
                    }
                ]
            },
        },
    }
    provider = ProviderProcess(tmp_path_factory.mktemp("provider"), config, quiet=True)
    with provider:
        yield provider
    print(provider.output())


def authorize_url(
    op: ProviderProcess,
    client_id: str = "app1",
    redirect_uri: str = CALLBACK,
    tenant: str = "carbon.super",
    scope: str = "openid profile email groups",
    **extra: str,
) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": "state-123",
        "nonce": "nonce-456",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return f"{op.endpoint('/oauth2/authorize', tenant)}?{urlencode(params)}", verifier


def callback_params(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def exchange(
    op: ProviderProcess,
    code: str,
    verifier: str,
    client: tuple[str, str] = ("app1", "app1-secret"),
    redirect_uri: str = CALLBACK,
    tenant: str = "carbon.super",
    auth: str = "basic",
) -> dict[str, Any]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    kwargs: dict[str, Any] = {}
    if auth == "basic":
        kwargs["basic_auth"] = client
    else:
        form.update(client_id=client[0], client_secret=client[1])
    response = op.request("POST", op.endpoint("/oauth2/token", tenant), form=form, **kwargs)
    assert response.status == 200, response.text
    return response.json()


def login(
    op: ProviderProcess, username: str = "alice", password: str = "alice123", **kwargs: Any
) -> tuple[dict[str, str], dict[str, Any]]:
    """Full code + PKCE login; (callback parameters, token response)."""
    client = kwargs.pop("client", ("app1", "app1-secret"))
    auth = kwargs.pop("auth", "basic")
    browser = kwargs.pop("browser", None)
    url, verifier = authorize_url(op, client_id=client[0], **kwargs)
    location = op.scripted_login(url, username, password, browser=browser)
    params = callback_params(location)
    tokens = exchange(
        op,
        params["code"],
        verifier,
        client=client,
        redirect_uri=kwargs.get("redirect_uri", CALLBACK),
        tenant=kwargs.get("tenant", "carbon.super"),
        auth=auth,
    )
    return params, tokens


# ---- discovery and keys ----


@pytest.mark.parametrize("tenant", ["carbon.super", "acme.com"])
def test_discovery_at_both_urls_names_the_token_endpoint_as_issuer(
    op: ProviderProcess, tenant: str
) -> None:
    first = op.get_json(op.discovery_url(tenant))
    second = op.get_json(op.token_discovery_url(tenant))
    assert first == second
    base = op.tenant_base(tenant)
    assert first["issuer"] == f"{base}/oauth2/token" == op.issuer(tenant)
    assert first["issuer"] == first["token_endpoint"]
    assert first["authorization_endpoint"] == f"{base}/oauth2/authorize"
    assert first["userinfo_endpoint"] == f"{base}/oauth2/userinfo"
    assert first["jwks_uri"] == f"{base}/oauth2/jwks"
    assert first["introspection_endpoint"] == f"{base}/oauth2/introspect"
    assert first["revocation_endpoint"] == f"{base}/oauth2/revoke"
    assert first["end_session_endpoint"] == f"{base}/oidc/logout"
    assert first["check_session_iframe"] == f"{base}/oidc/checksession"
    assert first["backchannel_logout_supported"] is True
    assert first["code_challenge_methods_supported"] == ["S256", "plain"]
    assert first["id_token_signing_alg_values_supported"] == ["RS256", "PS256"]
    assert None not in first.values()
    assert op.base_url == f"https://localhost:{op.port}"


def test_each_tenant_has_its_own_key_published_as_rs256_and_ps256(op: ProviderProcess) -> None:
    moduli = []
    for tenant in ("carbon.super", "acme.com"):
        jwks = op.get_json(op.endpoint("/oauth2/jwks", tenant))
        rs256, ps256 = jwks["keys"]
        assert rs256["kid"].endswith("_RS256") and rs256["alg"] == "RS256"
        assert ps256["kid"].endswith("_PS256") and ps256["alg"] == "PS256"
        base = rs256["kid"].removesuffix("_RS256")
        assert base == ps256["kid"].removesuffix("_PS256")
        # base64url of a hex SHA-256 digest, as WSO2 does it.
        assert len(b64decode(base).decode()) == 64
        int(b64decode(base).decode(), 16)
        assert (rs256["n"], rs256["e"]) == (ps256["n"], ps256["e"])
        assert "d" not in rs256 and "p" not in rs256
        moduli.append(rs256["n"])
    assert moduli[0] != moduli[1]


# ---- login ----


def test_alice_logs_in_and_gets_wso2_claims(op: ProviderProcess) -> None:
    params, tokens = login(op)
    assert params["state"] == "state-123"
    assert params["code"]
    assert params["session_state"]
    assert params["AuthenticatedIdPs"]
    assert params["iss"] == op.issuer()

    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == ACCESS_TOKEN_TTL
    assert tokens["refresh_token"]
    assert "." not in tokens["access_token"]  # opaque by default

    jwks = op.get_json(op.endpoint("/oauth2/jwks"))
    header, claims = verify_jwt(tokens["id_token"], jwks)
    assert header["alg"] == "RS256" and header["kid"].endswith("_RS256")
    assert claims["iss"] == op.issuer()
    assert claims["aud"] == "app1"  # a plain string
    assert claims["azp"] == "app1"
    assert claims["sub"] == op.users()["alice"]
    assert claims["username"] == "alice"
    assert claims["groups"] == ["engineering"]
    assert claims["roles"] == ["admin"]
    assert claims["email"] == "alice@example.com"
    assert claims["email_verified"] is True
    assert claims["amr"] == ["BasicAuthenticator"]
    assert claims["nonce"] == "nonce-456"
    assert claims["org_name"] == "Super"
    assert claims["org_handle"] == "carbon.super"
    assert claims["org_id"]
    assert claims["nbf"] == claims["iat"] and claims["exp"] > claims["iat"]
    assert claims["jti"] and claims["sid"] and claims["isk"]
    assert "auth_time" not in claims
    digest = hashlib.sha256(tokens["access_token"].encode()).digest()
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()

    userinfo = op.request("GET", op.endpoint("/oauth2/userinfo"), bearer=tokens["access_token"])
    assert userinfo.status == 200, userinfo.text
    assert userinfo.json()["sub"] == claims["sub"]
    assert userinfo.json()["groups"] == ["engineering"]


def test_client_secret_post_jwt_access_token_and_no_email_without_the_scope(
    op: ProviderProcess,
) -> None:
    params, tokens = login(
        op,
        "bob",
        "bob123",
        client=("app2", "app2-secret"),
        auth="post",
        redirect_uri="http://app2.localhost:9999/cb",
        scope="openid profile groups",
    )
    jwks = op.get_json(op.endpoint("/oauth2/jwks"))
    _, claims = verify_jwt(tokens["id_token"], jwks)
    assert claims["username"] == "bob"
    assert claims["groups"] == ["sales"]
    assert "email" not in claims and "email_verified" not in claims

    header, access = verify_jwt(tokens["access_token"], jwks)
    assert header["typ"] == "at+jwt"
    assert access["aud"] == access["azp"] == "app2"
    assert access["sub"] == op.users()["bob"]
    assert access["aut"] == "APPLICATION_USER"
    assert access["scope"] == "openid profile groups"
    assert access["iss"] == op.issuer()
    assert access["exp"] - access["iat"] == ACCESS_TOKEN_TTL

    userinfo = op.request("GET", op.endpoint("/oauth2/userinfo"), bearer=tokens["access_token"])
    assert userinfo.status == 200, userinfo.text
    assert userinfo.json()["username"] == "bob"
    assert "email" not in userinfo.json()

    introspected = op.request(
        "POST",
        op.endpoint("/oauth2/introspect"),
        form={"token": tokens["access_token"]},
        basic_auth=("app2", "app2-secret"),
    )
    assert introspected.json()["active"] is True
    assert introspected.json()["username"] == "bob@carbon.super"


def test_carol_logs_in_to_the_acme_tenant(op: ProviderProcess) -> None:
    params, tokens = login(
        op,
        "carol",
        "carol123",
        client=("acme-app", "acme-secret"),
        tenant="acme.com",
        redirect_uri=ACME_CALLBACK,
    )
    assert {"code", "state", "session_state", "AuthenticatedIdPs"} <= params.keys()
    assert params["iss"] == op.issuer("acme.com")
    _, claims = verify_jwt(tokens["id_token"], op.get_json(op.endpoint("/oauth2/jwks", "acme.com")))
    assert claims["iss"] == f"https://localhost:{op.port}/t/acme.com/oauth2/token"
    assert claims["org_name"] == "acme.com"
    assert claims["username"] == "carol"
    assert claims["sub"] == op.users("acme.com")["carol"]
    # Keys are per tenant: the super tenant's JWKS does not hold acme.com's signing key.
    super_kids = {k["kid"] for k in op.get_json(op.endpoint("/oauth2/jwks"))["keys"]}
    assert jwt_parts(tokens["id_token"])[0]["kid"] not in super_kids


def test_max_age_adds_auth_time(op: ProviderProcess) -> None:
    _, tokens = login(op, max_age="600")
    assert "auth_time" in jwt_parts(tokens["id_token"])[1]


def test_wrong_password_shows_the_form_again_with_an_error(op: ProviderProcess) -> None:
    url, _ = authorize_url(op)
    browser = op.browser()
    response = browser.request("GET", url)
    assert response.status == 303
    login_page = urljoin(url, response.location)
    page = browser.request("GET", login_page)
    assert page.status == 200
    assert 'name="username"' in page.text and 'name="password"' in page.text
    assert 'type="submit"' in page.text
    key = callback_params(login_page)["sessionDataKey"]
    failed = browser.request(
        "POST",
        f"{op.base_url}/commonauth",
        form={
            "sessionDataKey": key,
            "tenantDomain": "carbon.super",
            "username": "alice",
            "password": "wrong",
        },
    )
    assert failed.status == 302
    again = browser.request("GET", urljoin(login_page, failed.location))
    assert again.status == 200
    assert "Login failed" in again.text and 'name="password"' in again.text
    with pytest.raises(RuntimeError, match="login failed"):
        op.scripted_login(authorize_url(op)[0], "alice", "nope")


@pytest.mark.parametrize(
    "pkce",
    [{}, {"code_challenge_method": "plain"}, {"code_challenge_method": ""}],
    ids=["no-pkce", "plain", "no-method"],
)
def test_pkce_s256_is_required(op: ProviderProcess, pkce: dict[str, str]) -> None:
    url, _ = authorize_url(op)
    parts = urlsplit(url)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    params.pop("code_challenge_method")
    if not pkce:
        params.pop("code_challenge")
    params.update({k: v for k, v in pkce.items() if v})
    response = op.request("GET", f"{op.endpoint('/oauth2/authorize')}?{urlencode(params)}")
    assert response.status == 303
    assert response.location.startswith(CALLBACK)
    assert callback_params(response.location)["error"] == "invalid_request"


def test_a_client_without_mandatory_pkce_logs_in_without_a_code_challenge(
    op: ProviderProcess,
) -> None:
    params = {
        "response_type": "code",
        "client_id": "legacy",
        "redirect_uri": CALLBACK,
        "scope": "openid",
        "state": "s",
        "nonce": "n",
    }
    url = f"{op.endpoint('/oauth2/authorize')}?{urlencode(params)}"
    location = op.scripted_login(url, "alice", "alice123")
    code = callback_params(location)["code"]
    response = op.request(
        "POST",
        op.endpoint("/oauth2/token"),
        form={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        basic_auth=("legacy", "legacy-secret"),
    )
    assert response.status == 200, response.text
    assert response.json()["id_token"]
    # The other clients still refuse a login without one.
    del params["nonce"]
    params["client_id"] = "app1"
    response = op.request("GET", f"{op.endpoint('/oauth2/authorize')}?{urlencode(params)}")
    assert callback_params(response.location)["error"] == "invalid_request"


def test_pkce_required_must_be_a_boolean(tmp_path: Path) -> None:
    config = {
        "tenants": {
            "carbon.super": {
                "clients": [
                    {
                        "client_id": "x",
                        "client_secret": "y",
                        "redirect_uris": [CALLBACK],
                        "pkce_required": "no",
                    }
                ]
            }
        }
    }
    with pytest.raises(ProviderError, match="pkce_required must be true or false"):
        ProviderProcess(tmp_path, config, quiet=True).start()


# ---- tokens ----


def refresh(op: ProviderProcess, refresh_token: str) -> Any:
    return op.request(
        "POST",
        op.endpoint("/oauth2/token"),
        form={"grant_type": "refresh_token", "refresh_token": refresh_token},
        basic_auth=("app1", "app1-secret"),
    )


def test_refresh_tokens_rotate_and_the_old_one_dies(op: ProviderProcess) -> None:
    _, tokens = login(op)
    first = refresh(op, tokens["refresh_token"])
    assert first.status == 200, first.text
    rotated = first.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert rotated["access_token"] != tokens["access_token"]
    assert jwt_parts(rotated["id_token"])[1]["sub"] == op.users()["alice"]

    reused = refresh(op, tokens["refresh_token"])
    assert reused.status == 400
    assert reused.json()["error"] == "invalid_grant"

    # Unlike oidc-provider's default, reuse does not take the new token down with it.
    again = refresh(op, rotated["refresh_token"])
    assert again.status == 200, again.text


def test_of_concurrent_refreshes_with_one_token_exactly_one_wins(op: ProviderProcess) -> None:
    _, tokens = login(op)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: refresh(op, tokens["refresh_token"]).status, range(4)))
    assert sorted(statuses) == [200, 400, 400, 400]


def test_introspection_has_the_wso2_shape(op: ProviderProcess) -> None:
    _, tokens = login(op)
    introspect = op.endpoint("/oauth2/introspect")
    client = ("app1", "app1-secret")
    answer = op.request(
        "POST", introspect, form={"token": tokens["access_token"]}, basic_auth=client
    )
    assert answer.status == 200, answer.text
    body = answer.json()
    assert set(body) == {
        "active",
        "client_id",
        "username",
        "scope",
        "exp",
        "iat",
        "nbf",
        "token_type",
        "aut",
    }
    assert body["active"] is True
    assert body["client_id"] == "app1"
    assert body["username"] == "alice@carbon.super"
    assert body["scope"] == "openid profile email groups"
    assert body["token_type"] == "Bearer"
    assert body["aut"] == "APPLICATION_USER"
    assert body["exp"] - body["iat"] == ACCESS_TOKEN_TTL

    revoked = op.request(
        "POST",
        op.endpoint("/oauth2/revoke"),
        form={"token": tokens["access_token"]},
        basic_auth=client,
    )
    assert revoked.status == 200
    after = op.request(
        "POST", introspect, form={"token": tokens["access_token"]}, basic_auth=client
    )
    assert after.json() == {"active": False}
    bogus = op.request("POST", introspect, form={"token": "not-a-token"}, basic_auth=client)
    assert bogus.json() == {"active": False}


# ---- logout ----


def test_rp_initiated_logout_redirects_and_sends_a_backchannel_logout(
    op: ProviderProcess, backchannel: BackchannelReceiver
) -> None:
    backchannel.drain()
    browser = op.browser()
    _, tokens = login(op, browser=browser)
    _, id_claims = jwt_parts(tokens["id_token"])
    assert any(s["sid"] == id_claims["sid"] for s in op.sessions())

    query = urlencode(
        {
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": POST_LOGOUT,
            "state": "bye",
            "client_id": "app1",
        }
    )
    response = browser.request("GET", f"{op.endpoint('/oidc/logout')}?{query}")
    assert response.status == 303, response.text
    assert response.location == f"{POST_LOGOUT}?state=bye"

    received = backchannel.next()
    assert received["path"] == "/oauth2/backchannel_logout"
    assert received["host"] == f"app1.localhost:{backchannel.port}"
    assert received["content_type"].startswith("application/x-www-form-urlencoded")
    (logout_token,) = received["form"]["logout_token"]
    header, claims = verify_jwt(logout_token, op.get_json(op.endpoint("/oauth2/jwks")))
    assert header["kid"].endswith("_RS256")
    assert claims["iss"] == op.issuer()
    assert claims["aud"] == "app1"
    assert claims["exp"] - claims["iat"] == 120
    assert claims["jti"]
    assert claims["sid"] == id_claims["sid"]
    assert claims["sub"] == id_claims["sub"]
    assert claims["events"] == {BACKCHANNEL_EVENT: {}}
    assert "nonce" not in claims
    assert all(s["sid"] != id_claims["sid"] for s in op.sessions())

    # The provider session is gone: the next login asks for the password again.
    url, _ = authorize_url(op)
    first = browser.request("GET", url)
    assert "/authenticationendpoint/login.do" in first.location


def test_admin_logout_ends_sessions_and_sends_backchannel_logouts(
    op: ProviderProcess, backchannel: BackchannelReceiver
) -> None:
    backchannel.drain()
    browser = op.browser()
    _, tokens = login(op, browser=browser)
    sid = jwt_parts(tokens["id_token"])[1]["sid"]

    # Single sign-on: with the provider session, no login form the second time.
    url, _ = authorize_url(op)
    assert callback_params(op.scripted_login(url, "alice", "unused", browser=browser))["code"]

    result = op.admin_logout("carbon.super", "alice")
    assert result["sessions_ended"] >= 1
    assert {"client_id": "app1", "sid": sid, "ok": True} in result["backchannel"]
    sids = set()
    while not backchannel.requests.empty():
        token = backchannel.next()["form"]["logout_token"][0]
        sids.add(jwt_parts(token)[1]["sid"])
    assert sid in sids
    assert not [s for s in op.sessions() if s["username"] == "alice"]
    # Tokens of the ended session are dead too.
    assert refresh(op, tokens["refresh_token"]).status == 400


def test_key_rotation_publishes_a_new_kid_and_keeps_sessions(op: ProviderProcess) -> None:
    _, before = login(
        op,
        "carol",
        "carol123",
        tenant="acme.com",
        client=("acme-app", "acme-secret"),
        redirect_uri=ACME_CALLBACK,
    )
    old_kid = jwt_parts(before["id_token"])[0]["kid"]
    rotated = op.rotate_keys("acme.com")
    assert rotated["previous_kid"] == old_kid != rotated["kid"]
    jwks = op.get_json(op.endpoint("/oauth2/jwks", "acme.com"))
    kids = [k["kid"] for k in jwks["keys"]]
    assert kids[:2] == [rotated["kid"], rotated["kid"].replace("_RS256", "_PS256")]
    assert old_kid in kids

    refreshed = op.request(
        "POST",
        op.endpoint("/oauth2/token", "acme.com"),
        form={"grant_type": "refresh_token", "refresh_token": before["refresh_token"]},
        basic_auth=("acme-app", "acme-secret"),
    )
    assert refreshed.status == 200, refreshed.text
    header, _ = verify_jwt(refreshed.json()["id_token"], jwks)
    assert header["kid"] == rotated["kid"]

    op.rotate_keys("acme.com", drop_old=True)
    kids = [k["kid"] for k in op.get_json(op.endpoint("/oauth2/jwks", "acme.com"))["keys"]]
    assert len(kids) == 2 and old_kid not in kids and rotated["kid"] not in kids
