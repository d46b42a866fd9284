"""Attacks on the signed identity assertion, against the real gateway.

A client tries to hand the upstream an assertion of its own (every spelling
and duplication a back end might read as the header), to use one route's
assertion at another, to use an old one, to find a private key in the JWKS,
and to make a public path, a path sub-route or an upstream answer the JWKS
URL in the gateway's place. Assertions are checked with PyJWT, as an upstream
would, never with the gateway's code.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from idgateway.config.signing_keys import JWKS_PATH, generate_key_file
from tests.http_helpers import header_values
from tests.login_env import APP1_SECRET, APP2_SECRET, Client, session_key, two_tenant_config
from tests.processes import free_port
from tests.provider_process import ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

HEADER_KEY = "x-idgateway-assertion"  # lower case, "-" for "_": as back ends compare names
APP2_LIFETIME = 2


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.backends import BackendProcess
    from tests.processes import GatewayProcess

    tmp = tmp_path_factory.mktemp("assertion-attacks")
    port = free_port()
    ec_key = generate_key_file(str(tmp / "signing-ec.pem"), "ec")
    generate_key_file(str(tmp / "next-ed25519.pem"), "ed25519")
    (tmp / "app2-secret").write_text(APP2_SECRET + "\n")
    with (
        BackendProcess(name="echo") as backend,
        ProviderProcess(tmp / "op", two_tenant_config(port)) as op,
    ):
        echo = f"http://127.0.0.1:{backend.port}"
        (tmp / "gateway.yaml").write_text(f"""
listeners:
  - address: 127.0.0.1:{port}
assertion_keys: [{tmp / "signing-ec.pem"}, {tmp / "next-ed25519.pem"}]
providers:
  wso2: {{discovery_url: {op.discovery_url()}, ca_file: {op.ca_file}}}
  acme: {{issuer: {op.issuer("acme.com")}, ca_file: {op.ca_file}}}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: {echo}
    oidc:
      provider: wso2
      client_id: app1-client
      client_secret: ${{APP1_CLIENT_SECRET}}
      scopes: [openid, email, profile, groups]
      user_claim: username
    session: {{keys: [{session_key()}]}}
    # Everything under /.well-known/ is public and goes to its own upstream: the
    # JWKS must still be the gateway's.
    public_paths: [/public/, /.well-known/]
    paths:
      - {{prefix: /.well-known/, upstream: {echo}}}
    assertion: {{header: X-Idgateway-Assertion, lifetime: 60s}}
  - name: app2
    hosts: [app2.localhost]
    upstream: {echo}
    oidc:
      provider: acme
      client_id: app2-client
      client_secret_file: {tmp / "app2-secret"}
      client_auth: client_secret_post
      user_claim: username
    session: {{keys: [{session_key()}]}}
    assertion: {{lifetime: {APP2_LIFETIME}s}}
  - name: open
    hosts: [open.localhost]
    upstream: {echo}
    case_insensitive_paths: true
""")
        process = GatewayProcess(
            tmp / "gateway.yaml", tmp / "gateway.log", env={"APP1_CLIENT_SECRET": APP1_SECRET}
        )
        process.start([port])
        try:
            app1 = Client(port, "app1.localhost")
            deadline = time.monotonic() + 20
            while app1.get("/")[0] != 302:  # discovery done: login is offered
                assert time.monotonic() < deadline, process.output()
                time.sleep(0.2)
            status, _ = app1.login(op, "/echo", "alice", "alice123")
            assert status == 200
            app2 = Client(port, "app2.localhost")
            status, _ = app2.login(op, "/echo", "carol", "carol123")
            assert status == 200
            jwks = json.loads(Client(port, "open.localhost").get(JWKS_PATH)[2])
            yield {"port": port, "app1": app1, "app2": app2, "jwks": jwks, "ec_key": ec_key}
        finally:
            process.stop()


def send(
    port: int, host: str, path: str, headers: list[tuple[str, str]], method: str = "GET"
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with exactly these header lines (repeats and odd spellings kept)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"{host}:{port}")
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def cookie_of(client: Client) -> tuple[str, str]:
    return ("Cookie", "; ".join(f"{k}={v}" for k, v in client.cookies.items()))


def assertion_headers(echo: dict[str, Any]) -> list[str]:
    """Every header the upstream got that a back end could read as the assertion."""
    return [v for n, v in echo["headers"] if n.lower().replace("_", "-") == HEADER_KEY]


def verify(token: str, jwks: dict[str, Any], **kw: Any) -> dict[str, Any]:
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(token, keys[kid].key, algorithms=["ES256", "EdDSA"], leeway=1, **kw)


def attacker_token(port: int) -> str:
    """A well-formed assertion for app1, signed with a key the gateway does not know."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    claims = {
        "iss": f"http://app1.localhost:{port}",
        "aud": "app1",
        "sub": "admin",
        "email": "root@example.com",
        "groups": ["admins"],
        "iat": now,
        "exp": now + 60,
        "jti": "forged",
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "forged-kid"})


# ---- a client-sent assertion never reaches the upstream ---------------------------------

SPELLINGS = {
    "exact": [("X-Idgateway-Assertion", "{forged}")],
    "lower-case": [("x-idgateway-assertion", "{forged}")],
    "upper-case": [("X-IDGATEWAY-ASSERTION", "{forged}")],
    "underscores": [("X_Idgateway_Assertion", "{forged}")],
    "mixed-separators": [("x_IDGATEWAY-assertion", "{forged}")],
    "duplicate": [("X-Idgateway-Assertion", "{forged}"), ("X-Idgateway-Assertion", "{forged}")],
    "duplicate-spellings": [
        ("X-Idgateway-Assertion", "{forged}"),
        ("x_idgateway_assertion", "{forged}"),
    ],
    "empty-value": [("X-Idgateway-Assertion", "")],
    # Connection naming the header asks the gateway to drop it as hop-by-hop: the
    # client's copy goes, and the gateway's own is still added after the filtering.
    "named-in-connection": [
        ("Connection", "X-Idgateway-Assertion"),
        ("X-Idgateway-Assertion", "{forged}"),
    ],
    "list-value": [("X-Idgateway-Assertion", "{forged}, {forged}")],
}
PLACES = {
    "signed-in": ("app1.localhost", "/echo"),
    "public-path": ("app1.localhost", "/public/echo"),
    "route-without-assertion": ("open.localhost", "/echo"),
    "other-route-signed-in": ("app2.localhost", "/echo"),
}


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_a_client_sent_assertion_is_stripped(gateway: Any, spelling: str, place: str) -> None:
    port = gateway["port"]
    forged = attacker_token(port)
    host, path = PLACES[place]
    headers = [(name, value.format(forged=forged)) for name, value in SPELLINGS[spelling]]
    if host != "open.localhost":
        client = gateway["app1"] if host.startswith("app1") else gateway["app2"]
        headers.append(cookie_of(client))
    status, _, body = send(port, host, path, [("Accept", "application/json"), *headers])
    assert status == 200, body
    echo = json.loads(body)
    assert forged not in json.dumps(echo)
    received = assertion_headers(echo)
    if place in ("signed-in", "other-route-signed-in"):
        # Exactly one: the gateway's own, which verifies.
        assert len(received) == 1
        audience = "app1" if host.startswith("app1") else "app2"
        assert verify(received[0], gateway["jwks"], audience=audience)["sub"]
    else:
        assert received == []


# ---- an assertion is for one route, for a short time -------------------------------------


def fresh_assertion(gateway: Any, name: str) -> str:
    client = gateway[name]
    status, _, body = send(gateway["port"], client.host.split(":")[0], "/echo", [cookie_of(client)])
    assert status == 200, body
    (token,) = assertion_headers(json.loads(body))
    return token  # type: ignore[no-any-return]


def test_route_a_assertion_is_not_route_b_audience(gateway: Any) -> None:
    port, jwks = gateway["port"], gateway["jwks"]
    for_app1 = fresh_assertion(gateway, "app1")
    for_app2 = fresh_assertion(gateway, "app2")
    claims1 = jwt.decode(for_app1, options={"verify_signature": False})
    claims2 = jwt.decode(for_app2, options={"verify_signature": False})
    assert claims1["aud"] == "app1" and claims2["aud"] == "app2"
    assert claims1["iss"] == f"http://app1.localhost:{port}"
    assert claims2["iss"] == f"http://app2.localhost:{port}"
    # app2's upstream, checking its audience, refuses app1's assertion (and vice versa).
    with pytest.raises(jwt.InvalidAudienceError):
        verify(for_app1, jwks, audience="app2")
    with pytest.raises(jwt.InvalidAudienceError):
        verify(for_app2, jwks, audience="app1")
    assert verify(for_app1, jwks, audience="app1")["aud"] == "app1"


def test_an_old_assertion_has_expired(gateway: Any) -> None:
    jwks = gateway["jwks"]
    old = fresh_assertion(gateway, "app2")
    claims = verify(old, jwks, audience="app2")
    assert claims["exp"] - claims["iat"] == APP2_LIFETIME
    time.sleep(claims["exp"] - time.time() + 1.5)  # past exp, and past PyJWT's 1 s leeway
    assert jwt.decode(old, options={"verify_signature": False})["exp"] < time.time()
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(old, jwks, audience="app2")
    new = fresh_assertion(gateway, "app2")
    assert new != old
    assert verify(new, jwks, audience="app2")["exp"] > time.time()


# ---- the JWKS -------------------------------------------------------------------------------

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def test_the_jwks_has_no_private_members(gateway: Any) -> None:
    jwks = gateway["jwks"]
    assert [key["kty"] for key in jwks["keys"]] == ["EC", "OKP"]
    for key in jwks["keys"]:
        assert not PRIVATE_MEMBERS & set(key), key
        assert key["use"] == "sig"
    assert jwks["keys"][0]["kid"] == gateway["ec_key"].kid


SHADOWING = {
    # (host, target): what the attacker hopes an upstream or a public path answers.
    "public-path-and-sub-route": ("app1.localhost", JWKS_PATH),
    "with-a-query": ("app1.localhost", JWKS_PATH + "?upstream=1"),
    "open-route": ("open.localhost", JWKS_PATH),
    "case-insensitive-route": ("open.localhost", "/.WELL-KNOWN/IdGateway/JWKS.json"),
    "encoded-dot": ("app1.localhost", "/.well-known/idgateway/jwks%2Ejson"),
    "encoded-letter": ("open.localhost", "/.well-known/%69dgateway/jwks.json"),
    "dot-segment": ("app1.localhost", "/.well-known/idgateway/./jwks.json"),
    "dot-dot-segment": ("app1.localhost", "/.well-known/x/../idgateway/jwks.json"),
    "double-slash": ("open.localhost", "//.well-known/idgateway/jwks.json"),
    "signed-in": ("app1.localhost", JWKS_PATH),
}


@pytest.mark.parametrize("case", sorted(SHADOWING))
def test_the_jwks_cannot_be_shadowed(gateway: Any, case: str) -> None:
    port = gateway["port"]
    host, target = SHADOWING[case]
    headers = [cookie_of(gateway["app1"])] if case == "signed-in" else []
    status, response_headers, body = send(port, host, target, headers)
    # The gateway answers each of these readings of the JWKS path itself.
    assert response_headers.get("X-Backend-Name") is None, body
    assert status == 200, body
    assert response_headers["Content-Type"] == "application/jwk-set+json"
    assert json.loads(body) == gateway["jwks"]


def test_a_neighbouring_path_still_reaches_the_upstream(gateway: Any) -> None:
    # Only the JWKS itself is the gateway's: the rest of /.well-known/ is the app's.
    status, headers, body = send(gateway["port"], "app1.localhost", "/.well-known/other", [])
    assert status == 200 and headers["X-Backend-Name"] == "echo"
    assert json.loads(body)["path"] == "/.well-known/other"


def test_the_echo_shows_client_headers_it_is_given(gateway: Any) -> None:
    # The control for the stripping cases: a header of a neighbouring name arrives.
    _, _, body = send(
        gateway["port"], "open.localhost", "/echo", [("X-Idgateway-Assertion-Note", "kept")]
    )
    assert header_values(json.loads(body), "x-idgateway-assertion-note") == ["kept"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_writing_to_the_jwks_is_refused_not_proxied(gateway: Any, method: str) -> None:
    status, headers, _ = send(gateway["port"], "app1.localhost", JWKS_PATH, [], method=method)
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert headers.get("X-Backend-Name") is None


def test_head_of_the_jwks(gateway: Any) -> None:
    status, headers, body = send(gateway["port"], "open.localhost", JWKS_PATH, [], method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_the_upstream_gets_no_assertion_on_a_public_path(gateway: Any) -> None:
    _, _, body = send(gateway["port"], "app1.localhost", "/public/x", [cookie_of(gateway["app1"])])
    echo = json.loads(body)
    assert assertion_headers(echo) == [] and header_values(echo, "x-forwarded-user") == []


def test_forward_auth_gives_no_assertion_to_an_untrusted_peer(gateway: Any) -> None:
    # A script in the page can fetch /oauth2/auth and read its headers: the
    # assertion (like a token) is only for a proxy in trusted_proxies (none here).
    status, headers, _ = send(
        gateway["port"], "app1.localhost", "/oauth2/auth", [cookie_of(gateway["app1"])]
    )
    assert status == 202 and headers["X-Auth-Request-User"]
    assert headers.get("X-Idgateway-Assertion") is None
