"""twisted.web's server side, changed to stream request bodies.

Stock twisted.web collects the whole request body (in memory, or a temporary
file past 100 kB) before it calls the resource. A proxy must instead start the
upstream request as soon as the headers are in and pass the body through as it
arrives, pausing the client when the upstream cannot keep up. So
``GatewayRequest`` dispatches from ``gotLength`` (the channel calls it right
after the last header) and feeds the body to a ``BodyPipe``.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.web import http, server
from twisted.web.http import _IdentityTransferDecoder
from twisted.web.resource import Resource

from idgateway.http_numbers import parse_decimal
from idgateway.model import LoggingSettings
from idgateway.observe import log_access
from idgateway.paths import PathReading
from idgateway.request_chunked import bound_chunked_decoder
from idgateway.request_head import RequestHead, read_request_head
from idgateway.tls import sni_server_name
from idgateway.upstream import UpstreamConnection
from idgateway.writecoalesce import coalesce_writes

# Bytes of request body buffered while the upstream connection is being set
# up before the client is told to stop sending.
BODY_HIGH_WATER = 256 * 1024

_EMPTY_CONTENT = BytesIO(b"")


class BodyTooLarge(Exception):
    pass


class BodyPipe:
    """The request body, flowing from the client channel to an upstream connection."""

    def __init__(self, request: GatewayRequest, length: int | None) -> None:
        self.request = request
        # None for a chunked body, else the Content-Length.
        self.length = length
        self.limit: int | None = None
        self.received = 0
        self.complete = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._connection: UpstreamConnection | None = None
        self._client_paused = False
        self._collector: Deferred[bytes] | None = None
        self._collect_limit = 0

    # -- from the client channel ---------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self.request.body_exceeded_limit()
            return
        connection = self._connection
        if connection is not None:
            connection.send_body_data(data)
            if self._client_paused:
                # The channel resumed reading on its own (its response side
                # drained); keep the client stopped until the upstream drains.
                self._pause_client()
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._collector is not None:
            if self._pending_bytes > self._collect_limit:
                collector, self._collector = self._collector, None
                collector.errback(BodyTooLarge())
            return
        if self._pending_bytes > BODY_HIGH_WATER:
            self._pause_client()

    def finish(self) -> None:
        self.complete = True
        if self._connection is not None:
            self._connection.send_body_end()
        elif self._collector is not None:
            collector, self._collector = self._collector, None
            collector.callback(b"".join(self._pending))

    # -- toward the upstream (upstream.RequestBody) ----------------------------

    def attach(self, connection: UpstreamConnection) -> None:
        self._connection = connection
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for chunk in pending:
            connection.send_body_data(chunk)
        if self.complete:
            connection.send_body_end()
        elif self._client_paused:
            self.resume()

    def pause(self) -> None:
        self._pause_client()

    def resume(self) -> None:
        if self._client_paused:
            self._client_paused = False
            channel = self.request.channel
            if channel is not None and channel.transport is not None:
                channel._networkProducer.resumeProducing()

    def _pause_client(self) -> None:
        self._client_paused = True
        channel = self.request.channel
        if channel is not None and channel.transport is not None:
            channel._networkProducer.pauseProducing()

    # -- for the gateway's own endpoints, which need the whole (small) body ----

    def collect(self, limit: int) -> Deferred[bytes]:
        """The whole body, at most ``limit`` bytes (BodyTooLarge past that)."""
        if self.complete:
            return Deferred.fromCoroutine(_value(b"".join(self._pending)))
        self._collect_limit = limit
        self._collector = Deferred()
        if self._client_paused:
            self.resume()
        return self._collector


async def _value(data: bytes) -> bytes:
    return data


class GatewayRequest(server.Request):
    """A request that reaches the gateway as soon as its headers are in."""

    body: BodyPipe | None = None
    # Called once if the client disconnects before the response is finished.
    on_disconnect: Callable[[], None] | None = None
    # Called when the body grows past BodyPipe.limit.
    on_body_exceeded: Callable[[], None] | None = None
    request_id: bytes = b""
    # Bytes of request line and headers, when the channel read the head in
    # one piece (else 0: the proxy adds them up itself).
    head_size: int = 0
    # -- observe hooks (idgateway.observe): what the access log reports ------
    idgw_logging: LoggingSettings | None = None  # set first thing in render
    idgw_started: float | None = None
    idgw_route: str | None = None
    # The request path as the gate judges it and the upstream receives it
    # (idgateway.paths); set by GatewayResource.render before any rule runs.
    idgw_reading: PathReading
    idgw_user: str | None = None  # set by the gate once a session is admitted
    idgw_upstream_started: float | None = None
    idgw_upstream_ms: float | None = None  # time to the upstream's response head
    # The connection was lost before the response was finished (the client
    # went away, or the gateway cut it off after a broken upstream response).
    idgw_cut_off: bool = False

    def gotLength(self, length: int | None) -> None:
        self.content = _EMPTY_CONTENT
        if length == 0:
            # No body: let the channel finish its bookkeeping and dispatch from
            # requestReceived, so an immediate answer cannot run inside the
            # channel's header parsing.
            return
        channel = self.channel
        self.body = BodyPipe(self, length)
        self._dispatch(channel._command, channel._path, channel._version)

    def _dispatch(self, command: bytes, uri: bytes, version: bytes) -> None:
        self.method = command
        self.uri = uri
        self.clientproto = version
        self.path = uri.partition(b"?")[0]
        self.args = {}
        self.site = self.channel.site  # type: ignore[attr-defined]
        self.site.resource.render(self)

    def handleContentChunk(self, data: bytes) -> None:
        body = self.body
        if body is not None and not self.finished and not self._disconnected:
            body.feed(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        body = self.body
        if body is None:
            self._dispatch(command, path, version)
        elif not self.finished and not self._disconnected:
            body.finish()

    def body_exceeded_limit(self) -> None:
        if self.on_body_exceeded is not None:
            callback, self.on_body_exceeded = self.on_body_exceeded, None
            callback()

    def end_response_early(self) -> None:
        """The response is done before the request body was read: close afterwards.

        The rest of the body would otherwise be parsed as the next request.
        """
        if self.body is not None and not self.body.complete:
            self.channel.persistent = False
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])

    def _cleanup(self) -> None:
        super()._cleanup()
        # Finished: nothing is left to cancel or refuse. These hold the
        # request's exchange and response, which hold the request: dropping
        # them lets reference counting free the request now, instead of the
        # cyclic garbage collector later (which then ran every few requests).
        self.on_disconnect = None
        self.on_body_exceeded = None

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.on_body_exceeded = None  # (a cycle through the response, as above)
        if self.on_disconnect is not None:
            callback, self.on_disconnect = self.on_disconnect, None
            callback()
        if not self.finished and self.idgw_started is not None and not self.idgw_cut_off:
            # Rendered but never finished: twisted.web will not log it, so
            # the access log does, as nginx does (499: nothing was sent yet).
            self.idgw_cut_off = True
            if not self.startedWriting:
                self.code = CLIENT_CLOSED_REQUEST
            log_access(self)

    def parseCookies(self) -> None:
        # The gate reads the Cookie header itself (the gateway's own cookies,
        # and what goes upstream); twisted.web's per-request dict of every
        # cookie would go unused.
        pass

    def process(self) -> None:  # pragma: no cover - dispatch happens in gotLength
        raise AssertionError("GatewayRequest is dispatched from gotLength")


# How often a site looks for connections idle past their timeout: they are
# closed up to this much late.
IDLE_SWEEP_INTERVAL = 1.0

# GatewayChannel's cached TLS server name before it is first asked.
_NOT_YET = object()

# nginx's status for a request whose client went away before any answer.
CLIENT_CLOSED_REQUEST = 499


class GatewayChannel(http.HTTPChannel):
    """HTTPChannel that tolerates a response finished before its request body.

    It also remembers the connection's addresses: twisted.web asks for them on
    every request, and each ask is a system call.
    """

    _host: Any = None
    _peer: Any = None
    # The hard ceiling on a request head; each route's max_header_size (431)
    # applies below it.
    totalHeadersSize = 64 * 1024

    def connectionMade(self) -> None:
        coalesce_writes(self.transport)
        # Over TLS, the TCP connection under the TLS layer (whose own writes
        # twisted already gathers per reactor turn).
        coalesce_writes(getattr(self.transport, "transport", None))
        super().connectionMade()

    # -- the idle timeout, without a DelayedCall per request -------------------
    # twisted.web cancels the channel's timeout when a request arrives and
    # schedules a new one when it is answered: a DelayedCall made, cancelled
    # and sifted out of the reactor's heap per request. Here the channel only
    # notes when it went idle; its site's sweep (once a second) times out the
    # ones idle too long.

    _idle_period: float | None = None
    _idle_since = 0.0

    def setTimeout(self, period: float | None) -> float | None:  # type: ignore[override]
        previous = self._idle_period
        self._idle_period = period
        site: GatewaySite = self.site  # type: ignore[attr-defined]
        if period is None:
            site.idle_channels.discard(self)
        else:
            self._idle_since = site.reactor.seconds()
            site.watch_idle(self)
        return previous

    def resetTimeout(self) -> None:
        if self._idle_period is not None:
            self._idle_since = self.site.reactor.seconds()  # type: ignore[attr-defined]

    def idle_expired(self, now: float) -> bool:
        period = self._idle_period
        return period is not None and now - self._idle_since >= period

    def dataReceived(self, data: bytes) -> None:
        # A whole request head in one read, between requests: parse it in one
        # pass (request_head) instead of line by line. Anything else (a head
        # split over reads, a body in progress, a request being answered, an
        # unusual head) goes through twisted.web's parser as before.
        if (
            self.line_mode
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
        super().dataReceived(data)

    def headerReceived(self, line: bytes) -> bool:
        # twisted.web's line-by-line parser (heads the one-pass reader leaves
        # to it) int()s a Content-Length of any length: past 4,300 digits that
        # raised and dropped the connection with a traceback. Bounded here,
        # and a chunked body gets a bounded chunk-size reader. It also
        # ignored "Transfer-Encoding: identity" (a body of 0 bytes, while
        # another parser refuses the request): only "chunked" is a coding.
        name, colon, value = line.partition(b":")
        if b"\x0b" in value or b"\x0c" in value:
            # (See request_head: whitespace to some parsers, not to others.)
            self._respondToBadRequestAndDisconnect()
            return False
        if colon:
            lower = name.lower()
            if (lower == b"content-length" and parse_decimal(value.strip(b" \t")) is None) or (
                lower == b"transfer-encoding" and value.strip(b" \t").lower() != b"chunked"
            ):
                self._respondToBadRequestAndDisconnect()
                return False
        accepted: bool = super().headerReceived(line)
        if accepted and self._transferDecoder is not None:
            self._transferDecoder = bound_chunked_decoder(self._transferDecoder)
        return accepted

    def _head_received(self, head: RequestHead, size: int) -> None:
        """What HTTPChannel.lineReceived does over a whole head, in one go."""
        request: GatewayRequest = self.requestFactory(self, len(self.requests))  # type: ignore[assignment]
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
            self._transferDecoder = _IdentityTransferDecoder(
                head.length, request.handleContentChunk, self._finishRequestBody
            )
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()

    _server_name: Any = _NOT_YET

    def tls_server_name(self) -> str | None:
        """The SNI name of this connection's TLS handshake (None: none, or not TLS).

        Asked once per connection: every request on it would otherwise ask
        pyOpenSSL again for a name that cannot change.
        """
        name = self._server_name
        if name is _NOT_YET:
            name = self._server_name = sni_server_name(self.transport)
        return name  # type: ignore[no-any-return]

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def allContentReceived(self) -> None:
        if not self.requests:
            # The request already answered and closed the connection (413, early
            # upstream reply); the tail of its body has nothing left to reach.
            self.length = 0
            self._transferDecoder = None
            return
        super().allContentReceived()


class GatewaySite(server.Site):
    """A Site whose channels stream request bodies and skip the generic H2 wrapper."""

    protocol = GatewayChannel  # type: ignore[assignment]
    requestFactory = GatewayRequest
    noisy = False

    def __init__(self, resource: Resource, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        # Channels whose idle timeout runs (GatewayChannel.setTimeout).
        self.idle_channels: set[GatewayChannel] = set()
        self._idle_sweep = LoopingCall(self._time_out_idle)
        self._idle_sweep.clock = self.reactor

    def watch_idle(self, channel: GatewayChannel) -> None:
        self.idle_channels.add(channel)
        if not self._idle_sweep.running:
            self._idle_sweep.start(IDLE_SWEEP_INTERVAL, now=False)

    def _time_out_idle(self) -> None:
        if not self.idle_channels:
            self._idle_sweep.stop()
            return
        now = self.reactor.seconds()
        expired = [channel for channel in self.idle_channels if channel.idle_expired(now)]
        for channel in expired:
            channel.setTimeout(None)
            channel.timeoutConnection()

    def log(self, request: http.Request) -> None:
        # Access logging is the gateway's own job (see observe); twisted's
        # combined-log formatter is too slow for the hot path.
        log_access(request)
