"""The ID token a refresh returns is validated like the first one, and must be about
the same user.

OpenID Connect Core 1.0, section 12.2: a refreshed ID token has the same
``iss``, ``sub`` and ``aud`` as the one from the login, and "SHOULD NOT have a
nonce Claim, but if it does, the nonce value MUST be the same as in the ID
Token issued at the time of the original authentication". A provider (or
anyone on its path) that answers a refresh with another ``sub`` or with
garbage must not get that token into the session: it would be forwarded
upstream as ``OIDC_id_token`` and sent back to the provider as
``id_token_hint``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from idgateway.oidc import bounded_json
from idgateway.oidc.provider import ProviderClient
from idgateway.oidc.tokens import (
    NONCE_MISMATCH,
    TokenError,
    validate_id_token,
)

# TokenError.reason: the refreshed token is about someone else.
SUB_MISMATCH = "sub_mismatch"


async def validate_refreshed_id_token(
    token: str,
    *,
    provider: ProviderClient,
    client_id: str,
    session_sub: str,
    previous_id_token: str | None,
    access_token: str | None,
    now: float,
) -> dict[str, Any]:
    """The claims of a refreshed ID token that may replace ``previous_id_token``, or TokenError.

    Signature, ``iss``, ``aud``, ``azp``, ``exp``, ``iat`` and ``at_hash`` as at
    login (``validate_id_token``); then ``sub`` must be the session's, and a
    ``nonce``, if there is one, the login token's.
    """
    claims = await validate_id_token(
        token,
        provider=provider,
        client_id=client_id,
        nonce=None,
        now=now,
        access_token=access_token,
    )
    if not hmac.compare_digest(claims["sub"].encode("utf-8"), session_sub.encode("utf-8")):
        raise TokenError(SUB_MISMATCH, "the refreshed ID token is about another subject")
    nonce = claims.get("nonce")
    if nonce is not None:
        original = _stored_nonce(previous_id_token)
        if (
            not isinstance(nonce, str)
            or original is None
            or not hmac.compare_digest(nonce.encode("utf-8"), original.encode("utf-8"))
        ):
            raise TokenError(NONCE_MISMATCH, "nonce differs from the login's ID token")
    return claims


def _stored_nonce(id_token: str | None) -> str | None:
    """The nonce of the session's ID token (validated when it was stored), if any."""
    if not id_token:
        return None
    parts = id_token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = bounded_json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    nonce = claims.get("nonce") if isinstance(claims, dict) else None
    return nonce if isinstance(nonce, str) else None
