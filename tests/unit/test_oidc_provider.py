"""ProviderClient: discovery, retries and the JWKS cache, against an in-memory WSO2.

The fake provider (``FakeWSO2``) and the token helpers here are shared with
test_oidc_tokens.py and test_oidc_client.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import josepy
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from idgateway.oidc.provider import (
    ProviderClient,
    ProviderError,
    ProviderMetadata,
    parse_jwks,
)

BASE = "https://wso2.test:9443"
CLIENT_ID = "Zx8fVq1nA3gK0yTqWcLrJm2pB4sa"
CLIENT_SECRET = "s3cr:et+/ wi&th=odd chars"
NONCE = "n-0S6_WzA2Mj"
NOW = 1_760_000_000.0

# ---------------------------------------------------------------------------
# Keys and tokens


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@attrs.frozen
class KeyPair:
    """A provider signing key with its self-signed certificate, as WSO2 keeps it."""

    private: Any
    certificate: x509.Certificate

    @property
    def kid_base(self) -> str:
        # WSO2: base64url(hex(SHA-256(certificate DER))), then "_<alg>".
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return b64url(hashlib.sha256(der).hexdigest().encode("ascii"))

    def kid(self, alg: str) -> str:
        return f"{self.kid_base}_{alg}"

    @property
    def x5t(self) -> str:
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return b64url(hashlib.sha1(der).hexdigest().encode("ascii"))

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks_entries(self) -> list[dict[str, Any]]:
        """The key as WSO2 publishes it: twice for RSA (RS256 and PS256 kids)."""
        public = josepy.JWK.load(self.public_pem()).to_json()
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        extra = {
            "use": "sig",
            "x5c": [base64.b64encode(der).decode("ascii")],
            "x5t#S256": b64url(hashlib.sha256(der).digest()),
        }
        if isinstance(self.private, rsa.RSAPrivateKey):
            algs = ["RS256", "PS256"]
        else:
            algs = ["ES256"]
        return [{**public, **extra, "kid": self.kid(alg), "alg": alg} for alg in algs]


def make_key(kind: str = "rsa") -> KeyPair:
    if kind == "rsa":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wso2carbon")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(private, hashes.SHA256())
    )
    return KeyPair(private=private, certificate=certificate)


# RSA key generation is slow enough to share keys between tests.
RSA_KEY = make_key("rsa")
OTHER_RSA_KEY = make_key("rsa")
EC_KEY = make_key("ec")


def sign_jwt(
    claims: dict[str, Any],
    *,
    key: KeyPair | bytes | None = RSA_KEY,
    alg: str = "RS256",
    kid: str | None | object = ...,
    header: dict[str, Any] | None = None,
) -> str:
    """A compact JWS, signed with josepy's algorithms; any header you like.

    ``kid`` defaults to the WSO2 kid of ``key`` for ``alg``; ``key`` may be raw
    bytes for an HMAC secret, or None for ``alg: none``.
    """
    fields: dict[str, Any] = {"alg": alg}
    if isinstance(key, KeyPair):
        fields["x5t"] = key.x5t
        if kid is ...:
            kid = key.kid(alg)
    if kid is not ... and kid is not None:
        fields["kid"] = kid
    fields.update(header or {})
    signing_input = (
        b64url(json.dumps(fields).encode()) + "." + b64url(json.dumps(claims).encode())
    ).encode("ascii")
    if key is None:
        signature = b""
    else:
        algorithm = josepy.JWASignature.from_json(alg)
        secret = key.private if isinstance(key, KeyPair) else key
        signature = algorithm.sign(secret, signing_input)
    return signing_input.decode("ascii") + "." + b64url(signature)


def id_token_claims(provider: FakeWSO2, *, now: float = NOW, **changes: Any) -> dict[str, Any]:
    """Claims shaped like a WSO2 IS 7 ID token; ``changes`` with value None drop a claim."""
    claims: dict[str, Any] = {
        "isk": "1d7d1f5e3a1f4c5e8b2f6d1a9c3e7b5a",
        "at_hash": "yWZ22zqScxc6WbDqyMdmXQ",
        "aud": CLIENT_ID,
        "c_hash": "Cf8nNwV0kx7t9Ejk1Ua0Mg",
        "sub": "6a1f1a5c-07bc-4e9a-9bd3-1c3f1f35a0d1",
        "nbf": int(now),
        "azp": CLIENT_ID,
        "amr": ["BasicAuthenticator"],
        "iss": provider.issuer,
        "groups": ["admin", "Internal/everyone"],
        "exp": int(now) + 3600,
        "iat": int(now),
        "nonce": NONCE,
        "sid": "0d0e5b2d-3e0f-4d43-9a0a-3f4f6c0b9c51",
        "jti": str(uuid.uuid4()),
        "username": "alice",
        "org_id": "10084a8d-113f-4211-a0d5-efe36b082211",
        "org_name": "Super",
        "org_handle": "carbon.super",
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def logout_token_claims(provider: FakeWSO2, *, now: float = NOW, **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": provider.issuer,
        "sub": "alice",
        "aud": CLIENT_ID,
        "iat": int(now),
        "exp": int(now) + 120,
        "jti": str(uuid.uuid4()),
        "sid": "0d0e5b2d-3e0f-4d43-9a0a-3f4f6c0b9c51",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


# ---------------------------------------------------------------------------
# The fake provider


@attrs.define
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]
    body: bytes


class FakeWSO2(Resource):
    """The slice of WSO2 IS a relying party talks to, for one tenant.

    ``status`` set to an int makes every endpoint answer with it; ``hang``
    makes every endpoint never answer. ``token_reply`` and ``userinfo_reply``
    are (status, headers, body) with a dict body sent as JSON.
    """

    isLeaf = True

    def __init__(self, base: str = BASE, tenant: str | None = None) -> None:
        super().__init__()
        self.base = base
        self.prefix = f"/t/{tenant}" if tenant else ""
        root = base + self.prefix
        self.issuer = f"{root}/oauth2/token"
        self.keys: list[KeyPair] = [RSA_KEY]
        self.extra_jwks: list[dict[str, Any]] = []
        self.discovery: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{root}/oauth2/authorize",
            "token_endpoint": f"{root}/oauth2/token",
            "userinfo_endpoint": f"{root}/oauth2/userinfo",
            "jwks_uri": f"{root}/oauth2/jwks",
            "end_session_endpoint": f"{root}/oidc/logout",
            "introspection_endpoint": f"{root}/oauth2/introspect",
            "revocation_endpoint": f"{root}/oauth2/revoke",
            "check_session_iframe": f"{root}/oidc/checksession",
            "registration_endpoint": f"{root}/api/identity/oauth2/dcr/v1.1/register",
            "response_types_supported": ["code", "id_token", "code id_token", "token"],
            "subject_types_supported": ["pairwise", "public"],
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
            "scopes_supported": ["openid", "profile", "email", "groups"],
            "code_challenge_methods_supported": ["S256", "plain"],
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            "frontchannel_logout_supported": True,
        }
        self.status: int | None = None
        self.hang = False
        self.token_reply: tuple[int, dict[str, str], Any] = (
            200,
            {},
            {
                "access_token": "4f3a7c1e-8f2d-3b6a-9c1e-0d2f4a6b8c0e",
                "refresh_token": "9b8a7c6d-5e4f-3a2b-1c0d-e9f8a7b6c5d4",
                "scope": "openid profile",
                "id_token": "header.payload.signature",
                "token_type": "Bearer",
                "expires_in": 3600,
            },
        )
        self.userinfo_reply: tuple[int, dict[str, str], Any] = (
            200,
            {},
            {"sub": "6a1f1a5c-07bc-4e9a-9bd3-1c3f1f35a0d1", "username": "alice"},
        )
        self.requests: list[Recorded] = []
        self.hits: Counter[str] = Counter()

    @property
    def paths(self) -> dict[str, str]:
        p = self.prefix
        return {
            "discovery": f"{p}/oauth2/oidcdiscovery/.well-known/openid-configuration",
            "token_discovery": f"{p}/oauth2/token/.well-known/openid-configuration",
            "jwks": f"{p}/oauth2/jwks",
            "token": f"{p}/oauth2/token",
            "userinfo": f"{p}/oauth2/userinfo",
        }

    def url(self, name: str) -> str:
        return self.base + self.paths[name]

    def jwks(self) -> dict[str, Any]:
        entries = [entry for key in self.keys for entry in key.jwks_entries()]
        return {"keys": entries + self.extra_jwks}

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode()
        body = request.content.read() if request.content is not None else b""
        form = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append(Recorded(request.method.decode(), path, headers, form, body))
        self.hits[path] += 1
        if self.hang:
            return NOT_DONE_YET
        if self.status is not None:
            request.setResponseCode(self.status)
            return b"<html>Service Unavailable</html>"
        paths = self.paths
        if path in (paths["discovery"], paths["token_discovery"]) and request.method == b"GET":
            return self._json(request, 200, {}, self.discovery)
        if path == paths["jwks"]:
            return self._json(request, 200, {}, self.jwks())
        if path == paths["token"] and request.method == b"POST":
            return self._json(request, *self.token_reply)
        if path == paths["userinfo"]:
            return self._json(request, *self.userinfo_reply)
        request.setResponseCode(404)
        return b"not found"

    @staticmethod
    def _json(request: Request, status: int, headers: dict[str, str], body: Any) -> bytes:
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        if isinstance(body, bytes):
            return body
        if not request.responseHeaders.hasHeader(b"content-type"):
            request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    def last(self, path_name: str) -> Recorded:
        wanted = self.paths[path_name]
        return [r for r in self.requests if r.path == wanted][-1]


class MultiTenant(Resource):
    """Several FakeWSO2 tenants behind one host, dispatched by the /t/<tenant> prefix."""

    isLeaf = True

    def __init__(self, *tenants: FakeWSO2) -> None:
        super().__init__()
        self.tenants = tenants

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode()
        # Longest prefix first: the super tenant's empty prefix matches everything.
        for tenant in sorted(self.tenants, key=lambda t: len(t.prefix), reverse=True):
            if path.startswith(tenant.prefix + "/"):
                return tenant.render(request)
        request.setResponseCode(404)
        return b"not found"


# ---------------------------------------------------------------------------
# Running coroutines


def resolve(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must finish synchronously (StubTreq answers at once)."""
    results: list[Any] = []
    defer.ensureDeferred(coroutine).addBoth(results.append)
    assert results, "the coroutine is still waiting"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def make_provider(
    fake: Resource,
    clock: Clock | None = None,
    *,
    discovery_url: str | None = None,
    issuer: str | None = None,
    **options: Any,
) -> ProviderClient:
    return ProviderClient(
        "test",
        discovery_url=discovery_url,
        issuer=issuer,
        http=StubTreq(fake),  # type: ignore[arg-type]
        clock=clock or Clock(),
        **options,
    )


def ready_provider(fake: FakeWSO2, clock: Clock | None = None, **options: Any) -> ProviderClient:
    provider = make_provider(fake, clock, discovery_url=fake.url("discovery"), **options)
    provider.start()
    assert provider.ready, provider.last_error
    return provider


@pytest.fixture
def fake() -> FakeWSO2:
    return FakeWSO2()


@pytest.fixture
def clock() -> Clock:
    return Clock()


# ---------------------------------------------------------------------------
# Discovery


@pytest.mark.parametrize("form", ["discovery", "token_discovery"])
def test_discovery_by_either_wso2_url(fake: FakeWSO2, clock: Clock, form: str) -> None:
    provider = make_provider(fake, clock, discovery_url=fake.url(form))
    assert not provider.ready
    provider.start()

    assert provider.ready and provider.last_error is None
    assert fake.hits[fake.paths[form]] == 1
    assert provider.metadata == ProviderMetadata(
        issuer=f"{BASE}/oauth2/token",
        authorization_endpoint=f"{BASE}/oauth2/authorize",
        token_endpoint=f"{BASE}/oauth2/token",
        jwks_uri=f"{BASE}/oauth2/jwks",
        userinfo_endpoint=f"{BASE}/oauth2/userinfo",
        end_session_endpoint=f"{BASE}/oidc/logout",
        introspection_endpoint=f"{BASE}/oauth2/introspect",
        revocation_endpoint=f"{BASE}/oauth2/revoke",
        id_token_signing_alg_values_supported=("RS256", "PS256", "ES256"),
        code_challenge_methods_supported=("S256", "plain"),
        backchannel_logout_supported=True,
        frontchannel_logout_supported=True,
    )
    # Both WSO2 kids of the one key.
    assert {key.kid for key in provider.signing_keys} == {
        RSA_KEY.kid("RS256"),
        RSA_KEY.kid("PS256"),
    }


def test_discovery_by_issuer_uses_the_token_endpoint_form(fake: FakeWSO2, clock: Clock) -> None:
    provider = make_provider(fake, clock, issuer=fake.issuer)
    assert provider.discovery_url == f"{BASE}/oauth2/token/.well-known/openid-configuration"
    provider.start()
    assert provider.ready
    assert fake.hits[fake.paths["token_discovery"]] == 1
    assert provider.metadata is not None and provider.metadata.issuer == fake.issuer


def test_issuer_with_trailing_slash_is_trimmed_for_discovery(fake: FakeWSO2) -> None:
    provider = make_provider(fake, issuer=fake.issuer + "/")
    assert provider.discovery_url == fake.url("token_discovery")
    provider.start()
    # The configured issuer must still match exactly: it does not.
    assert not provider.ready
    assert provider.last_error is not None and "issuer" in provider.last_error


def test_tenant_discovery(clock: Clock) -> None:
    acme = FakeWSO2(tenant="acme.com")
    acme.keys = [OTHER_RSA_KEY]
    provider = make_provider(acme, clock, issuer=f"{BASE}/t/acme.com/oauth2/token")
    provider.start()
    assert provider.ready
    assert provider.metadata is not None
    assert provider.metadata.jwks_uri == f"{BASE}/t/acme.com/oauth2/jwks"
    assert {key.kid for key in provider.signing_keys} == {
        OTHER_RSA_KEY.kid("RS256"),
        OTHER_RSA_KEY.kid("PS256"),
    }


def test_configured_issuer_must_match_the_document(fake: FakeWSO2, clock: Clock) -> None:
    fake.discovery["issuer"] = f"{BASE}/oauth2/oidcdiscovery"
    provider = make_provider(fake, clock, issuer=f"{BASE}/oauth2/token")
    provider.start()
    assert not provider.ready
    assert provider.metadata is None
    assert provider.last_error is not None
    assert "oauth2/oidcdiscovery" in provider.last_error and "configured issuer" in (
        provider.last_error
    )


def test_discovery_url_and_issuer_together(fake: FakeWSO2, clock: Clock) -> None:
    provider = make_provider(
        fake, clock, discovery_url=fake.url("discovery"), issuer="https://other/oauth2/token"
    )
    provider.start()
    assert not provider.ready
    good = make_provider(fake, clock, discovery_url=fake.url("discovery"), issuer=fake.issuer)
    good.start()
    assert good.ready


def test_document_issuer_is_authoritative_without_configured_issuer(fake: FakeWSO2) -> None:
    # E.g. the gateway reaches WSO2 on an internal name; the issuer is the public one.
    fake.discovery["issuer"] = "https://login.example.com/oauth2/token"
    provider = ready_provider(fake)
    assert provider.metadata is not None
    assert provider.metadata.issuer == "https://login.example.com/oauth2/token"


def test_needs_a_discovery_url_or_issuer(fake: FakeWSO2) -> None:
    with pytest.raises(ValueError):
        make_provider(fake)


def test_optional_fields_may_be_missing(fake: FakeWSO2) -> None:
    for name in list(fake.discovery):
        if name not in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
            del fake.discovery[name]
    fake.discovery["end_session_endpoint"] = None  # WSO2 omits nulls; tolerate them anyway
    provider = ready_provider(fake)
    metadata = provider.metadata
    assert metadata is not None
    assert metadata.userinfo_endpoint is None and metadata.end_session_endpoint is None
    assert metadata.id_token_signing_alg_values_supported == ("RS256",)
    assert metadata.code_challenge_methods_supported == ()
    assert metadata.backchannel_logout_supported is False


@pytest.mark.parametrize(
    "field", ["issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"]
)
def test_required_fields(fake: FakeWSO2, clock: Clock, field: str) -> None:
    del fake.discovery[field]
    provider = make_provider(fake, clock, discovery_url=fake.url("discovery"))
    provider.start()
    assert not provider.ready
    assert provider.last_error is not None and field in provider.last_error


def test_metadata_parser_rejects_non_objects() -> None:
    with pytest.raises(ProviderError):
        ProviderMetadata.from_document(["issuer"])


# ---------------------------------------------------------------------------
# Availability: retries, refreshes, isolation


def delays(clock: Clock) -> list[float]:
    return sorted(call.getTime() - clock.seconds() for call in clock.getDelayedCalls())


def test_down_at_start_then_up(fake: FakeWSO2, clock: Clock) -> None:
    fake.status = 503
    provider = make_provider(fake, clock, discovery_url=fake.url("discovery"), retry_max=8)
    provider.start()  # does not raise

    assert not provider.ready
    assert provider.last_error is not None and "HTTP 503" in provider.last_error
    discovery = fake.paths["discovery"]
    seen = []
    for _ in range(6):
        seen.append(delays(clock))
        clock.advance(delays(clock)[0])
    assert seen == [[1.0], [2.0], [4.0], [8.0], [8.0], [8.0]]
    assert fake.hits[discovery] == 7
    assert not provider.ready

    fake.status = None
    clock.advance(8)
    assert provider.ready and provider.last_error is None
    assert fake.hits[discovery] == 8
    # Back to the regular refresh, with the backoff reset.
    assert delays(clock) == [3600.0]


def test_periodic_refresh_picks_up_new_keys(fake: FakeWSO2, clock: Clock) -> None:
    provider = ready_provider(fake, clock, refresh_interval=600)
    fake.keys = [OTHER_RSA_KEY]
    clock.advance(599)
    assert {k.kid for k in provider.signing_keys} == {RSA_KEY.kid("RS256"), RSA_KEY.kid("PS256")}
    clock.advance(1)
    assert {k.kid for k in provider.signing_keys} == {
        OTHER_RSA_KEY.kid("RS256"),
        OTHER_RSA_KEY.kid("PS256"),
    }
    assert fake.hits[fake.paths["discovery"]] == 2
    assert fake.hits[fake.paths["jwks"]] == 2
    assert delays(clock) == [600.0]


def test_failed_refresh_keeps_what_was_loaded(fake: FakeWSO2, clock: Clock) -> None:
    provider = ready_provider(fake, clock, refresh_interval=600)
    fake.status = 500
    clock.advance(600)
    assert provider.ready  # the keys from before still verify tokens
    assert provider.last_error is not None and "HTTP 500" in provider.last_error
    assert delays(clock) == [1.0]
    fake.status = None
    clock.advance(1)
    assert provider.last_error is None
    assert delays(clock) == [600.0]


def test_one_provider_down_does_not_affect_another(clock: Clock) -> None:
    up, down = FakeWSO2(), FakeWSO2(tenant="down.example")
    down.status = 502
    both = MultiTenant(up, down)
    first = make_provider(both, clock, issuer=up.issuer)
    second = make_provider(both, clock, issuer=down.issuer)
    second.start()
    first.start()
    assert first.ready
    assert not second.ready and second.last_error is not None


def test_timeout_counts_as_a_failure(fake: FakeWSO2, clock: Clock) -> None:
    fake.hang = True
    provider = make_provider(fake, clock, discovery_url=fake.url("discovery"), timeout=5)
    provider.start()
    assert provider.last_error is None and not provider.ready
    clock.advance(5)
    assert not provider.ready
    assert provider.last_error is not None and "5 s" in provider.last_error
    assert delays(clock) == [1.0]


def test_not_json(fake: FakeWSO2, clock: Clock) -> None:
    class HTML(FakeWSO2):
        def render(self, request: Request) -> bytes | int:
            return b"<html>login</html>"

    provider = make_provider(HTML(), clock, discovery_url=fake.url("discovery"))
    provider.start()
    assert provider.last_error is not None and "not JSON" in provider.last_error

    fake.discovery = ["not", "an", "object"]  # type: ignore[assignment]
    provider = make_provider(fake, clock, discovery_url=fake.url("discovery"))
    provider.start()
    assert provider.last_error is not None and "not a JSON object" in provider.last_error


def test_stop_ends_retries_and_refreshes(fake: FakeWSO2, clock: Clock) -> None:
    fake.status = 503
    provider = make_provider(fake, clock, discovery_url=fake.url("discovery"))
    provider.start()
    assert clock.getDelayedCalls()
    provider.stop()
    assert not clock.getDelayedCalls()
    # And it can be started again.
    fake.status = None
    provider.start()
    assert provider.ready
    provider.stop()
    assert not clock.getDelayedCalls()
    assert provider.ready  # what was loaded stays usable


def test_stop_cancels_a_fetch_in_progress(fake: FakeWSO2, clock: Clock) -> None:
    fake.hang = True
    provider = make_provider(fake, clock, discovery_url=fake.url("discovery"))
    provider.start()
    provider.stop()
    assert not clock.getDelayedCalls()
    assert provider.last_error is None


# ---------------------------------------------------------------------------
# Keys


def test_jwks_keeps_only_asymmetric_signature_keys() -> None:
    oct_key = {"kty": "oct", "k": b64url(b"secret" * 6), "kid": "hmac", "use": "sig"}
    enc_key = {**RSA_KEY.jwks_entries()[0], "kid": "enc", "use": "enc"}
    wrap_only = {**RSA_KEY.jwks_entries()[0], "kid": "wrap", "key_ops": ["wrapKey"]}
    no_use = {k: v for k, v in EC_KEY.jwks_entries()[0].items() if k != "use"}
    broken = {"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "AQAB"}
    keys = parse_jwks(
        {"keys": [oct_key, enc_key, wrap_only, no_use, broken, *RSA_KEY.jwks_entries()]}
    )
    assert [key.kid for key in keys] == [
        EC_KEY.kid("ES256"),
        RSA_KEY.kid("RS256"),
        RSA_KEY.kid("PS256"),
    ]
    assert [key.alg for key in keys] == ["ES256", "RS256", "PS256"]


def test_jwks_private_parts_are_dropped() -> None:
    private = josepy.JWKRSA(key=RSA_KEY.private).to_json()
    (key,) = parse_jwks({"keys": [{**private, "kid": "k"}]})
    assert isinstance(key.jwk.key._wrapped, rsa.RSAPublicKey)


@pytest.mark.parametrize(
    "document", [{"keys": []}, {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, {"nokeys": 1}, []]
)
def test_jwks_without_usable_keys_is_an_error(document: Any) -> None:
    with pytest.raises(ProviderError):
        parse_jwks(document)


def test_provider_with_only_symmetric_keys_is_not_ready(fake: FakeWSO2) -> None:
    fake.keys = []
    fake.extra_jwks = [{"kty": "oct", "k": b64url(b"k" * 32), "kid": "hs"}]
    provider = make_provider(fake, discovery_url=fake.url("discovery"))
    provider.start()
    assert not provider.ready
    assert provider.last_error is not None and "no RSA or EC" in provider.last_error


def test_key_for_known_kid(fake: FakeWSO2) -> None:
    provider = ready_provider(fake)
    rs = resolve(provider.key_for(RSA_KEY.kid("RS256"), "RS256"))
    ps = resolve(provider.key_for(RSA_KEY.kid("PS256"), "PS256"))
    assert rs is not None and rs == ps == josepy.JWK.load(RSA_KEY.public_pem())


def test_key_for_without_kid_needs_a_single_fitting_key(fake: FakeWSO2) -> None:
    provider = ready_provider(fake)
    # The key is listed twice (RS256 and PS256 kids) but is one key.
    assert resolve(provider.key_for(None, "RS256")) == josepy.JWK.load(RSA_KEY.public_pem())
    assert resolve(provider.key_for(None, "ES256")) is None

    fake.keys = [RSA_KEY, OTHER_RSA_KEY, EC_KEY]
    several = ready_provider(fake)
    assert resolve(several.key_for(None, "RS256")) is None
    assert resolve(several.key_for(None, "ES256")) == josepy.JWK.load(EC_KEY.public_pem())


def test_unknown_kid_refetches_once_rate_limited(fake: FakeWSO2, clock: Clock) -> None:
    provider = ready_provider(fake, clock, jwks_min_refetch_interval=30)
    jwks = fake.paths["jwks"]
    assert fake.hits[jwks] == 1

    # WSO2 rotates to a new key; tokens carry its kid before our next refresh.
    fake.keys = [RSA_KEY, OTHER_RSA_KEY]
    clock.advance(31)
    key = resolve(provider.key_for(OTHER_RSA_KEY.kid("RS256"), "RS256"))
    assert key == josepy.JWK.load(OTHER_RSA_KEY.public_pem())
    assert fake.hits[jwks] == 2

    # Known now: no fetch.
    assert resolve(provider.key_for(OTHER_RSA_KEY.kid("PS256"), "PS256")) is not None
    assert fake.hits[jwks] == 2

    # A second unknown kid within the interval does not refetch.
    clock.advance(10)
    assert resolve(provider.key_for("made-up_RS256", "RS256")) is None
    assert resolve(provider.key_for("another_RS256", "RS256")) is None
    assert fake.hits[jwks] == 2

    # After the interval, one more refetch; still unknown -> None.
    clock.advance(20)
    assert resolve(provider.key_for("made-up_RS256", "RS256")) is None
    assert fake.hits[jwks] == 3


@pytest.mark.parametrize("made_up", [1, 5, 50], ids=["one", "five", "fifty"])
def test_logout_tokens_with_made_up_kids_leave_logins_their_refetch(
    fake: FakeWSO2, clock: Clock, made_up: int
) -> None:
    provider = ready_provider(
        fake, clock, jwks_min_refetch_interval=30, logout_refetch_interval=300
    )
    jwks = fake.paths["jwks"]
    clock.advance(31)
    # A flood of logout tokens with made-up kids: one refetch of their own.
    for n in range(made_up):
        assert resolve(provider.key_for(f"made-up-{n}", "RS256", for_logout=True)) is None
    assert fake.hits[jwks] == 2
    # WSO2 rotates its key: a login's ID token with the new kid still gets its refetch.
    fake.keys = [RSA_KEY, OTHER_RSA_KEY]
    key = resolve(provider.key_for(OTHER_RSA_KEY.kid("RS256"), "RS256"))
    assert key == josepy.JWK.load(OTHER_RSA_KEY.public_pem())
    assert fake.hits[jwks] == 3


def test_the_logout_refetch_budget_is_smaller(fake: FakeWSO2, clock: Clock) -> None:
    provider = ready_provider(
        fake, clock, jwks_min_refetch_interval=30, logout_refetch_interval=300
    )
    jwks = fake.paths["jwks"]
    clock.advance(31)
    assert resolve(provider.key_for("a", "RS256", for_logout=True)) is None
    assert fake.hits[jwks] == 2
    clock.advance(100)  # past the logins' interval, not the logout tokens'
    assert resolve(provider.key_for("b", "RS256", for_logout=True)) is None
    assert fake.hits[jwks] == 2
    clock.advance(200)
    # A logout token's refetch still finds a rotated key.
    fake.keys = [RSA_KEY, OTHER_RSA_KEY]
    assert resolve(provider.key_for(OTHER_RSA_KEY.kid("RS256"), "RS256", for_logout=True))
    assert fake.hits[jwks] == 3
    # Right after a login's refetch the keys are fresh: no logout refetch either.
    clock.advance(400)
    assert resolve(provider.key_for("c", "RS256")) is None
    assert fake.hits[jwks] == 4
    assert resolve(provider.key_for("d", "RS256", for_logout=True)) is None
    assert fake.hits[jwks] == 4


def test_unknown_kid_right_after_start_does_not_refetch(fake: FakeWSO2, clock: Clock) -> None:
    provider = ready_provider(fake, clock)
    assert resolve(provider.key_for("unknown", "RS256")) is None
    assert fake.hits[fake.paths["jwks"]] == 1


def test_concurrent_unknown_kids_share_one_refetch(fake: FakeWSO2, clock: Clock) -> None:
    provider = ready_provider(fake, clock)
    clock.advance(60)
    fake.hang = True
    first = defer.ensureDeferred(provider.key_for("new-1", "RS256"))
    second = defer.ensureDeferred(provider.key_for("new-2", "RS256"))
    assert not first.called and not second.called
    clock.advance(10)  # the refetch times out
    assert first.called and second.called
    assert first.result is None and second.result is None
    assert fake.hits[fake.paths["jwks"]] == 2  # one start, one refetch


def test_failed_refetch_keeps_the_old_keys(fake: FakeWSO2, clock: Clock) -> None:
    provider = ready_provider(fake, clock)
    clock.advance(60)
    fake.status = 500
    assert resolve(provider.key_for("new", "RS256")) is None
    assert resolve(provider.key_for(RSA_KEY.kid("RS256"), "RS256")) is not None


def test_key_for_before_ready(fake: FakeWSO2) -> None:
    fake.status = 503
    provider = make_provider(fake, discovery_url=fake.url("discovery"))
    provider.start()
    assert resolve(provider.key_for("any", "RS256")) is None
    assert fake.hits[fake.paths["jwks"]] == 0
