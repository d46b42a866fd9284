"""Freed heap memory given back to the kernel: glibc's ``malloc_trim``.

Start-up (imports, the configuration, route tables) and a provider's first
discovery (TLS handshakes, JSON documents, keys) free much of what they
allocate in the middle of the heap, which glibc gives back by itself only
from its top: an idle worker would keep those pages resident.
``malloc_trim(0)`` gives back every free page of the heap; a worker asks
for it once it serves and once each provider is first ready. Without glibc
(another C library, no ``malloc_trim``) nothing is done.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Any = ctypes.CDLL(None).malloc_trim  # (this process's C library)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> bool:
    """Give the heap's free pages back to the kernel (True if any were)."""
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))
