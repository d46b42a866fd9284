"""``private_key_jwt`` client authentication (RFC 7523, OpenID Connect Core 9).

Each call to the provider gets a new assertion: ``iss`` = ``sub`` = the client
id, ``aud`` = the token endpoint (or the issuer, ``client_assertion_audience``),
a random ``jti`` and a 60-second ``exp``, so a captured assertion is worth one
minute and one use at a provider that remembers ``jti`` (WSO2 does).
"""

from __future__ import annotations

import json
import os

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from idgateway.config.client_keys import ClientKey
from idgateway.config.signing_keys import b64url

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60


def choose_algorithm(key: ClientKey, supported: tuple[str, ...]) -> str:
    """The key's preferred algorithm, unless the provider lists others only.

    ``supported`` is the discovery document's
    ``token_endpoint_auth_signing_alg_values_supported`` (empty: not stated).
    """
    for alg in key.algorithms:
        if not supported or alg in supported:
            return alg
    return key.algorithms[0]  # the provider will say no; its answer is logged


@attrs.frozen
class ClientAssertionSigner:
    key: ClientKey

    def assertion(
        self, client_id: str, audience: str, now: float, supported: tuple[str, ...] = ()
    ) -> str:
        alg = choose_algorithm(self.key, supported)
        header = {"alg": alg, "typ": "JWT"}
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": os.urandom(16).hex(),
            "iat": int(now),
            "exp": int(now) + ASSERTION_LIFETIME,
        }
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = _sign(self.key, alg, signing_input.encode("ascii"))
        return signing_input + "." + b64url(signature)


def _sign(key: ClientKey, alg: str, data: bytes) -> bytes:
    private = key.private_key
    if isinstance(private, rsa.RSAPrivateKey):
        if alg == "PS256":
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            return private.sign(data, pss, hashes.SHA256())
        return private.sign(data, padding.PKCS1v15(), hashes.SHA256())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
