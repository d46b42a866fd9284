"""Every use of a private name of Twisted or txredisapi, and nothing else.

Each module here wraps one internal behind a small function or class with a
public-looking name, and documents which private names it uses and what it
does without them. Whether a name is there is decided once, at import: a
Twisted release that renames an internal then makes the gateway take the stock
(slower) path, never break. The fallbacks taken are noted in ``FALLBACKS`` and
logged once at start (``log_fallbacks``).

``tests/unit/test_twisted_seam.py`` lists every private name used here and
checks that the installed Twisted and txredisapi still have it;
``tests/unit/test_no_private_twisted.py`` checks that nothing outside this
package uses one.
"""

from __future__ import annotations

from twisted.logger import Logger

# What this process does the stock way because a private name is missing:
# (the private name, what the gateway does instead).
FALLBACKS: list[tuple[str, str]] = []

_log = Logger()
_logged = False


def note_fallback(name: str, instead: str) -> None:
    """Record, at import, that ``name`` is missing and ``instead`` is done."""
    FALLBACKS.append((name, instead))


def log_fallbacks() -> None:
    """Log the fallbacks taken, once per process (at start)."""
    global _logged
    if _logged:
        return
    _logged = True
    for name, instead in FALLBACKS:
        _log.warn(
            "this Twisted has no {name}: {instead} (slower, same behaviour)",
            name=name,
            instead=instead,
        )
