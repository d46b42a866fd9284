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
from idgateway.http.syntax import TOKEN_CHARS

# The bytes twisted.web accepts in a request target (its _parseRequestLine).
_TARGET = bytes(range(33, 177))


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


def read_request_head(
    data: bytes, max_headers: int, max_size: int
) -> tuple[RequestHead, int] | None:
    """The request head at the start of ``data`` and how many bytes it took
    (its blank line included), or None: the head is not all there, is over
    ``max_size`` bytes, or twisted.web's line-by-line parser must decide."""
    # Split at each LF (a memchr; looking for CRLF or CRLFCRLF searched two or
    # four bytes at a time, slowly over a 2 KB cookie), requiring its CR to be
    # the line's only one (another memchr). Each header line is read as it is
    # found (no list of lines to go over a second time).
    find = data.find
    lf = find(b"\n")
    if lf == -1 or lf > max_size:
        return None  # not all there yet, or too big for this path
    if lf < 2 or find(b"\r", 0, lf) != lf - 1:
        # A LF without its CR, a CR inside the line, or a blank line first
        # (twisted.web skips one).
        return None
    request_line = data[: lf - 1].split(b" ")
    if len(request_line) != 3:
        return None
    method, target, version = request_line
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        return None
    if not method or method.translate(None, TOKEN_CHARS) or not target:
        return None  # (a method that is no token: idgateway.http.syntax.is_token, inline)
    if target.translate(None, _TARGET):
        return None  # (this also keeps CR and LF out of the request line)
    headers: dict[bytes, list[bytes]] = {}
    count = 0
    start = lf + 1
    while True:
        lf = find(b"\n", start)
        if lf == -1 or lf > max_size:
            return None
        end = lf - 1  # (where the line's CR must be)
        if lf == start or find(b"\r", start, lf) != end:
            return None
        if end == start:
            break  # the blank line
        name, colon, value = data[start:end].partition(b":")
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
        start = lf + 1
    if count > max_headers:
        return None
    consumed = lf + 1
    if (
        find(b"\x00", 0, consumed) != -1
        or find(b"\x0b", 0, consumed) != -1
        or find(b"\x0c", 0, consumed) != -1
    ):
        # A NUL, or a VT or FF (whitespace to many a parser's strip(), so a
        # header one reads as "chunked" another reads as junk): one search
        # each over the whole head, not one per line. The fallback refuses.
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
