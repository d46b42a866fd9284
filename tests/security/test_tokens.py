"""Provider tokens and provider traffic, attacked end to end: the real gateway, the
WSO2-shaped provider (in its misbehaving modes) and the echo back end.

- A refresh that answers with an ID token about someone else, or with garbage,
  is refused: the token never reaches the upstream, the user logs in again.
- /oauth2/auth never hands tokens to a script in the page.
- A discovery document that advertises an http:// JWKS is refused.
- expires_in that is not a finite positive number is a 502, not a 500 or a session.
- Token and logout-token JSON is parsed within bounds: a 400, never a 500.
- A forged callback's ?error= never becomes a metric label.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest

from tests.http_helpers import header_values
from tests.login_env import Client, session_key
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

ACCESS_TTL = 4
SECRET = "s3cret-tokens"
PASSWORD = "alice123"

# Tenant name -> its deliberate fault (tests/provider/config.mjs "misbehave").
MISBEHAVING = {
    "othersub.test": {"refresh_id_token": "other_sub"},
    "garbage.test": {"refresh_id_token": "garbage"},
    "httpjwks.test": {"jwks_uri": "http"},
    "inf.test": {"expires_in": "1e400"},
    "nan.test": {"expires_in": '"NaN"'},
    "neg.test": {"expires_in": "-5"},
    "abc.test": {"expires_in": '"abc"'},
}
# Routes on the super tenant (an honest provider): host -> headers block.
HONEST_ROUTES = {
    "app.localhost": "{preset: mod_auth_openidc, pass_access_token: true, pass_id_token: true}",
    "o2p.localhost": (
        "{preset: oauth2-proxy, pass_access_token: true, pass_authorization_header: true}"
    ),
    "passtok.localhost": (
        "{preset: mod_auth_openidc, pass_access_token: true, pass_id_token: true}"
    ),
}


def _host(tenant: str) -> str:
    return tenant.split(".")[0] + ".localhost"


def _client(client_id: str, hosts: list[str], ports: list[int]) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "client_secret": SECRET,
        "redirect_uris": [f"http://{h}:{p}/oauth2/callback" for h in hosts for p in ports],
        "token_endpoint_auth_method": "client_secret_basic",
    }


def _alice(tenant: str) -> dict[str, Any]:
    return {
        "username": "alice",
        "password": PASSWORD,
        "email": f"alice@{tenant}",
        "groups": ["engineering"],
    }


def _route(name: str, host: str, provider: str, client_id: str, backend: int, extra: str) -> str:
    return f"""
  - name: {name}
    hosts: [{host}]
    upstream: http://127.0.0.1:{backend}
    oidc: {{provider: {provider}, client_id: {client_id}, client_secret: {SECRET},
            user_claim: username}}
    session: {{keys: [{session_key()}], refresh_leeway: 1s}}
{extra}"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp("tokens")
    port, trusted_port, admin_port = free_port(), free_port(), free_port()
    ports = [port, trusted_port]
    tenants: dict[str, Any] = {
        "carbon.super": {"clients": [_client("honest-client", list(HONEST_ROUTES), ports)]}
    }
    for tenant, fault in MISBEHAVING.items():
        tenants[tenant] = {
            "users": [_alice(tenant)],
            "clients": [_client(f"{_host(tenant).split('.')[0]}-client", [_host(tenant)], ports)],
            "misbehave": fault,
        }
    config = {"ttl": {"AccessToken": ACCESS_TTL}, "tenants": tenants}
    with ProviderProcess(tmp / "op", config) as op, BackendProcess(name="echo") as backend:
        providers = f"  wso2: {{discovery_url: {op.discovery_url()}, ca_file: {op.ca_file}}}\n"
        routes = ""
        for host, headers in HONEST_ROUTES.items():
            extra = f"    headers: {headers}\n"
            if host == "passtok.localhost":
                extra += "    forward_auth: {pass_tokens: true}\n"
            routes += _route(host.split(".")[0], host, "wso2", "honest-client", backend.port, extra)
        for tenant in MISBEHAVING:
            name = _host(tenant).split(".")[0]
            providers += (
                f"  {name}: {{discovery_url: {op.discovery_url(tenant)}, ca_file: {op.ca_file}}}\n"
            )
            extra = "    headers: {preset: mod_auth_openidc, pass_id_token: true}\n"
            routes += _route(name, _host(tenant), name, f"{name}-client", backend.port, extra)
        gateways = {}
        for which, listen, top in (
            ("untrusted", port, f"admin: {{address: 127.0.0.1:{admin_port}}}\n"),
            ("trusted", trusted_port, "trusted_proxies: [127.0.0.1]\n"),
        ):
            path = tmp / f"{which}.yaml"
            path.write_text(
                f"listeners:\n  - address: 127.0.0.1:{listen}\n{top}"
                f"providers:\n{providers}routes:{routes}"
            )
            gateways[which] = GatewayProcess(path, tmp / f"{which}.log").start([listen])
        try:
            for listen in ports:
                deadline = time.monotonic() + 30
                while Client(listen, "app.localhost").get("/")[0] != 302:
                    assert time.monotonic() < deadline, gateways["untrusted"].log()[-3000:]
                    time.sleep(0.2)
            yield {
                "op": op,
                "port": port,
                "trusted_port": trusted_port,
                "admin_port": admin_port,
                "gateway": gateways["untrusted"],
            }
        finally:
            for gateway in gateways.values():
                gateway.stop()


def login(world: dict[str, Any], host: str, port: int | None = None) -> tuple[Client, int]:
    """Log alice in on ``host``; the client and the callback's status."""
    client = Client(port or world["port"], host)
    status, headers, _ = client.get("/echo")
    assert status == 302, f"{host}: expected a login redirect, got {status}"
    callback = world["op"].scripted_login(headers["Location"], "alice", PASSWORD)
    parts = urlsplit(callback)
    status, _, _ = client.get(f"{parts.path}?{parts.query}")
    return client, status


def echo(client: Client) -> tuple[int, dict[str, Any]]:
    status, _, body = client.get("/echo", {"Accept": "application/json"})
    return status, json.loads(body) if body.startswith(b"{") else {}


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# ---------------------------------------------------------------------------
# Refresh responses


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        pytest.param("othersub.localhost", "sub_mismatch", id="refresh-with-another-sub"),
        pytest.param("garbage.localhost", "malformed", id="refresh-with-not-a-jwt"),
    ],
)
def test_a_refreshed_id_token_that_fails_validation_is_never_stored(world, host, reason):
    client, status = login(world, host)
    assert status == 302
    status, first = echo(client)
    assert status == 200
    login_sub = jwt_claims(header_values(first, "oidc_id_token")[0])["sub"]
    time.sleep(ACCESS_TTL + 0.5)
    # The access token expired: the gateway refreshes, and the provider answers
    # with a bad ID token. The refresh counts as refused: log in again.
    status, after = echo(client)
    assert status == 401, f"got {status}: {after}"
    assert not after.get("headers"), "the request reached the upstream"
    log = world["gateway"].log()
    assert f"the new ID token is invalid ({reason})" in log
    # Nothing about mallory ever went upstream.
    assert "mallory" not in json.dumps(first) and login_sub != "mallory"


def test_an_honest_refresh_still_works(world):
    client, status = login(world, "app.localhost")
    assert status == 302
    status, first = echo(client)
    assert status == 200
    time.sleep(ACCESS_TTL + 0.5)
    status, after = echo(client)
    assert status == 200
    assert header_values(after, "oidc_access_token") != header_values(first, "oidc_access_token")
    old = jwt_claims(header_values(first, "oidc_id_token")[0])
    new = jwt_claims(header_values(after, "oidc_id_token")[0])
    assert new["sub"] == old["sub"] and new["jti"] != old["jti"]


# ---------------------------------------------------------------------------
# /oauth2/auth answers: identity yes, tokens no


TOKEN_HEADERS = ("oidc_access_token", "oidc_id_token", "x-forwarded-access-token", "authorization")


@pytest.mark.parametrize(
    ("host", "identity_header"),
    [
        pytest.param("app.localhost", "OIDC_CLAIM_username", id="mod_auth_openidc-tokens"),
        pytest.param("o2p.localhost", "X-Forwarded-User", id="oauth2-proxy-token-and-bearer"),
        pytest.param("passtok.localhost", "X-Auth-Request-User", id="pass_tokens-untrusted-peer"),
    ],
)
def test_auth_request_answer_carries_no_tokens(world, host, identity_header):
    client, status = login(world, host)
    assert status == 302
    # What a script in the page (an XSS) would do: fetch('/oauth2/auth').
    status, headers, _ = client.get(
        "/oauth2/auth", {"Accept": "*/*", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
    )
    assert status == 202
    names = {name.lower() for name in headers}
    assert not names.intersection(TOKEN_HEADERS), sorted(names)
    assert headers[identity_header] == "alice"
    assert headers["X-Auth-Request-User"] == "alice"
    # The upstream still gets them (the route asked for it).
    status, proxied = echo(client)
    assert status == 200 and header_values(
        proxied, "authorization" if host == "o2p.localhost" else "oidc_access_token"
    )


def test_pass_tokens_hands_them_to_a_trusted_proxy_only(world):
    client, status = login(world, "passtok.localhost", world["trusted_port"])
    assert status == 302
    status, headers, _ = client.get("/oauth2/auth")
    assert status == 202
    assert headers["OIDC_access_token"] and headers["OIDC_id_token"]


# ---------------------------------------------------------------------------
# Provider transport


@pytest.mark.parametrize("host", [pytest.param("httpjwks.localhost", id="http-jwks-uri")])
def test_discovery_advertising_plain_http_is_refused(world, host):
    status, _, body = Client(world["port"], host).get("/oauth2/start?rd=/echo")
    assert status == 503, body
    log = world["gateway"].log()
    assert "jwks_uri http://" in log and "must be HTTPS" in log
    # Refused before any plain-HTTP request: no connection attempt was made.
    assert "GET http://" not in log


# ---------------------------------------------------------------------------
# expires_in


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("inf.localhost", id="1e400"),
        pytest.param("nan.localhost", id="NaN-string"),
        pytest.param("neg.localhost", id="minus-5"),
        pytest.param("abc.localhost", id="abc"),
    ],
)
def test_token_response_with_a_senseless_expires_in_is_a_provider_error(world, host):
    client, status = login(world, host)
    assert status == 502
    # No session came of it.
    status, _ = echo(client)
    assert status == 401


# ---------------------------------------------------------------------------
# Bounded parsing of logout tokens (and any JWT header)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


LOGOUT_TOKENS = {
    "header-5000-brackets": _b64(b"[" * 5000) + ".e30.c2ln",
    "header-5000-objects": _b64(b'{"a":' * 5000 + b"1" + b"}" * 5000) + ".e30.c2ln",
    "header-33-levels": _b64(b"[" * 33 + b"]" * 33) + ".e30.c2ln",
    "header-NaN": _b64(b'{"alg": NaN}') + ".e30.c2ln",
    "header-huge-number": _b64(b'{"alg": "RS256", "kid": ' + b"9" * 5000 + b"}") + ".e30.c2ln",
    "header-not-utf8": _b64(b'{"alg": "\xff"}') + ".e30.c2ln",
    "many-dots": "." * 5000,
    "oversize": "a" * 200_000,
}


@pytest.mark.parametrize("name", sorted(LOGOUT_TOKENS))
def test_malformed_logout_tokens_are_a_400(world, name):
    body = urlencode({"logout_token": LOGOUT_TOKENS[name]})
    connection = http.client.HTTPConnection("127.0.0.1", world["port"], timeout=20)
    try:
        connection.request(
            "POST",
            "/oauth2/backchannel_logout",
            body=body,
            headers={
                "Host": f"app.localhost:{world['port']}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    assert response.status == 400, payload[:300]
    assert json.loads(payload)["error"]


# ---------------------------------------------------------------------------
# Metric labels


FORGED_ERRORS = {
    "70-made-up-codes": [f"forged{i}" for i in range(70)],
    "oauth-codes": ["access_denied", "login_required", "server_error"],
    "odd-codes": ["a" * 500, "x<script>", "%00", "é", "with space"],
}


def metrics(world: dict[str, Any]) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", world["admin_port"], timeout=10)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


@pytest.mark.parametrize("vector", sorted(FORGED_ERRORS))
def test_forged_callback_errors_never_become_metric_labels(world, vector):
    client = Client(world["port"], "app.localhost")
    for code in FORGED_ERRORS[vector]:
        status, _, _ = client.get(f"/oauth2/callback?error={quote(code)}&state=x")
        assert status in (401, 403)
    # The gateway's own code is still counted under its own name.
    assert client.get("/oauth2/callback?code=c&state=made-up")[0] == 400
    text = metrics(world)
    lines = [line for line in text.splitlines() if line.startswith("idgateway_logins_total")]
    assert any('reason="provider_error"' in line for line in lines), lines
    assert any('reason="bad_state"' in line for line in lines), lines
    for code in FORGED_ERRORS[vector]:
        assert f'reason="{code}"' not in text
    assert not any('reason="other"' in line for line in lines)
    # The provider's code is still in the audit log.
    log = world["gateway"].log()
    assert "login failed (forged69)" in log or vector != "70-made-up-codes"
