"""The numbers in HTTP framing, parsed with a bound on their digits.

``int()`` on bytes accepts a sign, surrounding whitespace, underscores and a
``0x`` prefix (base 16), and past 4,300 decimal digits it raises instead of
answering. None of that may reach a framing decision: a length one parser
reads as 5 and another as 0x5 is how requests are smuggled. These accept
ASCII digits only, a bounded number of them, and answer None for anything
else, so every caller refuses bad input with a clean 400 or 502.
"""

from __future__ import annotations

# 19 decimal digits hold any 63-bit length (2**63 - 1 has 19); 16 hex digits
# are 64 bits. Longer numbers (leading zeros included) are refused, not
# trimmed: no honest peer sends them.
MAX_DECIMAL_DIGITS = 19
MAX_HEX_DIGITS = 16

_DECIMAL = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"


def parse_decimal(text: bytes) -> int | None:
    """A Content-Length (or a cookie's chunk count): 1 to 19 ASCII digits, else None."""
    if 0 < len(text) <= MAX_DECIMAL_DIGITS and not text.translate(None, _DECIMAL):
        return int(text)
    return None


def parse_hex(text: bytes) -> int | None:
    """A chunk size: 1 to 16 ASCII hex digits (no sign, prefix or space), else None."""
    if 0 < len(text) <= MAX_HEX_DIGITS and not text.translate(None, _HEX):
        return int(text, 16)
    return None


def leading_hex_digits(data: bytes | bytearray) -> int:
    """How many hex digits ``data`` starts with (to refuse an overlong chunk
    size before a parser that has no bound reads it)."""
    return len(data) - len(data.lstrip(_HEX))
