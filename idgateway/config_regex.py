"""Regular expressions from the config (``public_paths: ['~ ...']``, claim rules).

They run on RE2, whose matching time is linear in the text whatever the
pattern, so nothing a config says can make one request stall the reactor
(Python's ``re`` backtracks: ``^/pub/(a+)+$`` against 30 characters takes
seconds). RE2 has no backreferences, lookahead or lookbehind, and spells
"end of text" ``\\z`` or ``$`` rather than ``\\Z``; such patterns are refused
by ``idgateway check`` with the reason. Its ``\\d``, ``\\w`` and ``\\b`` are
ASCII-only and its ``$`` does not match before a final newline, which can
only make a pattern match less than it would with ``re``.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

__all__ = ["compile_config_regex"]


def _options() -> Any:
    options = re2.Options()
    # A refused pattern is reported once, by the config check, not also
    # by RE2's own logging on stderr.
    options.log_errors = False
    return options


_OPTIONS = _options()


# Cached: claim rules are compiled where they are used (a few patterns per
# config, so the cache never churns).
@functools.lru_cache(maxsize=256)
def compile_config_regex(pattern: str) -> Any:
    """The compiled pattern (``search``/``fullmatch`` as with ``re``); ValueError saying why not."""
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as error:
        reason = error.args[0] if error.args else "cannot be compiled"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(
            f"bad regular expression {pattern!r}: {reason}. Config regexes run on "
            "RE2 (linear time, so no request can stall the gateway), which has no "
            "backreferences, lookahead or lookbehind and writes end of text as $ or \\z"
        ) from None
