"""Header names spelled as twisted.web's Headers stores them.

Private names used: ``twisted.web.http_headers._nameEncoder`` (the Header-Case
spelling, with its cache and its exceptions such as ``WWW-Authenticate``).
Without it: the spelling a public ``Headers`` gives the name (slower; the
head reader caches the spellings it has seen). ``Headers._rawHeaders`` (the
fields of an HTTP/2 request, already checked, set as one dict by
``fill_headers``); without it: ``addRawHeader`` per field, which checks each
value again.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web import http_headers

from idgateway._twisted import note_fallback
from idgateway.http.syntax import is_token


class InvalidHeaderName(ValueError):
    """Not a header name (raised by ``canonical_header_name``)."""


_name_encoder = getattr(http_headers, "_nameEncoder", None)
_twisted_invalid: type[Exception] = getattr(http_headers, "InvalidHeaderName", InvalidHeaderName)

if _name_encoder is None:
    note_fallback("twisted.web.http_headers._nameEncoder", "header names are spelled here")


def canonical_header_name(name: bytes) -> bytes:
    """``name`` in Header-Case, as Headers keeps it; InvalidHeaderName if not a token."""
    if _name_encoder is not None:
        try:
            return bytes(_name_encoder.encode(name))
        except _twisted_invalid as error:
            raise InvalidHeaderName(str(error)) from None
    if not is_token(name):
        raise InvalidHeaderName(repr(name))
    headers = http_headers.Headers()
    headers.setRawHeaders(name, [b""])
    for spelled, _values in headers.getAllRawHeaders():
        return bytes(spelled)
    raise InvalidHeaderName(repr(name))  # pragma: no cover - Headers kept nothing


# Headers keeps its fields in _rawHeaders: {Header-Case name: [values]}.
RAW_HEADERS = (
    _name_encoder is not None
    and isinstance(getattr(http_headers.Headers(), "_rawHeaders", None), dict)
    and http_headers.Headers({b"content-type": [b"x"]})._rawHeaders == {b"Content-Type": [b"x"]}
)
if not RAW_HEADERS:
    note_fallback("twisted.web.http_headers.Headers._rawHeaders", "fields are added one by one")


def fill_headers(headers: http_headers.Headers, fields: Iterable[tuple[bytes, bytes]]) -> None:
    """Put ``fields`` into an empty ``headers``.

    The names must be tokens and the values free of CR, LF and NUL (checked
    by the caller, as ``server.h2_headers`` does): Headers' own check of each
    value is skipped.
    """
    if not RAW_HEADERS:
        for name, value in fields:
            headers.addRawHeader(name, value)
        return
    raw: dict[bytes, list[bytes]] = {}
    encode = _name_encoder.encode  # type: ignore[union-attr]
    for name, value in fields:
        spelled = encode(name)
        values = raw.get(spelled)
        if values is None:
            raw[spelled] = [value]
        else:
            values.append(value)
    headers._rawHeaders = raw
