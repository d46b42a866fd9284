"""Bearer-token routes attacked end to end: the real gateway, the WSO2-shaped
provider (JWT and opaque access tokens, the client-credentials grant, DPoP,
introspection, and its /_test/ hooks for crafted tokens and a misbehaving
introspection endpoint) and the echo back end.

Every bad input of issue 13 is one parametrised case that must not reach the
upstream; the passing cases check what the upstream sees.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.http_helpers import header_values, request
from tests.login_env import Client
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

SECRET = "s3cret-bearer"
API = "api.localhost"
MAO = "mao.localhost"
DPOP_ONLY = "dpoponly.localhost"
WEB = "web.localhost"
OPAQUE = "opaque.localhost"
SCOPES = ["orders:read", "orders:admin"]


def _client(client_id: str, fmt: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "client_secret": SECRET,
        "redirect_uris": [f"http://{WEB}:{port}/oauth2/callback"],
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
        "access_token_format": fmt,
        **extra,
    }


def _bearer(tokens: str, dpop: str = "optional", extra: str = "") -> str:
    return (
        f"    bearer:\n      provider: wso2\n      tokens: {tokens}\n      audiences: [orders]\n"
        "      clients: [jwt-client, opaque-client]\n"
        f"      introspection: {{client_id: gw-introspect, client_secret: {SECRET},"
        " cache: 1m, negative_cache: 1s, timeout: 1s}\n"
        f"      dpop: {dpop}\n      realm: orders\n{extra}"
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp("bearer")
    port = free_port()
    tenants = {
        "carbon.super": {
            "api_scopes": SCOPES,
            "clients": [
                _client("jwt-client", "jwt", port, access_token_audiences=["orders"]),
                _client("opaque-client", "opaque", port),
                _client("other-client", "jwt", port, access_token_audiences=["orders"]),
                _client("gw-introspect", "opaque", port),
            ],
        }
    }
    with ProviderProcess(tmp / "op", {"tenants": tenants}) as op, BackendProcess() as backend:
        up = f"http://127.0.0.1:{backend.port}"
        rules = "    authorize: {scopes: [orders:read]}\n"
        admin_path = (
            f"    paths:\n      - {{prefix: /admin/, upstream: {up},"
            " authorize: {scopes: [orders:admin]}}\n"
        )
        config = f"""
listeners:
  - address: 127.0.0.1:{port}
trusted_proxies: [127.0.0.1]
providers:
  wso2: {{discovery_url: {op.discovery_url()}, ca_file: {op.ca_file}}}
routes:
  - name: api
    hosts: [{API}]
    upstream: {up}
    max_header_size: 64KB
{_bearer("[jwt, opaque]")}    public_paths: [/healthz]
{rules}{admin_path}
  - name: mao
    hosts: [{MAO}]
    upstream: {up}
{_bearer("[jwt]", "off")}    headers: mod_auth_openidc
{rules}
  - name: dpoponly
    hosts: [{DPOP_ONLY}]
    upstream: {up}
{_bearer("[jwt, opaque]", "required")}
  - name: opaque
    hosts: [{OPAQUE}]
    upstream: {up}
{_bearer("[opaque]", "off")}
  - name: web
    hosts: [{WEB}]
    upstream: {up}
    oidc: {{provider: wso2, client_id: jwt-client, client_secret: {SECRET}}}
{_bearer("[jwt]", "off")}    paths:
      - {{prefix: /api/, upstream: {up}, authorize: {{scopes: [orders:admin]}}}}
"""
        path = tmp / "gateway.yaml"
        path.write_text(config)
        gateway = GatewayProcess(path, tmp / "gateway.log").start([port])
        try:
            deadline = time.monotonic() + 30
            while Client(port, WEB).get("/")[0] != 302:
                assert time.monotonic() < deadline, gateway.log()[-3000:]
                time.sleep(0.2)
            yield {"op": op, "port": port, "gateway": gateway}
        finally:
            gateway.stop()


# ---------------------------------------------------------------------------
# helpers: tokens from the provider, crafted tokens, DPoP proofs


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def client_token(
    world: dict[str, Any], client_id: str, scope: str = "orders:read", dpop: Any = None
) -> str:
    op = world["op"]
    headers = {}
    url = op.endpoint("/oauth2/token")
    if dpop is not None:
        headers["DPoP"] = proof(dpop, "POST", url)
    answer = op.request(
        "POST",
        url,
        form={"grant_type": "client_credentials", "scope": scope},
        basic_auth=(client_id, SECRET),
        headers=headers,
    )
    assert answer.status == 200, answer
    return str(answer.json()["access_token"])


def signed(world: dict[str, Any], header: dict[str, Any] | None = None, **claims: Any) -> str:
    """A token signed with the provider's real key: only what the test changes is wrong."""
    base = {
        "sub": "jwt-client",
        "aut": "APPLICATION",
        "aud": ["jwt-client", "orders"],
        "azp": "jwt-client",
        "client_id": "jwt-client",
        "scope": "orders:read",
        "iat": "now",
        "nbf": "now",
        "exp": "now+600",
        "jti": str(uuid.uuid4()),
    }
    base.update(claims)
    body = {"claims": {k: v for k, v in base.items() if v is not None}, "header": header or {}}
    answer = _post_json(world["op"], "/_test/sign", body)
    return str(answer["token"])


def _post_json(op: ProviderProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", op.port, context=op.ssl_context(), timeout=10)
    try:
        data = json.dumps(body).encode()
        conn.request(
            "POST",
            path,
            body=data,
            headers={"Host": f"localhost:{op.port}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        payload = response.read()
        assert response.status == 200, payload
        return dict(json.loads(payload))
    finally:
        conn.close()


def introspection_mode(world: dict[str, Any], mode: str) -> None:
    op = world["op"]
    answer = op.request("POST", op.endpoint(f"/_test/introspection?mode={mode}"))
    assert answer.status == 200, answer


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def es256(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def proof(
    key: ec.EllipticCurvePrivateKey,
    method: str,
    url: str,
    *,
    token: str | None = None,
    iat: float | None = None,
    jti: str | None = None,
    ath: str | None = None,
    jwk: dict[str, str] | None = None,
) -> str:
    """An RFC 9449 proof, made here with cryptography (not the gateway's code)."""
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk or public_jwk(key)}
    claims: dict[str, Any] = {
        "jti": jti or str(uuid.uuid4()),
        "htm": method,
        "htu": url,
        "iat": int(iat if iat is not None else time.time()),
    }
    if token is not None:
        claims["ath"] = ath or b64url(hashlib.sha256(token.encode()).digest())
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    ).encode()
    return signing_input.decode() + "." + b64url(es256(key, signing_input))


def call(
    world: dict[str, Any],
    host: str,
    path: str = "/echo",
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, Any, dict[str, Any]]:
    all_headers = {"Accept": "application/json", **(headers or {})}
    status, response_headers, body = request(
        world["port"], f"{host}:{world['port']}", path, method=method, headers=all_headers
    )
    try:
        payload = json.loads(body) if body else {}
    except ValueError:
        payload = {}
    return status, response_headers, payload


def url(world: dict[str, Any], host: str, path: str = "/echo") -> str:
    return f"http://{host}:{world['port']}{path}"


def reached_upstream(payload: dict[str, Any]) -> bool:
    return "headers" in payload


# ---------------------------------------------------------------------------
# Bad input: each is refused, and nothing reaches the upstream


def _hs256_with_public_key(world: dict[str, Any]) -> dict[str, str]:
    op = world["op"]
    jwks = op.request("GET", op.endpoint("/oauth2/jwks")).json()
    key = jwks["keys"][0]
    n = int.from_bytes(base64.urlsafe_b64decode(key["n"] + "=="), "big")
    e = int.from_bytes(base64.urlsafe_b64decode(key["e"] + "=="), "big")
    pem = (
        rsa.RSAPublicNumbers(e, n)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": key["kid"]}
    good = signed(world)
    payload = good.split(".")[1]
    signing_input = (b64url(json.dumps(header).encode()) + "." + payload).encode()
    mac = hmac.new(pem, signing_input, hashlib.sha256).digest()
    return {"Authorization": f"Bearer {signing_input.decode()}.{b64url(mac)}"}


def _alg_none(world: dict[str, Any]) -> dict[str, str]:
    payload = signed(world).split(".")[1]
    header = b64url(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    return {"Authorization": f"Bearer {header}.{payload}."}


def _bearer_of(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


JWT_CASES = {
    "malformed-token": lambda w: {"Authorization": "Bearer not a token"},
    "malformed-jwt": lambda w: _bearer_of("eyJhbGciOiJSUzI1NiJ9.e30.AAAA"),
    "alg-none": _alg_none,
    "hs256-with-the-public-key": _hs256_with_public_key,
    "unknown-kid": lambda w: _bearer_of(signed(w, {"kid": "bm90LWEta2V5_RS256"})),
    "wrong-issuer": lambda w: _bearer_of(signed(w, iss="https://evil.example/oauth2/token")),
    "wrong-audience": lambda w: _bearer_of(signed(w, aud=["jwt-client", "billing"])),
    "no-audience": lambda w: _bearer_of(signed(w, aud=None)),
    "wrong-client": lambda w: _bearer_of(
        signed(w, azp="other-client", client_id="other-client", sub="other-client")
    ),
    "expired": lambda w: _bearer_of(signed(w, exp="now-3600", iat="now-7200", nbf="now-7200")),
    "not-yet-valid": lambda w: _bearer_of(signed(w, nbf="now+3600")),
    "an-id-token": lambda w: _bearer_of(signed(w, nonce="n-0S6_WzA2Mj", at_hash="x")),
    "a-logout-token": lambda w: _bearer_of(signed(w, {"typ": "logout+jwt"})),
    "long-opaque-token": lambda w: _bearer_of("a" * 16000),
    "long-jwt": lambda w: _bearer_of("a." * 4000 + "a" * 8000 + ".b"),
    "opaque-unknown-to-the-provider": lambda w: _bearer_of(str(uuid.uuid4())),
    "token-in-the-query-string-only": lambda w: {},
}


@pytest.mark.parametrize("case", sorted(JWT_CASES))
def test_bad_tokens_get_401_invalid_token(world: dict[str, Any], case: str) -> None:
    headers = JWT_CASES[case](world)
    path = "/echo"
    if case == "token-in-the-query-string-only":
        path += "?access_token=" + client_token(world, "jwt-client")
    status, answer, payload = call(world, API, path, headers)
    assert status == 401, (case, status, payload)
    assert not reached_upstream(payload)
    challenges = answer.get_all("WWW-Authenticate") or []
    bearer = next(c for c in challenges if c.startswith("Bearer "))
    assert 'realm="orders"' in bearer
    assert f'resource_metadata="http://{API}:{world["port"]}/.well-known/' in bearer
    if case == "token-in-the-query-string-only":
        assert "error=" not in bearer  # no credentials at all (RFC 6750 3.1)
    else:
        assert 'error="invalid_token"' in bearer, bearer
    # DPoP is optional on this route: its challenge is offered too.
    assert any(c.startswith("DPoP ") and "algs=" in c for c in challenges)


def test_no_token_is_logged(world: dict[str, Any]) -> None:
    token = client_token(world, "jwt-client")
    bad = signed(world, aud="billing")
    for each in (token, bad):
        call(world, API, headers=_bearer_of(each))
    log = world["gateway"].log()
    for each in (token, bad):
        assert each not in log and each.split(".")[2] not in log


def test_unknown_kid_refetches_the_jwks_once(world: dict[str, Any]) -> None:
    before = world["op"].output().count("/oauth2/jwks")
    for _ in range(5):
        status, _, _ = call(world, API, headers=_bearer_of(signed(world, {"kid": "x_RS256"})))
        assert status == 401
    after = world["op"].output().count("/oauth2/jwks")
    assert after - before <= 1, "made-up kids must not hammer the provider"


def test_duplicate_authorization_headers_are_refused(world: dict[str, Any]) -> None:
    token = client_token(world, "jwt-client")
    raw = (
        f"GET /echo HTTP/1.1\r\nHost: {API}:{world['port']}\r\nAccept: application/json\r\n"
        f"Authorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    from tests.http_helpers import send_raw

    answer = send_raw(world["port"], raw)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'error="invalid_request"' in answer
    assert b'"headers"' not in answer


@pytest.mark.parametrize("host", [API, MAO])
def test_an_authorization_header_over_16_kib_is_refused_unparsed(
    world: dict[str, Any], host: str
) -> None:
    # Over 16 KiB the header line itself is refused by the HTTP channel (its
    # 16 KiB line limit), before any route sees it; the route's own limit
    # (MAX_AUTHORIZATION) stands behind it for HTTP/2. Never the upstream.
    from tests.http_helpers import send_raw

    raw = (
        f"GET /echo HTTP/1.1\r\nHost: {host}:{world['port']}\r\n"
        f"Authorization: Bearer {'a' * (16 * 1024 + 1)}\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = send_raw(world["port"], raw)
    assert b'"headers"' not in answer
    assert answer == b"" or answer.split(b" ")[1][:1] == b"4", answer[:100]


@pytest.mark.parametrize(
    ("path", "scope", "needed"),
    [
        pytest.param("/echo", "openid", "orders:read", id="route-scope-missing"),
        pytest.param("/admin/echo", "orders:read", "orders:admin", id="path-scope-missing"),
    ],
)
def test_missing_scope_is_403_insufficient_scope(
    world: dict[str, Any], path: str, scope: str, needed: str
) -> None:
    token = client_token(world, "jwt-client", scope=scope)
    status, answer, payload = call(world, API, path, _bearer_of(token))
    assert status == 403 and not reached_upstream(payload)
    bearer = answer["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in bearer and f'scope="{needed}"' in bearer


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        pytest.param("inactive", 401, id="introspection-active-false"),
        pytest.param("500", 503, id="introspection-5xx"),
        pytest.param("garbage", 503, id="introspection-garbage"),
        pytest.param("slow", 503, id="introspection-timeout"),
    ],
)
def test_introspection_failures_never_pass(world: dict[str, Any], mode: str, status: int) -> None:
    token = client_token(world, "opaque-client")  # never introspected before: not cached
    introspection_mode(world, mode)
    try:
        got, answer, payload = call(world, OPAQUE, headers=_bearer_of(token))
    finally:
        introspection_mode(world, "normal")
    assert got == status, (got, payload)
    assert not reached_upstream(payload)
    if status == 503:
        assert answer["Retry-After"]
    else:
        assert 'error="invalid_token"' in answer["WWW-Authenticate"]


def test_a_refresh_token_is_not_an_access_token(world: dict[str, Any]) -> None:
    # An opaque token the provider does not know is inactive; a made-up JWT
    # with the route taking only opaque tokens goes to introspection too.
    status, _, payload = call(world, OPAQUE, headers=_bearer_of(signed(world)))
    assert status == 401 and not reached_upstream(payload)


# DPoP: the token is bound to key A; each case gets its own token.


def _dpop_case(world: dict[str, Any], case: str) -> tuple[int, dict[str, Any], Any]:
    key = ec_key()
    token = client_token(world, "jwt-client", dpop=key)
    target = url(world, API)
    headers = {"Authorization": f"DPoP {token}"}
    if case == "replayed":
        first = proof(key, "GET", target, token=token)
        ok, _, _ = call(world, API, headers={**headers, "DPoP": first})
        assert ok == 200
        headers["DPoP"] = first
    elif case == "other-method":
        headers["DPoP"] = proof(key, "POST", target, token=token)
    elif case == "other-url":
        headers["DPoP"] = proof(key, "GET", url(world, API, "/other"), token=token)
    elif case == "other-host":
        headers["DPoP"] = proof(key, "GET", url(world, MAO), token=token)
    elif case == "too-old":
        headers["DPoP"] = proof(key, "GET", target, token=token, iat=time.time() - 600)
    elif case == "from-the-future":
        headers["DPoP"] = proof(key, "GET", target, token=token, iat=time.time() + 600)
    elif case == "other-key":
        headers["DPoP"] = proof(ec_key(), "GET", target, token=token)
    elif case == "wrong-ath":
        headers["DPoP"] = proof(key, "GET", target, token=token, ath=b64url(b"\0" * 32))
    elif case == "private-key-in-jwk":
        secret = key.private_numbers().private_value.to_bytes(32, "big")
        private = {**public_jwk(key), "d": b64url(secret)}
        headers["DPoP"] = proof(key, "GET", target, token=token, jwk=private)
    elif case == "no-proof":
        pass
    elif case == "bound-token-sent-as-bearer":
        headers = {"Authorization": f"Bearer {token}"}
    elif case == "two-proofs":
        raw = (
            f"GET /echo HTTP/1.1\r\nHost: {API}:{world['port']}\r\n"
            f"Authorization: DPoP {token}\r\nDPoP: {proof(key, 'GET', target, token=token)}\r\n"
            f"DPoP: {proof(key, 'GET', target, token=token)}\r\nConnection: close\r\n\r\n"
        ).encode()
        from tests.http_helpers import send_raw

        answer = send_raw(world["port"], raw)
        return int(answer.split(b" ")[1]), {}, answer
    status, answer, payload = call(world, API, headers=headers)
    return status, payload, answer


DPOP_CASES = [
    "replayed",
    "other-method",
    "other-url",
    "other-host",
    "too-old",
    "from-the-future",
    "other-key",
    "wrong-ath",
    "private-key-in-jwk",
    "no-proof",
    "bound-token-sent-as-bearer",
    "two-proofs",
]


@pytest.mark.parametrize("case", DPOP_CASES)
def test_bad_dpop_is_refused(world: dict[str, Any], case: str) -> None:
    status, payload, answer = _dpop_case(world, case)
    assert status == 401, (case, payload)
    if isinstance(answer, bytes):
        assert b'"headers"' not in answer
        return
    assert not reached_upstream(payload)
    assert any(c.startswith("DPoP ") for c in answer.get_all("WWW-Authenticate"))


def test_a_route_that_requires_dpop_refuses_plain_bearer(world: dict[str, Any]) -> None:
    token = client_token(world, "jwt-client")
    status, answer, payload = call(world, DPOP_ONLY, headers=_bearer_of(token))
    assert status == 401 and not reached_upstream(payload)
    challenges = answer.get_all("WWW-Authenticate")
    assert [c.split(" ")[0] for c in challenges] == ["DPoP"]


def test_dpop_on_a_route_with_dpop_off_is_refused(world: dict[str, Any]) -> None:
    key = ec_key()
    token = client_token(world, "jwt-client", dpop=key)
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": proof(key, "GET", url(world, MAO), token=token),
    }
    status, _, payload = call(world, MAO, headers=headers)
    assert status == 401 and not reached_upstream(payload)


# ---------------------------------------------------------------------------
# What passes, and what the upstream sees


def test_a_client_credentials_jwt_passes_with_its_client_identity(world: dict[str, Any]) -> None:
    token = client_token(world, "jwt-client")
    forged = {"X-Forwarded-User": "admin", "X-Forwarded-Client-Id": "billing-service"}
    status, _, payload = call(world, API, headers={**_bearer_of(token), **forged})
    assert status == 200, payload
    assert header_values(payload, "X-Forwarded-User") == ["client:jwt-client"]
    assert header_values(payload, "X-Forwarded-Client-Id") == ["jwt-client"]
    # The API gets the client's Authorization header, as with oauth2-proxy.
    assert header_values(payload, "Authorization") == [f"Bearer {token}"]


def test_a_user_jwt_fills_the_user_headers(world: dict[str, Any]) -> None:
    alice = world["op"].users()["alice"]
    token = signed(
        world,
        sub=alice,
        aut="APPLICATION_USER",
        email="alice@example.com",
        groups=["engineering", "ops,admin"],
        username="alice",
    )
    status, _, payload = call(world, API, headers=_bearer_of(token))
    assert status == 200, payload
    assert header_values(payload, "X-Forwarded-User") == [alice]
    assert header_values(payload, "X-Forwarded-Email") == ["alice@example.com"]
    assert header_values(payload, "X-Forwarded-Groups") == ["engineering,ops%2Cadmin"]
    assert header_values(payload, "X-Forwarded-Preferred-Username") == ["alice"]


def test_the_mod_auth_openidc_preset_names_the_client(world: dict[str, Any]) -> None:
    token = client_token(world, "jwt-client")
    status, _, payload = call(
        world, MAO, headers={**_bearer_of(token), "OIDC_CLAIM_client_id": "forged"}
    )
    assert status == 200, payload
    assert header_values(payload, "OIDC_CLAIM_client_id") == ["jwt-client"]
    assert header_values(payload, "X-Remote-User") == ["client:jwt-client"]


def test_an_opaque_token_passes_and_its_answer_is_cached(world: dict[str, Any]) -> None:
    token = client_token(world, "opaque-client")
    assert token.count(".") != 2
    status, _, payload = call(world, API, headers=_bearer_of(token))
    assert status == 200, payload
    assert header_values(payload, "X-Forwarded-User") == ["client:opaque-client"]
    # Cached: with the provider's introspection now failing, it still passes.
    introspection_mode(world, "500")
    try:
        status, _, payload = call(world, API, headers=_bearer_of(token))
    finally:
        introspection_mode(world, "normal")
    assert status == 200, payload


def test_scopes_per_path(world: dict[str, Any]) -> None:
    token = client_token(world, "jwt-client", scope="orders:read orders:admin")
    for path in ("/echo", "/admin/echo"):
        status, _, payload = call(world, API, path, _bearer_of(token))
        assert status == 200, (path, payload)


def test_a_valid_dpop_request_passes(world: dict[str, Any]) -> None:
    key = ec_key()
    token = client_token(world, "jwt-client", dpop=key)
    for host in (API, DPOP_ONLY):
        for _ in range(2):  # a fresh proof each time
            headers = {
                "Authorization": f"DPoP {token}",
                "DPoP": proof(key, "GET", url(world, host, "/echo?x=1"), token=token),
            }
            status, _, payload = call(world, host, "/echo?x=1", headers)
            assert status == 200, (host, payload)


def test_public_paths_need_no_token(world: dict[str, Any]) -> None:
    status, _, payload = call(world, API, "/healthz")
    assert status == 200 and reached_upstream(payload)


def test_the_protected_resource_metadata(world: dict[str, Any]) -> None:
    status, _, document = call(world, API, "/.well-known/oauth-protected-resource")
    assert status == 200
    assert document["resource"] == f"http://{API}:{world['port']}"
    assert document["authorization_servers"] == [world["op"].issuer()]
    assert document["scopes_supported"] == ["orders:admin", "orders:read"]
    assert document["bearer_methods_supported"] == ["header"]
    assert "dpop_bound_access_tokens_required" not in document
    status, _, document = call(world, DPOP_ONLY, "/.well-known/oauth-protected-resource")
    assert status == 200 and document["dpop_bound_access_tokens_required"] is True


def test_forward_auth_accepts_a_token(world: dict[str, Any]) -> None:
    token = client_token(world, "jwt-client")
    headers = {**_bearer_of(token), "X-Forwarded-Uri": "/echo", "X-Forwarded-Method": "GET"}
    status, answer, payload = call(world, API, "/oauth2/auth", headers)
    assert status == 202, payload
    assert answer["X-Auth-Request-User"] == "client:jwt-client"
    assert answer["X-Auth-Request-Client-Id"] == "jwt-client"
    # Under /admin/ the token lacks orders:admin.
    headers["X-Forwarded-Uri"] = "/admin/x"
    status, answer, _ = call(world, API, "/oauth2/auth", headers)
    assert status == 403 and "insufficient_scope" in answer["WWW-Authenticate"]
    status, answer, _ = call(world, API, "/oauth2/auth", {"X-Forwarded-Uri": "/echo"})
    assert status == 401 and answer["WWW-Authenticate"].startswith("Bearer ")


def test_a_route_with_login_and_tokens(world: dict[str, Any]) -> None:
    port = world["port"]
    # A browser is sent to log in ...
    status, answer, _ = request(port, f"{WEB}:{port}", "/echo", headers={"Accept": "text/html"})
    assert status == 302 and "/oauth2/authorize" in answer["Location"]
    # ... an API client gets 401 with a challenge ...
    status, answer, payload = call(world, WEB)
    assert status == 401 and not reached_upstream(payload)
    assert answer["WWW-Authenticate"].startswith("Bearer realm=")
    # ... and a token is judged as a token.
    token = client_token(world, "jwt-client")
    status, _, payload = call(world, WEB, headers=_bearer_of(token))
    assert status == 200, payload
    assert header_values(payload, "X-Forwarded-User") == ["client:jwt-client"]
    # A bad token is not a reason to fall back to the (absent) session: 401, no redirect.
    status, _, payload = call(world, WEB, headers={**_bearer_of("x.y.z"), "Accept": "text/html"})
    assert status == 401 and not reached_upstream(payload)


# ---------------------------------------------------------------------------
# Two gateway processes sharing the route's Redis: one introspection for both,
# and a DPoP proof used on one is a replay on the other.


@pytest.fixture(scope="module")
def shared(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.backends import BackendProcess
    from tests.login_env import session_key
    from tests.redis_process import RedisProcess

    tmp = tmp_path_factory.mktemp("bearer-shared")
    op = world["op"]
    key = session_key()
    ports = [free_port(), free_port()]
    with RedisProcess(tmp / "redis", password="s3cret") as redis, BackendProcess() as backend:
        gateways = []
        for index, port in enumerate(ports):
            path = tmp / f"gateway-{index}.yaml"
            path.write_text(
                f"""
listeners:
  - address: 127.0.0.1:{port}
providers:
  wso2: {{discovery_url: {op.discovery_url()}, ca_file: {op.ca_file}}}
routes:
  - name: api
    hosts: [{API}]
    upstream: http://127.0.0.1:{backend.port}
    # par off: jwt-client has no callback for this host, so a pushed request
    # would be refused; the login redirect here only says the route is ready.
    oidc: {{provider: wso2, client_id: jwt-client, client_secret: {SECRET}, par: "off"}}
    session:
      store: redis
      url: redis://:s3cret@127.0.0.1:{redis.port}/2
      keys: [{key}]
{_bearer("[jwt, opaque]")}"""
            )
            gateways.append(GatewayProcess(path, tmp / f"gateway-{index}.log").start([port]))
        try:
            for port in ports:
                deadline = time.monotonic() + 30
                while Client(port, API).get("/", {"Accept": "text/html"})[0] != 302:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            yield {"op": op, "ports": ports, "redis": redis}
        finally:
            for gateway in gateways:
                gateway.stop()


def _at(port: int, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    status, _, body = request(
        port, f"{API}:{port}", "/echo", headers={"Accept": "application/json", **headers}
    )
    return status, json.loads(body) if body.startswith(b"{") else {}


def test_an_introspection_answer_is_shared_through_redis(
    world: dict[str, Any], shared: Any
) -> None:
    token = client_token(world, "opaque-client")
    before = shared["op"].output().count("POST /oauth2/introspect")
    for port in shared["ports"]:
        status, payload = _at(port, _bearer_of(token))
        assert status == 200, payload
    assert shared["op"].output().count("POST /oauth2/introspect") - before == 1
    stored = shared["redis"].call("KEYS", "idgw:api:introspect:*", db=2)
    assert len(stored) >= 1
    for name in stored:
        value = shared["redis"].call("GET", name, db=2)
        assert token.encode() not in name and token.encode() not in value
        assert b"opaque-client" not in value  # sealed, not plain JSON


def test_a_dpop_proof_used_on_one_process_is_a_replay_on_the_other(
    world: dict[str, Any], shared: Any
) -> None:
    key = ec_key()
    token = client_token(world, "jwt-client", dpop=key)
    first, second = shared["ports"]
    # htu names the host as the client sees it; both processes serve api.localhost.
    the_proof = proof(key, "GET", f"http://{API}:{first}/echo", token=token)
    headers = {"Authorization": f"DPoP {token}", "DPoP": the_proof}
    status, payload = _at(first, headers)
    assert status == 200, payload
    # Same jti as the first proof, fresh signature and the second host's URL.
    jti = json.loads(base64.urlsafe_b64decode(the_proof.split(".")[1] + "=="))["jti"]
    replay = proof(key, "GET", f"http://{API}:{second}/echo", token=token, jti=jti)
    status, payload = _at(second, {"Authorization": f"DPoP {token}", "DPoP": replay})
    assert status == 401 and not reached_upstream(payload)


def test_a_session_never_passes_a_scopes_rule(world: dict[str, Any]) -> None:
    from urllib.parse import urlsplit

    port = world["port"]
    client = Client(port, WEB)
    status, headers, _ = client.get("/echo", {"Accept": "text/html"})
    assert status == 302
    callback = world["op"].scripted_login(headers["Location"], "alice", "alice123")
    parts = urlsplit(callback)
    status, _, _ = client.get(f"{parts.path}?{parts.query}")
    assert status == 302
    status, _, body = client.get("/echo", {"Accept": "application/json"})
    assert status == 200, body
    # /api/ asks for a scope: a browser session has none, whoever it is.
    status, _, body = client.get("/api/orders", {"Accept": "application/json"})
    assert status == 403 and b'"headers"' not in body
    # A token with the scope passes there.
    token = client_token(world, "jwt-client", scope="orders:read orders:admin")
    status, _, payload = call(world, WEB, "/api/orders", _bearer_of(token))
    assert status == 200, payload


def test_a_dpop_bound_opaque_token_needs_its_proof(world: dict[str, Any]) -> None:
    key = ec_key()
    token = client_token(world, "opaque-client", dpop=key)
    assert token.count(".") != 2
    status, _, payload = call(world, API, headers=_bearer_of(token))
    assert status == 401 and not reached_upstream(payload)
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": proof(key, "GET", url(world, API), token=token),
    }
    status, _, payload = call(world, API, headers=headers)
    assert status == 200, payload
    headers["DPoP"] = proof(ec_key(), "GET", url(world, API), token=token)
    status, _, payload = call(world, API, headers=headers)
    assert status == 401 and not reached_upstream(payload)


def test_forward_auth_checks_the_dpop_proof_against_the_original_request(
    world: dict[str, Any],
) -> None:
    key = ec_key()
    token = client_token(world, "jwt-client", dpop=key)
    original = url(world, API, "/orders/7")
    headers = {
        "Authorization": f"DPoP {token}",
        "X-Forwarded-Uri": "/orders/7",
        "X-Forwarded-Method": "GET",
        "DPoP": proof(key, "GET", original, token=token),
    }
    status, answer, payload = call(world, API, "/oauth2/auth", headers)
    assert status == 202, payload
    assert answer["X-Auth-Request-User"] == "client:jwt-client"
    # A proof for /oauth2/auth itself does not name the original request.
    headers["DPoP"] = proof(key, "GET", url(world, API, "/oauth2/auth"), token=token)
    status, _, _ = call(world, API, "/oauth2/auth", headers)
    assert status == 401
