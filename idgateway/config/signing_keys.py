"""The gateway's own signing keys for identity assertions, and their JWKS document.

``assertion_keys:`` names PEM files, EC P-256 (ES256) or Ed25519 (EdDSA) private
keys. The first signs; every one is published at ``JWKS_PATH`` (on each route's
hosts and on the admin listener), so a key can be rolled over: add the new key
after the old one, reload, let verifiers' caches pick it up, then move it first.
Key ids are RFC 7638 thumbprints: the same key has the same ``kid`` everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from idgateway.config.files import PEM_FILE_LIMIT, FileTooOdd, read_bounded, read_problem

# Where verifiers fetch the keys: on every route's hosts and the admin listener.
JWKS_PATH = "/.well-known/idgateway/jwks.json"
KEY_TYPES = ("ec", "ed25519")


class AssertionKeyError(ValueError):
    """A key file that cannot sign assertions; the message says why and what to do."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@attrs.frozen
class SigningKey:
    """One loaded key: equal to another when it is the same file with the same key."""

    path: str
    # The RFC 7638 thumbprint of the public key.
    kid: str
    # "ES256" or "EdDSA".
    alg: str
    # The public JWK as published (kty, crv, x, y?, kid, alg, use): never a private member.
    public_jwk: dict[str, str] = attrs.field(eq=False, hash=False, repr=False)
    private_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey = attrs.field(
        eq=False, hash=False, repr=False
    )

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS signature over ``signing_input`` (RFC 7518 3.4: ES256 is r || s)."""
        key = self.private_key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(signing_input)
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def public_jwk_members(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
) -> dict[str, str]:
    """The RFC 7638 required members of the public key, in lexicographic order."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}
    numbers = key.public_key().public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def thumbprint(members: dict[str, str]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace."""
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return b64url(hashlib.sha256(canonical).digest())


def signing_key_from_pem(pem: bytes, path: str) -> SigningKey:
    """A SigningKey from PEM bytes, or AssertionKeyError saying what is wrong and the fix."""
    fix = f"make one with: idgateway keygen {path}"
    try:
        key: Any = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise AssertionKeyError(
            f"{path} is encrypted; the gateway reads unencrypted keys only (keep the file "
            f"0600, or use systemd credentials), or {fix}"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        if _is_public_key(pem):
            raise AssertionKeyError(
                f"{path} holds a public key; give the private key (the gateway publishes the "
                f"public half itself), or {fix}"
            ) from None
        raise AssertionKeyError(
            f"{path} is not a PEM private key (-----BEGIN PRIVATE KEY-----); {fix}"
        ) from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise AssertionKeyError(
                f"{path} is an EC key on {key.curve.name}; only P-256 (ES256) and Ed25519 "
                f"(EdDSA) keys sign assertions; {fix}"
            )
        alg = "ES256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        alg = "EdDSA"
    else:
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "") or "this kind of"
        raise AssertionKeyError(
            f"{path} is an {kind} key; only EC P-256 (ES256) and Ed25519 (EdDSA) keys sign "
            f"assertions; {fix}"
        )
    members = public_jwk_members(key)
    kid = thumbprint(members)
    jwk = {**members, "kid": kid, "alg": alg, "use": "sig"}
    return SigningKey(path=path, kid=kid, alg=alg, public_jwk=jwk, private_key=key)


def _is_public_key(pem: bytes) -> bool:
    try:
        serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        return False
    return True


def load_signing_key(path: str) -> SigningKey:
    """Read one key file (a regular file of at most 1 MiB): SigningKey or AssertionKeyError."""
    try:
        pem = read_bounded(path, PEM_FILE_LIMIT)
    except (OSError, FileTooOdd) as error:
        raise AssertionKeyError(read_problem(error)) from None
    return signing_key_from_pem(pem, path)


@attrs.frozen
class AssertionKeySet:
    """The keys of one configuration: the first signs, all are published."""

    keys: tuple[SigningKey, ...] = ()
    # The JWKS document, made once per configuration (the endpoint sends these bytes).
    jwks_body: bytes = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        document = {"keys": [key.public_jwk for key in self.keys]}
        object.__setattr__(self, "jwks_body", json.dumps(document, indent=1).encode() + b"\n")

    @property
    def signing(self) -> SigningKey | None:
        return self.keys[0] if self.keys else None


def generate_key_file(path: str, key_type: str = "ec") -> SigningKey:
    """Write a new private key (PKCS#8 PEM, mode 0600); never overwrites a file.

    FileExistsError if ``path`` exists; other OSErrors as the system says.
    """
    private_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "ec":
        private_key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "ed25519":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: an existing key (perhaps the one signing now) is never replaced.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask says
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return signing_key_from_pem(pem, path)
