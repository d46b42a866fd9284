"""Access tokens in memory: JWT verification and its memo, DPoP proofs, introspection."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from idgateway.config.model import BearerSettings, IntrospectionSettings
from idgateway.oidc.access_tokens import (
    AccessToken,
    JWTAccessTokens,
    VerifiedMemo,
    access_token_from_claims,
    ath_of,
    token_digest,
)
from idgateway.oidc.dpop import DPoPError, check_proof, thumbprint
from idgateway.oidc.introspection import Introspection, IntrospectionUnavailable
from idgateway.oidc.provider import ProviderClient
from idgateway.oidc.tokens import TokenError
from tests.unit.test_oidc_provider import (
    NOW,
    OTHER_RSA_KEY,
    RSA_KEY,
    FakeWSO2,
    b64url,
    ready_provider,
    resolve,
    sign_jwt,
)

SETTINGS = BearerSettings(
    provider="wso2",
    tokens=("jwt", "opaque"),
    audiences=("orders",),
    clients=("spa-client", "billing-service"),
    introspection=IntrospectionSettings(client_id="gw", client_secret="pw", cache=300.0),
)


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


@pytest.fixture
def fake() -> FakeWSO2:
    return FakeWSO2()


@pytest.fixture
def provider(fake: FakeWSO2, clock: Clock) -> ProviderClient:
    return ready_provider(fake, clock)


def claims(fake: FakeWSO2, **changes: Any) -> dict[str, Any]:
    base = {
        "iss": fake.issuer,
        "sub": "billing-service",
        "aut": "APPLICATION",
        "aud": ["billing-service", "orders"],
        "azp": "billing-service",
        "client_id": "billing-service",
        "scope": "orders:read orders:write",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 600,
        "jti": str(uuid.uuid4()),
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def verify(verifier: JWTAccessTokens, token: str) -> AccessToken:
    return resolve(verifier.verify(token, token_digest(token)))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# JWT access tokens


def test_a_client_credentials_token(fake: FakeWSO2, provider: ProviderClient, clock: Clock) -> None:
    verifier = JWTAccessTokens(provider, SETTINGS, clock)
    token = sign_jwt(claims(fake), header={"typ": "at+jwt"})
    verified = verify(verifier, token)
    assert verified.user == "client:billing-service" and verified.is_client
    assert verified.client_id == "billing-service"
    assert verified.scopes == {"orders:read", "orders:write"}
    assert verified.claims["client_id"] == "billing-service"
    assert "exp" not in verified.claims and "aud" not in verified.claims


def test_a_user_token_names_the_user(
    fake: FakeWSO2, provider: ProviderClient, clock: Clock
) -> None:
    verifier = JWTAccessTokens(provider, SETTINGS, clock, user_claim="username")
    token = sign_jwt(claims(fake, sub="6a1f", aut="APPLICATION_USER", azp="spa-client"))
    verified = verify(verifier, token)
    # No username claim in the token: the sub names the user.
    assert verified.user == "6a1f" and not verified.is_client
    assert verified.scopes == {"orders:read", "orders:write"}
    listed = sign_jwt(claims(fake, sub="6a1f", aut=None, scope=["a", "b"], username="alice"))
    assert verify(verifier, listed).user == "alice"
    assert verify(verifier, listed).scopes == {"a", "b"}


def test_a_verified_token_is_remembered_until_it_expires(
    fake: FakeWSO2, provider: ProviderClient, clock: Clock
) -> None:
    verifier = JWTAccessTokens(provider, SETTINGS, clock)
    token = sign_jwt(claims(fake, exp=int(NOW) + 100))
    digest = token_digest(token)
    assert verifier.remembered(digest) is None
    verified = verify(verifier, token)
    # The hot path: no signature check, the same object.
    fake.keys = []
    assert verifier.remembered(digest) is verified
    clock.advance(100 + SETTINGS.leeway + 1)
    assert verifier.remembered(digest) is None


def test_the_memo_is_bounded(clock: Clock) -> None:
    memo = VerifiedMemo(clock, limit=3)
    token = access_token_from_claims(
        "jwt", {"sub": "x", "exp": NOW + 10}, user_claim="sub", expires_at=NOW + 10
    )
    for index in range(10):
        memo.put(hashlib.sha256(b"%d" % index).digest(), token)
        assert len(memo) <= 3


def _hs256_with_public_key(fake: FakeWSO2) -> str:
    return sign_jwt(claims(fake), key=RSA_KEY.public_pem(), alg="HS256", kid=RSA_KEY.kid("RS256"))


BAD_JWTS = {
    "alg-none": lambda f: sign_jwt(claims(f), key=None, alg="none"),
    "hs256-with-the-public-key": _hs256_with_public_key,
    "unknown-kid": lambda f: sign_jwt(claims(f), kid="made-up_RS256"),
    "other-key-same-kid": lambda f: sign_jwt(
        claims(f), key=OTHER_RSA_KEY, kid=RSA_KEY.kid("RS256")
    ),
    "wrong-issuer": lambda f: sign_jwt(claims(f, iss="https://evil.test/oauth2/token")),
    "wrong-audience": lambda f: sign_jwt(claims(f, aud="billing")),
    "no-audience": lambda f: sign_jwt(claims(f, aud=None)),
    "audience-not-a-string": lambda f: sign_jwt(claims(f, aud=[1, {"a": "orders"}])),
    "wrong-client": lambda f: sign_jwt(claims(f, azp="mallory", client_id="mallory")),
    "no-client": lambda f: sign_jwt(claims(f, azp=None, client_id=None)),
    "expired": lambda f: sign_jwt(claims(f, exp=int(NOW) - 61)),
    "no-exp": lambda f: sign_jwt(claims(f, exp=None)),
    "exp-a-string": lambda f: sign_jwt(claims(f, exp="tomorrow")),
    "not-yet-valid": lambda f: sign_jwt(claims(f, nbf=int(NOW) + 61)),
    "issued-in-the-future": lambda f: sign_jwt(claims(f, iat=int(NOW) + 61)),
    "an-id-token": lambda f: sign_jwt(claims(f, nonce="n", at_hash="x")),
    "a-logout-token": lambda f: sign_jwt(claims(f), header={"typ": "logout+jwt"}),
    "a-dpop-proof": lambda f: sign_jwt(claims(f), header={"typ": "dpop+jwt"}),
    "malformed": lambda f: "a.b.c",
    "attackers-key-in-the-header": lambda f: sign_jwt(
        claims(f),
        key=OTHER_RSA_KEY,
        kid=None,
        header={"jwk": OTHER_RSA_KEY.jwks_entries()[0], "jku": "https://evil.test/jwks"},
    ),
    "stray-characters": lambda f: sign_jwt(claims(f)).replace(".", ".!", 1),
}


@pytest.mark.parametrize("case", sorted(BAD_JWTS))
def test_bad_jwts_are_refused(
    fake: FakeWSO2, provider: ProviderClient, clock: Clock, case: str
) -> None:
    verifier = JWTAccessTokens(provider, SETTINGS, clock)
    token = BAD_JWTS[case](fake)
    with pytest.raises(TokenError) as caught:
        verify(verifier, token)
    assert token not in str(caught.value)
    assert verifier.remembered(token_digest(token)) is None


def test_unknown_kids_refetch_the_jwks_once(
    fake: FakeWSO2, provider: ProviderClient, clock: Clock
) -> None:
    verifier = JWTAccessTokens(provider, SETTINGS, clock)
    clock.advance(60)
    before = fake.hits[fake.paths["jwks"]]
    for index in range(5):
        with pytest.raises(TokenError):
            verify(verifier, sign_jwt(claims(fake, iat=int(clock.seconds())), kid=f"k{index}"))
    assert fake.hits[fake.paths["jwks"]] - before == 1


# ---------------------------------------------------------------------------
# DPoP proofs

EC = ec.generate_private_key(ec.SECP256R1())
OTHER_EC = ec.generate_private_key(ec.SECP256R1())
URL = "https://api.example.com/orders"
TOKEN = "2YotnFZFEjr1zCsicMWpAA"


def jwk_of(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def make_proof(
    key: ec.EllipticCurvePrivateKey = EC,
    header: dict[str, Any] | None = None,
    **changes: Any,
) -> str:
    head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk_of(key), **(header or {})}
    body = {
        "jti": str(uuid.uuid4()),
        "htm": "GET",
        "htu": URL,
        "iat": int(NOW),
        "ath": ath_of(token_digest(TOKEN)),
        **changes,
    }
    body = {k: v for k, v in body.items() if v is not None}
    signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(body).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def check(proof: str, method: str = "GET") -> tuple[str, str, float]:
    return check_proof(
        proof,
        method=method,
        htu_matches=lambda htu: htu.split("?")[0] == URL,
        ath=ath_of(token_digest(TOKEN)),
        now=NOW,
        max_age=60,
        leeway=5,
    )


def test_rfc_7638_thumbprint_example() -> None:
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
        "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-6"
        "5YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLy"
        "rdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJz"
        "KnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_valid_proof() -> None:
    jkt, jti, iat = check(make_proof())
    assert jkt == thumbprint(jwk_of(EC)) and jti and iat == NOW


BAD_PROOFS = {
    "other-method": lambda: check(make_proof(), method="POST"),
    "other-url": lambda: check(make_proof(htu="https://api.example.com/other")),
    "too-old": lambda: check(make_proof(iat=int(NOW) - 61)),
    "from-the-future": lambda: check(make_proof(iat=int(NOW) + 6)),
    "no-iat": lambda: check(make_proof(iat=None)),
    "wrong-ath": lambda: check(make_proof(ath=b64url(b"\0" * 32))),
    "no-ath": lambda: check(make_proof(ath=None)),
    "no-jti": lambda: check(make_proof(jti=None)),
    "huge-jti": lambda: check(make_proof(jti="j" * 300)),
    "wrong-typ": lambda: check(make_proof(header={"typ": "JWT"})),
    "alg-none": lambda: check(make_proof(header={"alg": "none"})),
    "alg-hs256": lambda: check(make_proof(header={"alg": "HS256"})),
    "signed-by-another-key": lambda: check(make_proof(header={"jwk": jwk_of(OTHER_EC)})),
    "private-key-in-jwk": lambda: check(
        make_proof(
            header={
                "jwk": {
                    **jwk_of(EC),
                    "d": b64url(EC.private_numbers().private_value.to_bytes(32, "big")),
                }
            }
        )
    ),
    "symmetric-jwk": lambda: check(make_proof(header={"jwk": {"kty": "oct", "k": "AAAA"}})),
    "no-jwk": lambda: check(make_proof(header={"jwk": None})),
    "crit": lambda: check(make_proof(header={"crit": ["x"]})),
    "not-a-jws": lambda: check("not-a-proof"),
    "oversized": lambda: check("a" * 9000),
}


@pytest.mark.parametrize("case", sorted(BAD_PROOFS))
def test_bad_proofs_are_refused(case: str) -> None:
    with pytest.raises(DPoPError):
        BAD_PROOFS[case]()


# ---------------------------------------------------------------------------
# Introspection


class Introspect(Resource):
    """A WSO2 /oauth2/introspect: ``answer`` per token, or a fault."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, Any] = {}
        self.status = 200
        self.raw: bytes | None = None
        self.hold = False
        self.held: list[Request] = []
        self.calls: list[dict[str, str]] = []
        self.stub = StubTreq(self)

    def render(self, request: Request) -> bytes | int:
        form = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        form["authorization"] = request.getHeader("authorization") or ""
        self.calls.append(form)
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        if self.raw is not None:
            return self.raw
        return json.dumps(self.answers.get(form["token"], {"active": False})).encode()

    def release(self) -> None:
        for request in self.held:
            request.write(json.dumps(self.answers.get("opaque-1", {"active": False})).encode())
            request.finish()
        self.held = []
        self.stub.flush()


def introspection(
    fake: FakeWSO2, clock: Clock, introspect: Introspect, **settings: Any
) -> Introspection:
    provider = ready_provider(fake, clock)
    chosen = IntrospectionSettings(client_id="gw introspect", client_secret="s:ecret", **settings)
    return Introspection(
        provider,
        introspect.stub,
        SETTINGS,
        chosen,
        clock,
        route="orders",
        timeout=2,
    )


def active(**changes: Any) -> dict[str, Any]:
    return {
        "active": True,
        "client_id": "spa-client",
        "username": "alice@carbon.super",
        "scope": "orders:read",
        "exp": int(NOW) + 3600,
        "iat": int(NOW),
        "token_type": "Bearer",
        "aut": "APPLICATION_USER",
        **changes,
    }


def ask(client: Introspection, token: str) -> AccessToken | None:
    return resolve(client.check(token, token_digest(token)))  # type: ignore[no-any-return]


def test_an_active_token_is_cached_until_min_of_exp_and_cache(fake: FakeWSO2, clock: Clock) -> None:
    endpoint = Introspect()
    endpoint.answers["opaque-1"] = active(exp=int(NOW) + 100)
    client = introspection(fake, clock, endpoint, cache=300.0)
    answer = ask(client, "opaque-1")
    assert answer is not None and answer.user == "alice@carbon.super" and not answer.is_client
    assert endpoint.calls[0]["token"] == "opaque-1"
    # Basic auth with form-encoded id and secret, as at the token endpoint.
    expected = base64.b64encode(b"gw+introspect:s%3Aecret").decode()
    assert endpoint.calls[0]["authorization"] == f"Basic {expected}"
    assert ask(client, "opaque-1") is answer and len(endpoint.calls) == 1
    clock.advance(101)  # past exp, well before cache
    ask(client, "opaque-1")
    assert len(endpoint.calls) == 2


def test_an_inactive_token_is_cached_for_negative_cache(fake: FakeWSO2, clock: Clock) -> None:
    endpoint = Introspect()
    client = introspection(fake, clock, endpoint, negative_cache=10.0)
    assert ask(client, "dead") is None
    assert ask(client, "dead") is None and len(endpoint.calls) == 1
    clock.advance(11)
    assert ask(client, "dead") is None and len(endpoint.calls) == 2


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(active(token_type="Refresh"), id="a-refresh-token"),
        pytest.param(active(client_id="mallory"), id="another-client"),
        pytest.param(active(aud="billing"), id="another-audience"),
        pytest.param(active(exp=int(NOW) - 3600), id="expired"),
        pytest.param(active(iss="https://evil.test/oauth2/token"), id="another-issuer"),
        pytest.param({"active": "true"}, id="active-a-string"),
    ],
)
def test_answers_that_are_not_for_this_api_refuse(
    fake: FakeWSO2, clock: Clock, answer: dict[str, Any]
) -> None:
    endpoint = Introspect()
    endpoint.answers["t"] = answer
    client = introspection(fake, clock, endpoint)
    try:
        assert ask(client, "t") is None
    except IntrospectionUnavailable:
        assert answer == {"active": "true"}


@pytest.mark.parametrize(
    ("status", "raw"),
    [
        pytest.param(500, b"<html>oops</html>", id="5xx"),
        pytest.param(401, b'{"error":"invalid_client"}', id="our-client-refused"),
        pytest.param(200, b'{"active": tru', id="garbage"),
        pytest.param(200, b"[true]", id="not-an-object"),
        pytest.param(200, b"[" * 10000, id="too-deep"),
    ],
)
def test_a_provider_that_cannot_answer_is_unavailable(
    fake: FakeWSO2, clock: Clock, status: int, raw: bytes
) -> None:
    endpoint = Introspect()
    endpoint.status, endpoint.raw = status, raw
    client = introspection(fake, clock, endpoint)
    with pytest.raises(IntrospectionUnavailable):
        ask(client, "t")
    # Nothing was cached: the next request asks again.
    with pytest.raises(IntrospectionUnavailable):
        ask(client, "t")
    assert len(endpoint.calls) == 2


def test_a_timeout_is_unavailable(fake: FakeWSO2, clock: Clock) -> None:
    endpoint = Introspect()
    endpoint.hold = True
    client = introspection(fake, clock, endpoint)
    outcome: list[Any] = []
    defer.ensureDeferred(client.check("opaque-1", token_digest("opaque-1"))).addBoth(outcome.append)
    assert outcome == []
    clock.advance(3)
    assert outcome and outcome[0].check(IntrospectionUnavailable)


def test_one_call_in_flight_per_token(fake: FakeWSO2, clock: Clock) -> None:
    endpoint = Introspect()
    endpoint.answers["opaque-1"] = active()
    endpoint.hold = True
    client = introspection(fake, clock, endpoint)
    outcomes: list[Any] = []
    for _ in range(5):
        defer.ensureDeferred(client.check("opaque-1", token_digest("opaque-1"))).addBoth(
            outcomes.append
        )
    assert len(endpoint.calls) == 1 and outcomes == []
    endpoint.release()
    assert len(outcomes) == 5
    assert all(isinstance(o, AccessToken) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 1


def test_a_flood_of_made_up_tokens_is_bounded_at_the_provider(fake: FakeWSO2, clock: Clock) -> None:
    endpoint = Introspect()
    endpoint.hold = True
    client = introspection(fake, clock, endpoint)
    client.max_in_flight = 3
    outcomes: list[Any] = []
    for index in range(10):
        token = f"made-up-{index}"
        defer.ensureDeferred(client.check(token, token_digest(token))).addBoth(outcomes.append)
    assert len(endpoint.calls) == 3
    refused = [o for o in outcomes if hasattr(o, "check") and o.check(IntrospectionUnavailable)]
    assert len(refused) == 7
    # A token already being asked about still waits for that one call.
    defer.ensureDeferred(client.check("made-up-0", token_digest("made-up-0"))).addBoth(
        outcomes.append
    )
    assert len(endpoint.calls) == 3 and len(outcomes) == 7


def test_the_hash_is_the_key_never_the_token() -> None:
    assert token_digest("abc") == hashlib.sha256(b"abc").digest()
    assert ath_of(token_digest(TOKEN)) == b64url(hashlib.sha256(TOKEN.encode()).digest())
    assert time.time() > 0


class FakeRedis:
    """GET and SET PX of a Redis, in memory (what the introspection cache uses)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.ttls: dict[str, int | None] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(
        self, key: str, value: str | bytes, px: int | None = None, nx: bool = False
    ) -> bool:
        self.data[key] = value.encode() if isinstance(value, str) else value
        self.ttls[key] = px
        return True


def test_answers_are_shared_through_redis_sealed_and_keyed_by_hash(
    fake: FakeWSO2, clock: Clock
) -> None:
    from idgateway.sessions.keys import KeyRing

    endpoint = Introspect()
    endpoint.answers["opaque-secret-1"] = active(exp=int(NOW) + 120)
    redis = FakeRedis()
    keyring = KeyRing.from_strings([base64.b64encode(b"k" * 32).decode()])
    provider = ready_provider(fake, clock)
    settings = IntrospectionSettings(client_id="gw", client_secret="pw")

    def process() -> Introspection:
        return Introspection(
            provider,
            endpoint.stub,
            SETTINGS,
            settings,
            clock,
            route="orders",
            redis=redis,  # type: ignore[arg-type]
            keyring=keyring,
        )

    first, second = process(), process()
    answer = ask(first, "opaque-secret-1")
    assert answer is not None and len(endpoint.calls) == 1
    (key,) = redis.data
    assert key == f"idgw:orders:introspect:{token_digest('opaque-secret-1').hex()}"
    assert b"opaque-secret-1" not in redis.data[key] and b"alice" not in redis.data[key]
    assert redis.ttls[key] == 120_000  # exp before the 5 minutes of cache
    shared = ask(second, "opaque-secret-1")
    assert shared is not None and shared.user == "alice@carbon.super"
    assert len(endpoint.calls) == 1, "the second process used the shared answer"
    # Sealed for this key: moved under another token's hash it opens to nothing.
    redis.data[f"idgw:orders:introspect:{token_digest('other').hex()}"] = redis.data[key]
    endpoint.answers["other"] = {"active": False}
    assert ask(process(), "other") is None
