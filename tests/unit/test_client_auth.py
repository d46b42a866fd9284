"""Client authentication beyond the secret (issue 15 §2): private_key_jwt
(RFC 7523) and tls_client_auth, in the calls and in the configuration."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from twisted.internet.task import Clock

from idgateway.config.client_keys import ClientKey, client_key_from_pem
from idgateway.oidc.client import ClientCredentials, exchange_code, refresh_tokens
from idgateway.oidc.client_assertion import ASSERTION_TYPE, ClientAssertionSigner
from idgateway.oidc.provider import ProviderMetadata
from tests.certs import make_ca, make_mismatched_pair
from tests.unit.test_config_providers import SECRET, load, login_file, only_problem
from tests.unit.test_oidc_client import CLIENT_ID, REDIRECT_URI, VERIFIER, http_for
from tests.unit.test_oidc_provider import FakeWSO2, ready_provider, resolve

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())


def pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode(assertion: str, public_key: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, after checking the signature."""
    head, body, signature = assertion.split(".")
    header = json.loads(b64decode(head))
    data, sig = f"{head}.{body}".encode(), b64decode(signature)
    if header["alg"] == "RS256":
        public_key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    elif header["alg"] == "PS256":
        public_key.verify(
            sig,
            data,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        )
    else:
        assert header["alg"] == "ES256" and len(sig) == 64
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    return header, json.loads(b64decode(body))


@pytest.fixture
def fake() -> FakeWSO2:
    return FakeWSO2()


@pytest.fixture
def metadata(fake: FakeWSO2) -> ProviderMetadata:
    provider = ready_provider(fake)
    assert provider.metadata is not None
    return provider.metadata


def jwt_creds(key: Any = _RSA, audience: str = "token_endpoint") -> ClientCredentials:
    signer = ClientAssertionSigner(client_key_from_pem(pem(key), "client.key"))
    return ClientCredentials(
        CLIENT_ID, auth_method="private_key_jwt", signer=signer, assertion_audience=audience
    )


def exchange(fake: FakeWSO2, metadata: ProviderMetadata, creds: ClientCredentials, clock: Clock):
    return resolve(
        exchange_code(
            http_for(fake),
            metadata,
            creds,
            code="the-code",
            redirect_uri=REDIRECT_URI,
            code_verifier=VERIFIER,
            clock=clock,
        )
    )


@pytest.mark.parametrize(("key", "alg"), [(_RSA, "RS256"), (_EC, "ES256")])
def test_private_key_jwt_code_exchange(fake, metadata, key, alg):
    clock = Clock()
    clock.advance(1_800_000_000)
    assert exchange(fake, metadata, jwt_creds(key), clock).access_token
    received = fake.last("token")
    assert "authorization" not in received.headers
    form = received.form
    assert form["client_id"] == CLIENT_ID
    assert form["client_assertion_type"] == ASSERTION_TYPE
    assert "client_secret" not in form
    header, claims = decode(form["client_assertion"], key.public_key())
    assert header == {"alg": alg, "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == metadata.token_endpoint
    assert claims["iat"] == 1_800_000_000 and claims["exp"] == 1_800_000_060
    assert len(claims["jti"]) == 32


def test_every_call_gets_a_fresh_assertion_and_refresh_uses_it_too(fake, metadata):
    clock = Clock()
    creds = jwt_creds()
    exchange(fake, metadata, creds, clock)
    first = fake.last("token").form["client_assertion"]
    resolve(refresh_tokens(http_for(fake), metadata, creds, refresh_token="rt", clock=clock))
    second = fake.last("token").form
    assert second["grant_type"] == "refresh_token"
    assert second["client_assertion"] != first
    jtis = {decode(a, _RSA.public_key())[1]["jti"] for a in (first, second["client_assertion"])}
    assert len(jtis) == 2


def test_the_audience_may_be_the_issuer(fake, metadata):
    exchange(fake, metadata, jwt_creds(audience="issuer"), Clock())
    _, claims = decode(fake.last("token").form["client_assertion"], _RSA.public_key())
    assert claims["aud"] == metadata.issuer


def test_ps256_when_the_provider_takes_only_that(fake, metadata):
    only_ps = attrs.evolve(metadata, token_endpoint_auth_signing_alg_values_supported=("PS256",))
    exchange(fake, only_ps, jwt_creds(), Clock())
    header, _ = decode(fake.last("token").form["client_assertion"], _RSA.public_key())
    assert header["alg"] == "PS256"


def test_tls_client_auth_sends_only_the_client_id(fake, metadata):
    exchange(fake, metadata, ClientCredentials(CLIENT_ID, auth_method="tls_client_auth"), Clock())
    received = fake.last("token")
    assert "authorization" not in received.headers
    assert received.form["client_id"] == CLIENT_ID
    assert not {"client_secret", "client_assertion"} & set(received.form)


def test_private_key_jwt_needs_a_signer():
    with pytest.raises(ValueError, match="needs a signer"):
        ClientCredentials(CLIENT_ID, auth_method="private_key_jwt")


# ---- configuration -------------------------------------------------------------------


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return str(path)


def test_private_key_jwt_configuration_loads(tmp_path: Path) -> None:
    key = write(tmp_path, "client.key", pem(_EC))
    config = load(
        tmp_path,
        login_file(
            "client_auth: private_key_jwt",
            f"private_key_file: {key}",
            "client_assertion_audience: issuer",
        ),
    )
    oidc = config.routes[0].auth.oidc  # type: ignore[union-attr]
    assert (oidc.client_auth, oidc.private_key_file, oidc.client_secret) == (
        "private_key_jwt",
        key,
        "",
    )
    assert oidc.client_assertion_audience == "issuer"
    assert not [w for w in config.warnings if "oidc" in w], config.warnings


def _encrypted(tmp_path: Path) -> bytes:
    return _EC.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )


BAD_KEYS = {
    "missing file": (None, "No such file"),
    "public key": (
        _RSA.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "certificate or public key, not the private key",
    ),
    "garbage": (b"hello\n", "is not a PEM private key"),
    "small RSA": (pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "1024-bit"),
    "P-384": (pem(ec.generate_private_key(ec.SECP384R1())), "secp384r1"),
    "Ed25519": (pem(ed25519.Ed25519PrivateKey.generate()), "Ed25519 key"),
    "encrypted": ("encrypted", "is encrypted"),
}


@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_unusable_private_key_files(tmp_path: Path, case: str) -> None:
    data, message = BAD_KEYS[case]
    if data == "encrypted":
        data = _encrypted(tmp_path)
    path = str(tmp_path / "none.key") if data is None else write(tmp_path, "client.key", data)  # type: ignore[arg-type]
    problem = only_problem(
        tmp_path, login_file("client_auth: private_key_jwt", f"private_key_file: {path}")
    )
    assert problem.key == "routes[0].oidc.private_key_file"
    assert message in problem.message
    assert problem.line == 14


def test_private_key_jwt_without_a_key_file(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, login_file("client_auth: private_key_jwt"))
    assert problem.key == "routes[0].oidc.private_key_file"
    assert "missing required key 'private_key_file' for client_auth: private_key_jwt" in (
        problem.message
    )


def test_a_key_file_with_a_secret_method_is_refused(tmp_path: Path) -> None:
    key = write(tmp_path, "client.key", pem(_EC))
    problem = only_problem(
        tmp_path, login_file(f"client_secret: {SECRET}", f"private_key_file: {key}")
    )
    assert problem.key == "routes[0].oidc.private_key_file"
    assert "only with client_auth: private_key_jwt" in problem.message


def test_a_secret_method_without_a_secret(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, login_file("client_auth: client_secret_post"))
    assert problem.key == "routes[0].oidc.client_secret"
    assert "'client_secret' (or 'client_secret_file') for client_auth: client_secret_post" in (
        problem.message
    )


@pytest.mark.parametrize(("secret", "warned"), [("short-secret", True), (SECRET, False)])
def test_a_short_client_secret_is_warned_about(tmp_path: Path, secret: str, warned: bool) -> None:
    config = load(tmp_path, login_file(f"client_secret: {secret}"))
    found = [w for w in config.warnings if "shorter than 16 characters" in w]
    assert bool(found) is warned
    assert all(secret not in w for w in config.warnings), "the secret is never shown"


def test_tls_client_auth_configuration(tmp_path: Path) -> None:
    leaf = make_ca(tmp_path).issue(tmp_path, ("gateway-client",))
    config = load(
        tmp_path,
        login_file(
            "client_auth: tls_client_auth",
            f"client_cert: {leaf.cert_path}",
            f"client_key: {leaf.key_path}",
        ),
    )
    oidc = config.routes[0].auth.oidc  # type: ignore[union-attr]
    assert (oidc.client_cert, oidc.client_key) == (str(leaf.cert_path), str(leaf.key_path))


def test_tls_client_auth_with_a_key_of_another_certificate(tmp_path: Path) -> None:
    leaf = make_mismatched_pair(tmp_path)
    problem = only_problem(
        tmp_path,
        login_file(
            "client_auth: tls_client_auth",
            f"client_cert: {leaf.cert_path}",
            f"client_key: {leaf.key_path}",
        ),
    )
    assert problem.key == "routes[0].oidc.client_key"
    assert "is not the key of" in problem.message


def test_tls_client_auth_without_a_key(tmp_path: Path) -> None:
    leaf = make_ca(tmp_path).issue(tmp_path, ("gateway-client",))
    problem = only_problem(
        tmp_path, login_file("client_auth: tls_client_auth", f"client_cert: {leaf.cert_path}")
    )
    assert problem.key == "routes[0].oidc.client_key"


def test_client_key_kinds() -> None:
    assert ClientKey.algorithms.fget(client_key_from_pem(pem(_RSA), "k")) == ("RS256", "PS256")  # type: ignore[attr-defined]
    assert client_key_from_pem(pem(_EC), "k").algorithms == ("ES256",)


# ---- introspection with the route's own key client -----------------------------------------


def test_introspection_authenticates_with_the_routes_client_assertion() -> None:
    from twisted.internet import defer

    from idgateway.config.model import IntrospectionSettings
    from idgateway.oidc.introspection import Introspection
    from tests.unit.test_bearer_tokens import SETTINGS, Introspect

    fake, clock = FakeWSO2(), Clock()
    provider = ready_provider(fake, clock)
    introspect = Introspect()
    creds = jwt_creds(_EC)
    checker = Introspection(
        provider,
        introspect.stub,
        SETTINGS,
        IntrospectionSettings(client_id=CLIENT_ID),
        clock,
        route="orders",
        timeout=2,
        credentials=creds,
    )
    for token in ("opaque-1", "opaque-2"):
        d = defer.ensureDeferred(checker.check(token, token.encode()))
        introspect.stub.flush()
        assert d.called
    first, second = introspect.calls
    assert first["authorization"] == ""
    assert first["client_assertion_type"] == ASSERTION_TYPE
    assert first["client_id"] == CLIENT_ID
    assert provider.metadata is not None
    _, claims = decode(first["client_assertion"], _EC.public_key())
    assert claims["aud"] == provider.metadata.token_endpoint
    assert first["client_assertion"] != second["client_assertion"]


def _bearer_route(*introspection: str, oidc: tuple[str, ...]) -> str:
    return login_file(*oidc) + (
        "    bearer:\n      provider: op\n      tokens: [opaque]\n      introspection:\n"
        + "".join(f"        {line}\n" for line in introspection)
    )


def test_introspection_without_a_secret_for_the_routes_key_client(tmp_path: Path) -> None:
    key = write(tmp_path, "client.key", pem(_EC))
    config = load(
        tmp_path,
        _bearer_route(
            "client_id: app1",
            oidc=("client_auth: private_key_jwt", f"private_key_file: {key}"),
        ),
    )
    bearer = config.routes[0].bearer
    assert bearer is not None and bearer.settings.introspection is not None
    assert bearer.settings.introspection.client_secret == ""


@pytest.mark.parametrize(
    ("introspection_client", "oidc"),
    [
        ("client_id: app1", (f"client_secret: {SECRET}",)),  # the route's client has a secret
        ("client_id: another", ("client_auth: private_key_jwt", "private_key_file: KEY")),
    ],
    ids=["secret-client", "another-client"],
)
def test_introspection_without_a_secret_otherwise(
    tmp_path: Path, introspection_client: str, oidc: tuple[str, ...]
) -> None:
    key = write(tmp_path, "client.key", pem(_EC))
    lines = tuple(line.replace("KEY", key) for line in oidc)
    problem = only_problem(tmp_path, _bearer_route(introspection_client, oidc=lines))
    assert problem.key == "routes[0].bearer.introspection.client_secret"
    assert "may be left out only for the route's own oidc client_id" in problem.message


# ---- tls_client_auth: the route's certificate in the TLS handshake (in memory) -------------


def test_mutual_tls_presents_the_routes_certificate(tmp_path: Path) -> None:
    from OpenSSL import SSL

    from idgateway.oidc.http import MutualTLSPolicy, VerifyingTLSPolicy
    from tests.unit.test_oidc_client import ServerTLS, handshake

    ca = make_ca(tmp_path / "pki")
    server = ca.issue(tmp_path / "pki", ["localhost"], key_type="rsa")
    client = ca.issue(tmp_path / "pki", ["gateway-client"], client_auth=True)
    seen: list[str] = []

    class RequiringClientCertificates(ServerTLS):
        def __init__(self) -> None:
            super().__init__(server)
            self.context.load_verify_locations(str(ca.cert_path))

            def verify(_conn: Any, cert: Any, _errno: int, _depth: int, ok: int) -> bool:
                seen.append(cert.to_cryptography().subject.rfc4514_string())
                return bool(ok)

            self.context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)

    import tests.unit.test_oidc_client as harness

    original = harness.ServerTLS
    harness.ServerTLS = lambda _leaf: RequiringClientCertificates()  # type: ignore[assignment,misc]
    try:
        mutual = MutualTLSPolicy(str(ca.cert_path), str(client.cert_path), str(client.key_path))
        ok = handshake(server, mutual.creatorForNetloc(b"localhost", 443))
        assert ok.handshake_done and ok.lost is None
        assert any("gateway-client" in subject for subject in seen)
        seen.clear()
        plain = VerifyingTLSPolicy(str(ca.cert_path)).creatorForNetloc(b"localhost", 443)
        refused = handshake(server, plain)
        # (TLS 1.3: the client finishes first; the server's alert then ends it.)
        assert refused.lost is not None, "the server requires a client certificate"
        assert not any("gateway-client" in subject for subject in seen)
    finally:
        harness.ServerTLS = original  # type: ignore[misc]
