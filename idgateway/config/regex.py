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
import re
from typing import Any

__all__ = ["compile_config_regex", "not_starting_with"]


# RE2 is loaded by the first config regex, not with this module: it maps
# 2.5 MiB (its extension and libstdc++) into every process, and most configs
# have no regex at all (and the master never compiles one it checked).
@functools.cache
def _re2() -> Any:
    import re2

    return re2


@functools.cache
def _options() -> Any:
    options = _re2().Options()
    # A refused pattern is reported once, by the config check, not also
    # by RE2's own logging on stderr.
    options.log_errors = False
    return options


# Cached: claim rules are compiled where they are used (a few patterns per
# config, so the cache never churns).
@functools.lru_cache(maxsize=256)
def compile_config_regex(pattern: str) -> Any:
    """The compiled pattern (``search``/``fullmatch`` as with ``re``); ValueError saying why not."""
    re2 = _re2()
    try:
        return re2.compile(pattern, options=_options())
    except re2.error as error:
        reason = error.args[0] if error.args else "cannot be compiled"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(
            f"bad regular expression {pattern!r}: {reason}. Config regexes run on "
            "RE2 (linear time, so no request can stall the gateway), which has no "
            "backreferences, lookahead or lookbehind and writes end of text as $ or \\z"
        ) from None


def not_starting_with(prefixes: list[str]) -> str:
    """A pattern for the texts that start with none of ``prefixes`` (RE2 has no ``(?!``).

    Built from the prefixes' trie: at each step the text may end, take a
    character no prefix continues with, or follow a prefix that is not yet
    complete. ``["/x"]`` gives ``^(?:$|[^/]|/(?:$|[^x]))``.
    """
    if not prefixes or "" in prefixes:
        raise ValueError("every text starts with the empty prefix")
    trie: dict[str, Any] = {}
    for prefix in prefixes:
        node = trie
        for char in prefix:
            node = node.setdefault(char, {})
        node[""] = {}  # a whole prefix ends here

    def none_of(node: dict[str, Any]) -> str:
        following = sorted(char for char in node if char)
        options = ["$", "[^" + "".join(_class_char(char) for char in following) + "]"]
        options.extend(
            re.escape(char) + none_of(node[char]) for char in following if "" not in node[char]
        )
        return "(?:" + "|".join(options) + ")"

    return "^" + none_of(trie)


def _class_char(char: str) -> str:
    return "\\" + char if char in "\\]^-[" else char
