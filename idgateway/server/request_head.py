"""A whole HTTP/1.1 request head, parsed in one pass.

twisted.web's HTTPChannel reads a request head one line at a time (a
LineReceiver split, then a method call or two per header): with a browser's
dozen headers that was a tenth of the gateway's time per proxied request.
Nearly every request arrives with its whole head in one read, so
``read_request_head`` takes the head at once. It accepts exactly what
HTTPChannel accepts and nothing more: anything unusual (an obsolete line fold,
a bare CR or LF, a chunked body, a doubtful Content-Length, a head too big)
returns None and the channel falls back to twisted.web's own parser, which
then answers as it always has (a 400, say).
"""

from __future__ import annotations

from typing import NamedTuple

from idgateway._twisted.http_headers import InvalidHeaderName, canonical_header_name
from idgateway.http.numbers import parse_decimal
from idgateway.http.syntax import REQUEST_TARGET_CHARS, TOKEN_CHARS

# The bytes a request target may hold (visible ASCII; twisted.web's own check,
# which the fallback makes, also lets DEL and 0x80-0xB0 through: the route
# refuses those).
_TARGET = REQUEST_TARGET_CHARS


# Header names as they arrive -> twisted.web's Header-Case spelling (bounded:
# a client could send endless made-up names).
_CANONICAL_NAMES: dict[bytes, bytes] = {}
_MAX_CANONICAL_NAMES = 2000


class RequestHead(NamedTuple):
    method: bytes
    target: bytes
    version: bytes
    # Header-Case name -> values in arrival order, as twisted.web's Headers keeps them.
    headers: dict[bytes, list[bytes]]
    # The Content-Length, 0 when there is none.
    length: int


_new_tuple = tuple.__new__

# Methods known to be tokens (the rest are checked: a translate builds its
# table of 256 bytes per call).
_USUAL_METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"))

# Reads longer than this (a head with a body behind it, or pipelined heads)
# are cut at their head's end before its lines are partitioned.
_WHOLE_READ = 8 * 1024


def read_request_head(
    data: bytes, max_headers: int, max_size: int
) -> tuple[RequestHead, int] | None:
    """The request head at the start of ``data`` and how many bytes it took
    (its blank line included), or None: the head is not all there, is over
    ``max_size`` bytes, or twisted.web's line-by-line parser must decide."""
    # Split at each LF with partition (a memchr, then a copy of what follows:
    # looking for CRLF or CRLFCRLF searched two or four bytes at a time,
    # slowly over a 2 KB cookie, and find(sub, start, end) parses its
    # arguments anew on every call), then at the line's first CR, which must
    # be its last byte. Each header line is read as it is found.
    if len(data) > _WHOLE_READ:
        # A body behind the head: only the head is partitioned (the copies
        # would otherwise take the whole read once per line).
        end = data.find(b"\r\n\r\n", 0, max_size + 1)
        if end == -1:
            return None  # not all there yet, too big, or no CRLF before its blank line
        rest = data[: end + 4]
    else:
        rest = data
    line, lf, rest = rest.partition(b"\n")
    consumed = len(line) + 1  # (the LF's index, plus one)
    if not lf or consumed > max_size + 1:
        return None  # not all there yet, or too big for this path
    first, cr, after = line.partition(b"\r")
    if after or not cr or not first:
        # A LF without its CR, a CR inside the line, or a blank line first
        # (twisted.web skips one).
        return None
    request_line = first.split(b" ")
    if len(request_line) != 3:
        return None
    method, target, version = request_line
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        return None
    if method not in _USUAL_METHODS and (not method or method.translate(None, TOKEN_CHARS)):
        return None  # (a method that is no token: idgateway.http.syntax.is_token, inline)
    if not target:
        return None
    if target.translate(None, _TARGET):
        return None  # (this also keeps CR and LF out of the request line)
    headers: dict[bytes, list[bytes]] = {}
    count = 0
    while True:
        line, lf, rest = rest.partition(b"\n")
        consumed += len(line) + 1
        if not lf or consumed > max_size + 1:
            return None
        text, cr, after = line.partition(b"\r")
        if after or not cr:
            return None  # (a bare LF, a CR inside the line)
        if not text:
            break  # the blank line
        name, colon, value = text.partition(b":")
        if not colon:
            return None
        canonical = _CANONICAL_NAMES.get(name)
        if canonical is None:
            # Not a token (a leading space: an obsolete line fold), or new.
            try:
                canonical = canonical_header_name(name)
            except InvalidHeaderName:
                return None
            if len(_CANONICAL_NAMES) < _MAX_CANONICAL_NAMES:
                _CANONICAL_NAMES[name] = canonical
        values = headers.get(canonical)
        if values is None:
            headers[canonical] = [value.strip(b" \t")]
        else:
            values.append(value.strip(b" \t"))
        count += 1
    if count > max_headers:
        return None
    # A NUL, or a VT or FF (whitespace to many a parser's strip(), so a header
    # one reads as "chunked" another reads as junk): one search each over the
    # whole head, not one per line. The fallback refuses.
    head = data if consumed == len(data) else data[:consumed]
    if head.partition(b"\x00")[1] or head.partition(b"\x0b")[1] or head.partition(b"\x0c")[1]:
        return None
    length = 0
    if b"Content-Length" in headers:
        lengths = headers[b"Content-Length"]
        parsed = parse_decimal(lengths[0]) if len(lengths) == 1 else None
        if parsed is None:
            return None  # (twisted.web's parser, bounded by GatewayChannel, answers 400)
        length = parsed
    if b"Transfer-Encoding" in headers:
        return None
    # (RequestHead(...) is a Python frame, NamedTuple's __new__; this is what it does)
    return _new_tuple(RequestHead, (method, target, version, headers, length)), consumed
