"""A lean, pooled HTTP/1.1 client for talking to upstreams.

Why not ``twisted.web.client.Agent``: per request it builds Deferreds, a
``Response`` object, body producers and a fresh parser, and it costs roughly
twice the CPU of this module per proxied request. The gateway only ever needs
one thing from an upstream: send a request head (plus a streamed body) on a
persistent connection and hand the response, piece by piece, to a sink that
can push back. That is this module.

One ``UpstreamPool`` per upstream holds at most ``size`` connections; idle
ones are reused last-in-first-out (warm sockets first), and requests that find
the pool full wait in a FIFO queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple
from typing import Protocol as TypingProtocol

from twisted.internet import error as net_error
from twisted.internet.interfaces import (
    IAddress,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from idgateway._twisted.tcp import wrapped_by_endpoint
from idgateway.http.numbers import parse_decimal, parse_hex
from idgateway.http.syntax import is_token
from idgateway.server.socket_writes import coalesce_writes

# Why an exchange failed; the proxy maps these to 502/504 or an abort.
FAIL_CONNECT = "connect"  # could not connect (refused, unreachable, TLS failure)
FAIL_TIMEOUT = "timeout"  # no response head within the response timeout
FAIL_IDLE = "idle"  # the exchange went silent for longer than the idle timeout
FAIL_PROTOCOL = "protocol"  # the upstream spoke something other than HTTP/1.x
FAIL_RESET = "reset"  # the connection dropped before the response completed
FAIL_CANCELLED = "cancelled"

# Why a pooled connection was closed instead of reused: something arrived
# that no response accounts for. Reading it as the start of the next
# response is how one response is split into two (a desync); each is counted
# (idgateway_upstream_connections_discarded_total).
DISCARD_BODY_AFTER_NO_BODY = "body_after_no_body_response"  # HEAD, 204, 304
DISCARD_AFTER_CONTENT_LENGTH = "bytes_after_content_length"  # or after the last chunk
DISCARD_DATA_WHILE_IDLE = "data_while_idle"
DISCARD_REASONS = (
    DISCARD_BODY_AFTER_NO_BODY,
    DISCARD_AFTER_CONTENT_LENGTH,
    DISCARD_DATA_WHILE_IDLE,
)

# Control characters (all but HTAB) and DEL: never in a status line or a
# header line the gateway writes back to a client.
_CONTROLS = bytes(range(0, 9)) + bytes(range(10, 32)) + b"\x7f"

# Trailers are dropped, but read: at most this much of them (as twisted.web).
MAX_TRAILER_BYTES = 64 * 1024

# How often each pool checks its busy connections' deadlines: timeouts fire
# up to this much late.
WATCHDOG_INTERVAL = 0.25


class ResponseSink(TypingProtocol):
    """Where a response goes: the proxy's per-request exchange."""

    def response_head(
        self,
        status: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        length: int | None,
    ) -> None: ...

    def response_data(self, data: bytes) -> None: ...

    def response_end(self) -> None: ...

    def response_failed(self, why: str, detail: str) -> None: ...

    def upgraded(self, connection: UpstreamConnection, leftover: bytes) -> None: ...


class RequestBody(TypingProtocol):
    """A request body that arrives while the request is already upstream."""

    def attach(self, connection: UpstreamConnection) -> None:
        """Start delivering: call connection.send_body_data / send_body_end."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


# RFC 9110 9.2.2: requests that may be sent again when a reused connection
# closed before any answer (the upstream may or may not have seen them).
IDEMPOTENT_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


class Exchange:
    """One request (head + optional streamed body) and where its answer goes."""

    __slots__ = (
        "head",
        "body",
        "chunked_body",
        "sink",
        "is_head",
        "upgrade",
        "response_timeout",
        "idle_timeout",
        "connection",
        "cancelled",
        "replayable",
        "body_in_hand",
    )

    def __init__(
        self,
        head: bytes,
        sink: ResponseSink,
        *,
        body: RequestBody | None = None,
        chunked_body: bool = False,
        is_head: bool = False,
        upgrade: bool = False,
        response_timeout: float = 60.0,
        idle_timeout: float = 300.0,
    ) -> None:
        self.head = head
        self.body = body
        self.chunked_body = chunked_body
        self.sink = sink
        self.is_head = is_head
        self.upgrade = upgrade
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.connection: UpstreamConnection | None = None
        self.cancelled = False
        # A request with no body can be sent again on a fresh connection
        # if a reused one turns out to have been closed by the upstream.
        self.replayable = body is None
        # Set before the sink gets the response head: the whole response
        # (its head and all of its body) came in the read at hand, so it ends
        # before anything else can happen (the sink need not take part in
        # flow control for it).
        self.body_in_hand = False

    def cancel(self) -> None:
        """The client went away: drop the upstream exchange, whatever its state."""
        self.cancelled = True
        if self.connection is not None:
            self.connection.abandon()


_new_exchange = object.__new__


def new_exchange(
    head: bytes,
    sink: ResponseSink,
    body: RequestBody | None,
    chunked_body: bool,
    is_head: bool,
    upgrade: bool,
    response_timeout: float,
    idle_timeout: float,
) -> Exchange:
    """``Exchange(head, sink, body=..., ...)`` with every argument in this
    order: the proxy's call on every request. A class called with keywords
    goes through C twice (the keywords made a dict, then ``__init__`` called
    from C, out of the interpreter's inlined calls); a plain function with
    its arguments in order does not. Sets what ``__init__`` sets
    (tests/unit/test_upstream.py compares the two)."""
    exchange: Exchange = _new_exchange(Exchange)
    exchange.head = head
    exchange.body = body
    exchange.chunked_body = chunked_body
    exchange.sink = sink
    exchange.is_head = is_head
    exchange.upgrade = upgrade
    exchange.response_timeout = response_timeout
    exchange.idle_timeout = idle_timeout
    exchange.connection = None
    exchange.cancelled = False
    exchange.replayable = body is None
    exchange.body_in_hand = False
    return exchange


class ResponseHead(NamedTuple):
    status: int
    reason: bytes
    # As the upstream sent them (shared between responses with the same head:
    # never to be changed).
    headers: tuple[tuple[bytes, bytes], ...]
    length: int | None  # the Content-Length, if any
    chunked: bool
    closes: bool  # the upstream will close the connection after this response


# Parsed heads by their bytes: an application sends the same head again and
# again (until its Date header ticks), and parsing one was a twentieth of a
# proxied request. Bounded; cleared when full.
_RESPONSE_HEADS: dict[bytes, ResponseHead] = {}
_RESPONSE_HEADS_MAX = 256


def parse_response_head(head: bytes) -> ResponseHead | str:
    """The status line and headers in ``head`` (without the blank line), or
    what is wrong with them.

    Stricter than RFC 9112 where a laxer reading could frame the body
    differently from another parser (tests/security/test_framing.py holds
    it against h11): no obsolete line folds or bare LFs, one exact
    ``chunked`` transfer coding, no Content-Length beside it.
    """
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        # A CR or LF outside a line end (an obsolete line fold's, say): the
        # head is written back to the client as it came, so it must be plain
        # lines.
        return "upstream sent a CR or LF inside a header line"
    lines = head.split(b"\r\n")
    if len(head.translate(None, _CONTROLS)) != len(head) - 2 * crlf:
        return "upstream sent a control character (NUL, say) inside a header line"
    status_line = lines[0].split(b" ", 2)
    version = status_line[0]
    status_text = status_line[1] if len(status_line) > 1 else b""
    if (
        (version != b"HTTP/1.1" and version != b"HTTP/1.0")
        or len(status_text) != 3
        or not status_text.isdigit()
        or status_text[0] == 0x30
    ):
        return "upstream sent a malformed status line"
    status = int(status_text)
    reason = status_line[2] if len(status_line) > 2 else b""
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    length_text = b""
    chunked = False
    closes = False
    connection_tokens: list[bytes] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not is_token(name):
            # (A name must be a token: no spaces, no line fold.)
            return "upstream sent a malformed header line"
        value = value.strip(b" \t")
        lower = name.lower()
        if lower == b"content-length":
            parsed = parse_decimal(value)
            # A repeat must be the same text ("5" then "05" is a conflict).
            if parsed is None or (length is not None and value != length_text):
                return "upstream sent a bad Content-Length"
            length, length_text = parsed, value
        elif lower == b"transfer-encoding":
            # Only "chunked", once: another coding would reach the client
            # undecoded (the header is hop-by-hop), and a body delimited by
            # close is one more way for two parsers to disagree.
            if chunked or value.lower() != b"chunked":
                return "upstream sent a Transfer-Encoding other than chunked"
            chunked = True
        elif lower == b"connection":
            connection_tokens.extend(t.strip().lower() for t in value.split(b","))
        headers.append((name, value))
    if chunked and length is not None:
        # RFC 9112 6.3: "ought to be handled as an error".
        return "upstream sent both Content-Length and Transfer-Encoding"
    if version == b"HTTP/1.0" and b"keep-alive" not in connection_tokens:
        closes = True
    if b"close" in connection_tokens:
        closes = True
    return ResponseHead(status, reason, tuple(headers), length, chunked, closes)


# Parser states.
_HEAD, _BODY_LENGTH, _BODY_CHUNKED, _BODY_UNTIL_CLOSE, _DONE, _TUNNEL = range(6)


@implementer(IPushProducer)
class UpstreamConnection(Protocol):
    """One persistent HTTP/1.1 connection to an upstream."""

    _log = Logger()

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.exchange: Exchange | None = None
        self._buffer = b""
        self._state = _DONE
        self._remaining = 0
        self._keep_alive = True
        self._body_sent = True
        self._got_any = False
        # When this exchange times out (clock seconds; 0 = never) and why.
        # The pool's watchdog compares these every WATCHDOG_INTERVAL, which is
        # much cheaper than a DelayedCall per request.
        self.deadline = 0.0
        self.deadline_kind = FAIL_TIMEOUT
        self._chunk_state_data = False  # inside a chunk's data vs reading a size line
        self._trailer_bytes = 0  # of the trailer section being read (bounded)
        self.reused = False
        self.closed = False
        self._body_paused = False
        # Set while the client's socket is full; a connection must never go
        # back to the pool still paused, or its next response is never read.
        self._reading_paused = False
        # How the pool counts this connection: "busy", "idle", "tunnel" or "gone".
        self.pool_state = "busy"

    # -- the pool's side ---------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        if wrapped_by_endpoint(transport, self):
            # A TCP connection made through an endpoint delivers every read
            # through the endpoint's wrapper protocol, which only passes it
            # on (its half-close interfaces are this protocol's, and this one
            # has none): deliver to this protocol directly.
            transport.protocol = self  # type: ignore[union-attr]
        coalesce_writes(self.transport)
        # An https upstream: the TCP connection under the TLS layer.
        coalesce_writes(getattr(self.transport, "transport", None))
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:  # unix sockets have no Nagle to turn off
                pass

    def start(self, exchange: Exchange) -> None:
        """Send a request on this (idle) connection."""
        self.exchange = exchange
        exchange.connection = self
        self._state = _HEAD
        self._buffer = b""
        self._got_any = False
        self._keep_alive = True
        transport = self.transport
        assert transport is not None
        transport.write(exchange.head)
        if exchange.body is not None:
            self._body_sent = False
            transport.registerProducer(self, True)  # type: ignore[attr-defined]
            exchange.body.attach(self)
        else:
            self._body_sent = True
        # (_arm, spelled out: once per request here, once in _parse_head)
        self.deadline_kind = FAIL_TIMEOUT
        self.deadline = self.pool.clock.seconds() + exchange.response_timeout

    def send_body_data(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        if self.exchange is not None and self.exchange.chunked_body:
            if not data:
                return  # an empty chunk would be "0\r\n\r\n": the end of the body
            self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self.transport.write(data)

    def send_body_end(self) -> None:
        if self.closed or self.transport is None:
            return
        self._body_sent = True
        if self.exchange is not None and self.exchange.chunked_body:
            self.transport.write(b"0\r\n\r\n")
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        if self._state == _DONE:
            self._finish_exchange()

    def send_body_abort(self) -> None:
        """The client's body stopped short: the upstream must not see a complete request."""
        self._body_sent = True
        self._keep_alive = False
        self.abandon()

    # IPushProducer for the request body: the upstream socket is full.
    def pauseProducing(self) -> None:
        if self.exchange is not None and self.exchange.body is not None:
            self._body_paused = True
            self.exchange.body.pause()

    def resumeProducing(self) -> None:
        if self.exchange is not None and self.exchange.body is not None and self._body_paused:
            self._body_paused = False
            self.exchange.body.resume()

    def stopProducing(self) -> None:
        pass

    # The response side: the client socket is full, so stop reading here.
    def pause_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def abandon(self) -> None:
        """Drop the connection without delivering anything more."""
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.connection = None
        self._cancel_timer()
        self.closed = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- timers --------------------------------------------------------------

    def _arm(self, seconds: float, kind: str) -> None:
        self.deadline_kind = kind
        self.deadline = self.pool.clock.seconds() + seconds

    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def check_deadline(self, now: float) -> None:
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            self._fail(self.deadline_kind, "upstream did not answer in time")

    # -- parsing -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection: the upstream is confused (or a
            # body it should not have sent arrived late); never read them
            # as the next response.
            if not self.closed:
                self._keep_alive = False
                self.pool.count_discard(DISCARD_DATA_WHILE_IDLE)
                self.abandon()
            return
        self._got_any = True
        if self._state == _TUNNEL:
            exchange.sink.response_data(data)
            return
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        while data and self.exchange is exchange:
            state = self._state
            if state == _HEAD:
                rest = self._parse_head(data)
                if rest is None:
                    return
                data = rest
            elif state == _BODY_LENGTH:
                remaining = self._remaining
                if len(data) < remaining:
                    self._remaining = remaining - len(data)
                    self._arm(exchange.idle_timeout, FAIL_IDLE)
                    exchange.sink.response_data(data)
                    return
                piece, data = data[:remaining], data[remaining:]
                self._remaining = 0
                if piece:
                    exchange.sink.response_data(piece)
                    if self.exchange is not exchange:
                        return
                if data:
                    # Bytes after a complete response: not HTTP we trust.
                    # (Decided before completing: completing hands a
                    # kept-alive connection back to the pool.)
                    self._discard_after(DISCARD_AFTER_CONTENT_LENGTH)
                self._response_complete()
                return
            elif state == _BODY_CHUNKED:
                rest = self._parse_chunked(data)
                if rest is None:
                    return
                data = rest
            elif state == _BODY_UNTIL_CLOSE:
                self._arm(exchange.idle_timeout, FAIL_IDLE)
                exchange.sink.response_data(data)
                return
            else:
                self._keep_alive = False
                return

    def _parse_head(self, data: bytes) -> bytes | None:
        end = data.find(b"\r\n\r\n")
        if end == -1:
            if len(data) > 65536:
                self._fail(FAIL_PROTOCOL, "upstream response head larger than 64 KiB")
                return None
            self._buffer = data
            return None
        head, rest = data[:end], data[end + 4 :]
        known = _RESPONSE_HEADS.get(head)
        if known is None:
            parsed = parse_response_head(head)
            if isinstance(parsed, str):
                self._fail(FAIL_PROTOCOL, parsed)
                return None
            if len(_RESPONSE_HEADS) >= _RESPONSE_HEADS_MAX:
                _RESPONSE_HEADS.clear()
            _RESPONSE_HEADS[head] = known = parsed
        status, reason, headers, length, chunked, closes = known
        if closes:
            self._keep_alive = False
        exchange = self.exchange
        assert exchange is not None
        if status == 101 and exchange.upgrade:
            self._cancel_timer()
            self.pool.detach(self)
            self._state = _TUNNEL
            self._keep_alive = False
            exchange.sink.response_head(status, reason, headers, None)
            exchange.sink.upgraded(self, rest)
            return None
        if status == 101:
            # Switching protocols nobody asked for: whatever follows is not HTTP.
            self._fail(FAIL_PROTOCOL, "upstream switched protocols unasked")
            return None
        if 100 <= status < 200:
            # Interim response (100 Continue, 103 Early Hints): wait for the real one.
            return rest
        if exchange.is_head or status in (204, 304):
            if rest or chunked or length:
                # A body where none can be, or a head that announces one (a
                # HEAD's or a 304's Content-Length may be honest, but an
                # upstream that sends that body anyway, a moment later, would
                # have it read as the next client's response on this
                # connection): the upstream and the gateway may no longer
                # agree where the next response starts, so it is not reused.
                self._discard_after(DISCARD_BODY_AFTER_NO_BODY)
            exchange.body_in_hand = True
            exchange.sink.response_head(status, reason, headers, length)
            if self.exchange is exchange:
                self._response_complete()
            return None
        if length is not None and not chunked and len(rest) >= length:
            # The whole response is in hand (the usual small answer): hand it
            # over and complete here, as the _BODY_LENGTH state would on the
            # next turn of dataReceived's loop (no idle deadline to arm: it
            # ends before anything else can happen).
            exchange.body_in_hand = True
            exchange.sink.response_head(status, reason, headers, length)
            if self.exchange is not exchange:
                return None
            self._state = _BODY_LENGTH
            self._remaining = 0
            if length:
                exchange.sink.response_data(rest if len(rest) == length else rest[:length])
                if self.exchange is not exchange:
                    return None
            if len(rest) > length:
                # Bytes after a complete response: not HTTP we trust.
                self._discard_after(DISCARD_AFTER_CONTENT_LENGTH)
            self._response_complete()
            return None
        exchange.sink.response_head(status, reason, headers, length)
        if self.exchange is not exchange:
            return None
        self.deadline_kind = FAIL_IDLE  # (_arm, spelled out)
        self.deadline = self.pool.clock.seconds() + exchange.idle_timeout
        if chunked:
            self._state = _BODY_CHUNKED
            self._remaining = -1
            return rest
        if length is not None:
            if length == 0:
                if rest:
                    self._discard_after(DISCARD_AFTER_CONTENT_LENGTH)
                self._response_complete()
                return None
            self._state = _BODY_LENGTH
            self._remaining = length
            return rest
        self._state = _BODY_UNTIL_CLOSE
        self._keep_alive = False
        return rest

    def _parse_chunked(self, data: bytes) -> bytes | None:
        exchange = self.exchange
        assert exchange is not None
        self._arm(exchange.idle_timeout, FAIL_IDLE)
        while data:
            if self._remaining > 0:
                piece = data[: self._remaining]
                data = data[self._remaining :]
                self._remaining -= len(piece)
                exchange.sink.response_data(piece)
                if self.exchange is not exchange:
                    return None
                if self._remaining == 0:
                    self._remaining = -2  # expect the CRLF after chunk data
                continue
            end = data.find(b"\r\n")
            if end == -1:
                if len(data) > 4096:
                    self._fail(FAIL_PROTOCOL, "upstream sent a malformed chunk")
                    return None
                self._buffer = data
                return None
            line, data = data[:end], data[end + 2 :]
            if self._remaining == -2:
                if line:
                    self._fail(FAIL_PROTOCOL, "upstream sent a malformed chunk")
                    return None
                self._remaining = -1
                continue
            if self._remaining == -3:
                # Trailer section: ends at an empty line; trailers are dropped.
                if not line:
                    if data:
                        self._discard_after(DISCARD_AFTER_CONTENT_LENGTH)
                    self._response_complete()
                    return None
                name, colon, _ = line.partition(b":")
                self._trailer_bytes += len(line) + 2
                if (
                    not colon
                    or not is_token(name)
                    or line.translate(None, _CONTROLS) != line
                    or self._trailer_bytes > MAX_TRAILER_BYTES
                ):
                    self._fail(FAIL_PROTOCOL, "upstream sent a malformed trailer")
                    return None
                continue
            # 1 to 16 hex digits (no sign, prefix or space), then extensions.
            size_text, _, extensions = line.partition(b";")
            size = parse_hex(size_text)
            if size is None or extensions.translate(None, _CONTROLS) != extensions:
                self._fail(FAIL_PROTOCOL, "upstream sent a malformed chunk size")
                return None
            if size:
                self._remaining = size
            else:
                self._remaining = -3
                self._trailer_bytes = 0
        return None

    def _discard_after(self, reason: str) -> None:
        """Something arrived that no response accounts for: close, not reuse."""
        if self._keep_alive:
            self._keep_alive = False
            self.pool.count_discard(reason)

    def _response_complete(self) -> None:
        self._state = _DONE
        exchange = self.exchange
        assert exchange is not None
        exchange.sink.response_end()
        if self._body_sent:
            self._finish_exchange()
        else:
            # The upstream answered before reading the whole body (an early
            # 413, say): this connection's request framing is now unknowable.
            self._keep_alive = False
            self.abandon()

    def _finish_exchange(self) -> None:
        self.deadline = 0.0  # (_cancel_timer)
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.connection = None
        if self._keep_alive and not self.closed:
            self.reused = True
            if self._reading_paused:
                self.resume_reading()
            self.pool.release(self)
        else:
            self.closed = True
            if self.transport is not None:
                self.transport.loseConnection()

    def _fail(self, why: str, detail: str) -> None:
        exchange = self.exchange
        self.abandon()
        if exchange is not None and not exchange.cancelled:
            exchange.sink.response_failed(why, detail)

    def connectionLost(self, reason: Failure = net_error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.closed = True
        self._cancel_timer()
        self.pool.connection_lost(self)
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        exchange.connection = None
        if exchange.cancelled:
            return
        if self._state == _TUNNEL:
            exchange.sink.response_end()
            return
        if self._state == _BODY_UNTIL_CLOSE:
            exchange.sink.response_end()
            return
        if (
            self._state == _HEAD
            and not self._got_any
            and self.reused
            and exchange.replayable
            and exchange.head[: exchange.head.find(b" ")] in IDEMPOTENT_METHODS
        ):
            # The upstream closed this idle connection just as we reused it;
            # most likely nothing was processed, so an idempotent request is
            # sent again (RFC 9110 9.2.2; a POST or PATCH is not: the upstream
            # may have acted on it before closing, as nginx also assumes).
            exchange.replayable = False
            self.pool.submit(exchange)
            return
        if self._state == _HEAD and not self._got_any and not self.reused:
            # Nothing ever came back on a fresh connection: most often a TLS
            # handshake the upstream's certificate failed. That is "not reachable".
            exchange.sink.response_failed(
                FAIL_CONNECT, f"connection failed before any response: {reason.getErrorMessage()}"
            )
            return
        exchange.sink.response_failed(FAIL_RESET, "upstream closed the connection mid-response")


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: IAddress | None) -> UpstreamConnection:
        return UpstreamConnection(self.pool)


class UpstreamPool:
    """Connections to one upstream: at most ``size``, idle ones reused LIFO."""

    _log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        size: int = 64,
        describe: str = "upstream",
        on_discard: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        # Told the reason each time a connection is closed instead of reused
        # because of bytes no response accounts for (DISCARD_REASONS).
        self.on_discard = on_discard
        self.clock = clock
        self.size = size
        self.describe = describe
        self._idle: list[UpstreamConnection] = []
        self._active: set[UpstreamConnection] = set()
        self._watchdog = LoopingCall(self._check_deadlines)
        self._watchdog.clock = clock
        self._connecting = 0
        self._waiting: deque[Exchange] = deque()
        self._factory = _ConnectionFactory(self)
        self.closed = False

    def count_discard(self, reason: str) -> None:
        self._log.debug(
            "closing a connection to {upstream}: {reason}", upstream=self.describe, reason=reason
        )
        if self.on_discard is not None:
            self.on_discard(reason)

    @property
    def open_connections(self) -> int:
        return len(self._idle) + len(self._active) + self._connecting

    def submit(self, exchange: Exchange) -> None:
        """Send the exchange now on an idle connection, on a new one, or when one frees up."""
        if exchange.cancelled:
            return
        if exchange.upgrade:
            # A WebSocket takes its connection for good: never from or back to the pool.
            self._connect(exchange)
            return
        while self._idle:
            connection = self._idle.pop()
            if connection.closed:
                continue
            connection.pool_state = "busy"  # (_mark_busy and _watch, spelled out)
            self._active.add(connection)
            if not self._watchdog.running:
                self._watchdog.start(WATCHDOG_INTERVAL, now=False)
            connection.start(exchange)
            return
        if self.open_connections < self.size:
            self._connect(exchange)
        else:
            self._waiting.append(exchange)

    def _connect(self, exchange: Exchange) -> None:
        self._connecting += 1
        d = self.endpoint.connect(self._factory)

        def connected(connection: UpstreamConnection) -> None:
            self._connecting -= 1
            if exchange.cancelled:
                connection.pool_state = "gone"
                connection.closed = True
                assert connection.transport is not None
                connection.transport.loseConnection()
                self._dispatch_waiting()
                return
            if exchange.upgrade:
                connection.pool_state = "tunnel"
                connection.start(exchange)
                # Until the 101 arrives, the tunnel's response timeout is
                # still watched; it leaves the watch list when upgraded.
                self._watch(connection)
            else:
                self._mark_busy(connection)
                connection.start(exchange)

        def failed(failure: Failure) -> None:
            self._connecting -= 1
            if not exchange.cancelled:
                exchange.sink.response_failed(FAIL_CONNECT, failure.getErrorMessage())
            self._dispatch_waiting()

        d.addCallbacks(connected, failed)

    def release(self, connection: UpstreamConnection) -> None:
        """A connection finished its exchange and may be reused."""
        self._active.discard(connection)
        connection.pool_state = "idle"
        if self.closed:
            connection.pool_state = "gone"
            connection.closed = True
            if connection.transport is not None:
                connection.transport.loseConnection()
            return
        while self._waiting:
            exchange = self._waiting.popleft()
            if not exchange.cancelled:
                self._mark_busy(connection)
                connection.start(exchange)
                return
        self._idle.append(connection)

    def connection_lost(self, connection: UpstreamConnection) -> None:
        state = connection.pool_state
        connection.pool_state = "gone"
        if state == "idle":
            if connection in self._idle:
                self._idle.remove(connection)
        self._active.discard(connection)
        self._dispatch_waiting()

    def detach(self, connection: UpstreamConnection) -> None:
        """A connection became a WebSocket tunnel: it no longer counts against the pool."""
        self._active.discard(connection)
        connection.pool_state = "tunnel"
        self._dispatch_waiting()

    def _mark_busy(self, connection: UpstreamConnection) -> None:
        connection.pool_state = "busy"
        self._watch(connection)

    def _watch(self, connection: UpstreamConnection) -> None:
        self._active.add(connection)
        if not self._watchdog.running:
            self._watchdog.start(WATCHDOG_INTERVAL, now=False)

    def _check_deadlines(self) -> None:
        if not self._active:
            self._watchdog.stop()
            return
        now = self.clock.seconds()
        for connection in list(self._active):
            connection.check_deadline(now)

    def _dispatch_waiting(self) -> None:
        while self._waiting and self.open_connections < self.size:
            exchange = self._waiting.popleft()
            if not exchange.cancelled:
                self._connect(exchange)

    def close(self) -> None:
        """Stop reusing connections: idle ones close now, busy ones when done."""
        self.closed = True
        for connection in self._idle:
            connection.pool_state = "gone"
            connection.closed = True
            if connection.transport is not None:
                connection.transport.loseConnection()
        self._idle.clear()
