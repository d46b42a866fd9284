"""twisted.web's Request internals: a request set up in one step, header lookups without a detour.

Private names used (twisted.web.http, twisted.web.server, twisted.python.components):

- What ``server.Request.__init__`` (with ``http.Request.__init__`` and
  ``Componentized.__init__`` under it) sets on a new request, among them
  ``_parsePOSTFormSubmission`` and ``_adapterCache``: ``init_request`` sets
  the same attributes to the same values in one call instead of three nested
  ones, and makes its two ``Headers`` without a frame for their ``__init__``
  (``Headers._rawHeaders``, set empty). Checked at import against a stock
  request built the stock way, and against the names ``Headers.__init__``
  uses; on a Twisted whose constructors do anything else (``LEAN_INIT``
  False) it calls the stock constructor.
- ``Headers._rawHeaders``: ``RequestHeaders.getRawHeaders`` looks the names the
  gateway asks for on every request (Host, Cookie, Connection...) up in it
  directly, spelled once at import, instead of spelling each name again per
  call. Without it (``DIRECT_LOOKUP`` False) ``RequestHeaders`` is ``Headers``.
- What ``server.Request.finish``, ``http.Request.finish``, ``Request._cleanup``,
  ``HTTPChannel.requestDone`` and ``LineReceiver.setLineMode`` do when a
  response that began and was not chunked ends on a persistent HTTP/1.1
  channel: ``finish_request`` does it in one frame instead of five (the
  request's ``_disconnected``, ``_encoder``; the channel's
  ``_waitingForTransport``, ``_networkProducer``, ``_handlingRequest``,
  ``_savedTimeOut``, ``_dataBuffer``). Taken only when those stock methods'
  code names exactly what it names in this release (``FINISH_IN_ONE_GO``,
  checked at import), and for request and channel classes that do not
  override them; anything else calls ``server.Request.finish``.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.basic import LineReceiver
from twisted.python.components import Componentized
from twisted.web import http, server
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
        # (A str name is no key of _SPELLED, which holds bytes: the stock path.)
        spelled = _SPELLED.get(name)
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


_new_headers = Headers.__new__


def _lean_init(request: Any, channel: Any, queued: Any = False) -> None:
    request.notifications = []
    request.channel = channel
    request.client = channel.getPeer()
    request.host = channel.getHost()
    # (Headers(), without a frame for its __init__: all that does without
    # arguments is set an empty _rawHeaders)
    headers = request.requestHeaders = _new_headers(RequestHeaders)
    headers._rawHeaders = {}
    request.received_cookies = {}
    headers = request.responseHeaders = _new_headers(Headers)
    headers._rawHeaders = {}
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


def _names(function: Any) -> tuple[str, ...] | None:
    return getattr(getattr(function, "__code__", None), "co_names", None)


LEAN_INIT = (
    DIRECT_LOOKUP
    and _names(Headers.__init__) == ("_rawHeaders", "items", "setRawHeaders")
    and _stock_attributes() == _lean_attributes()
    and issubclass(server.Request, Componentized)
)
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


# The stock methods finish_request redoes, and the names each one's code uses
# in the Twisted releases it was written against (26.4 to 26.10).
_STOCK_FINISH: dict[Any, tuple[str, ...]] = {
    server.Request.finish: ("_encoder", "finish", "_HTTPRequest", "write"),
    http.Request.finish: (
        "_disconnected", "RuntimeError", "finished", "warnings", "warn", "startedWriting",
        "write", "chunked", "channel", "hasattr", "factory", "log", "queued", "_cleanup",
    ),
    http.Request._cleanup: (
        "producer", "_log", "failure", "Failure", "RuntimeError", "uri", "unregisterProducer",
        "channel", "requestDone", "content", "close", "OSError", "notifications", "callback",
    ),
    http.HTTPChannel.requestDone: (
        "requests", "TypeError", "_waitingForTransport", "_networkProducer", "resumeProducing",
        "persistent", "_handlingRequest", "_savedTimeOut", "setTimeout", "join", "_dataBuffer",
        "setLineMode", "loseConnection",
    ),
    LineReceiver.setLineMode: ("line_mode", "dataReceived"),
}  # fmt: skip
FINISH_IN_ONE_GO = all(_names(method) == names for method, names in _STOCK_FINISH.items())
if not FINISH_IN_ONE_GO:
    note_fallback(
        "Request.finish and HTTPChannel.requestDone as known", "requests end the stock way"
    )

# Request and channel classes -> whether they use the stock methods above
# (learnt once per class: an HTTP/2 stream, say, has its own requestDone).
_PLAIN_CLASSES: dict[type, bool] = {}


def _plain_class(kind: type) -> bool:
    if issubclass(kind, http.Request):
        # (Its finish is the caller's; the one below it is server.Request's.)
        plain = kind._cleanup is http.Request._cleanup
    else:
        plain = (
            getattr(kind, "requestDone", None) is http.HTTPChannel.requestDone
            and getattr(kind, "setLineMode", None) is LineReceiver.setLineMode
        )
    _PLAIN_CLASSES[kind] = plain
    return plain


def finish_request(request: Any) -> None:
    """``server.Request.finish(request)``, in one frame when the request is plain.

    For a subclass whose own ``finish`` calls this instead of
    ``super().finish()``: a response that began, is not chunked, has no
    encoder, no producer and no queue, on a persistent HTTP/1.1 channel that
    has it first in line, is logged and ended here as the stock methods would
    (the same steps, in their order); anything else goes to them.
    """
    if (
        FINISH_IN_ONE_GO
        and request.startedWriting
        and not request.finished
        and not request._disconnected
        and not request.chunked
        and request._encoder is None
        and request.producer is None
        and not request.queued
    ):
        channel = request.channel
        # (Learnt once per class, True or False: "or _plain_class(...)" asked
        # again on every request of a class that is not plain, an HTTP/2
        # stream's, through twisted.web.http's deprecation proxy.)
        channel_plain = _PLAIN_CLASSES.get(type(channel))
        if channel_plain is None:
            channel_plain = _plain_class(type(channel))
        if (
            channel_plain
            and (_PLAIN_CLASSES.get(type(request)) or _plain_class(type(request)))
            and channel.persistent
            and channel.requests
            and channel.requests[0] is request
        ):
            requests = channel.requests
            # http.Request.finish: the access log, then _cleanup.
            factory = getattr(channel, "factory", None)
            if factory is not None:
                factory.log(request)
            request.finished = 1
            # _cleanup, first the channel's requestDone:
            del requests[0]
            if not channel._waitingForTransport:
                channel._networkProducer.resumeProducing()
            channel._handlingRequest = False
            saved = channel._savedTimeOut
            if saved:
                channel.setTimeout(saved)
            buffered = channel._dataBuffer
            channel._dataBuffer = []
            # (setLineMode: the next request's bytes, if they came already)
            channel.line_mode = 1
            data = b"".join(buffered) if buffered else b""
            if data:
                channel.dataReceived(data)
            # then the request's own ends.
            del request.channel
            content = request.content
            if content is not None:
                try:
                    content.close()
                except OSError:
                    pass
                del request.content
            notifications = request.notifications
            if notifications:
                for waiting in notifications:
                    waiting.callback(None)
                request.notifications = []
            return
    server.Request.finish(request)
