"""twisted.web's Request internals: a request set up in one step, header lookups without a detour.

Private names used (twisted.web.http, twisted.web.server, twisted.python.components):

- What ``server.Request.__init__`` (with ``http.Request.__init__`` and
  ``Componentized.__init__`` under it) sets on a new request, among them
  ``_parsePOSTFormSubmission`` and ``_adapterCache``: ``init_request`` sets
  the same attributes to the same values in one call instead of three nested
  ones. Checked at import against a stock request built the stock way; on a
  Twisted whose constructor sets anything else (``LEAN_INIT`` False) it calls
  the stock constructor.
- ``Headers._rawHeaders``: ``RequestHeaders.getRawHeaders`` looks the names the
  gateway asks for on every request (Host, Cookie, Connection...) up in it
  directly, spelled once at import, instead of spelling each name again per
  call. Without it (``DIRECT_LOOKUP`` False) ``RequestHeaders`` is ``Headers``.
"""

from __future__ import annotations

from typing import Any

from twisted.python.components import Componentized
from twisted.web import server
from twisted.web.http_headers import Headers

from idgateway._twisted import note_fallback
from idgateway._twisted.http_headers import canonical_header_name

DIRECT_LOOKUP = isinstance(getattr(Headers(), "_rawHeaders", None), dict)
if not DIRECT_LOOKUP:
    note_fallback("Headers._rawHeaders", "request header lookups spell each name per call")

# The names looked up on the hot path (as the gateway and twisted.web spell
# them) -> their Header-Case spelling, as Headers stores them.
_HOT_NAMES = (
    b"host",
    b"x-request-id",
    b"cookie",
    b"connection",
    b"Connection",
    b"upgrade",
    b"Expect",
    b"authorization",
    b"accept",
    b"sec-fetch-mode",
    b"x-requested-with",
    b"content-type",
    b"x-forwarded-proto",
)
_SPELLED: dict[bytes, bytes] = {name: canonical_header_name(name) for name in _HOT_NAMES}


class _DirectHeaders(Headers):
    """Headers whose lookups of the hot names skip the per-call spelling."""

    def getRawHeaders(self, name: Any, default: Any = None) -> Any:
        spelled = _SPELLED.get(name) if type(name) is bytes else None
        if spelled is None:
            return super().getRawHeaders(name, default)
        # (Stock: the stored list itself for a bytes name; the default for none.)
        return self._rawHeaders.get(spelled) or default


RequestHeaders: type[Headers] = _DirectHeaders if DIRECT_LOOKUP else Headers


class _Site:
    _parsePOSTFormSubmission = True


class _Channel:
    """Just what a request's constructor asks of its channel."""

    site = _Site()
    transport = None

    def getPeer(self) -> None:  # noqa: N802 - Twisted's name
        return None

    def getHost(self) -> None:  # noqa: N802 - Twisted's name
        return None


def _stock_attributes() -> dict[str, Any]:
    channel = _Channel()
    request = server.Request(channel, False)
    return {name: type(value) for name, value in vars(request).items()}


def _lean_init(request: Any, channel: Any, queued: Any = False) -> None:
    request.notifications = []
    request.channel = channel
    request.client = channel.getPeer()
    request.host = channel.getHost()
    request.requestHeaders = RequestHeaders()
    request.received_cookies = {}
    request.responseHeaders = Headers()
    request.cookies = []
    request.transport = channel.transport
    request.queued = queued
    request._parsePOSTFormSubmission = channel.site._parsePOSTFormSubmission
    request._adapterCache = {}


def _lean_attributes() -> dict[str, Any]:
    channel = _Channel()
    request = server.Request.__new__(server.Request)
    _lean_init(request, channel, False)
    made = {name: type(value) for name, value in vars(request).items()}
    made["requestHeaders"] = Headers  # (a RequestHeaders, which is one)
    return made


LEAN_INIT = _stock_attributes() == _lean_attributes() and issubclass(server.Request, Componentized)
if not LEAN_INIT:
    note_fallback("server.Request's constructor", "each request is set up the stock way")


def _stock_init(request: Any, channel: Any, queued: Any = False) -> None:
    server.Request.__init__(request, channel, queued)
    headers = RequestHeaders()
    for name, values in request.requestHeaders.getAllRawHeaders():
        headers.setRawHeaders(name, values)
    request.requestHeaders = headers


# What a request class takes as its ``__init__(self, channel, queued=False)``:
# sets the request up as ``server.Request.__init__`` does, its request headers
# a ``RequestHeaders``.
init_request = _lean_init if LEAN_INIT else _stock_init
