"""A whole HTTP/1.1 request head, parsed in one pass.

twisted.web's HTTPChannel reads a request head one line at a time (a
LineReceiver split, then a method call or two per header): with a browser's
dozen headers that was a tenth of the gateway's time per proxied request.
Nearly every request arrives with its whole head in one read, so
``parse_request_head`` takes the head at once. It accepts exactly what
HTTPChannel accepts and nothing more: anything unusual (an obsolete line fold,
a bare CR or LF, a chunked body, a doubtful Content-Length, a head too big)
returns None and the channel falls back to twisted.web's own parser, which
then answers as it always has (a 400, say).
"""

from __future__ import annotations

from typing import NamedTuple

from twisted.web.http_headers import InvalidHeaderName, _nameEncoder

from idgateway.http_syntax import is_token

# The bytes twisted.web accepts in a request target (its _parseRequestLine).
_TARGET = bytes(range(33, 177))


class RequestHead(NamedTuple):
    method: bytes
    target: bytes
    version: bytes
    # Header-Case name -> values in arrival order, as twisted.web's Headers keeps them.
    headers: dict[bytes, list[bytes]]
    # The Content-Length, 0 when there is none.
    length: int


def parse_request_head(head: bytes, max_headers: int) -> RequestHead | None:
    """The request line and headers in ``head`` (up to, not including, the
    blank line), or None where twisted.web's line-by-line parser must decide."""
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf or b"\x00" in head:
        return None
    lines = head.split(b"\r\n")
    if len(lines) > max_headers + 1:
        return None
    request_line = lines[0].split(b" ")
    if len(request_line) != 3:
        return None
    method, target, version = request_line
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        return None
    if not is_token(method) or not target:
        return None
    if target.translate(None, _TARGET):
        return None
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or line[:1] in (b" ", b"\t"):
            return None
        try:
            name = _nameEncoder.encode(name)
        except InvalidHeaderName:
            return None
        values = headers.get(name)
        if values is None:
            headers[name] = [value.strip(b" \t")]
        else:
            values.append(value.strip(b" \t"))
    length = 0
    if b"Content-Length" in headers:
        lengths = headers[b"Content-Length"]
        if len(lengths) != 1 or not lengths[0].isdigit():
            return None
        length = int(lengths[0])
    if b"Transfer-Encoding" in headers:
        return None
    return RequestHead(method, target, version, headers, length)
