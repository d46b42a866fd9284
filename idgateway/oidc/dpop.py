"""DPoP proofs (RFC 9449): the client proves it holds the key its token is bound to.

A proof is a compact JWS with ``typ: dpop+jwt``, signed with the private key
whose public half it embeds (``jwk``), saying which request it is for (``htm``,
``htu``), when (``iat``), a unique ``jti`` and, with an access token, ``ath``
(the token's SHA-256). The token's ``cnf.jkt`` must be the RFC 7638
thumbprint of that key. Each ``jti`` is accepted once (per route, shared
through Redis when the route has one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from josepy.errors import Error as JoseError
from josepy.jwk import JWK
from josepy.jws import JWS

from idgateway.oidc import bounded_json
from idgateway.oidc.provider import ASYMMETRIC_ALGORITHMS, key_fits_algorithm
from idgateway.oidc.tokens import TokenError, _header

# A proof is a few hundred bytes; an RSA-4096 key makes it about 1.5 KiB.
MAX_PROOF_LENGTH = 8 * 1024
MAX_JTI_LENGTH = 256
# JWK members that only a private (or symmetric) key has.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# RFC 7638: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


class DPoPError(Exception):
    """A proof was refused; the message is for the client (no secrets in it)."""


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of a public RSA or EC key."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps(
        {name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_proof(
    proof: str,
    *,
    method: str,
    htu_matches: Callable[[str], bool],
    ath: str,
    now: float,
    max_age: float,
    leeway: float,
) -> tuple[str, str, float]:
    """(jkt, jti, iat) of a valid proof for this request, or DPoPError.

    ``htu_matches`` says whether the proof's ``htu`` names this request's URL
    (the gate compares canonical readings). The replay check is the caller's.
    """
    if len(proof) > MAX_PROOF_LENGTH:
        raise DPoPError("the DPoP proof is too long")
    try:
        header = _header(proof)
    except TokenError as error:
        raise DPoPError(f"the DPoP proof is malformed ({error.message})") from None
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() != "dpop+jwt":
        raise DPoPError("the DPoP proof's typ is not dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
        raise DPoPError("the DPoP proof's alg is not an allowed asymmetric algorithm")
    if "crit" in header:
        raise DPoPError("the DPoP proof has critical header extensions")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise DPoPError("the DPoP proof has no jwk header")
    if _PRIVATE_MEMBERS & set(jwk):
        raise DPoPError("the DPoP proof's jwk holds private key material")
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None or not all(isinstance(jwk.get(name), str) for name in members):
        raise DPoPError("the DPoP proof's jwk is not an RSA or EC public key")
    try:
        key = JWK.from_json(jwk)
        assert isinstance(key, JWK)
    except (JoseError, ValueError, TypeError, KeyError, AssertionError):
        raise DPoPError("the DPoP proof's jwk is not a usable public key") from None
    if not key_fits_algorithm(key, alg):
        raise DPoPError("the DPoP proof's jwk does not fit its alg")
    try:
        jws = JWS.from_compact(proof.encode("ascii"))
        valid = jws.verify(key)
    except Exception:  # noqa: BLE001 - any failure to verify is a bad signature
        valid = False
    if not valid:
        raise DPoPError("the DPoP proof's signature does not verify")
    try:
        claims = bounded_json.loads(jws.payload)
    except ValueError:
        raise DPoPError("the DPoP proof's payload is not JSON") from None
    if not isinstance(claims, dict):
        raise DPoPError("the DPoP proof's payload is not a JSON object")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise DPoPError("the DPoP proof has no usable jti")
    if claims.get("htm") != method:
        raise DPoPError("the DPoP proof is for another method (htm)")
    htu = claims.get("htu")
    if not isinstance(htu, str) or not htu_matches(htu):
        raise DPoPError("the DPoP proof is for another URL (htu)")
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise DPoPError("the DPoP proof has no iat")
    if iat < now - max_age:
        raise DPoPError("the DPoP proof is too old (iat)")
    if iat > now + leeway:
        raise DPoPError("the DPoP proof is from the future (iat)")
    proof_ath = claims.get("ath")
    if not isinstance(proof_ath, str) or not hmac.compare_digest(
        proof_ath.encode("ascii", "replace"), ath.encode("ascii")
    ):
        raise DPoPError("the DPoP proof's ath does not match the access token")
    return thumbprint(jwk), jti, float(iat)
