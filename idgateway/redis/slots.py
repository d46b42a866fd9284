"""Redis Cluster key slots: CRC16 (XMODEM) of the key, or of its ``{hash tag}``, mod 16384.

Pure functions, as the Redis cluster specification defines them: when a key
holds a ``{`` followed later by a ``}`` with at least one byte between them,
only those bytes are hashed, so keys sharing a tag land in one slot (and a
script may touch them together). ``{}`` (empty) does not count as a tag: the
whole key is hashed.
"""

from __future__ import annotations

import binascii

SLOT_COUNT = 16384


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as Redis Cluster uses.

    ``binascii.crc_hqx`` is exactly that CRC, in C: a slot costs well under a
    microsecond on the hot path (one session GET per request at most).
    """
    return binascii.crc_hqx(data, 0)


def hashed_part(key: bytes) -> bytes:
    """The bytes of ``key`` that decide its slot: its hash tag, else all of it."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str | bytes) -> int:
    """The cluster slot (0..16383) of ``key``; text is UTF-8 encoded, as Redis would get it."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    return crc16(hashed_part(key)) % SLOT_COUNT
