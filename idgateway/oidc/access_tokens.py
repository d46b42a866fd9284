"""Access tokens presented by API clients: what a verified one says, and JWT verification.

A JWT access token (WSO2's "Token type: JWT", RFC 9068 ``at+jwt``) is checked
like an ID token (``idgateway.oidc.tokens``: the provider's JWKS with its
rotation handling and one rate-limited refetch for an unknown ``kid``, the
asymmetric ``alg`` allow-list), then against the route's audiences and clients.

A verified token is remembered by the SHA-256 of its text until its ``exp``
(a bounded number of them), so a client repeating its token costs a hash and a
dictionary lookup, not an RSA verification.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from typing import Any, Literal

import attrs
from twisted.internet.interfaces import IReactorTime

from idgateway.config.model import BearerSettings
from idgateway.oidc.provider import ProviderClient
from idgateway.oidc.tokens import (
    AZP_MISMATCH,
    BAD_CLAIM,
    EXPIRED,
    ISSUED_IN_FUTURE,
    MISSING_CLAIM,
    NOT_YET_VALID,
    WRONG_AUDIENCE,
    WRONG_ISSUER,
    WRONG_TYPE,
    TokenError,
    _verified,
)

# TokenError.reason for a token of a kind the route does not take.
KIND_NOT_ACCEPTED = "kind_not_accepted"
# How many verified tokens are remembered per route.
VERIFIED_MEMO_MAX = 10_000
# "typ" values that are not access tokens (an ID token says "JWT" or nothing,
# and is told apart by its claims below).
_NOT_ACCESS_TOKEN_TYPES = frozenset({"logout+jwt", "secevent+jwt", "dpop+jwt", "id_token+jwt"})
# Claims only an ID token (or a logout token) carries: such a token is not an
# access token, even when its aud names the API.
_ID_TOKEN_ONLY_CLAIMS = ("nonce", "at_hash", "c_hash", "events")
# Claims that only matter while checking a token; not identity for the upstream.
TECHNICAL_CLAIMS = frozenset(
    {"iss", "aud", "exp", "iat", "nbf", "jti", "cnf", "active", "token_type", "azp", "isk"}
)


def token_digest(token: str) -> bytes:
    """SHA-256 of the token's text: the memo and cache key, and DPoP's ``ath``."""
    return hashlib.sha256(token.encode("ascii")).digest()


def ath_of(digest: bytes) -> str:
    """RFC 9449 ``ath``: base64url of the SHA-256 of the access token."""
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def scope_set(value: Any) -> frozenset[str]:
    """A ``scope`` claim (space-separated string, or a list) as a set."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


@attrs.frozen(eq=False)
class AccessToken:
    """A token that passed every check: the identity and grants it carries."""

    kind: Literal["jwt", "opaque"]
    # Claims for identity headers (technical ones removed; client_id added).
    claims: dict[str, Any]
    # The value of the route's user claim, or "client:<client_id>".
    user: str
    # The client the token was issued to (azp, else client_id), if it says.
    client_id: str | None
    # Issued by the client-credentials grant: no user behind it.
    is_client: bool
    scopes: frozenset[str]
    # POSIX seconds; None only for an introspection answer without exp.
    expires_at: float | None
    # RFC 9449 / RFC 7800 cnf.jkt: the DPoP key thumbprint the token is bound to.
    jkt: str | None


def client_of(claims: dict[str, Any]) -> str | None:
    for name in ("azp", "client_id"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def access_token_from_claims(
    kind: Literal["jwt", "opaque"],
    claims: dict[str, Any],
    *,
    user_claim: str,
    expires_at: float | None,
) -> AccessToken:
    """The AccessToken for claims that passed the checks (JWT payload or introspection)."""
    client_id = client_of(claims)
    user: Any = None
    for name in (user_claim, "sub", "username"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            user = value
            break
    # WSO2 marks client-credentials tokens aut=APPLICATION (user tokens:
    # APPLICATION_USER); elsewhere such a token's sub is the client itself.
    aut = claims.get("aut")
    if aut is not None:
        is_client = aut == "APPLICATION"
    else:
        is_client = user is None or (client_id is not None and user == client_id)
    if is_client or user is None:
        is_client = True
        user = f"client:{client_id or 'unknown'}"
    identity = {k: v for k, v in claims.items() if k not in TECHNICAL_CLAIMS}
    if client_id is not None:
        identity["client_id"] = client_id
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return AccessToken(
        kind=kind,
        claims=identity,
        user=user,
        client_id=client_id,
        is_client=is_client,
        scopes=scope_set(claims.get("scope")),
        expires_at=expires_at,
        jkt=jkt if isinstance(jkt, str) and jkt else None,
    )


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts: a JWS (anything else is an opaque token)."""
    return token.count(".") == 2


def check_audience_and_client(
    claims: dict[str, Any], settings: BearerSettings, *, required: bool
) -> None:
    """aud must name one of the route's audiences; azp/client_id one of its clients."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        audiences: Iterable[Any] = (aud,)
    elif isinstance(aud, list):
        audiences = aud
    elif aud is None:
        if required:
            raise TokenError(MISSING_CLAIM, "no aud claim")
        audiences = ()
    else:
        raise TokenError(BAD_CLAIM, "aud must be a string or an array of strings")
    if (aud is not None or required) and settings.audiences:
        if not any(isinstance(a, str) and a in settings.audiences for a in audiences):
            raise TokenError(WRONG_AUDIENCE, "not issued for this API (aud)")
    if settings.clients:
        client = client_of(claims)
        if client is None or client not in settings.clients:
            raise TokenError(AZP_MISMATCH, "issued to a client this API does not accept")


def _number(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenError(MISSING_CLAIM, f"no {name} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(BAD_CLAIM, f"{name} must be a number")
    return float(value)


def check_times(claims: dict[str, Any], now: float, leeway: float, *, exp_required: bool) -> None:
    exp = _number(claims, "exp", required=exp_required)
    if exp is not None and exp <= now - leeway:
        raise TokenError(EXPIRED, "expired")
    nbf = _number(claims, "nbf", required=False)
    if nbf is not None and nbf > now + leeway:
        raise TokenError(NOT_YET_VALID, "not valid yet (nbf)")
    iat = _number(claims, "iat", required=False)
    if iat is not None and iat > now + leeway:
        raise TokenError(ISSUED_IN_FUTURE, "issued in the future (iat)")


class VerifiedMemo:
    """Tokens already verified, by SHA-256, until their exp; at most ``limit``."""

    def __init__(self, clock: IReactorTime, limit: int = VERIFIED_MEMO_MAX) -> None:
        self.clock = clock
        self._limit = limit
        self._tokens: dict[bytes, AccessToken] = {}

    def get(self, digest: bytes, leeway: float) -> AccessToken | None:
        found = self._tokens.get(digest)
        if found is None:
            return None
        if found.expires_at is not None and found.expires_at <= self.clock.seconds() - leeway:
            del self._tokens[digest]
            return None
        return found

    def put(self, digest: bytes, token: AccessToken) -> None:
        if len(self._tokens) >= self._limit:
            now = self.clock.seconds()
            self._tokens = {
                k: v for k, v in self._tokens.items() if v.expires_at is None or v.expires_at > now
            }
            if len(self._tokens) >= self._limit:
                self._tokens.clear()
        self._tokens[digest] = token

    def __len__(self) -> int:
        return len(self._tokens)


class JWTAccessTokens:
    """Verifies one route's JWT access tokens against its provider."""

    def __init__(
        self,
        provider: ProviderClient,
        settings: BearerSettings,
        clock: IReactorTime,
        *,
        user_claim: str = "sub",
        memo_limit: int = VERIFIED_MEMO_MAX,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.clock = clock
        self.user_claim = user_claim
        self.memo = VerifiedMemo(clock, memo_limit)

    def remembered(self, digest: bytes) -> AccessToken | None:
        """The hot path: a token verified before and not expired, or None."""
        return self.memo.get(digest, self.settings.leeway)

    async def verify(self, token: str, digest: bytes) -> AccessToken:
        """The verified token, or TokenError (its message never holds the token)."""
        header, claims, metadata = await _verified(token, self.provider)
        typ = header.get("typ")
        if isinstance(typ, str):
            media_type = typ.lower().removeprefix("application/")
            if media_type in _NOT_ACCESS_TOKEN_TYPES:
                raise TokenError(WRONG_TYPE, f"a {typ[:40]} token is not an access token")
        for name in _ID_TOKEN_ONLY_CLAIMS:
            if name in claims:
                raise TokenError(WRONG_TYPE, f"a token with {name} is not an access token")
        if claims.get("iss") != metadata.issuer:
            raise TokenError(WRONG_ISSUER, f"issuer is not {metadata.issuer!r}")
        now = self.clock.seconds()
        check_times(claims, now, self.settings.leeway, exp_required=True)
        check_audience_and_client(claims, self.settings, required=True)
        exp = claims["exp"]
        verified = access_token_from_claims(
            "jwt", claims, user_claim=self.user_claim, expires_at=float(exp)
        )
        self.memo.put(digest, verified)
        return verified
