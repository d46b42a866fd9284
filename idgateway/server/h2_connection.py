"""HTTP/2 on the client side: each stream becomes a GatewayRequest.

A connection that negotiated ``h2`` by ALPN (or, on a ``prior_knowledge``
listener, opened with the HTTP/2 preface) is handed from its HTTP/1.1
``GatewayChannel`` to a ``GatewayH2Connection``, which drives the ``h2``
library itself. Every stream gets an ``H2Stream``: to its ``GatewayRequest``
it is the channel (``write``, ``writeHeaders``, ``requestDone``, the
producer/consumer calls) and the transport (``abortConnection`` resets the
stream; pausing it stops acknowledging the stream's DATA, which is HTTP/2's
backpressure). The request then goes through the same ``GatewayResource``,
gate and proxy as an HTTP/1.1 request, and its body through the same
``BodyPipe``.

Twisted's own ``twisted.web._http2.H2Connection`` is not used: it dispatches
a request only once its whole body is in (the gateway streams bodies), it
calls ``gotLength`` before the last header is read, and it schedules a reactor
call per DATA frame it sends.

What a client can make one connection hold is bounded: streams
(``max_concurrent_streams``), request body per stream (the stream window,
``initial_window_size``), response body per stream (``STREAM_HIGH_WATER``, then
the upstream is paused), header blocks (``max_header_list_size``; the ``h2``
library also refuses endless CONTINUATION runs), control frames answered while
the client reads nothing (``CONTROL_BACKLOG``), and resets and PING/SETTINGS
frames per minute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from idgateway._twisted.http_headers import fill_headers
from idgateway.config.model import HTTP2Limits
from idgateway.http.numbers import parse_decimal
from idgateway.server.answers import send_error
from idgateway.server.channel import _EMPTY_CONTENT, BodyPipe, GatewayRequest
from idgateway.server.h2_headers import (
    CONNECTION_SPECIFIC,
    MalformedHeaders,
    check_trailers,
    read_request_block,
)
from idgateway.server.h2_hpack import RequestHeaderDecoder, ResponseHeaderEncoder
from idgateway.server.tls import sni_server_name

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP_2 = b"HTTP/2"
ALPN_H2 = b"h2"

# Response body buffered for a stream the client's window holds back before
# the upstream is paused.
STREAM_HIGH_WATER = 64 * 1024
# Control frames (SETTINGS and PING acknowledgements, RST_STREAM, GOAWAY)
# written while the client reads nothing, before the connection is cut.
CONTROL_BACKLOG = 256 * 1024
# PING and SETTINGS frames (and empty DATA frames) a client may send per
# minute: a browser sends a handful; a flood only makes the gateway answer.
CONTROL_FRAMES_PER_MINUTE = 1200

_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_CANCEL = h2.errors.ErrorCodes.CANCEL
_INTERNAL_ERROR = h2.errors.ErrorCodes.INTERNAL_ERROR
_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
_REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM


class H2Offer:
    """What a listener's channels need to hand a connection over to HTTP/2."""

    def __init__(self, mode: str, limits: HTTP2Limits, reactor: Any) -> None:
        # "alpn" (TLS: the client chose h2) or "prior_knowledge" (plain: h2c).
        self.mode = mode
        self.limits = limits
        self.reactor = reactor

    def wants(self, channel: Any, data: bytes) -> bool:
        """Whether the connection that just sent its first ``data`` speaks HTTP/2."""
        if self.mode == "alpn":
            transport = channel.transport
            return getattr(transport, "negotiatedProtocol", None) == ALPN_H2
        # The preface, or its start (a first read may stop short of all 24 bytes).
        return len(data) >= 4 and PREFACE.startswith(data[:24])

    def take_over(self, channel: Any, data: bytes) -> None:
        """Serve ``channel``'s connection as HTTP/2 from now on, ``data`` first."""
        site = channel.site
        transport = channel.transport
        # The first request's deadline runs on from the accept (client_header_timeout).
        head_since = channel._head_since
        # The HTTP/1.1 channel's own timers and producer end here.
        channel.setTimeout(None)
        channel._end_head()
        transport.unregisterProducer()
        connection = GatewayH2Connection(site, self.limits, self.reactor)
        connection._head_since = head_since
        channel.dataReceived = connection.dataReceived
        channel.connectionLost = connection.connectionLost
        connections = getattr(site, "connections", None)
        if connections is not None:
            # Counted (and drained) as the HTTP/2 connection from now on.
            connections.add(connection)
            site.forget(channel)
        connection.makeConnection(transport)
        connection.dataReceived(data)


@implementer(IPushProducer)
class H2Stream:
    """One HTTP/2 stream: the channel and transport of its GatewayRequest."""

    _log = Logger()

    def __init__(self, connection: GatewayH2Connection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.site = connection.site
        # Request.finish logs through channel.factory (GatewaySite.log).
        self.factory = connection.site
        self.request: GatewayRequest | None = None
        self.producer: Any = None
        self._producer_paused = False
        # Response DATA the window does not let out yet.
        self._pending: list[bytes] = []
        self.pending_bytes = 0
        # The response is complete: END_STREAM once the pending data is out.
        self._ending = False
        # Response body bytes its content-length still promises (None: no length).
        self._body_left: int | None = None
        self.closed = False
        # The client ended its side (END_STREAM received).
        self.client_done = False
        # Request DATA received but not yet acknowledged (reading paused).
        self._unacknowledged = 0
        self._reading_paused = False
        # (GatewayRequest.end_response_early sets it; HTTP/2 has no use for it.)
        self.persistent = True
        # When the request body last moved (client_body_timeout).
        self.last_data = 0.0

    # The request's ``channel.transport``: pausing it is flow control on the
    # stream; aborting it resets the stream.
    @property
    def transport(self) -> H2Stream:
        return self

    # -- the request's channel ----------------------------------------------------

    def getPeer(self) -> Any:  # noqa: N802 - twisted.web's name
        return self.connection.peer

    def getHost(self) -> Any:  # noqa: N802 - twisted.web's name
        return self.connection.host

    def isSecure(self) -> bool:  # noqa: N802 - twisted.web's name
        return self.connection.secure

    def tls_server_name(self) -> str | None:
        return self.connection.tls_server_name()

    def writeHeaders(  # noqa: N802 - twisted.web's name
        self, version: bytes, code: bytes, reason: bytes, headers: Headers
    ) -> None:
        """The head of an answer the gateway makes itself (twisted.web's Request.write)."""
        pairs = [
            (name.lower(), value) for name, values in headers.getAllRawHeaders() for value in values
        ]
        self.write_response_head(int(code), pairs)

    def write_response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], *, body_follows: bool = False
    ) -> None:
        """Send the response's HEADERS: ``headers`` with lower-case names.

        ``body_follows``: the body is in hand and written next, in this same
        call from the upstream's read; the frame then goes out with its DATA
        (one write to the transport instead of two)."""
        if self.closed:
            return
        block = [(b":status", b"%d" % status)]
        length = None
        for pair in headers:
            name = pair[0]
            if name in CONNECTION_SPECIFIC:
                continue
            if name == b"content-length":
                length = pair[1]
            block.append(pair)
        if status >= 200:
            self._body_left = None if length is None else parse_decimal(length)
        self.connection.send_headers(self.stream_id, block, write_out=not body_follows)

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        end = False
        left = self._body_left
        if left is not None:
            # The DATA that completes a content-length carries END_STREAM:
            # no empty DATA frame (and its h2 state change) for finish().
            left -= len(data)
            self._body_left = left
            if left <= 0:
                end = self._ending = True
        if self._pending:
            self._pending.append(data)
            self.pending_bytes += len(data)
        else:
            self.connection.send_data(self, data, end=end)
        if self.pending_bytes > STREAM_HIGH_WATER and not self._producer_paused:
            producer = self.producer
            if producer is not None:
                self._producer_paused = True
                producer.pauseProducing()

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802 - twisted.web's name
        self.write(b"".join(data))

    def hold(self, data: bytes) -> None:
        """``data`` waits for the client's window (the connection calls this)."""
        self._pending.append(data)
        self.pending_bytes += len(data)

    def flush(self) -> None:
        """Send what the window now allows; END_STREAM once all is out."""
        pending, self._pending, self.pending_bytes = self._pending, [], 0
        for index, data in enumerate(pending):
            if self._pending or self.closed:
                # Blocked again: keep the rest in order.
                rest = pending[index:]
                self._pending.extend(rest)
                self.pending_bytes += sum(len(chunk) for chunk in rest)
                break
            self.connection.send_data(self, data)
        if self.closed:
            return
        if not self._pending:
            if self._ending:
                self._end()
            elif self._producer_paused:
                self._producer_paused = False
                if self.producer is not None:
                    self.producer.resumeProducing()

    def requestDone(self, request: Any) -> None:  # noqa: N802 - twisted.web's name
        self._ending = True
        if not self._pending:
            self._end()

    def _end(self) -> None:
        if self.closed:
            return
        self.connection.end_stream(self)

    def loseConnection(self) -> None:  # noqa: N802 - twisted.web's name
        self.requestDone(None)

    def abortConnection(self) -> None:  # noqa: N802 - twisted.web's name
        """Cut the response (RST_STREAM): a truncated body must not look complete."""
        if not self.closed:
            self.connection.reset_stream(self, _INTERNAL_ERROR)

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        self.producer = producer
        self._producer_paused = False
        if self.pending_bytes > STREAM_HIGH_WATER:
            self._producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:  # noqa: N802 - twisted.web's name
        self.producer = None
        self._producer_paused = False

    # -- IPushProducer: the request body's flow (BodyPipe pauses and resumes) -----

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        self._reading_paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        self._reading_paused = False
        if self._unacknowledged:
            count, self._unacknowledged = self._unacknowledged, 0
            self.connection.open_window(self, count)

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        self.abortConnection()

    # -- from the connection -------------------------------------------------------

    def data_received(self, data: bytes, flow_length: int) -> None:
        self.last_data = self.connection.reactor.seconds()
        request = self.request
        if request is not None:
            request.handleContentChunk(data)
        if self.closed:
            return
        # Acknowledged in steps, and not while paused: the client can send at
        # most the rest of its window.
        self._unacknowledged += flow_length
        if not self._reading_paused and self._unacknowledged >= self.connection.window_step:
            count, self._unacknowledged = self._unacknowledged, 0
            self.connection.open_window(self, count)

    def body_stalled(self, now: float, timeout: float) -> bool:
        """The client stopped sending the body (not held back by the gateway)."""
        request = self.request
        return (
            request is not None
            and request.body is not None
            and not self.client_done
            and not self._reading_paused
            and now - self.last_data >= timeout
        )

    def body_timed_out(self, timeout: float) -> None:
        """client_body_timeout, as on HTTP/1.1: 408 if nothing was answered, else cut."""
        request = self.request
        if request is None or self.closed:
            return
        if request.on_disconnect is not None:
            cancel, request.on_disconnect = request.on_disconnect, None
            cancel()
        if request.startedWriting or request.finished:
            self.abortConnection()
            return
        send_error(
            request,
            408,
            f"The request body stopped arriving: nothing came for {timeout:g} s "
            "(client_body_timeout).",
            request_id=request.request_id,
        )

    def client_ended(self) -> None:
        self.client_done = True
        request = self.request
        if request is not None and request.body is not None:
            request.requestReceived(request.method, request.uri, HTTP_2)

    def lost(self, reason: Failure) -> None:
        """The stream ended before its response did (reset, or the connection went)."""
        if self.closed:
            return
        self.closed = True
        self._pending = []
        self.pending_bytes = 0
        request = self.request
        if request is not None and not request.finished:
            request.connectionLost(reason)


class GatewayH2Connection(Protocol):
    """One client's HTTP/2 connection: frames in, GatewayRequests out."""

    _log = Logger()
    # Counted among its site's connections (DrainableSite): never a tunnel.
    upgraded = False
    websocket_route: str | None = None

    def __init__(self, site: Any, limits: HTTP2Limits, reactor: Any) -> None:
        self.site = site
        self.limits = limits
        self.reactor = reactor
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # Request and trailer blocks are checked (RFC 9113 8.2, 8.3) and
            # their cookie crumbs joined by server.h2_headers, in one pass.
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            # Responses come from the gateway's own headers or an upstream head
            # its parser already checked; names are lower-cased here.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        # Responses are encoded without hpack's dynamic-table search, requests
        # decoded without its per-field objects (h2_hpack).
        self.h2.encoder = ResponseHeaderEncoder()  # type: ignore[assignment]
        self.h2.decoder = RequestHeaderDecoder()
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # HPACK bombs: the decoder stops at the advertised size at once, not
        # only once the client acknowledged the SETTINGS.
        self.h2.decoder.max_header_list_size = limits.max_header_list_size
        self.streams: dict[int, H2Stream] = {}
        # Streams with response data waiting for a window.
        self._blocked: dict[int, H2Stream] = {}
        self.peer: Any = None
        self.host: Any = None
        self.secure = False
        self._server_name: Any = None
        self._server_name_known = False
        self._transport_paused = False
        self._backlog = 0
        self._minute = 0.0
        self._resets = 0
        self._control_frames = 0
        # GOAWAY sent (draining): streams above this id are refused.
        self._last_stream_id: int | None = None
        self._closing = False
        self._idle_period: float | None = None
        self._idle_since = 0.0
        self._connection_window = 65535
        # The client broke the protocol: h2 takes no more frames either way.
        self._broken = False
        # When the wait for the first complete HEADERS block began (None: over).
        self._head_since: float | None = None
        # Stream window acknowledged in steps of this (a WINDOW_UPDATE per
        # DATA frame would double the frames of an upload).
        self.window_step = max(limits.initial_window_size // 4, 16384)

    # -- IProtocol -------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.peer = transport.getPeer()
        self.host = transport.getHost()
        self.secure = ISSLTransport(transport, None) is not None
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self.h2.initiate_connection()
        # The connection's own window: one stream's worth per allowed stream,
        # so that a stream held back by its upstream never stalls the others.
        limits = self.limits
        self._connection_window = min(
            limits.initial_window_size * limits.max_concurrent_streams, 2**31 - 1
        )
        if self._connection_window > 65535:
            self.h2.increment_flow_control_window(self._connection_window - 65535)
        self._minute = self.reactor.seconds()
        self.setTimeout(self.site.timeOut)
        self._start_head()
        self._write_out()
        if getattr(self.site, "draining", False):
            self.drain()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self._broken:
            return  # (the rest of what arrives before the close)
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            # h2 queued GOAWAY with the error's code and takes no more frames:
            # send it, end every stream, close.
            self._log.debug(
                "HTTP/2 protocol error from {peer}: {error}", peer=self.peer, error=error
            )
            self._broken = True
            self._abandon_streams(Failure(ProtocolErrorFromClient(str(error))))
            self._close_now()
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                self._data(event)  # type: ignore[arg-type]
            elif kind is h2.events.RequestReceived:
                self._request(event)  # type: ignore[arg-type]
            elif kind is h2.events.StreamEnded:
                stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
                if stream is not None:
                    stream.client_ended()
            elif kind is h2.events.WindowUpdated:
                self._window_opened(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.StreamReset:
                self._client_reset(event)  # type: ignore[arg-type]
            elif kind is h2.events.PingReceived or kind is h2.events.RemoteSettingsChanged:
                self._control_frame()
            elif kind is h2.events.TrailersReceived:
                self._trailers(event)  # type: ignore[arg-type]
            elif kind is h2.events.ConnectionTerminated:
                self._close_now()
            if self.transport is None or self._broken or (self._closing and not self.streams):
                break
        # The connection window is this side's to reopen: each stream's own
        # window bounds what a stream can make the gateway hold. (Counted by h2
        # itself, so DATA for streams already closed is reopened too.)
        left = self.h2.inbound_flow_control_window
        if left < self._connection_window // 2 and self.transport is not None and not self._broken:
            self.h2.increment_flow_control_window(self._connection_window - left)
        self._write_out()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._closing = True
        self.setTimeout(None)
        self._end_head()
        self._abandon_streams(reason)
        closing = getattr(self.site, "closing_channels", None)
        if closing is not None:
            closing.pop(self, None)
        forget = getattr(self.site, "forget", None)
        if forget is not None:
            forget(self)
        self.transport = None

    def _abandon_streams(self, reason: Failure) -> None:
        streams, self.streams = self.streams, {}
        self._blocked.clear()
        for stream in streams.values():
            stream.lost(reason)

    # -- events ------------------------------------------------------------------------

    def _request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self._last_stream_id is not None and stream_id > self._last_stream_id:
            # After GOAWAY: the client retries it on a new connection.
            self.h2.reset_stream(stream_id, _REFUSED)
            return
        try:
            block = read_request_block(event.headers or ())
        except MalformedHeaders as error:
            self._malformed(stream_id, str(error))
            return
        if self._head_since is not None:
            self._end_head()
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        request: GatewayRequest = self.site.requestFactory(stream, queued=False)
        stream.request = request
        request.content = _EMPTY_CONTENT
        method, path, authority = block.method, block.path, block.authority
        assert method is not None  # (read_request_block refuses a block without one)
        fields = block.fields
        if authority is not None and block.host is None:
            fields.append((b"host", authority))
        fill_headers(request.requestHeaders, fields)
        length = block.length
        request.head_size = block.size
        body_length: int | None = None
        if length is not None:
            body_length = parse_decimal(length)
            if body_length is None:
                self._refuse_stream(stream, "a content-length that is not a number")
                return
        if event.stream_ended is None and body_length != 0:
            request.body = BodyPipe(request, body_length)
            stream.last_data = self.reactor.seconds()
        else:
            stream.client_done = event.stream_ended is not None
        # A CONNECT (no :path) gets the resource's "must be a path" answer.
        request._dispatch(method, path if path is not None else authority or b"", HTTP_2)
        if request.body is not None and block.expects_continue:
            # As on HTTP/1.1: after the dispatch, unless it answered already.
            if not (stream.closed or request.startedWriting or request.finished):
                stream.write_response_head(100, [])

    def _malformed(self, stream_id: int, why: str) -> None:
        """A malformed request: a stream error (RFC 9113 8.1.1), the connection goes on.

        The block was decoded, so the HPACK state both sides share is intact;
        nothing of the stream reached a route. Each such reset counts against
        ``max_resets_per_minute`` as a client's own reset does: resets the
        client makes the gateway send are no cheaper to flood with
        ("MadeYouReset", CVE-2025-8671).
        """
        self._log.debug(
            "HTTP/2 malformed request on stream {stream} from {peer}: {why}",
            stream=stream_id,
            peer=self.peer,
            why=why,
        )
        stream = self.streams.get(stream_id)
        if stream is not None:
            self.reset_stream(stream, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        else:
            try:
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            except h2.exceptions.ProtocolError:
                pass
            self._write_out()
        self._count_reset()

    def _trailers(self, event: h2.events.TrailersReceived) -> None:
        # Dropped, as on HTTP/1.1; but checked, as the head is.
        try:
            check_trailers(event.headers or ())
        except MalformedHeaders as error:
            self._malformed(event.stream_id or 0, str(error))

    def _refuse_stream(self, stream: H2Stream, why: str) -> None:
        self._log.debug("HTTP/2 stream refused ({why}) from {peer}", why=why, peer=self.peer)
        self.reset_stream(stream, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._count_reset()

    def _data(self, event: h2.events.DataReceived) -> None:
        flow_length = event.flow_controlled_length or 0
        if not flow_length and not event.stream_ended:
            self._control_frame()  # an empty DATA frame does nothing but cost
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        stream.data_received(event.data or b"", flow_length)

    def _client_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)  # type: ignore[arg-type]
        if stream is not None:
            self._blocked.pop(stream.stream_id, None)
            stream.lost(Failure(ConnectionResetByClient(event.error_code)))
            self._stream_closed()
        self._count_reset()

    def _count_reset(self) -> None:
        self._start_minute()
        self._resets += 1
        if self._resets > self.limits.max_resets_per_minute:
            self._log.info(
                "HTTP/2: {peer} reset more than {limit} streams in a minute (rapid reset?): "
                "closed with ENHANCE_YOUR_CALM",
                peer=self.peer,
                limit=self.limits.max_resets_per_minute,
            )
            self.go_away(_CALM, close=True)

    def _control_frame(self) -> None:
        self._start_minute()
        self._control_frames += 1
        if self._control_frames > CONTROL_FRAMES_PER_MINUTE:
            self._log.info(
                "HTTP/2: {peer} sent more than {limit} PING/SETTINGS/empty frames in a "
                "minute: closed with ENHANCE_YOUR_CALM",
                peer=self.peer,
                limit=CONTROL_FRAMES_PER_MINUTE,
            )
            self.go_away(_CALM, close=True)

    def _start_minute(self) -> None:
        """A minute after the last count started: both counts start again."""
        now = self.reactor.seconds()
        if now - self._minute >= 60.0:
            self._minute = now
            self._resets = self._control_frames = 0

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self._blocked.pop(stream_id, None)
            if stream is not None:
                stream.flush()
            return
        self._flush_blocked()

    def _flush_blocked(self) -> None:
        if self._transport_paused:
            return
        blocked, self._blocked = self._blocked, {}
        for stream in blocked.values():
            stream.flush()

    # -- from the streams -----------------------------------------------------------------

    def send_headers(
        self, stream_id: int, block: list[tuple[bytes, bytes]], *, write_out: bool = True
    ) -> None:
        """HEADERS for a stream; without ``write_out`` they wait in h2's
        buffer for the next write (the stream's DATA, which follows at once)."""
        try:
            self.h2.send_headers(stream_id, block)
        except h2.exceptions.ProtocolError:
            return
        if write_out:
            self._write_out()

    def send_data(self, stream: H2Stream, data: bytes, *, end: bool = False) -> None:
        """Send what the windows allow of ``data`` now; the stream holds the rest.

        With ``end``, the frame that carries the last of it ends the stream.
        """
        if self._transport_paused:
            stream.hold(data)
            self._blocked[stream.stream_id] = stream
            return
        h2conn = self.h2
        stream_id = stream.stream_id
        try:
            window = h2conn.local_flow_control_window(stream_id)
        except h2.exceptions.ProtocolError:
            return
        frame_size = h2conn.max_outbound_frame_size
        sent = 0
        total = len(data)
        try:
            while sent < total and window > 0:
                size = min(total - sent, window, frame_size)
                last = end and sent + size == total
                h2conn.send_data(stream_id, data[sent : sent + size], end_stream=last)
                sent += size
                window -= size
        except h2.exceptions.ProtocolError:
            return  # (the stream or the connection closed under it)
        if sent < total:
            stream.hold(data[sent:] if sent else data)
            self._blocked[stream_id] = stream
        elif end:
            self._ended(stream)
            self._forget(stream)
        self._write_out()

    def end_stream(self, stream: H2Stream) -> None:
        stream_id = stream.stream_id
        try:
            self.h2.end_stream(stream_id)
        except h2.exceptions.ProtocolError:
            pass
        else:
            self._ended(stream)
        self._forget(stream)
        self._write_out()

    def _ended(self, stream: H2Stream) -> None:
        """The response's END_STREAM went out."""
        if not stream.client_done:
            # Answered before the request body ended (413, an early upstream
            # answer): the client stops sending (RFC 9113 8.1).
            try:
                self.h2.reset_stream(stream.stream_id, _NO_ERROR)
            except h2.exceptions.ProtocolError:
                pass

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except h2.exceptions.ProtocolError:
            pass
        self._forget(stream)
        stream.lost(Failure(ConnectionResetByGateway(code)))
        self._write_out()

    def _forget(self, stream: H2Stream) -> None:
        stream.closed = True
        if self.streams.pop(stream.stream_id, None) is not None:
            self._blocked.pop(stream.stream_id, None)
            self._stream_closed()

    def _stream_closed(self) -> None:
        self._idle_since = self.reactor.seconds()
        if self._closing and not self.streams:
            self._close_now()

    def open_window(self, stream: H2Stream, count: int) -> None:
        if stream.closed:
            return
        try:
            self.h2.increment_flow_control_window(count, stream_id=stream.stream_id)
        except h2.exceptions.ProtocolError:
            return
        self._write_out()

    def tls_server_name(self) -> str | None:
        """The connection's SNI name (asked once: it cannot change)."""
        if not self._server_name_known:
            self._server_name = sni_server_name(self.transport)
            self._server_name_known = True
        return self._server_name  # type: ignore[no-any-return]

    # -- writing ---------------------------------------------------------------------------

    def _write_out(self) -> None:
        data = self.h2.data_to_send()
        transport = self.transport
        if not data or transport is None:
            return
        if self._transport_paused:
            # The client reads nothing, yet makes the gateway answer (PING,
            # SETTINGS, resets): past a bound, cut it off.
            self._backlog += len(data)
            if self._backlog > CONTROL_BACKLOG:
                self._log.info(
                    "HTTP/2: {peer} left {size} bytes of control frames unread: aborted",
                    peer=self.peer,
                    size=self._backlog,
                )
                transport.abortConnection()  # type: ignore[attr-defined]
                return
        transport.write(data)

    # -- IPushProducer: the client's socket ---------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        self._transport_paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        self._transport_paused = False
        self._backlog = 0
        self._flush_blocked()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- ending ----------------------------------------------------------------------------

    def go_away(self, code: int = _NO_ERROR, *, close: bool = False) -> None:
        """Send GOAWAY; with ``close``, close now, else once open streams end.

        The frame is built here, not by h2's close_connection: that would stop
        h2 from taking any further frame, and the streams already open are to
        finish (their request bodies included).
        """
        if self.transport is None:
            return
        if self._last_stream_id is None:
            self._last_stream_id = self.h2.highest_inbound_stream_id
        self._write_out()
        frame = GoAwayFrame(stream_id=0, last_stream_id=self._last_stream_id, error_code=code)
        self.transport.write(frame.serialize())
        self._closing = True
        if close:
            self._broken = True
            self._abandon_streams(Failure(ProtocolErrorFromClient("GOAWAY")))
        if close or not self.streams:
            self._close_now()

    def drain(self) -> None:
        """SIGTERM: no new streams; close once the open ones end (as HTTP/1.1)."""
        self.go_away(_NO_ERROR)

    def _close_now(self) -> None:
        self._write_out()
        transport = self.transport
        if transport is None:
            return
        self._closing = True
        # A transport with a producer registered waits for it before closing.
        transport.unregisterProducer()  # type: ignore[attr-defined]
        transport.loseConnection()
        # A client that never reads would keep the connection forever.
        watch = getattr(self.site, "watch_closing", None)
        if watch is not None:
            watch(self)

    # -- the first request's deadline (client_header_timeout, the site's sweep) -----------
    # A client that opens the connection (preface, SETTINGS) but never completes
    # a HEADERS block holds it as an HTTP/1.1 client that sends no complete head
    # would; the idle timeout alone would let a trickle of frames keep it open.

    def _start_head(self) -> None:
        site = self.site
        if getattr(site, "header_timeout", None) is None or self._closing:
            self._head_since = None
            return
        if self._head_since is None:
            self._head_since = self.reactor.seconds()
        site.watch_head(self)

    def _end_head(self) -> None:
        if self._head_since is not None:
            self._head_since = None
            heading = getattr(self.site, "heading_channels", None)
            if heading is not None:
                heading.discard(self)

    def head_timed_out(self) -> None:
        """No complete HEADERS block within client_header_timeout: GOAWAY and close."""
        self._end_head()
        self.go_away(_NO_ERROR, close=True)

    # -- the idle timeout (the site's sweep, as GatewayChannel's) -----------------------

    def setTimeout(self, period: float | None) -> float | None:  # noqa: N802
        previous = self._idle_period
        self._idle_period = period
        site = self.site
        if period is None:
            idle = getattr(site, "idle_channels", None)
            if idle is not None:
                idle.discard(self)
        else:
            self._idle_since = self.reactor.seconds()
            watch: Callable[[Any], None] | None = getattr(site, "watch_idle", None)
            if watch is not None:
                watch(self)
        return previous

    def idle_expired(self, now: float) -> bool:
        period = self._idle_period
        if self.streams:
            # Not idle; but each stream's body has client_body_timeout.
            body_timeout = getattr(self.site, "body_timeout", None)
            if body_timeout is not None:
                stalled = [s for s in self.streams.values() if s.body_stalled(now, body_timeout)]
                for stream in stalled:
                    stream.body_timed_out(body_timeout)
            return False
        if period is None:
            return False
        return now - self._idle_since >= period

    def timeoutConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.go_away(_NO_ERROR, close=True)


class ConnectionResetByClient(Exception):
    """The client reset the stream (RST_STREAM)."""


class ConnectionResetByGateway(Exception):
    """The gateway reset the stream."""


class ProtocolErrorFromClient(Exception):
    """The client broke HTTP/2 (or a limit): the connection is being closed."""
