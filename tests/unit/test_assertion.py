"""The identity-assertion signer, its keys and JWKS, and the gate's use of them, in memory.

Assertions are verified with PyJWT, not with the gateway's code.
"""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from idgateway.config.model import AssertionSettings
from idgateway.config.signing_keys import (
    AssertionKeySet,
    SigningKey,
    generate_key_file,
    load_signing_key,
    signing_key_from_pem,
)
from idgateway.gate.assertion import (
    AssertionSigner,
    IdentityRecord,
    claim_strings,
    session_identity,
)
from idgateway.gate.jwks import JwksResource, send_jwks
from idgateway.gate.session_check import Visit
from idgateway.http.paths import PathReading
from tests.unit.test_gate import make_login, session

ALICE = IdentityRecord(
    sub="sub-1", email="alice@example.com", groups=("eng", "ops"), sid="0123abcd"
)
ISSUER = "https://app1.example.com"


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.fixture(params=["ec", "ed25519"])
def key(request: pytest.FixtureRequest, tmp_path: Path) -> SigningKey:
    return generate_key_file(str(tmp_path / f"{request.param}.pem"), request.param)


def signer_for(key: SigningKey, **settings: Any) -> AssertionSigner:
    audience = settings.pop("audience", "app1")
    return AssertionSigner(AssertionSettings(**settings), key, audience=audience)


def verify(token: bytes, keys: AssertionKeySet, audience: str, **options: Any) -> dict[str, Any]:
    """PyJWT against the published JWKS document, as an upstream would."""
    jwks = jwt.PyJWKSet.from_json(keys.jwks_body.decode())
    kid = jwt.get_unverified_header(token)["kid"]
    (match,) = [k for k in jwks.keys if k.key_id == kid]
    return jwt.decode(
        token,
        match.key,
        algorithms=["ES256", "EdDSA"],
        audience=audience,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"], **options},
    )


# ---- keys and the JWKS ------------------------------------------------------------------


def test_rfc8037_ed25519_key_has_the_rfc7638_thumbprint_as_kid_and_signs_as_the_rfc_says():
    # RFC 8037 appendix A.1-A.4: the key, its thumbprint, and the signature of its example.
    d = b64decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
    pem = ed25519.Ed25519PrivateKey.from_private_bytes(d).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key = signing_key_from_pem(pem, "rfc8037.pem")
    assert key.alg == "EdDSA"
    assert key.public_jwk["x"] == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    signing_input = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    expected = (
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    )
    assert base64.urlsafe_b64encode(key.sign(signing_input)).rstrip(b"=").decode() == expected


def test_jwks_publishes_every_key_public_members_only(tmp_path: Path):
    ec_key = generate_key_file(str(tmp_path / "a.pem"), "ec")
    ed_key = generate_key_file(str(tmp_path / "b.pem"), "ed25519")
    keys = AssertionKeySet((ec_key, ed_key))
    assert keys.signing is ec_key
    document = json.loads(keys.jwks_body)
    assert [k["kid"] for k in document["keys"]] == [ec_key.kid, ed_key.kid]
    ec_jwk, ed_jwk = document["keys"]
    assert set(ec_jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (ec_jwk["kty"], ec_jwk["crv"], ec_jwk["alg"]) == ("EC", "P-256", "ES256")
    assert set(ed_jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (ed_jwk["kty"], ed_jwk["crv"], ed_jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
    assert b'"d"' not in keys.jwks_body
    # An independent library reads it as a key set.
    assert {k.key_id for k in jwt.PyJWKSet.from_json(keys.jwks_body.decode()).keys} == {
        ec_key.kid,
        ed_key.kid,
    }


def test_no_keys_publish_an_empty_set():
    assert json.loads(AssertionKeySet().jwks_body) == {"keys": []}
    assert AssertionKeySet().signing is None


def test_the_same_key_loads_to_an_equal_value(tmp_path: Path):
    made = generate_key_file(str(tmp_path / "k.pem"))
    assert load_signing_key(str(tmp_path / "k.pem")) == made


def test_keygen_writes_0600_and_never_overwrites(tmp_path: Path):
    path = tmp_path / "k.pem"
    generate_key_file(str(path), "ed25519")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_key_file(str(path), "ec")
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="unknown key type"):
        generate_key_file(str(tmp_path / "rsa.pem"), "rsa")


def test_keygen_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from idgateway.cli import main

    path = tmp_path / "new.pem"
    assert main(["keygen", "--type", "ed25519", str(path)]) == 0
    assert load_signing_key(str(path)).kid in capsys.readouterr().out
    assert main(["keygen", str(path)]) == 1
    assert "never overwritten" in capsys.readouterr().err
    assert main(["keygen", str(tmp_path / "no" / "dir.pem")]) == 1
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_jwks_is_served_on_the_admin_resource(tmp_path: Path, method: bytes):
    keys = AssertionKeySet((generate_key_file(str(tmp_path / "k.pem")),))
    request = DummyRequest([b"idgateway", b"jwks.json"])
    request.method = method
    JwksResource(lambda: keys).render(request)
    assert request.finished
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/jwk-set+json"]
    body = b"".join(request.written)
    assert body == (keys.jwks_body if method == b"GET" else b"")


def test_other_methods_and_paths_are_refused(tmp_path: Path):
    keys = AssertionKeySet((generate_key_file(str(tmp_path / "k.pem")),))
    request = DummyRequest([b"idgateway", b"jwks.json"])
    request.method = b"POST"
    send_jwks(request, keys)
    assert request.responseCode == 405
    assert request.responseHeaders.getRawHeaders(b"allow") == [b"GET, HEAD"]
    other = DummyRequest([b"openid-configuration"])
    JwksResource(lambda: keys).render(other)
    assert other.responseCode == 404


# ---- the signer ---------------------------------------------------------------------------


def test_claims_verify_with_an_independent_library(key: SigningKey):
    signer = signer_for(key, lifetime=60.0)
    token = signer.assertion(ALICE, ISSUER, 1_000_000.4)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    claims = verify(token, AssertionKeySet((key,)), "app1", verify_exp=False, verify_iat=False)
    assert claims["iss"] == ISSUER and claims["aud"] == "app1"
    assert (claims["sub"], claims["email"], claims["groups"]) == (
        "sub-1",
        "alice@example.com",
        ["eng", "ops"],
    )
    assert claims["sid"] == "0123abcd" and "client_id" not in claims
    assert (claims["iat"], claims["exp"]) == (1_000_000, 1_000_060)
    assert len(b64decode(claims["jti"])) == 16


def test_a_client_token_identity_names_its_client(key: SigningKey):
    client = IdentityRecord(sub="billing-service", client_id="billing-service")
    token = signer_for(key).assertion(client, ISSUER, 1000.0)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["client_id"] == "billing-service"
    assert "email" not in claims and "groups" not in claims and "sid" not in claims


def test_audience_is_the_routes_name_or_the_configured_one(key: SigningKey):
    for_app1 = signer_for(key).assertion(ALICE, ISSUER, 1000.0)
    for_orders = signer_for(key, audience="orders").assertion(ALICE, ISSUER, 1000.0)
    keys = AssertionKeySet((key,))
    assert verify(for_orders, keys, "orders", verify_exp=False, verify_iat=False)["aud"] == "orders"
    with pytest.raises(jwt.InvalidAudienceError):
        verify(for_app1, keys, "orders", verify_exp=False, verify_iat=False)


def test_an_assertion_is_reused_until_half_its_lifetime_is_gone(key: SigningKey):
    signer = signer_for(key, lifetime=60.0)
    first = signer.assertion(ALICE, ISSUER, 1000.0)
    assert signer.assertion(ALICE, ISSUER, 1029.9) is first
    renewed = signer.assertion(ALICE, ISSUER, 1030.0)
    assert renewed != first
    one, two = (jwt.decode(t, options={"verify_signature": False}) for t in (first, renewed))
    assert one["jti"] != two["jti"] and two["exp"] == 1090


def test_long_lifetimes_are_renewed_30_seconds_before_they_end(key: SigningKey):
    signer = signer_for(key, lifetime=3600.0)
    first = signer.assertion(ALICE, ISSUER, 0.0)
    assert signer.assertion(ALICE, ISSUER, 3569.0) is first
    assert signer.assertion(ALICE, ISSUER, 3570.0) is not first


def test_each_identity_and_origin_has_its_own_assertion(key: SigningKey):
    signer = signer_for(key)
    bob = attrs.evolve(ALICE, sub="sub-2", email="bob@example.com")
    tokens = {
        signer.assertion(ALICE, ISSUER, 0.0),
        signer.assertion(bob, ISSUER, 0.0),
        signer.assertion(ALICE, "https://app1.internal", 0.0),
        signer.assertion(attrs.evolve(ALICE, groups=("eng",)), ISSUER, 0.0),
    }
    assert len(tokens) == 4


def test_the_cache_is_bounded(key: SigningKey):
    signer = AssertionSigner(AssertionSettings(), key, audience="app1", cache_max=8)
    for n in range(100):
        signer.assertion(IdentityRecord(sub=f"user-{n}"), ISSUER, 0.0)
        assert len(signer._made) <= 8


def test_injected_randomness_makes_the_jti(key: SigningKey):
    signer = AssertionSigner(
        AssertionSettings(), key, audience="app1", random=lambda n: b"\x01" * n
    )
    claims = jwt.decode(signer.assertion(ALICE, ISSUER, 0.0), options={"verify_signature": False})
    assert b64decode(claims["jti"]) == b"\x01" * 16


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("admins", ("admins",)),
        (["a", "b"], ("a", "b")),
        (["a", 3, None, {"x": 1}, "b"], ("a", "b")),
        (None, ()),
        ({"a": 1}, ()),
    ],
)
def test_groups_claim_forms(value: Any, expected: tuple[str, ...]):
    assert claim_strings(value) == expected


def test_session_identity_reads_the_routes_claims():
    s = attrs.evolve(
        session(0), claims={"mail": "a@example.com", "roles": ["x"], "email": "other@example.com"}
    )
    record = session_identity(s, email_claim="mail", groups_claim="roles")
    assert record == IdentityRecord(sub="sub-1", email="a@example.com", groups=("x",), sid="s1")
    assert (
        session_identity(
            attrs.evolve(s, claims={"mail": 7}), email_claim="mail", groups_claim="g"
        ).email
        is None
    )


# ---- the gate ---------------------------------------------------------------------------


class Forwarded:
    """Stands in for GatewayResource: records what the gate forwards."""

    def __init__(self) -> None:
        self.identity: list[list[tuple[bytes, bytes]]] = []

    def forward(self, request: Any, state: Any, runtime: Any, host: bytes, **kw: Any) -> None:
        self.identity.append(kw["identity"])


def visit(resource: Forwarded, host: bytes = b"app1.example.com", tls: bool = True) -> Visit:
    request = SimpleNamespace(
        idgw_reading=PathReading(b"/", ("/",), None, None, ("/",)),
        request_id=b"r1",
        finished=False,
        client_gone=False,
    )
    return Visit(resource, request, None, None, host, "/", None, tls)  # type: ignore[arg-type]


def test_the_gate_adds_the_assertion_and_reuses_the_same_header_list(tmp_path: Path):
    clock = Clock()
    start = int(time.time())  # PyJWT checks exp against the real clock
    clock.advance(start)
    login = make_login(clock)
    key = generate_key_file(str(tmp_path / "k.pem"))
    login.assertion = AssertionSigner(AssertionSettings(lifetime=60.0), key, audience="app1")
    resource = Forwarded()
    s = attrs.evolve(session(clock.seconds()), claims={"email": "alice@example.com"})
    login.admit(visit(resource), s, reissue=False)
    login.admit(visit(resource), s, reissue=False)
    first, second = resource.identity
    assert second is first  # the hot path: no new list, no signature
    names = [name for name, _ in first]
    assert names[-1] == b"X-Idgateway-Assertion" and b"X-Forwarded-User" in names
    claims = verify(first[-1][1], AssertionKeySet((key,)), "app1")
    assert (claims["sub"], claims["email"], claims["sid"]) == ("sub-1", "alice@example.com", "s1")
    # Another host of the route: its own issuer.
    login.admit(visit(resource, b"app1.internal:8443", tls=False), s, reissue=False)
    other = jwt.decode(resource.identity[-1][-1][1], options={"verify_signature": False})
    assert other["iss"] == "http://app1.internal:8443"
    # Half the lifetime later a new assertion (the cookie slid too: a new session value).
    clock.advance(31)
    login.admit(visit(resource), s, reissue=False)
    renewed = resource.identity[-1]
    assert renewed[-1][1] != first[-1][1]
    claims = verify(renewed[-1][1], AssertionKeySet((key,)), "app1", verify_iat=False)
    assert claims["iat"] == start + 31


def test_a_route_without_assertion_adds_no_header():
    login = make_login(Clock())
    resource = Forwarded()
    login.admit(visit(resource), session(0), reissue=False)
    assert all(b"assertion" not in name.lower() for name, _ in resource.identity[0])


# ---- the demo back end's check ------------------------------------------------------------


class _KeysByKid:
    """Stands in for PyJWKClient: the published set, without HTTP."""

    def __init__(self, keys: AssertionKeySet) -> None:
        self.set = jwt.PyJWKSet.from_json(keys.jwks_body.decode())

    def get_signing_key_from_jwt(self, token: str) -> Any:
        kid = jwt.get_unverified_header(token)["kid"]
        return next(k for k in self.set.keys if k.key_id == kid)


def test_the_demo_echo_shows_a_verified_assertion(tmp_path: Path):
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from idgateway.demo.assertion_check import AssertionCheck
    from idgateway.demo.echo import make_site

    key = generate_key_file(str(tmp_path / "k.pem"))
    keys = AssertionKeySet((key,))
    check = AssertionCheck("http://gateway/.well-known/idgateway/jwks.json", audience="app1")
    check._jwks = _KeysByKid(keys)
    token = signer_for(key).assertion(ALICE, ISSUER, time.time()).decode()

    def page(headers: dict[bytes, bytes], accept: bytes = b"application/json") -> bytes:
        site = make_site(reactor=Clock(), check=check)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        lines = [b"GET / HTTP/1.1", b"Host: app1.example.com", b"Accept: " + accept]
        lines += [name + b": " + value for name, value in headers.items()]
        channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
        channel.connectionLost(Failure(ConnectionDone()))
        return transport.value().partition(b"\r\n\r\n")[2]

    shown = json.loads(page({b"x-idgateway-assertion": token.encode()}))["assertion"]
    assert shown["verified"] and shown["kid"] == key.kid
    assert shown["claims"]["email"] == "alice@example.com"
    assert b"Signed identity assertion: verified" in page(
        {b"x-idgateway-assertion": token.encode()}, b"text/html"
    )
    forged = signer_for(key, audience="app2").assertion(ALICE, ISSUER, time.time()).decode()
    refused = json.loads(page({b"x-idgateway-assertion": forged.encode()}))["assertion"]
    assert refused["verified"] is False and "Audience" in refused["error"]
    assert "assertion" not in json.loads(page({}))


# ---- the state a configuration builds -------------------------------------------------------


def test_the_state_signs_on_assertion_routes_and_every_route_strips_the_header(tmp_path: Path):
    from twisted.internet.testing import MemoryReactorClock

    from idgateway.config.load import load_config
    from idgateway.gate.session_check import ProviderHandle
    from idgateway.routing.state import StateBuilder

    class _Builder(StateBuilder):
        def provider_handle(self, settings: Any) -> ProviderHandle:  # no discovery
            return ProviderHandle(settings=settings, client=None, http=None)  # type: ignore[arg-type]

    old = generate_key_file(str(tmp_path / "old.pem"), "ed25519")
    new = generate_key_file(str(tmp_path / "new.pem"), "ec")
    path = tmp_path / "gateway.yaml"
    text = """
listeners: [{address: 127.0.0.1:8080}]
assertion_keys: [FIRST, SECOND]
providers: {wso2: {issuer: http://127.0.0.1:9443/oauth2/token}}
routes:
  - name: app1
    hosts: [app1.example.com]
    upstream: http://127.0.0.1:3000
    oidc: {provider: wso2, client_id: app1, client_secret: s}
    session: {keys: [q3F1K2x0cUxZbU5PcFFyU3RVdld4WXphYmNkZWZnaGk=]}
    assertion: {header: X-App1-Proof, audience: orders}
  - name: open
    hosts: [open.example.com]
    upstream: http://127.0.0.1:3001
"""
    path.write_text(text.replace("FIRST", old.path).replace("SECOND", new.path))
    builder = _Builder(MemoryReactorClock())
    state = builder.build(load_config(str(path), {}))
    app1, open_route = state.runtimes["app1"], state.runtimes["open"]
    assert app1.assertion is not None and app1.login is not None
    assert app1.login.assertion is app1.assertion
    assert (app1.assertion.key, app1.assertion.audience) == (old, "orders")
    assert open_route.assertion is None
    for runtime in (app1, open_route):
        assert b"x-app1-proof" in runtime.strip_headers
    assert [k["kid"] for k in json.loads(state.assertion_keys.jwks_body)["keys"]] == [
        old.kid,
        new.kid,
    ]
    # A reload with the keys swapped: a new signer, with the new first key.
    path.write_text(text.replace("FIRST", new.path).replace("SECOND", old.path))
    reloaded = builder.build(load_config(str(path), {}), state)
    signer = reloaded.runtimes["app1"].assertion
    assert signer is not None and signer is not app1.assertion and signer.key == new


@pytest.mark.parametrize(
    "email",
    ["a@example.com\r\nX-Forwarded-User: root", "caf\u00e9@example.com", "nul\u0000@x", "\ud800"],
)
def test_hostile_claims_cannot_break_out_of_the_header(key: SigningKey, email: str):
    import re

    token = signer_for(key).assertion(attrs.evolve(ALICE, email=email), ISSUER, 0.0)
    assert re.fullmatch(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    payload = json.loads(b64decode(token.split(b".")[1].decode()))
    assert payload["email"] == email  # carried exactly, JSON-escaped inside the signature
