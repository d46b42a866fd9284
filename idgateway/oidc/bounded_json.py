"""JSON from providers and tokens, parsed within bounds.

Python's ``json`` recurses once per nesting level: a few thousand ``[`` in a
token header or a provider answer end in ``RecursionError`` (an unhandled 500)
instead of a clean refusal. ``loads`` first measures the nesting depth with a
linear scan that skips string contents, and refuses anything deeper than any
real OpenID document (``MAX_DEPTH``) with ``ValueError``, the error callers
already handle for "not JSON". ``NaN`` and ``Infinity`` are refused as well:
they are not JSON, and a NaN ``exp`` would compare false with every time.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Discovery documents, key sets, token responses and ID tokens nest 3 or 4
# levels; WSO2's richest claims (address, organisation lists) stay under 8.
MAX_DEPTH = 32

# The characters that matter to depth: brackets, and quotes (strings may hold brackets).
_STRUCTURAL = re.compile(rb'["\[\]{}]')
# The rest of a string after its opening quote, up to and including the closing one.
_STRING_REST = re.compile(rb'(?:[^"\\]|\\.)*"', re.DOTALL)


class TooDeep(ValueError):
    """The document nests deeper than allowed."""


def nesting_depth(data: bytes, limit: int = MAX_DEPTH) -> int:
    """How deep ``data`` nests, scanning no further than ``limit`` + 1 levels.

    Malformed input (an unterminated string, unbalanced brackets) is measured
    as far as it goes; ``json.loads`` reports what is wrong with it.
    """
    depth = deepest = 0
    position = 0
    search = _STRUCTURAL.search
    string_rest = _STRING_REST.match
    while True:
        found = search(data, position)
        if found is None:
            return deepest
        char = data[found.start()]
        if char == 0x22:  # '"': skip the string, escaped quotes included
            rest = string_rest(data, found.end())
            if rest is None:
                return deepest
            position = rest.end()
            continue
        position = found.end()
        if char in (0x5B, 0x7B):  # '[' '{'
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth -= 1


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` with a nesting limit and without NaN/Infinity; ValueError otherwise."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if nesting_depth(raw, max_depth) > max_depth:
        raise TooDeep(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise TooDeep("JSON nested too deeply") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
