"""Import the reactor's base without its TLS half, for a process that serves no TLS.

``twisted.internet.posixbase`` and ``twisted.internet.tcp`` import their TLS
parts (``twisted.protocols.tls``, ``twisted.internet.ssl``,
``twisted.internet._newtls``: pyOpenSSL, hence cryptography's Rust binding,
some 8 MiB) inside ``try: ... except ImportError``, and do without
``listenSSL``/``startTLS`` when those are missing. The workers' master binds
sockets and supervises; it never speaks TLS, so it imports them (before
twistd imports the reactor) with ``OpenSSL`` blocked for the time of that one
import.

Private behaviour used: those optional imports (``posixbase.tls`` and
``posixbase.ssl`` None, ``tcp._TLSConnectionMixin.TLS`` False when they fail).
If a Twisted release makes the import fail without pyOpenSSL, the modules are
imported the stock way (with TLS) and the fallback is noted. The block lasts
only for the import: the workers are processes of their own and never see it.
"""

from __future__ import annotations

import importlib
import sys

from idgateway._twisted import note_fallback

# The package whose import pulls in the TLS stack.
BLOCKED = "OpenSSL"

# Imports twisted.internet.tcp; what every reactor on this platform builds on.
REACTOR_BASE = "twisted.internet.posixbase"

# What a failed import may leave half-made.
_TLS_MODULES = (
    REACTOR_BASE,
    "twisted.internet.tcp",
    "twisted.internet._newtls",
    "twisted.internet.ssl",
    "twisted.internet._sslverify",
    "twisted.protocols.tls",
)


def import_reactor_base_without_tls() -> bool:
    """Import the reactor's base with no TLS support; whether it took effect.

    False when it (or pyOpenSSL) is already imported, with nothing to save, or
    when this Twisted cannot import it without pyOpenSSL (stock import, noted).
    """
    if REACTOR_BASE in sys.modules or BLOCKED in sys.modules:
        return False
    before = set(sys.modules)
    # None in sys.modules makes ``import OpenSSL`` raise ImportError.
    sys.modules[BLOCKED] = None  # type: ignore[assignment]
    try:
        base = importlib.import_module(REACTOR_BASE)
    except ImportError:
        base = None
    finally:
        if BLOCKED in sys.modules and sys.modules[BLOCKED] is None:
            del sys.modules[BLOCKED]
    if base is not None:
        return tls_left_out()
    for name in set(sys.modules) - before:
        if name in _TLS_MODULES:
            del sys.modules[name]
    importlib.import_module(REACTOR_BASE)
    note_fallback("posixbase's optional TLS import", "the workers' master loads pyOpenSSL")
    return False


def tls_left_out() -> bool:
    """Whether this process's reactor base and TCP transports were made without TLS."""
    base = sys.modules.get(REACTOR_BASE)
    tcp = sys.modules.get("twisted.internet.tcp")
    return (
        base is not None
        and tcp is not None
        and getattr(base, "tls", ...) is None
        and getattr(base, "ssl", ...) is None
        and getattr(getattr(tcp, "_TLSConnectionMixin", None), "TLS", None) is False
    )
