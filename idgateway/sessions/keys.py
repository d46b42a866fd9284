"""A ring of AES-256-GCM keys for sealing values the browser keeps for us.

The first key seals; every key opens, so keys rotate without logging anyone
out: deploy ``[new, old]``, wait for old cookies to age out, drop ``old``.

A sealed token is ASCII, safe as a cookie value::

    base64url-nopad( version=1 | key id (4) | nonce (12) | ciphertext + tag (16) )

The key id is the first 4 bytes of SHA-256(key), so ``open`` tries exactly
one key; a token whose key id is unknown was sealed by a retired key. The
version byte and key id are authenticated along with the caller's
associated data.
"""

from __future__ import annotations

import binascii
import hashlib
import os
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
KEY_BYTES = 32
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = 1 + _KEY_ID_BYTES
_MIN_SEALED = _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES
_VERSION_PREFIX = bytes([VERSION])

_HOW_TO_MAKE_A_KEY = "make one with: openssl rand -base64 32"

# base64url -> standard alphabet. Characters that must not appear in a token
# ("+", "/", "=") map to "*", which decoding rejects (strict) or skips
# (lenient); either way such a token cannot yield the bytes that were sealed.
_TOKEN_TO_STD = bytes.maketrans(b"-_+/=", b"+/***")
# Keys may use either alphabet (or a mix), padded or not.
_KEY_TO_STD = bytes.maketrans(b"-_", b"+/")
_STD_TO_URL = bytes.maketrans(b"+/", b"-_")


def key_id(key: bytes) -> bytes:
    """The 4-byte id under which tokens sealed with ``key`` are labelled."""
    return hashlib.sha256(key).digest()[:_KEY_ID_BYTES]


def _b64decode_nopad(data: bytes, table: bytes, *, strict: bool = True) -> bytes:
    """Decode unpadded base64 after ``table`` maps it to the standard alphabet.

    Raises ``binascii.Error`` (a ``ValueError``) on malformed input; without
    ``strict``, characters outside the alphabet are skipped instead.
    """
    data = data.translate(table)
    remainder = len(data) % 4
    if remainder == 1:
        raise binascii.Error("truncated base64")
    if remainder:
        data += b"=" * (4 - remainder)
    return binascii.a2b_base64(data, strict_mode=strict)


def parse_key(text: str, label: str = "key") -> bytes:
    """Decode one base64 key of exactly 32 bytes; errors never echo the key."""
    if not isinstance(text, str):
        raise ValueError(f"{label} must be a string of base64 text; {_HOW_TO_MAKE_A_KEY}")
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{label} is empty; {_HOW_TO_MAKE_A_KEY}")
    try:
        raw = _b64decode_nopad(stripped.encode("ascii").rstrip(b"="), _KEY_TO_STD)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError(
            f"{label} is not valid base64 ({len(stripped)} characters); {_HOW_TO_MAKE_A_KEY}"
        ) from None
    if len(raw) != KEY_BYTES:
        raise ValueError(
            f"{label} decodes to {len(raw)} bytes but AES-256 needs exactly {KEY_BYTES}; "
            f"{_HOW_TO_MAKE_A_KEY}"
        )
    return raw


class KeyRing:
    """AES-256-GCM keys: the first seals, any of them opens.

    ``random`` supplies nonces (pass a deterministic one only in tests).
    """

    __slots__ = ("_sealer", "_sealer_prefix", "_openers", "_random", "key_ids")

    def __init__(
        self, keys: Sequence[bytes], *, random: Callable[[int], bytes] = os.urandom
    ) -> None:
        if isinstance(keys, bytes | str) or not keys:
            raise ValueError(f"a key ring needs a list of at least one key; {_HOW_TO_MAKE_A_KEY}")
        openers: dict[bytes, AESGCM] = {}
        ids: list[bytes] = []
        seen: set[bytes] = set()
        for position, key in enumerate(keys, 1):
            if len(key) != KEY_BYTES:
                raise ValueError(
                    f"key {position} of {len(keys)} is {len(key)} bytes, needs {KEY_BYTES}; "
                    f"{_HOW_TO_MAKE_A_KEY}"
                )
            kid = key_id(key)
            if key in seen:
                continue  # the same key listed twice is harmless
            if kid in openers:
                # 1 in 4 billion; refuse rather than guess which key to try.
                raise ValueError(
                    f"key {position} of {len(keys)} has the same key id as an earlier key; "
                    f"replace it ({_HOW_TO_MAKE_A_KEY})"
                )
            seen.add(key)
            openers[kid] = AESGCM(key)
            ids.append(kid)
        self.key_ids: tuple[bytes, ...] = tuple(ids)
        self._openers = openers
        self._sealer = openers[ids[0]]
        self._sealer_prefix = _VERSION_PREFIX + ids[0]
        self._random = random

    @classmethod
    def from_strings(
        cls, keys: Sequence[str], *, random: Callable[[int], bytes] = os.urandom
    ) -> KeyRing:
        """Keys as ``openssl rand -base64 32`` prints them (either alphabet, padding optional)."""
        if isinstance(keys, str | bytes):
            raise ValueError(f"pass a list of keys, not a single string; {_HOW_TO_MAKE_A_KEY}")
        if not keys:
            raise ValueError(f"at least one key is needed; {_HOW_TO_MAKE_A_KEY}")
        total = len(keys)
        raw = [parse_key(text, f"key {n} of {total}") for n, text in enumerate(keys, 1)]
        return cls(raw, random=random)

    def __repr__(self) -> str:
        ids = ", ".join(kid.hex() for kid in self.key_ids)
        return f"<KeyRing key ids [{ids}]>"

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt and authenticate with the first key; returns base64url ASCII."""
        header = self._sealer_prefix
        nonce = self._random(_NONCE_BYTES)
        sealed = self._sealer.encrypt(nonce, plaintext, header + associated_data)
        return (
            binascii.b2a_base64(header + nonce + sealed, newline=False)
            .translate(_STD_TO_URL)
            .rstrip(b"=")
        )

    def open(self, token: bytes, associated_data: bytes) -> bytes | None:
        """The plaintext, or None for anything not sealed by one of our keys for this AD."""
        try:
            # Lenient decoding is a third faster, and safe: whatever bytes come
            # out must still carry a valid tag under one of our keys.
            raw = _b64decode_nopad(token, _TOKEN_TO_STD, strict=False)
        except (ValueError, TypeError, AttributeError):  # binascii.Error is a ValueError
            return None
        if len(raw) < _MIN_SEALED or raw[0] != VERSION:
            return None
        aead = self._openers.get(raw[1:_HEADER_BYTES])
        if aead is None:
            return None  # unknown or retired key
        nonce_end = _HEADER_BYTES + _NONCE_BYTES
        try:
            return aead.decrypt(
                raw[_HEADER_BYTES:nonce_end], raw[nonce_end:], raw[:_HEADER_BYTES] + associated_data
            )
        except InvalidTag:
            return None
