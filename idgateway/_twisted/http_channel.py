"""twisted.web's HTTPChannel internals behind the gateway's channel.

``HTTPChannelInternals`` is the base of ``idgateway.server.channel.GatewayChannel``:
everything that channel needs to read or write inside twisted.web's
``HTTPChannel`` (and ``LineReceiver`` under it) happens here.

Private names used (twisted.web.http, twisted.protocols.basic, http_headers):

- ``HTTPChannel._HTTPChannel__first_line``, ``._busyReceiving``,
  ``._buffer``, ``._handlingRequest`` (is the channel between requests?),
  ``._command``/``._path``/``._version`` (the request line, as
  ``lineReceived`` leaves it), ``._finishRequestBody``, ``._transferDecoder``
  and ``_IdentityTransferDecoder`` (the body decoder ``headerReceived`` would
  choose), ``Headers._rawHeaders`` (a parsed head handed over whole): the
  one-pass head reader (``idgateway.server.request_head``). Without any of them
  (``ONE_PASS_HEAD`` False) every head goes through twisted.web's line parser,
  as stock: slower, same answers.
- ``HTTPChannel._transferDecoder`` and ``_ChunkedTransferDecoder`` (see
  ``idgateway._twisted.chunked``): chunk sizes bounded to 16 hex digits.
  Without them: the stock decoder.
- ``HTTPChannel._dataBuffer``: bytes that arrived behind a WebSocket
  upgrade's head while the request was being handled. Without it
  (``UNPARSED_BUFFER`` False) there is nothing to hand over: the tunnel then
  starts with what arrives next (twisted.web of that release keeps such bytes
  where the gateway cannot see them).
- ``HTTPChannel._send100Continue``: overridden so that no "100 Continue"
  follows a final answer. Without it: twisted.web's own behaviour.
- ``HTTPChannel._savedTimeOut``, ``._receivedHeaderCount``,
  ``._receivedHeaderSize`` (with ``__first_line``, ``_handlingRequest``,
  ``_transferDecoder`` above): a one-pass head without a body goes from its
  head to its request's dispatch in one frame, doing what
  ``allHeadersReceived``, ``checkPersistence``, ``allContentReceived`` and
  ``setRawMode`` do (five frames, and the request's ``gotLength``,
  ``requestReceived``). Taken only when those stock methods' code names
  exactly what it names in this release (``BODILESS_IN_ONE_GO``, checked
  at import); otherwise they are called, as stock.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http
from twisted.web.http_headers import Headers

from idgateway._twisted import note_fallback
from idgateway._twisted.chunked import bound_chunked_decoder
from idgateway.server.request_head import RequestHead, read_request_head

_identity_decoder: Any = getattr(http, "_IdentityTransferDecoder", None)

ONE_PASS_HEAD = (
    _identity_decoder is not None
    and isinstance(getattr(http.HTTPChannel, "_HTTPChannel__first_line", None), int)
    and callable(getattr(http.HTTPChannel, "_finishRequestBody", None))
    and isinstance(getattr(http.HTTPChannel, "_busyReceiving", None), bool)
    and isinstance(getattr(http.HTTPChannel, "_buffer", None), bytes)
    and isinstance(getattr(Headers(), "_rawHeaders", None), dict)
    and isinstance(getattr(http.HTTPChannel(), "_handlingRequest", None), bool)
    # The one-pass reader spells names as this Headers stores them.
    and Headers({b"content-type": [b"x"]})._rawHeaders == {b"Content-Type": [b"x"]}
)
if not ONE_PASS_HEAD:
    note_fallback("HTTPChannel one-pass head internals", "request heads are parsed line by line")

UNPARSED_BUFFER = isinstance(getattr(http.HTTPChannel(), "_dataBuffer", None), list)
if not UNPARSED_BUFFER:
    note_fallback("HTTPChannel._dataBuffer", "a WebSocket tunnel starts with the next bytes read")

if not callable(getattr(http.HTTPChannel, "_send100Continue", None)):
    note_fallback("HTTPChannel._send100Continue", "twisted.web decides when to send 100 Continue")


def _names(function: Any) -> tuple[str, ...] | None:
    return getattr(getattr(function, "__code__", None), "co_names", None)


# The names each stock method's code uses, in the Twisted releases whose
# methods _head_received redoes for a request without a body (26.4 to 26.10):
# a release that changes what they do changes these, and the stock methods
# are then called instead.
_STOCK_HEAD_END = {
    "allHeadersReceived": (
        "requests", "parseCookies", "checkPersistence", "_version", "persistent", "gotLength",
        "length", "requestHeaders", "getRawHeaders", "lower", "_send100Continue",
    ),
    "checkPersistence": (
        "requestHeaders", "getRawHeaders", "split", "responseHeaders", "setRawHeaders",
    ),
    "allContentReceived": (
        "_command", "_path", "_version", "length", "_receivedHeaderCount",
        "_receivedHeaderSize", "_HTTPChannel__first_line", "_transferDecoder", "timeOut",
        "setTimeout", "_savedTimeOut", "_handlingRequest", "setRawMode", "requests",
        "requestReceived",
    ),
    "setRawMode": ("line_mode",),
}  # fmt: skip
_stock_check_persistence = http.HTTPChannel.checkPersistence
BODILESS_IN_ONE_GO = ONE_PASS_HEAD and all(
    _names(getattr(http.HTTPChannel, name, None)) == names
    for name, names in _STOCK_HEAD_END.items()
)
if not BODILESS_IN_ONE_GO:
    note_fallback(
        "HTTPChannel's head-to-dispatch methods as known",
        "a request without a body goes through them one by one",
    )


class HTTPChannelInternals(http.HTTPChannel):
    """An HTTPChannel with the gateway's uses of its internals, named."""

    # Nothing has arrived on this connection yet (over TLS: perhaps not even
    # a finished handshake).
    _silent = True
    # A subclass's checkPersistence that only adds "close while
    # self.site.draining" to the stock one: _head_received asks site.draining
    # itself and is the stock one otherwise (two frames fewer per request).
    site_draining_persistence: Any = None
    # (Set by the Site that built this channel.)
    site: Any

    def dataReceived(self, data: bytes) -> None:
        if self._silent:
            self._silent = False
            if self.first_bytes_taken(data):
                return
        # A whole request head in one read, between requests: parse it in one
        # pass (request_head) instead of line by line. Anything else (a head
        # split over reads, a body in progress, a request being answered, an
        # unusual head) goes through twisted.web's parser as before.
        if (
            ONE_PASS_HEAD
            and self.line_mode
            and not self._buffer
            and not self._busyReceiving
            and not self._handlingRequest
            and self.persistent
            and not self.paused
            and self._HTTPChannel__first_line == 1
        ):
            found = read_request_head(data, self.maxHeaders, self.MAX_LENGTH)
            if found is not None:
                head, consumed = found
                self._busyReceiving = True
                try:
                    self._head_received(head, consumed)
                finally:
                    self._busyReceiving = False
                if consumed < len(data):
                    # A body, or pipelined requests: as twisted.web would.
                    # (dataReceived may have been replaced: not persistent
                    # any more, or a WebSocket tunnel.)
                    self.dataReceived(data[consumed:])
                return
        self.head_parsed_by_lines()
        super().dataReceived(data)

    def first_bytes_taken(self, data: bytes) -> bool:
        """Called with the connection's first bytes: True if something else
        (another protocol) took them, and the connection, over."""
        return False

    def head_parsed_by_lines(self) -> None:
        """Called before bytes go to twisted.web's own (line by line) parser."""

    def _head_received(self, head: RequestHead, size: int) -> None:
        """What HTTPChannel.lineReceived does over a whole head, in one go.

        The request factory's requests have ``received_without_body(method,
        target, version)``: what their ``parseCookies()``, ``gotLength(0)``
        and then ``requestReceived(method, target, version)`` do.
        """
        request: Any = self.requestFactory(self, len(self.requests))  # type: ignore[attr-defined]
        # The request line and headers as sent, without the blank line.
        request.head_size = size - 2
        self.requests.append(request)
        headers = head.headers
        request.requestHeaders._rawHeaders = headers
        if BODILESS_IN_ONE_GO and not head.length and b"Expect" not in headers:
            # No body, no 100-continue: allHeadersReceived (its
            # checkPersistence spelled out unless a subclass has its own),
            # then allContentReceived and setRawMode, as they would. What
            # allContentReceived resets (length, the header counts,
            # __first_line, _transferDecoder, the request line) is as the
            # last request left it: this path starts only between requests.
            version = head.version
            check = type(self).checkPersistence
            if check is not _stock_check_persistence and (
                check is not type(self).site_draining_persistence or self.site.draining
            ):
                # (A subclass's own: one that closes every connection while
                # the server drains, say.)
                self.persistent = self.checkPersistence(request, version)
            elif version == b"HTTP/1.1":
                connection = headers.get(b"Connection")
                if connection and b"close" in [t.lower() for t in connection[0].split(b" ")]:
                    request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
                    self.persistent = False
                else:
                    self.persistent = True
            else:
                self.persistent = False
            # The idle timeout pauses while the request is handled (its reset
            # by this read would be undone at once).
            if self.timeOut:
                self._savedTimeOut = self.setTimeout(None)
            else:
                self.resetTimeout()
            self._handlingRequest = True
            self.line_mode = 0
            request.received_without_body(head.method, head.target, version)
            return
        self.resetTimeout()
        self._HTTPChannel__first_line = 0
        self._command = head.method
        self._path = head.target
        self._version = head.version
        if head.length:
            self.length = head.length
            self._transferDecoder = _identity_decoder(
                head.length, request.handleContentChunk, self._finishRequestBody
            )
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()

    def request_line(self) -> tuple[bytes, bytes, bytes]:
        """The method, target and version of the request whose head just ended."""
        return self._command, self._path, self._version

    def bound_body_decoder(self) -> None:
        """After a header line: bound the chunk sizes of a chunked body."""
        decoder = self._transferDecoder
        if decoder is not None:
            self._transferDecoder = bound_chunked_decoder(decoder)

    def drop_body_decoder(self) -> None:
        """The request is gone: the rest of its body is read and discarded."""
        self.length = 0
        self._transferDecoder = None

    def take_unparsed_bytes(self) -> bytes:
        """The bytes received after the current request's head, not yet parsed."""
        if not UNPARSED_BUFFER:
            return b""
        pending = b"".join(self._dataBuffer)
        self._dataBuffer = []
        return pending

    def may_send_100_continue(self) -> bool:
        """Whether "100 Continue" may still be sent (no final answer begun)."""
        return True

    def _send100Continue(self) -> None:  # noqa: N802 - twisted.web's name
        # twisted.web sends "100 Continue" after gotLength, where the gateway
        # already dispatched the request: if that answered at once (400, 413,
        # a login redirect), a 100 after the final response is not HTTP.
        if self.may_send_100_continue():
            super()._send100Continue()
