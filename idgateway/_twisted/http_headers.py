"""Header names spelled as twisted.web's Headers stores them.

Private name used: ``twisted.web.http_headers._nameEncoder`` (the Header-Case
spelling, with its cache and its exceptions such as ``WWW-Authenticate``).
Without it: the spelling a public ``Headers`` gives the name (slower; the
head reader caches the spellings it has seen).
"""

from __future__ import annotations

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
