"""Validation of ID tokens and back-channel logout tokens.

Both are compact JWS signed by the provider. A token is accepted only with an
asymmetric algorithm the provider advertises, a signature by one of the
provider's published keys (selected by ``kid``, refetched once when unknown),
the provider's exact issuer, our client id among the audiences and sane times.
``alg: none`` and HMAC are refused even when advertised: with HMAC, anyone who
knows the provider's public key could sign.

Every refusal is a ``TokenError`` whose ``reason`` is a short code for logs
and metrics; its message never contains the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Any

from josepy.jws import JWS

from idgateway.oidc import bounded_json
from idgateway.oidc.provider import (
    ASYMMETRIC_ALGORITHMS,
    ProviderClient,
    ProviderMetadata,
    key_fits_algorithm,
)

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"

# TokenError.reason values.
MALFORMED = "malformed"
PROVIDER_UNAVAILABLE = "provider_unavailable"
ALG_NOT_ALLOWED = "alg_not_allowed"
WRONG_TYPE = "wrong_type"
UNKNOWN_KID = "unknown_kid"
KEY_MISMATCH = "key_mismatch"
BAD_SIGNATURE = "bad_signature"
WRONG_ISSUER = "wrong_issuer"
WRONG_AUDIENCE = "wrong_audience"
AZP_MISMATCH = "azp_mismatch"
MISSING_CLAIM = "missing_claim"
BAD_CLAIM = "bad_claim"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
ISSUED_IN_FUTURE = "issued_in_future"
TOO_OLD = "too_old"
NONCE_MISMATCH = "nonce_mismatch"
AT_HASH_MISMATCH = "at_hash_mismatch"
BAD_EVENTS = "bad_events"
NONCE_PRESENT = "nonce_present"
MISSING_SID_AND_SUB = "missing_sid_and_sub"

# Far above any real ID token (WSO2's grow with groups and roles).
MAX_TOKEN_LENGTH = 100_000

_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")

# "typ" values that mark a JWT as something other than an ID token.
_NOT_ID_TOKEN_TYPES = frozenset({"at+jwt", "logout+jwt", "secevent+jwt"})

_AT_HASH_FUNCTIONS: dict[str, Callable[[bytes], Any]] = {
    "256": hashlib.sha256,
    "384": hashlib.sha384,
    "512": hashlib.sha512,
}


class TokenError(Exception):
    """A token was refused. ``reason`` is a machine code (see the constants above)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


async def validate_id_token(
    token: str,
    *,
    provider: ProviderClient,
    client_id: str,
    nonce: str | None,
    now: float,
    leeway: float = 60,
    access_token: str | None = None,
    max_age_s: float = 86400 * 2,
) -> dict[str, Any]:
    """The claims of a valid ID token issued to ``client_id``, or TokenError.

    ``nonce`` is the one sent in the authorization request (None when none was
    sent, e.g. for an ID token from a refresh). ``access_token``, when given,
    is checked against the token's ``at_hash``. ``max_age_s`` bounds ``iat``.
    """
    header, claims, metadata = await _verified(token, provider)
    _check_type(header)
    _check_common_claims(claims, metadata, client_id, now, leeway)
    iat = claims["iat"]
    if iat < now - max_age_s:
        raise TokenError(TOO_OLD, f"issued more than {max_age_s:g} s ago")
    sub = claims.get("sub")
    if sub is None:
        raise TokenError(MISSING_CLAIM, "no sub claim")
    if not isinstance(sub, str) or not sub:
        raise TokenError(BAD_CLAIM, "sub must be a non-empty string")
    events = claims.get("events")
    if isinstance(events, dict) and BACKCHANNEL_LOGOUT_EVENT in events:
        raise TokenError(WRONG_TYPE, "a logout token is not an ID token")
    if nonce is not None:
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
            token_nonce.encode("utf-8"), nonce.encode("utf-8")
        ):
            raise TokenError(NONCE_MISMATCH, "nonce does not match the one sent")
    at_hash = claims.get("at_hash")
    if at_hash is not None and access_token is not None:
        expected = access_token_hash(access_token, header["alg"])
        if not isinstance(at_hash, str) or not hmac.compare_digest(
            at_hash.encode("ascii", "replace"), expected.encode("ascii")
        ):
            raise TokenError(AT_HASH_MISMATCH, "at_hash does not match the access token")
    return claims


async def validate_logout_token(
    token: str,
    *,
    provider: ProviderClient,
    client_id: str,
    now: float,
    leeway: float = 60,
) -> dict[str, Any]:
    """The claims of a valid back-channel logout token, or TokenError.

    Checks signature, issuer, audience and times as for ID tokens, then the
    OpenID Back-Channel Logout 1.0 rules. Replay detection (``jti``) and
    session matching (by ``sid``, see WSO2.md) are the caller's.
    """
    _, claims, metadata = await _verified(token, provider, for_logout=True)
    _check_common_claims(claims, metadata, client_id, now, leeway)
    jti = claims.get("jti")
    if jti is None:
        raise TokenError(MISSING_CLAIM, "no jti claim")
    if not isinstance(jti, str) or not jti:
        raise TokenError(BAD_CLAIM, "jti must be a non-empty string")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise TokenError(BAD_EVENTS, "events lacks the back-channel logout event object")
    if "nonce" in claims:
        raise TokenError(NONCE_PRESENT, "a logout token must not carry a nonce")
    if "sid" not in claims and "sub" not in claims:
        raise TokenError(MISSING_SID_AND_SUB, "a logout token needs sid or sub")
    for name in ("sid", "sub"):
        if name in claims and (not isinstance(claims[name], str) or not claims[name]):
            raise TokenError(BAD_CLAIM, f"{name} must be a non-empty string")
    return claims


def access_token_hash(access_token: str, alg: str) -> str:
    """The ``at_hash`` (also ``c_hash``) value for ``access_token`` under ``alg``.

    Base64url of the left half of the hash of the token's ASCII bytes, with the
    hash the signature algorithm uses (SHA-256 for RS256, PS256, ES256...).
    """
    function = _AT_HASH_FUNCTIONS.get(alg[-3:])
    if function is None:
        raise ValueError(f"no hash for algorithm {alg!r}")
    digest = function(access_token.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


async def _verified(
    token: str, provider: ProviderClient, *, for_logout: bool = False
) -> tuple[dict[str, Any], dict[str, Any], ProviderMetadata]:
    """The header and claims of ``token`` once its signature checks out.

    ``for_logout``: an unknown kid spends the logout tokens' own JWKS refetch
    budget, never the one logins need.
    """
    header = _header(token)
    metadata = provider.metadata
    if metadata is None or not provider.ready:
        raise TokenError(PROVIDER_UNAVAILABLE, f"provider {provider.name} is not ready")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenError(MALFORMED, "no alg in the header")
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise TokenError(ALG_NOT_ALLOWED, f"algorithm {alg[:20]!r} is never accepted")
    if alg not in metadata.id_token_signing_alg_values_supported:
        raise TokenError(ALG_NOT_ALLOWED, f"algorithm {alg!r} is not advertised by the provider")
    if "crit" in header:
        raise TokenError(MALFORMED, "critical header extensions are not supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenError(MALFORMED, "kid must be a string")
    try:
        jws = JWS.from_compact(token.encode("ascii"))
    except Exception as error:  # noqa: BLE001 - josepy raises assorted types on odd headers
        raise TokenError(MALFORMED, f"not a compact JWS ({type(error).__name__})") from None
    parsed_alg = jws.signature.combined.alg
    if parsed_alg is None or parsed_alg.name != alg:
        raise TokenError(MALFORMED, "inconsistent alg in the header")

    key = await provider.key_for(kid, alg, for_logout=for_logout)
    if key is None:
        if kid is None:
            raise TokenError(UNKNOWN_KID, f"no kid, and no single {alg} key to use")
        raise TokenError(UNKNOWN_KID, f"kid {kid[:80]!r} is not in the provider's key set")
    if not key_fits_algorithm(key, alg):
        raise TokenError(KEY_MISMATCH, f"key {kid and kid[:80]!r} cannot verify {alg}")
    try:
        valid = jws.verify(key)
    except Exception:  # noqa: BLE001 - any failure to verify is a bad signature
        valid = False
    if not valid:
        raise TokenError(BAD_SIGNATURE, "signature does not verify")

    try:
        claims = bounded_json.loads(jws.payload)
    except ValueError:
        raise TokenError(MALFORMED, "payload is not JSON") from None
    if not isinstance(claims, dict):
        raise TokenError(MALFORMED, "payload is not a JSON object")
    return header, claims, metadata


def _header(token: str) -> dict[str, Any]:
    if not isinstance(token, str):
        raise TokenError(MALFORMED, "not a string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(MALFORMED, f"longer than {MAX_TOKEN_LENGTH} characters")
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise TokenError(MALFORMED, "not ASCII") from None
    parts = raw.split(b".")
    # Strict base64url: josepy's decoder skips stray characters, which would
    # let many different strings stand for one signed token.
    # An empty signature is let through to fail later with a clearer reason
    # ("alg: none" tokens have one).
    if (
        len(parts) != 3
        or not parts[0]
        or not parts[1]
        or not all(_BASE64URL.fullmatch(part) for part in parts)
    ):
        raise TokenError(MALFORMED, "not a compact JWS")
    try:
        header = bounded_json.loads(_b64decode(parts[0]))
    except (ValueError, binascii.Error):
        raise TokenError(MALFORMED, "header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise TokenError(MALFORMED, "header is not a JSON object")
    return header


def _b64decode(part: bytes) -> bytes:
    if len(part) % 4 == 1:
        raise ValueError("impossible base64 length")
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


def _check_type(header: dict[str, Any]) -> None:
    typ = header.get("typ")
    if isinstance(typ, str):
        media_type = typ.lower().removeprefix("application/")
        if media_type in _NOT_ID_TOKEN_TYPES:
            raise TokenError(WRONG_TYPE, f"a {typ} token is not an ID token")


def _number(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenError(MISSING_CLAIM, f"no {name} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(BAD_CLAIM, f"{name} must be a number")
    return value


def _check_common_claims(
    claims: dict[str, Any],
    metadata: ProviderMetadata,
    client_id: str,
    now: float,
    leeway: float,
) -> None:
    """iss, aud, azp, exp, nbf and iat: what every token from the provider must pass."""
    if claims.get("iss") != metadata.issuer:
        raise TokenError(WRONG_ISSUER, f"issuer is not {metadata.issuer!r}")

    aud = claims.get("aud")
    if isinstance(aud, str):
        audiences = [aud]
    elif isinstance(aud, list) and all(isinstance(item, str) for item in aud):
        audiences = aud
    elif aud is None:
        raise TokenError(MISSING_CLAIM, "no aud claim")
    else:
        raise TokenError(BAD_CLAIM, "aud must be a string or an array of strings")
    if client_id not in audiences:
        raise TokenError(WRONG_AUDIENCE, f"not issued to client {client_id!r}")
    azp = claims.get("azp")
    if len(audiences) > 1 and azp is None:
        raise TokenError(AZP_MISMATCH, "several audiences and no azp")
    if azp is not None and azp != client_id:
        raise TokenError(AZP_MISMATCH, f"azp is not {client_id!r}")

    exp = _number(claims, "exp", required=True)
    assert exp is not None
    if exp <= now - leeway:
        raise TokenError(EXPIRED, "expired")
    nbf = _number(claims, "nbf", required=False)
    if nbf is not None and nbf > now + leeway:
        raise TokenError(NOT_YET_VALID, "not valid yet (nbf)")
    iat = _number(claims, "iat", required=True)
    assert iat is not None
    if iat > now + leeway:
        raise TokenError(ISSUED_IN_FUTURE, "issued in the future (iat)")
