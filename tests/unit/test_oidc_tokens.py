"""ID token and back-channel logout token validation, against the in-memory WSO2."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import josepy
import pytest
from twisted.internet.task import Clock

from idgateway.oidc.provider import ProviderClient
from idgateway.oidc.tokens import (
    TokenError,
    access_token_hash,
    validate_id_token,
    validate_logout_token,
)
from tests.unit.test_oidc_provider import (
    CLIENT_ID,
    EC_KEY,
    NONCE,
    NOW,
    OTHER_RSA_KEY,
    RSA_KEY,
    FakeWSO2,
    b64url,
    id_token_claims,
    logout_token_claims,
    make_provider,
    ready_provider,
    resolve,
    sign_jwt,
)

ACCESS_TOKEN = "4f3a7c1e-8f2d-3b6a-9c1e-0d2f4a6b8c0e"


@pytest.fixture
def fake() -> FakeWSO2:
    return FakeWSO2()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider(fake: FakeWSO2, clock: Clock) -> ProviderClient:
    return ready_provider(fake, clock)


def validate(
    token: str,
    provider: ProviderClient,
    *,
    nonce: str | None = NONCE,
    now: float = NOW,
    client_id: str = CLIENT_ID,
    **options: Any,
) -> dict[str, Any]:
    return resolve(
        validate_id_token(
            token, provider=provider, client_id=client_id, nonce=nonce, now=now, **options
        )
    )


def refused(token: str, provider: ProviderClient, **options: Any) -> TokenError:
    with pytest.raises(TokenError) as caught:
        validate(token, provider, **options)
    # Never echo the token.
    assert not token or token not in str(caught.value)
    return caught.value


def validate_logout(
    token: str, provider: ProviderClient, *, now: float = NOW, **options: Any
) -> dict[str, Any]:
    return resolve(
        validate_logout_token(token, provider=provider, client_id=CLIENT_ID, now=now, **options)
    )


def logout_refused(token: str, provider: ProviderClient, **options: Any) -> TokenError:
    with pytest.raises(TokenError) as caught:
        validate_logout(token, provider, **options)
    return caught.value


# ---------------------------------------------------------------------------
# Accepted tokens


def test_wso2_rs256_id_token(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake, at_hash=access_token_hash(ACCESS_TOKEN, "RS256")))
    claims = validate(token, provider, access_token=ACCESS_TOKEN)
    assert claims["username"] == "alice"
    assert claims["groups"] == ["admin", "Internal/everyone"]
    assert claims["org_name"] == "Super"
    assert claims["iss"] == f"{fake.base}/oauth2/token"


def test_wso2_ps256_id_token(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake), alg="PS256")
    assert validate(token, provider)["sub"]


def test_es256_id_token(fake: FakeWSO2, clock: Clock) -> None:
    fake.keys = [RSA_KEY, EC_KEY]
    provider = ready_provider(fake, clock)
    token = sign_jwt(id_token_claims(fake), key=EC_KEY, alg="ES256")
    assert validate(token, provider)["username"] == "alice"


def test_token_made_by_josepy_jws(fake: FakeWSO2, provider: ProviderClient) -> None:
    jws = josepy.JWS.sign(
        json.dumps(id_token_claims(fake)).encode(),
        key=josepy.JWKRSA(key=RSA_KEY.private),
        alg=josepy.RS256,
        include_jwk=False,
        protect=frozenset({"alg", "kid"}),
        kid=RSA_KEY.kid("RS256"),
    )
    assert validate(jws.to_compact().decode(), provider)["username"] == "alice"


def test_token_without_kid_uses_the_single_key(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake), kid=None)
    assert validate(token, provider)["username"] == "alice"


def test_audience_array_with_azp(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake, aud=[CLIENT_ID, "other-api"]))
    assert validate(token, provider)["aud"] == [CLIENT_ID, "other-api"]
    single = sign_jwt(id_token_claims(fake, aud=[CLIENT_ID], azp=None))
    assert validate(single, provider)


def test_without_nonce_sent_any_nonce_is_fine(fake: FakeWSO2, provider: ProviderClient) -> None:
    # E.g. the ID token of a refresh response.
    assert validate(sign_jwt(id_token_claims(fake)), provider, nonce=None)
    assert validate(sign_jwt(id_token_claims(fake, nonce=None)), provider, nonce=None)


def test_at_hash_is_checked_only_with_an_access_token(
    fake: FakeWSO2, provider: ProviderClient
) -> None:
    token = sign_jwt(id_token_claims(fake, at_hash="AAAAAAAAAAAAAAAAAAAAAA"))
    assert validate(token, provider)
    no_at_hash = sign_jwt(id_token_claims(fake, at_hash=None))
    assert validate(no_at_hash, provider, access_token=ACCESS_TOKEN)


def test_leeway(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake))
    # 30 s after expiry, and 30 s before nbf/iat: within the default 60 s.
    assert validate(token, provider, now=NOW + 3630)
    assert validate(token, provider, now=NOW - 30)


def test_access_token_hash_vector() -> None:
    # SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223 b00361a396177a9cb410ff61f20015ad
    left = bytes.fromhex("ba7816bf8f01cfea414140de5dae2223")
    assert access_token_hash("abc", "RS256") == b64url(left)
    assert access_token_hash("abc", "PS384") == b64url(hashlib.sha384(b"abc").digest()[:24])
    assert access_token_hash("abc", "ES512") == b64url(hashlib.sha512(b"abc").digest()[:32])


# ---------------------------------------------------------------------------
# Algorithms and signatures


def test_alg_none_is_refused_even_if_advertised(fake: FakeWSO2, clock: Clock) -> None:
    fake.discovery["id_token_signing_alg_values_supported"] = ["RS256", "none"]
    provider = ready_provider(fake, clock)
    token = sign_jwt(id_token_claims(fake), key=None, alg="none", kid=None)
    assert token.endswith(".")
    assert refused(token, provider).reason == "alg_not_allowed"
    for spelling in ("None", "NONE"):
        other = sign_jwt(id_token_claims(fake), key=None, alg=spelling, kid=None)
        assert refused(other, provider).reason == "alg_not_allowed"


def test_hs256_signed_with_the_public_key_is_refused(fake: FakeWSO2, clock: Clock) -> None:
    """The key confusion attack: HMAC keyed with the provider's (public) key."""
    fake.discovery["id_token_signing_alg_values_supported"] = ["RS256", "HS256"]
    provider = ready_provider(fake, clock)
    public_pem = RSA_KEY.public_pem()
    for secret in (public_pem, public_pem.strip()):
        token = sign_jwt(id_token_claims(fake), key=secret, alg="HS256", kid=RSA_KEY.kid("RS256"))
        # The forgery is a valid HMAC under that "secret"...
        signing_input, _, signature = token.rpartition(".")
        expected = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert b64url(expected) == signature
        # ...and must still be refused.
        assert refused(token, provider).reason == "alg_not_allowed"
    jwk_secret = json.dumps(RSA_KEY.jwks_entries()[0]).encode()
    token = sign_jwt(id_token_claims(fake), key=jwk_secret, alg="HS256", kid=None)
    assert refused(token, provider).reason == "alg_not_allowed"


def test_hmac_keys_in_the_jwks_are_never_used(fake: FakeWSO2, clock: Clock) -> None:
    fake.discovery["id_token_signing_alg_values_supported"] = ["RS256", "HS512"]
    fake.extra_jwks = [{"kty": "oct", "k": b64url(b"shared" * 8), "kid": "hmac"}]
    provider = ready_provider(fake, clock)
    token = sign_jwt(id_token_claims(fake), key=b"shared" * 8, alg="HS512", kid="hmac")
    assert refused(token, provider).reason == "alg_not_allowed"


def test_algorithm_not_advertised(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake), alg="RS512", kid=RSA_KEY.kid("RS256"))
    assert refused(token, provider).reason == "alg_not_allowed"


def test_key_type_must_fit_alg(fake: FakeWSO2, provider: ProviderClient) -> None:
    # ES256 is advertised, but the kid names an RSA key.
    token = sign_jwt(id_token_claims(fake), key=EC_KEY, alg="ES256", kid=RSA_KEY.kid("RS256"))
    assert refused(token, provider).reason == "key_mismatch"


def test_bad_signature(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake))
    header, _, signature = token.split(".")
    forged_claims = b64url(json.dumps(id_token_claims(fake, username="admin")).encode())
    assert refused(f"{header}.{forged_claims}.{signature}", provider).reason == "bad_signature"
    # Signed by another key under the provider's kid.
    other = sign_jwt(id_token_claims(fake), key=OTHER_RSA_KEY, kid=RSA_KEY.kid("RS256"))
    assert refused(other, provider).reason == "bad_signature"
    # RS256 signature presented as PS256.
    as_ps = sign_jwt(id_token_claims(fake), kid=RSA_KEY.kid("PS256"))
    h = json.loads(base64.urlsafe_b64decode(as_ps.split(".")[0] + "=="))
    h["alg"] = "PS256"
    relabelled = b64url(json.dumps(h).encode()) + "." + as_ps.split(".", 1)[1]
    assert refused(relabelled, provider).reason == "bad_signature"
    empty_signature = token.rsplit(".", 1)[0] + "."
    assert refused(empty_signature, provider).reason == "bad_signature"


def test_non_canonical_base64_is_malformed(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake))
    header, payload, signature = token.split(".")
    for variant in (f"{header}.{payload}.{signature}=", f"{header}.{payload}+.{signature}"):
        assert refused(variant, provider).reason == "malformed"


def test_unknown_kid_after_refetch(fake: FakeWSO2, clock: Clock) -> None:
    provider = ready_provider(fake, clock)
    clock.advance(31)
    token = sign_jwt(id_token_claims(fake), key=OTHER_RSA_KEY)
    error = refused(token, provider)
    assert error.reason == "unknown_kid"
    assert fake.hits[fake.paths["jwks"]] == 2  # refetched once before giving up


def test_rotated_key_is_found_by_refetch(fake: FakeWSO2, clock: Clock) -> None:
    provider = ready_provider(fake, clock)
    clock.advance(31)
    fake.keys = [OTHER_RSA_KEY]
    token = sign_jwt(id_token_claims(fake), key=OTHER_RSA_KEY)
    assert validate(token, provider)["username"] == "alice"


def test_no_kid_and_several_keys(fake: FakeWSO2, clock: Clock) -> None:
    fake.keys = [RSA_KEY, OTHER_RSA_KEY]
    provider = ready_provider(fake, clock)
    token = sign_jwt(id_token_claims(fake), kid=None)
    assert refused(token, provider).reason == "unknown_kid"


def test_other_tenants_key_is_unknown(clock: Clock) -> None:
    carbon, acme = FakeWSO2(), FakeWSO2(tenant="acme.com")
    acme.keys = [OTHER_RSA_KEY]
    provider = ready_provider(carbon, clock)
    token = sign_jwt(id_token_claims(acme, iss=carbon.issuer), key=OTHER_RSA_KEY)
    assert refused(token, provider).reason == "unknown_kid"


def test_provider_not_ready(fake: FakeWSO2, clock: Clock) -> None:
    fake.status = 503
    provider = make_provider(fake, clock, discovery_url=fake.url("discovery"))
    provider.start()
    assert refused(sign_jwt(id_token_claims(fake)), provider).reason == "provider_unavailable"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "é.b.c",
        "!!!.e30.c2ln",
        b64url(b"[1]") + ".e30.c2ln",
        b64url(b"not json") + ".e30.c2ln",
        b64url(b'{"alg": 1}') + ".e30.c2ln",
        ".e30.c2ln",
    ],
)
def test_malformed(token: str, provider: ProviderClient) -> None:
    assert refused(token, provider).reason == "malformed"


def test_payload_must_be_a_json_object(fake: FakeWSO2, provider: ProviderClient) -> None:
    header = b64url(json.dumps({"alg": "RS256", "kid": RSA_KEY.kid("RS256")}).encode())
    for payload in (b"[1, 2]", b"not json"):
        signing_input = f"{header}.{b64url(payload)}".encode()
        signature = josepy.RS256.sign(RSA_KEY.private, signing_input)
        token = f"{signing_input.decode()}.{b64url(signature)}"
        assert refused(token, provider).reason == "malformed"


@pytest.mark.parametrize("header", [{"x5t": 5}, {"x5c": ["not base64!"]}, {"kid": 7}])
def test_unparseable_header_fields(
    fake: FakeWSO2, provider: ProviderClient, header: dict[str, Any]
) -> None:
    assert refused(sign_jwt(id_token_claims(fake), header=header), provider).reason == "malformed"


def test_wso2_x5t_spellings_are_fine(fake: FakeWSO2, provider: ProviderClient) -> None:
    # The x5t format changed across WSO2 versions; it is never used, only parsed.
    for x5t in (RSA_KEY.x5t, RSA_KEY.x5t + "==", "a+b/cA=="):
        assert validate(sign_jwt(id_token_claims(fake), header={"x5t": x5t}), provider)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_malformed(
    fake: FakeWSO2, provider: ProviderClient, constant: str
) -> None:
    # A NaN "exp" compares false with everything: it would never expire.
    header = b64url(json.dumps({"alg": "RS256", "kid": RSA_KEY.kid("RS256")}).encode())
    payload = json.dumps(id_token_claims(fake, exp=0)).replace('"exp": 0', f'"exp": {constant}')
    signing_input = f"{header}.{b64url(payload.encode())}".encode()
    signature = josepy.RS256.sign(RSA_KEY.private, signing_input)
    token = f"{signing_input.decode()}.{b64url(signature)}"
    assert refused(token, provider).reason == "malformed"


def test_oversized_token(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake, padding="x" * 100_000))
    assert refused(token, provider).reason == "malformed"


def test_crit_header_is_refused(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake), header={"crit": ["exp"], "exp": 1})
    assert refused(token, provider).reason == "malformed"


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "logout+jwt"])
def test_other_token_types_are_not_id_tokens(
    fake: FakeWSO2, provider: ProviderClient, typ: str
) -> None:
    token = sign_jwt(id_token_claims(fake), header={"typ": typ})
    assert refused(token, provider).reason == "wrong_type"


def test_jwt_typ_is_fine(fake: FakeWSO2, provider: ProviderClient) -> None:
    assert validate(sign_jwt(id_token_claims(fake), header={"typ": "JWT"}), provider)


def test_logout_token_is_not_an_id_token(fake: FakeWSO2, provider: ProviderClient) -> None:
    claims = {**logout_token_claims(fake), "nonce": NONCE}
    assert refused(sign_jwt(claims), provider).reason == "wrong_type"


# ---------------------------------------------------------------------------
# Claims


def test_wrong_issuer(fake: FakeWSO2, provider: ProviderClient) -> None:
    for iss in (
        f"{fake.base}/oauth2/oidcdiscovery",
        f"{fake.base}/oauth2/token/",
        f"{fake.base}/t/acme.com/oauth2/token",
    ):
        assert refused(sign_jwt(id_token_claims(fake, iss=iss)), provider).reason == (
            "wrong_issuer"
        )
    assert refused(sign_jwt(id_token_claims(fake, iss=None)), provider).reason == "wrong_issuer"


def test_wrong_audience(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake, aud="another-client", azp="another-client"))
    assert refused(token, provider).reason == "wrong_audience"
    array = sign_jwt(id_token_claims(fake, aud=["a", "b"], azp="a"))
    assert refused(array, provider).reason == "wrong_audience"
    assert refused(sign_jwt(id_token_claims(fake, aud=None)), provider).reason == "missing_claim"
    assert refused(sign_jwt(id_token_claims(fake, aud=[1])), provider).reason == "bad_claim"


def test_azp(fake: FakeWSO2, provider: ProviderClient) -> None:
    several_without_azp = sign_jwt(id_token_claims(fake, aud=[CLIENT_ID, "api"], azp=None))
    assert refused(several_without_azp, provider).reason == "azp_mismatch"
    wrong_azp = sign_jwt(id_token_claims(fake, azp="another-client"))
    assert refused(wrong_azp, provider).reason == "azp_mismatch"


def test_expired(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake))
    assert refused(token, provider, now=NOW + 3600 + 60).reason == "expired"
    assert refused(token, provider, now=NOW + 3600, leeway=0).reason == "expired"


def test_not_yet_valid(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake, nbf=int(NOW) + 61, iat=int(NOW)))
    assert refused(token, provider).reason == "not_yet_valid"


def test_issued_in_future(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake, nbf=None, iat=int(NOW) + 61))
    assert refused(token, provider).reason == "issued_in_future"


def test_too_old(fake: FakeWSO2, provider: ProviderClient) -> None:
    old = int(NOW) - 3 * 86400
    token = sign_jwt(id_token_claims(fake, iat=old, nbf=old, exp=int(NOW) + 3600))
    assert refused(token, provider).reason == "too_old"
    assert refused(token, provider, max_age_s=600).reason == "too_old"
    assert validate(token, provider, max_age_s=4 * 86400)


@pytest.mark.parametrize("claim", ["exp", "iat", "sub"])
def test_required_claims(fake: FakeWSO2, provider: ProviderClient, claim: str) -> None:
    claims = id_token_claims(fake)
    del claims[claim]
    assert refused(sign_jwt(claims), provider).reason == "missing_claim"


@pytest.mark.parametrize(
    ("claim", "value"), [("exp", "soon"), ("exp", True), ("iat", [1]), ("nbf", "x"), ("sub", "")]
)
def test_claim_types(fake: FakeWSO2, provider: ProviderClient, claim: str, value: Any) -> None:
    token = sign_jwt(id_token_claims(fake, **{claim: value}))
    assert refused(token, provider).reason == "bad_claim"


def test_sub_must_be_a_string(fake: FakeWSO2, provider: ProviderClient) -> None:
    assert refused(sign_jwt(id_token_claims(fake, sub=42)), provider).reason == "bad_claim"


def test_nonce_mismatch(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake))
    assert refused(token, provider, nonce="another-nonce").reason == "nonce_mismatch"
    missing = sign_jwt(id_token_claims(fake, nonce=None))
    assert refused(missing, provider).reason == "nonce_mismatch"
    not_a_string = sign_jwt(id_token_claims(fake, nonce=12))
    assert refused(not_a_string, provider).reason == "nonce_mismatch"


def test_at_hash_mismatch(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(id_token_claims(fake, at_hash=access_token_hash(ACCESS_TOKEN, "RS256")))
    assert validate(token, provider, access_token=ACCESS_TOKEN)
    error = refused(token, provider, access_token="a-different-access-token")
    assert error.reason == "at_hash_mismatch"
    # PS256 also uses SHA-256; a SHA-384 at_hash does not match it.
    wrong_hash = sign_jwt(
        id_token_claims(fake, at_hash=access_token_hash(ACCESS_TOKEN, "RS384")), alg="PS256"
    )
    assert refused(wrong_hash, provider, access_token=ACCESS_TOKEN).reason == "at_hash_mismatch"


# ---------------------------------------------------------------------------
# Back-channel logout tokens


def test_wso2_logout_token(fake: FakeWSO2, provider: ProviderClient) -> None:
    claims = validate_logout(sign_jwt(logout_token_claims(fake)), provider)
    assert claims["sid"] == "0d0e5b2d-3e0f-4d43-9a0a-3f4f6c0b9c51"
    assert claims["jti"]


def test_logout_token_with_sid_or_sub_only(fake: FakeWSO2, provider: ProviderClient) -> None:
    assert validate_logout(sign_jwt(logout_token_claims(fake, sub=None)), provider)
    assert validate_logout(sign_jwt(logout_token_claims(fake, sid=None)), provider)


def test_logout_token_without_sid_and_sub(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(logout_token_claims(fake, sid=None, sub=None))
    assert logout_refused(token, provider).reason == "missing_sid_and_sub"
    empty_sid = sign_jwt(logout_token_claims(fake, sid=""))
    assert logout_refused(empty_sid, provider).reason == "bad_claim"


def test_logout_token_with_nonce(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(logout_token_claims(fake, nonce=NONCE))
    assert logout_refused(token, provider).reason == "nonce_present"


@pytest.mark.parametrize(
    "events",
    [
        None,
        [],
        {},
        {"http://schemas.openid.net/event/backchannel-logout": "yes"},
        {"http://schemas.openid.net/event/backchannel-logout": None},
        {"http://schemas.openid.net/event/frontchannel-logout": {}},
    ],
)
def test_logout_token_bad_events(fake: FakeWSO2, provider: ProviderClient, events: Any) -> None:
    claims = logout_token_claims(fake)
    if events is None:
        del claims["events"]
    else:
        claims["events"] = events
    assert logout_refused(sign_jwt(claims), provider).reason == "bad_events"


def test_id_token_is_not_a_logout_token(fake: FakeWSO2, provider: ProviderClient) -> None:
    assert logout_refused(sign_jwt(id_token_claims(fake)), provider).reason == "bad_events"


def test_logout_token_expired(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(logout_token_claims(fake))
    assert validate_logout(token, provider, now=NOW + 150)  # within leeway
    assert logout_refused(token, provider, now=NOW + 181).reason == "expired"
    no_exp = sign_jwt(logout_token_claims(fake, exp=None))
    assert logout_refused(no_exp, provider).reason == "missing_claim"


def test_logout_token_needs_jti(fake: FakeWSO2, provider: ProviderClient) -> None:
    token = sign_jwt(logout_token_claims(fake, jti=None))
    assert logout_refused(token, provider).reason == "missing_claim"


def test_logout_token_common_checks(fake: FakeWSO2, provider: ProviderClient) -> None:
    wrong_aud = sign_jwt(logout_token_claims(fake, aud="another-client"))
    assert logout_refused(wrong_aud, provider).reason == "wrong_audience"
    wrong_iss = sign_jwt(logout_token_claims(fake, iss="https://evil/oauth2/token"))
    assert logout_refused(wrong_iss, provider).reason == "wrong_issuer"
    future = sign_jwt(logout_token_claims(fake, iat=int(NOW) + 300, exp=int(NOW) + 420))
    assert logout_refused(future, provider).reason == "issued_in_future"
    none_alg = sign_jwt(logout_token_claims(fake), key=None, alg="none", kid=None)
    assert logout_refused(none_alg, provider).reason == "alg_not_allowed"
    forged = sign_jwt(logout_token_claims(fake), key=OTHER_RSA_KEY, kid=RSA_KEY.kid("RS256"))
    assert logout_refused(forged, provider).reason == "bad_signature"
