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


class HTTPChannelInternals(http.HTTPChannel):
    """An HTTPChannel with the gateway's uses of its internals, named."""

    # Nothing has arrived on this connection yet (over TLS: perhaps not even
    # a finished handshake).
    _silent = True

    def dataReceived(self, data: bytes) -> None:
        if self._silent:
            self._silent = False
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
                self.resetTimeout()
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

    def head_parsed_by_lines(self) -> None:
        """Called before bytes go to twisted.web's own (line by line) parser."""

    def _head_received(self, head: RequestHead, size: int) -> None:
        """What HTTPChannel.lineReceived does over a whole head, in one go."""
        request: Any = self.requestFactory(self, len(self.requests))  # type: ignore[attr-defined]
        # The request line and headers as sent, without the blank line.
        request.head_size = size - 2
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        self._command = head.method
        self._path = head.target
        self._version = head.version
        request.requestHeaders._rawHeaders = head.headers
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
