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
from twisted.internet.interfaces import IProtocol, IPushProducer, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from idgateway._twisted.http_channel import HTTPChannelInternals
from idgateway._twisted.http_request import finish_request, init_request
from idgateway.config.model import LoggingSettings
from idgateway.http.numbers import parse_decimal
from idgateway.http.paths import PathReading
from idgateway.observe.access_log import log_access
from idgateway.proxy.upstream import UpstreamConnection
from idgateway.proxy.websocket_limits import WebSocketSlot
from idgateway.server.answers import send_error
from idgateway.server.socket_writes import coalesce_writes
from idgateway.server.tls import sni_server_name

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
            producer = _client_producer(self.request)
            if producer is not None:
                producer.resumeProducing()

    def _pause_client(self) -> None:
        self._client_paused = True
        producer = _client_producer(self.request)
        if producer is not None:
            producer.pauseProducing()

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


def _client_producer(request: GatewayRequest) -> Any:
    """The client connection, as the producer of the request body (None: gone,
    or a transport that cannot pause, as HTTPChannel's own _NoPushProducer)."""
    channel = request.channel
    if channel is None or channel.transport is None:
        return None
    return IPushProducer(channel.transport, None)


class GatewayRequest(server.Request):
    """A request that reaches the gateway as soon as its headers are in."""

    # The fields every proxied request sets live in slots: twisted.web's
    # request sets 22 attributes of its own, and past 30 CPython stops sharing
    # one table of names among a class's instances, so each request's dict
    # was built and grown entry by entry (and every attribute access took the
    # slow way). __init__ gives each slot its default: no class attributes
    # can stand in for a slot's. So do the fields read before they are set
    # (twisted.web's finished, startedWriting, chunked, sentLength, producer;
    # body, client_gone...): read through an instance, a class attribute is
    # looked up the slow way on every read (CPython 3.11 does not specialise
    # it), a slot the fast way.
    __slots__ = (
        "finished",
        "startedWriting",
        "chunked",
        "sentLength",
        "producer",
        "body",
        "client_gone",
        "idgw_cut_off",
        "idgw_websocket_slot",
        "on_disconnect",
        "on_body_exceeded",
        "request_id",
        "head_size",
        "idgw_logging",
        "idgw_started",
        "idgw_route",
        "idgw_reading",
        "idgw_user",
        "idgw_upstream_started",
        "idgw_upstream_ms",
        "idgw_login",
        "idgw_session",
        "idgw_session_id",
    )
    body: BodyPipe | None  # (None)
    # Called once if the client disconnects before the response is finished.
    on_disconnect: Callable[[], None] | None  # (None)
    # Called when the body grows past BodyPipe.limit.
    on_body_exceeded: Callable[[], None] | None  # (None)
    request_id: bytes  # (b"")
    # Bytes of request line and headers, when the channel read the head in
    # one piece (else 0: the proxy adds them up itself).
    head_size: int  # (0)
    # -- observe hooks (idgateway.observe.access_log): what the access log reports ------
    idgw_logging: LoggingSettings | None  # (None) set first thing in render
    idgw_started: float | None  # (None)
    idgw_route: str | None  # (None)
    # The request path as the gate judges it and the upstream receives it
    # (idgateway.http.paths); set by GatewayResource.render before any rule runs.
    idgw_reading: PathReading  # (no default)
    idgw_user: str | None  # (None) set by the gate once a session is admitted
    idgw_upstream_started: float | None  # (None)
    idgw_upstream_ms: float | None  # (None) time to the upstream's response head
    # The connection was lost before the response was finished (the client
    # went away, or the gateway cut it off after a broken upstream response).
    idgw_cut_off: bool  # (False)
    # A WebSocket upgrade's claim on its route's max_websockets, until the
    # request ends or becomes a tunnel (which then holds it).
    idgw_websocket_slot: WebSocketSlot | None  # (None)
    # The session admitted by the gate (a tunnel opened by this request ends
    # with it): the route's gate, the session, its Redis id.
    idgw_login: Any  # (None)
    idgw_session: Any  # (None)
    idgw_session_id: str | None  # (None)
    # The client's connection was lost (twisted.web's Request keeps this in a
    # private attribute; notifyFinish() would cost a Deferred per request).
    client_gone: bool  # (False)

    def __init__(self, channel: Any, queued: Any = False, *args: Any, **kw: Any) -> None:
        # (*args, **kw: server.Request's signature; none are passed.)
        # As server.Request's, in one call instead of three nested ones, and
        # with request headers whose per-request lookups take a shortcut.
        init_request(self, channel, queued)
        # The slots' defaults (twisted.web's as http.Request has them).
        self.finished = self.startedWriting = self.chunked = self.sentLength = 0
        self.producer = self.body = self.idgw_websocket_slot = None
        self.client_gone = self.idgw_cut_off = False
        self.on_disconnect = self.on_body_exceeded = None
        self.request_id = b""
        self.head_size = 0
        self.idgw_logging = self.idgw_started = self.idgw_route = self.idgw_user = None
        self.idgw_upstream_started = self.idgw_upstream_ms = None
        self.idgw_login = self.idgw_session = self.idgw_session_id = None

    # Identity, as Request's own __eq__ and __hash__ have it, without a Python
    # frame per comparison (HTTPChannel.requestDone compares every request).
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def gotLength(self, length: int | None) -> None:
        self.content = _EMPTY_CONTENT
        # The head is in (the channel calls this from allHeadersReceived):
        # its deadline is over, and a body's idle timeout starts.
        channel: GatewayChannel = self.channel  # type: ignore[assignment]
        if channel._head_since is not None:
            channel._end_head()
        if length == 0:
            # No body: let the channel finish its bookkeeping and dispatch from
            # requestReceived, so an immediate answer cannot run inside the
            # channel's header parsing.
            return
        channel._reading_body = True
        self.body = BodyPipe(self, length)
        self._dispatch(*channel.request_line())

    def received_without_body(self, command: bytes, uri: bytes, version: bytes) -> None:
        """``parseCookies()`` (nothing), ``gotLength(0)``, then
        ``requestReceived``, in one frame (the channel's one-pass head of a
        request without a body)."""
        self.content = _EMPTY_CONTENT
        channel: GatewayChannel = self.channel  # type: ignore[assignment]
        if channel._head_since is not None:
            channel._end_head()
        # (_dispatch, spelled out)
        self.method = command
        self.uri = uri
        self.clientproto = version
        self.path = uri.partition(b"?")[0]
        self.args = {}
        site = self.site = channel.site  # type: ignore[attr-defined]
        site.resource.render(self)

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
        if body is not None and not self.finished and not self.client_gone:
            body.feed(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        body = self.body
        if body is None:
            self._dispatch(command, path, version)
        elif not self.finished and not self.client_gone:
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

    def finish(self) -> None:
        # (super().finish(), in one frame for the usual response)
        finish_request(self)
        if not self.finished:
            return  # (the connection was already lost: nothing was finished)
        # Finished: nothing is left to cancel or refuse. These hold the
        # request's exchange and response, which hold the request: dropping
        # them lets reference counting free the request now, instead of the
        # cyclic garbage collector later (which then ran every few requests).
        self.on_disconnect = None
        self.on_body_exceeded = None
        if self.idgw_websocket_slot is not None:
            self._release_websocket_slot()

    def _release_websocket_slot(self) -> None:
        slot, self.idgw_websocket_slot = self.idgw_websocket_slot, None
        if slot is not None:
            slot.release()

    def connectionLost(self, reason: Any) -> None:
        self.client_gone = True
        super().connectionLost(reason)
        self.on_body_exceeded = None  # (a cycle through the response, as above)
        if self.idgw_websocket_slot is not None:
            self._release_websocket_slot()
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
# How long a connection told to close may take to get its last answer out
# before it is aborted (a TLS handshake that never finished, a client that
# never reads).
CLOSE_GRACE = 5.0
IDLE_SWEEP_INTERVAL = 1.0

# What a request head that missed client_header_timeout gets, as nginx sends.
_HEAD_TIMEOUT_BODY = b"The request head did not arrive in time (client_header_timeout).\n"
_HEAD_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_HEAD_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _HEAD_TIMEOUT_BODY
)


def _line_too_long_response(status: bytes, what: bytes) -> bytes:
    limit = HTTPChannelInternals.MAX_LENGTH // 1024
    body = b"The request %s is longer than the gateway reads (%d KiB).\n" % (what, limit)
    return (
        b"HTTP/1.1 %s\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body)
    )


# What a request line or header line over the channel's line limit gets.
_TARGET_TOO_LONG_RESPONSE = _line_too_long_response(b"414 URI Too Long", b"line")
_HEADER_LINE_TOO_LONG_RESPONSE = _line_too_long_response(
    b"431 Request Header Fields Too Large", b"header line"
)


def _peer_text(channel: GatewayChannel) -> str:
    transport = channel.transport
    peer = transport.getPeer() if transport is not None else None
    host = getattr(peer, "host", None)
    return f"{host}:{getattr(peer, 'port', '')}" if host is not None else "-"


# Slow heads cut per reactor turn (the rest in the turns after).
HEAD_CUT_BATCH = 200

# GatewayChannel's cached TLS server name before it is first asked.
_NOT_YET = object()

# nginx's status for a request whose client went away before any answer.
CLIENT_CLOSED_REQUEST = 499


class GatewayChannel(HTTPChannelInternals):
    """HTTPChannel that tolerates a response finished before its request body.

    It also remembers the connection's addresses: twisted.web asks for them on
    every request, and each ask is a system call.
    """

    _host: Any = None
    _peer: Any = None
    # The hard ceiling on a request head; each route's max_header_size (431)
    # applies below it.
    totalHeadersSize = 64 * 1024

    def first_bytes_taken(self, data: bytes) -> bool:
        # An HTTP/2 client (ALPN chose h2, or the h2c preface on a
        # prior_knowledge listener) is served from here on by the site's
        # HTTP/2 side (server.h2_connection). (Asked from the one
        # dataReceived, not a second one above it: a frame less per read.)
        offer = self.site.http2  # type: ignore[attr-defined]
        if offer is not None and offer.wants(self, data):
            offer.take_over(self, data)
            return True
        return False

    def connectionMade(self) -> None:
        coalesce_writes(self.transport)
        # Over TLS, the TCP connection under the TLS layer (whose own writes
        # twisted already gathers per reactor turn).
        coalesce_writes(getattr(self.transport, "transport", None))
        super().connectionMade()
        # The first head's deadline runs from the accept, as nginx's does: a
        # connection that sends nothing holds a descriptor just the same.
        self._start_head()

    # -- the request head's deadline (client_header_timeout) --------------------
    # Bytes trickling in keep the idle timeout from ever firing (slowloris), so
    # a head also has a deadline from its first byte that arriving bytes do not
    # move. A whole head read in one piece (the usual case) never starts it:
    # only heads that take more than one read are watched, by the site's sweep.

    # When the head being read began; None: no head is being read.
    _head_since: float | None = None
    # (_silent, from HTTPChannelInternals: nothing has arrived on this
    # connection yet; over TLS perhaps not even a finished handshake.)
    # A request body is being read: the idle timeout is client_body_timeout.
    _reading_body = False

    def _start_head(self) -> None:
        site: GatewaySite = self.site  # type: ignore[attr-defined]
        if site.header_timeout is not None:
            self._head_since = site.reactor.seconds()
            site.watch_head(self)

    def _end_head(self) -> None:
        if self._head_since is not None:
            self._head_since = None
            self.site.heading_channels.discard(self)  # type: ignore[attr-defined]

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
        # twisted.web's line parser (LineReceiver's default) closes without a
        # word on a line over MAX_LENGTH: the client learns nothing, and the
        # log nothing either. Say why, as nginx does. (No answer of an earlier
        # request can be under way: twisted.web parses a pipelined request
        # only once the one before it is answered.) The request line is the
        # one before any request of this head exists.
        if self.transport is None:
            return
        self.transport.write(
            _HEADER_LINE_TOO_LONG_RESPONSE if self.requests else _TARGET_TOO_LONG_RESPONSE
        )
        self.loseConnection()

    def may_send_100_continue(self) -> bool:
        request = self.requests[-1] if self.requests else None
        return not (request is None or request.startedWriting or request.finished)

    def head_timed_out(self) -> None:
        """The head missed its deadline: 408 and close (nothing of a response began)."""
        self._end_head()
        self.setTimeout(None)
        if self.transport is None:
            return
        if self._silent and ISSLTransport.providedBy(self.transport):
            # No request, perhaps no TLS session to write a 408 into: cut it.
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.transport.write(_HEAD_TIMEOUT_RESPONSE)
        self.loseConnection()
        # A clean close waits for the 408 to leave: on a TLS listener whose
        # handshake never finished, or to a client that never reads, it would
        # wait forever. The sweep aborts what is still open a little later.
        site: GatewaySite = self.site  # type: ignore[attr-defined]
        site.watch_closing(self)

    def allContentReceived(self) -> None:
        self._reading_body = False
        if not self.requests:
            # The request already answered and closed the connection (413, early
            # upstream reply); the tail of its body has nothing left to reach.
            self.drop_body_decoder()
            return
        super().allContentReceived()

    def loseConnection(self) -> None:
        super().loseConnection()
        # Over TLS a clean close waits for the client's close_notify, and
        # twisted's TLS layer hands on whatever the client sends meanwhile: a
        # client that kept sending (the rest of a body refused with 413, as
        # long as its Content-Length said) kept the connection, and the
        # gateway decrypting and parsing, for as long as it liked; past that
        # body's end twisted.web's parser had no decoder left (a traceback).
        # Closing, nothing more is parsed.
        self.dataReceived = self._received_while_closing  # type: ignore[method-assign]

    def _received_while_closing(self, data: bytes) -> None:
        # A client still sending once the gateway closes gets CLOSE_GRACE to
        # stop, as a 408's client gets to read it (a client that only reads
        # the rest of its answer, however slowly, is not watched).
        site = self.site  # type: ignore[attr-defined]
        if self not in site.closing_channels and self.transport is not None:
            site.watch_closing(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._end_head()
        site = getattr(self, "site", None)
        if site is not None and self in site.closing_channels:
            del site.closing_channels[self]
        super().connectionLost(reason)

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
            # (site.watch_idle, spelled out: twice per request through here)
            site.idle_channels.add(self)
            if not site._idle_sweep.running:
                site._idle_sweep.start(IDLE_SWEEP_INTERVAL, now=False)
        return previous

    def resetTimeout(self) -> None:
        if self._idle_period is not None:
            self._idle_since = self.site.reactor.seconds()  # type: ignore[attr-defined]

    def idle_expired(self, now: float) -> bool:
        period = self._idle_period
        if period is None:
            return False
        if self._reading_body:
            body_timeout = self.site.body_timeout  # type: ignore[attr-defined]
            if body_timeout is not None:
                period = body_timeout
            if self._body_held_back():
                # The gateway itself stopped reading (the upstream is slow to
                # take the body): the client is not the one being silent.
                self._idle_since = now
                return False
        return now - self._idle_since >= period

    def _body_held_back(self) -> bool:
        requests = self.requests
        body = requests[-1].body if requests else None
        return body is not None and body._client_paused

    def timeoutConnection(self) -> None:
        if not self._reading_body:
            super().timeoutConnection()
            return
        # client_body_timeout: the body stopped arriving. Answer 408 if no
        # response has begun (as nginx does), else cut the connection.
        self._reading_body = False
        request: GatewayRequest | None = self.requests[-1] if self.requests else None
        if request is None or request.startedWriting or request.finished:
            if self.transport is not None:
                self.transport.loseConnection()
            return
        if request.on_disconnect is not None:
            # The upstream exchange (or the endpoint) will not get the rest.
            cancel, request.on_disconnect = request.on_disconnect, None
            cancel()
        request.end_response_early()
        self.persistent = False
        send_error(
            request,
            408,
            "The request body stopped arriving: nothing came for "
            f"{self.site.body_timeout:g} s (client_body_timeout).",  # type: ignore[attr-defined]
            request_id=request.request_id,
        )

    def head_parsed_by_lines(self) -> None:
        if self._head_since is None and self.line_mode:
            self._start_head()

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
            self.refuse_bad_request()
            return False
        if colon:
            lower = name.lower()
            if (lower == b"content-length" and parse_decimal(value.strip(b" \t")) is None) or (
                lower == b"transfer-encoding" and value.strip(b" \t").lower() != b"chunked"
            ):
                self.refuse_bad_request()
                return False
        accepted: bool = super().headerReceived(line)
        if accepted:
            self.bound_body_decoder()
        return accepted

    def refuse_bad_request(self) -> None:
        """400 and close, at once (as twisted.web answers a malformed head)."""
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # type: ignore[union-attr]
        self.loseConnection()

    def switch_to_tunnel(self, protocol: IProtocol) -> None:
        """From now on, ``protocol`` gets this connection's bytes and its end
        (a WebSocket tunnel), as twisted.web's own WebSocket upgrade does."""
        self.dataReceived = protocol.dataReceived  # type: ignore[method-assign]
        self.connectionLost = protocol.connectionLost  # type: ignore[method-assign,assignment]
        assert self.transport is not None, "a tunnel needs a connected channel"
        protocol.makeConnection(self.transport)

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
            # (The site's copy: thousands of idle connections to one
            # listener need not hold an address object each.)
            self._host = self.site.shared_address(super().getHost())  # type: ignore[attr-defined]
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer


class GatewaySite(server.Site):
    """A Site whose channels stream request bodies and skip the generic H2 wrapper."""

    protocol = GatewayChannel  # type: ignore[assignment]
    requestFactory = GatewayRequest
    noisy = False
    # How this listener takes HTTP/2 connections (server.h2_connection.H2Offer);
    # None: HTTP/1.1 only.
    http2: Any = None

    _log = Logger()

    def __init__(
        self,
        resource: Resource,
        *,
        header_timeout: float | None = None,
        body_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        # client_header_timeout and client_body_timeout (None: none).
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        # Channels whose idle timeout runs (GatewayChannel.setTimeout).
        self.idle_channels: set[GatewayChannel] = set()
        # Channels reading a request head that did not come in one piece.
        self.heading_channels: set[GatewayChannel] = set()
        # WebSocket tunnels, for their idle timeout (proxy.websocket_tunnel).
        self.tunnels: set[Any] = set()
        # Connections told to close (a 408 for a late head) -> when: aborted if
        # still open CLOSE_GRACE seconds later.
        self.closing_channels: dict[Any, float] = {}  # channels and WebSocket tunnels
        # client_send_timeout (None: none), and the responses whose client
        # stopped reading -> since when (proxy.response).
        self.send_timeout: float | None = None
        self.stalled: dict[Any, float] = {}
        self._addresses: dict[Any, Any] = {}
        self._idle_sweep = LoopingCall(self._time_out_idle)
        self._idle_sweep.clock = self.reactor

    # The local addresses a site shares among its connections (a listener
    # bound to a wildcard address has one per local address it is reached on).
    _SHARED_ADDRESSES = 64
    _call_later: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if channel is not None:
            # twisted.web gives each channel a bound method of its own (an
            # object per connection): one per site does the same.
            call_later = self.reactor.callLater
            if call_later != self._call_later:
                self._call_later = call_later
            channel.callLater = self._call_later
        return channel

    def shared_address(self, address: Any) -> Any:
        """``address``, or the equal one this site already holds."""
        known = self._addresses.get(address)
        if known is not None:
            return known
        if len(self._addresses) < self._SHARED_ADDRESSES:
            self._addresses[address] = address
        return address

    def watch_idle(self, channel: GatewayChannel) -> None:
        self.idle_channels.add(channel)
        if not self._idle_sweep.running:
            self._idle_sweep.start(IDLE_SWEEP_INTERVAL, now=False)

    def watch_head(self, channel: GatewayChannel) -> None:
        self.heading_channels.add(channel)
        if not self._idle_sweep.running:
            self._idle_sweep.start(IDLE_SWEEP_INTERVAL, now=False)

    def watch_tunnel(self, tunnel: Any) -> None:
        """Close ``tunnel`` once idle for its ``idle_timeout`` (see WebSocketTunnel)."""
        self.tunnels.add(tunnel)
        if not self._idle_sweep.running:
            self._idle_sweep.start(IDLE_SWEEP_INTERVAL, now=False)

    def watch_closing(self, channel: Any) -> None:
        self.closing_channels[channel] = self.reactor.seconds()
        if not self._idle_sweep.running:
            self._idle_sweep.start(IDLE_SWEEP_INTERVAL, now=False)

    def watch_stalled(self, response: Any) -> None:
        """A response's client stopped reading (its socket is full)."""
        if self.send_timeout is None:
            return
        self.stalled.setdefault(response, self.reactor.seconds())
        if not self._idle_sweep.running:
            self._idle_sweep.start(IDLE_SWEEP_INTERVAL, now=False)

    def _cut_stalled(self, now: float) -> None:
        timeout = self.send_timeout
        if timeout is None:
            self.stalled.clear()
            return
        late = [r for r, since in self.stalled.items() if now - since >= timeout]
        for response in late:
            del self.stalled[response]
            response.send_timed_out()
        if late:
            self._log.info(
                "cut {count} connection(s) whose client read nothing of its response for "
                "{timeout:g} s (client_send_timeout)",
                count=len(late),
                timeout=timeout,
            )

    def _abort_lingering(self, now: float) -> None:
        late = [c for c, since in self.closing_channels.items() if now - since >= CLOSE_GRACE]
        for channel in late:
            del self.closing_channels[channel]
            transport = channel.transport
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]

    def _time_out_idle(self) -> None:
        if not (
            self.idle_channels
            or self.heading_channels
            or self.tunnels
            or self.closing_channels
            or self.stalled
        ):
            self._idle_sweep.stop()
            return
        now = self.reactor.seconds()
        # Each duty on its own: one that fails (logged) must not stop the others,
        # nor the sweep itself, which every timeout here depends on.
        if self.stalled:
            self._duty(self._cut_stalled, now)
        if self.closing_channels:
            self._duty(self._abort_lingering, now)
        if self.heading_channels:
            self._duty(self._cut_slow_heads, now)
        if self.tunnels:
            self._duty(self._close_idle_tunnels, now)
            self._duty(self._end_tunnels_of_ended_sessions, now)
        if self.idle_channels:
            self._duty(self._time_out_idle_channels, now)

    def _duty(self, duty: Callable[[float], None], now: float) -> None:
        try:
            duty(now)
        except Exception:
            self._log.failure("the once-a-second connection sweep: {duty}", duty=duty)

    def _time_out_idle_channels(self, now: float) -> None:
        expired = [channel for channel in self.idle_channels if channel.idle_expired(now)]
        for channel in expired:
            channel.setTimeout(None)
            channel.timeoutConnection()

    def _cut_slow_heads(self, now: float) -> None:
        deadline = self.header_timeout
        if deadline is None:
            return
        late = [
            channel
            for channel in self.heading_channels
            if now - channel._head_since >= deadline  # type: ignore[operator]
        ]
        if not late:
            return
        # One line per sweep, however many: a slowloris run cuts thousands at once.
        self._log.info(
            "408: closed {count} connection(s) whose request head took over {timeout:g} s "
            "(client_header_timeout), e.g. from {peer}",
            count=len(late),
            timeout=deadline,
            peer=_peer_text(late[0]),
        )
        self._cut_heads(late)

    def _cut_heads(self, late: list[GatewayChannel]) -> None:
        # A few hundred per reactor turn: thousands at once would hold up
        # every other connection's requests for the whole batch.
        batch, rest = late[:HEAD_CUT_BATCH], late[HEAD_CUT_BATCH:]
        for channel in batch:
            if channel._head_since is not None:  # (not cut, nor finished, since)
                channel.head_timed_out()
        if rest:
            self.reactor.callLater(0, self._cut_heads, rest)

    def _close_idle_tunnels(self, now: float) -> None:
        idle = [tunnel for tunnel in self.tunnels if tunnel.idle_expired(now)]
        for tunnel in idle:
            self.tunnels.discard(tunnel)
            tunnel.close_idle()
        if idle:
            self._log.info(
                "closed {count} WebSocket tunnel(s) idle past their route's "
                "websocket_idle_timeout (route {route})",
                count=len(idle),
                route=idle[0].route,
            )

    def _end_tunnels_of_ended_sessions(self, now: float = 0.0) -> None:
        """Close (1008) the tunnels whose session ended: within a sweep, a second."""
        for tunnel in list(self.tunnels):
            verdict = tunnel.session_verdict()
            if verdict is True:
                self._end_tunnel(tunnel)
            elif isinstance(verdict, Deferred):
                verdict.addCallback(self._ended_later, tunnel)
                verdict.addErrback(
                    lambda failure: self._log.failure("ending a WebSocket tunnel", failure)
                )

    def _ended_later(self, ended: bool, tunnel: Any) -> None:
        if ended and tunnel in self.tunnels:
            self._end_tunnel(tunnel)

    def _end_tunnel(self, tunnel: Any) -> None:
        self.tunnels.discard(tunnel)
        tunnel.end_with_session()
        self._log.info(
            "closed a WebSocket tunnel of route {route}: its session ended",
            route=tunnel.route,
        )

    # Access logging is the gateway's own job (see observe); twisted's
    # combined-log formatter is too slow for the hot path. (Request.finish
    # calls site.log(request): straight to log_access, no frame between.)
    log = staticmethod(log_access)
