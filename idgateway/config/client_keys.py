"""The client's own key for ``client_auth: private_key_jwt`` (RFC 7523).

A PEM private key: RSA of at least 2048 bits (RS256, or PS256 when the provider
accepts only that) or EC P-256 (ES256). Read while loading the configuration, so
an unreadable or unusable file is a configuration error naming the key and the
fix, not a failed login later.
"""

from __future__ import annotations

from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idgateway.config.files import PEM_FILE_LIMIT, FileTooOdd, read_bounded, read_problem

MIN_RSA_BITS = 2048
_FIX = (
    "give an unencrypted PEM RSA (2048 bits or more) or EC P-256 private key, e.g. "
    "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out client.key"
)


class ClientKeyError(ValueError):
    """A key file that cannot sign client assertions; the message says why and the fix."""


@attrs.frozen
class ClientKey:
    path: str
    # "RSA" (RS256 or PS256) or "EC" (ES256).
    kind: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = attrs.field(eq=False, repr=False)

    @property
    def algorithms(self) -> tuple[str, ...]:
        """What this key can sign, the preferred first."""
        return ("RS256", "PS256") if self.kind == "RSA" else ("ES256",)


def load_client_key(path: str) -> ClientKey:
    try:
        pem = read_bounded(path, PEM_FILE_LIMIT)
    except (OSError, FileTooOdd) as error:
        raise ClientKeyError(read_problem(error)) from None
    return client_key_from_pem(pem, path)


def client_key_from_pem(pem: bytes, path: str) -> ClientKey:
    try:
        key: Any = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ClientKeyError(f"{path} is encrypted; {_FIX}") from None
    except (ValueError, UnsupportedAlgorithm):
        if b"-----BEGIN CERTIFICATE-----" in pem or b"PUBLIC KEY-----" in pem:
            raise ClientKeyError(
                f"{path} holds a certificate or public key, not the private key; {_FIX}"
            ) from None
        raise ClientKeyError(f"{path} is not a PEM private key; {_FIX}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ClientKeyError(f"{path} is a {key.key_size}-bit RSA key; {_FIX}")
        return ClientKey(path=path, kind="RSA", private_key=key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ClientKeyError(f"{path} is an EC key on {key.curve.name}; {_FIX}")
        return ClientKey(path=path, kind="EC", private_key=key)
    kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "") or "unsupported"
    raise ClientKeyError(f"{path} is an {kind} key; {_FIX}")


def certificate_key_mismatch(cert_path: str, key_path: str) -> str | None:
    """Why ``key_path`` cannot be used with ``cert_path`` for mutual TLS, or None."""
    fix = "give the private key that belongs to client_cert"
    try:
        certificate = x509.load_pem_x509_certificates(read_bounded(cert_path, PEM_FILE_LIMIT))[0]
        pem = read_bounded(key_path, PEM_FILE_LIMIT)
    except (OSError, FileTooOdd) as error:
        return read_problem(error)
    except ValueError:
        return f"{cert_path} is not PEM (-----BEGIN CERTIFICATE-----)"
    try:
        key: Any = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        return f"{key_path} is encrypted; {fix}, unencrypted"
    except (ValueError, UnsupportedAlgorithm):
        return f"{key_path} is not a PEM private key; {fix}"
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        return f"{key_path} is not the key of {cert_path}; {fix}"
    return None
