"""HTTP/2 request header blocks, checked by the gateway itself.

The ``h2`` library's own inbound checks run six chained generators over every
header block and look at each byte of each name and value in Python: with a
session cookie of a kilobyte that was the largest single cost of an HTTP/2
request. ``read_request_block`` makes the checks RFC 9113 requires (8.2.1
field names and values, 8.2.2 connection-specific fields and ``te``, 8.3
pseudo-header fields, ``Host`` against ``:authority``) in one pass, with the
byte scans done by C (``bytes.translate``, ``in``), and combines the
``cookie`` crumbs (8.2.3) on the way. A block that fails makes its request
malformed: a stream error (``RST_STREAM`` with ``PROTOCOL_ERROR``, RFC 9113
8.1.1), counted against ``max_resets_per_minute``; the connection goes on.
"""

from __future__ import annotations

from collections.abc import Iterable

from idgateway.http.syntax import is_request_target, is_token

# Field names are lower-case tokens (RFC 9113 8.2.1 forbids upper case,
# controls, space, ':' and non-ASCII; RFC 9110 5.1 makes a name a token,
# which is also what the HTTP/1.1 reader and nghttp2 accept).
_NAME_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"

# Fields that name the connection, not the message: HTTP/2 has none
# (RFC 9113 8.2.2); a request with one is malformed, a response never has one.
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))


class MalformedHeaders(ValueError):
    """A header block RFC 9113 calls malformed (the message says why)."""


class RequestBlock:
    """What a request's header block says, checked."""

    __slots__ = (
        "method",
        "scheme",
        "path",
        "authority",
        "protocol",
        "host",
        "length",
        "fields",
        "size",
        "expects_continue",
    )

    def __init__(self) -> None:
        self.method: bytes | None = None
        self.scheme: bytes | None = None
        self.path: bytes | None = None
        self.authority: bytes | None = None
        self.protocol: bytes | None = None
        self.host: bytes | None = None
        self.length: bytes | None = None
        # The regular fields, in order, the cookie crumbs joined last.
        self.fields: list[tuple[bytes, bytes]] = []
        # Bytes of the block as HTTP/1.1 would spell it (name, ": ", value, CRLF).
        self.size = 0
        # expect: 100-continue (RFC 9110 10.1.1).
        self.expects_continue = False


def _check_value(name: bytes, value: bytes) -> None:
    # RFC 9113 8.2.1: no NUL, CR or LF; no leading or trailing SP or HTAB.
    # Nor VT or FF, which the HTTP/1.1 reader refuses too: whitespace to many
    # a parser's strip(), they would let the upstream read a value otherwise.
    if value and (
        b"\n" in value
        or b"\r" in value
        or b"\x00" in value
        or b"\x0b" in value
        or b"\x0c" in value
        or value[0] in (0x20, 0x09)
        or value[-1] in (0x20, 0x09)
    ):
        raise MalformedHeaders(f"the value of {name!r} has a forbidden character or space")


# Regular field names already found to be tokens and not connection-specific:
# the usual ones skip the scan (bounded: a client can invent names).
_checked_names: set[bytes] = set()
_CHECKED_NAMES_MAX = 1024


def _check_name(name: bytes) -> None:
    if not name or name.translate(None, _NAME_CHARS):
        raise MalformedHeaders(f"{name!r} is not a lower-case field name")
    if name in CONNECTION_SPECIFIC:
        raise MalformedHeaders(f"connection-specific field {name!r}")
    if len(_checked_names) >= _CHECKED_NAMES_MAX:
        _checked_names.clear()
    _checked_names.add(name)


def _check_regular(name: bytes, value: bytes) -> None:
    if name not in _checked_names:
        _check_name(name)
    if name == b"te" and value.lower() != b"trailers":
        raise MalformedHeaders(f"te: {value!r} (only 'trailers' is allowed)")
    _check_value(name, value)


def read_request_block(headers: Iterable[tuple[bytes, bytes]]) -> RequestBlock:
    """Check a request's header block (RFC 9113 8.2, 8.3) and take it apart."""
    block = RequestBlock()
    fields = block.fields
    cookies: list[bytes] | None = None
    seen_pseudo: set[bytes] = set()
    regular = False
    size = 0
    checked = _checked_names
    for field in headers:
        name, value = field
        size += len(name) + len(value) + 4
        if name not in checked:
            if name[:1] == b":":
                if regular:
                    raise MalformedHeaders(f"pseudo-header {name!r} after a regular field")
                if name not in _REQUEST_PSEUDO:
                    raise MalformedHeaders(f"pseudo-header {name!r} in a request")
                if name in seen_pseudo:
                    raise MalformedHeaders(f"pseudo-header {name!r} twice")
                seen_pseudo.add(name)
                # (_check_value, spelled out: four pseudo-headers a request)
                if value and (
                    b"\n" in value
                    or b"\r" in value
                    or b"\x00" in value
                    or b"\x0b" in value
                    or b"\x0c" in value
                    or value[0] in (0x20, 0x09)
                    or value[-1] in (0x20, 0x09)
                ):
                    raise MalformedHeaders(
                        f"the value of {name!r} has a forbidden character or space"
                    )
                if name == b":method":
                    block.method = value
                elif name == b":path":
                    if not value:
                        raise MalformedHeaders("an empty :path")
                    block.path = value
                elif name == b":authority":
                    block.authority = value
                elif name == b":scheme":
                    block.scheme = value
                else:
                    block.protocol = value
                continue
            _check_name(name)
        regular = True
        # RFC 9113 8.2.1 (and VT, FF: see _check_value).
        if value and (
            b"\n" in value
            or b"\r" in value
            or b"\x00" in value
            or b"\x0b" in value
            or b"\x0c" in value
            or value[0] in (0x20, 0x09)
            or value[-1] in (0x20, 0x09)
        ):
            raise MalformedHeaders(f"the value of {name!r} has a forbidden character or space")
        if name == b"cookie":
            # RFC 9113 8.2.3: crumbs are joined with "; " for HTTP/1.1.
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            continue
        if name == b"host":
            if block.host is not None:
                raise MalformedHeaders("two Host fields")
            block.host = value
        elif name == b"content-length":
            block.length = value
        elif name == b"te":
            if value.lower() != b"trailers":
                raise MalformedHeaders(f"te: {value!r} (only 'trailers' is allowed)")
        elif name == b"expect" and value.lower() == b"100-continue":
            block.expects_continue = True
        fields.append(field)
    if cookies is not None:
        fields.append((b"cookie", cookies[0] if len(cookies) == 1 else b"; ".join(cookies)))
    block.size = size
    _check_pseudo_headers(block)
    return block


def _check_pseudo_headers(block: RequestBlock) -> None:
    method = block.method
    if method is None:
        raise MalformedHeaders("no :method")
    # The method and the path become an HTTP/1.1 request line upstream: a
    # space, a control or a non-ASCII byte in either would let the upstream
    # read another line than the one the gateway judged (HTTP/1.1 clients get
    # a 400 for the same bytes).
    if not is_token(method):
        raise MalformedHeaders(":method is not a token")
    path = block.path
    if path is not None and not is_request_target(path):
        raise MalformedHeaders(":path has a byte that is not visible ASCII")
    if method == b"CONNECT" and block.protocol is None:
        # RFC 9113 8.5: a CONNECT names only the authority.
        if block.scheme is not None or block.path is not None:
            raise MalformedHeaders("CONNECT with :scheme or :path")
    else:
        if block.protocol is not None:
            # RFC 8441 4: the gateway never sends SETTINGS_ENABLE_CONNECT_PROTOCOL,
            # so a request with :protocol is malformed (WebSockets use HTTP/1.1).
            raise MalformedHeaders(":protocol (extended CONNECT is not enabled)")
        if block.scheme is None or block.path is None:
            raise MalformedHeaders("no :scheme or no :path")
    authority, host = block.authority, block.host
    if authority is None and host is None:
        raise MalformedHeaders("neither :authority nor Host")
    if authority is not None and host is not None and authority != host:
        # Two names for the site: which one would the upstream use?
        raise MalformedHeaders("the Host field and :authority differ")


def check_trailers(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Check a trailer block (no pseudo-headers; fields as in the head)."""
    for name, value in headers:
        if name[:1] == b":":
            raise MalformedHeaders(f"pseudo-header {name!r} in trailers")
        _check_regular(name, value)
