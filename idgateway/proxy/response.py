"""The upstream's answer on its way to the client: status line, headers, streamed body.

``ProxiedResponse`` is the ``upstream.ResponseSink`` of one exchange: it writes
the head once, streams the body with backpressure both ways, and ends or cuts
the client's response when the upstream ends or fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.http import NO_BODY_CODES
from zope.interface import implementer

from idgateway.observe import access_log as observe
from idgateway.proxy.headers import (
    response_headers_to_forward,
)
from idgateway.proxy.upstream import (
    FAIL_CONNECT,
    FAIL_IDLE,
    FAIL_TIMEOUT,
    Exchange,
    UpstreamConnection,
)
from idgateway.proxy.websocket_tunnel import WebSocketTunnel, current_login_of
from idgateway.routing.state import RouteRuntime
from idgateway.server.answers import send_error
from idgateway.server.channel import GatewayChannel, GatewayRequest

# An HTTP/2 request's clientproto (server.h2_connection.HTTP_2).
HTTP_2 = b"HTTP/2"

# The header lines forwarded for an upstream head, by the identity of its
# (immutable, shared) parsed headers: see upstream._RESPONSE_HEADS.
_FORWARDED_LINES: dict[tuple[int, bool], tuple[Sequence[tuple[bytes, bytes]], bytes]] = {}


_FORWARDED_LINES_MAX = 256


def forwarded_header_lines(headers: Sequence[tuple[bytes, bytes]], *, replace_hsts: bool) -> bytes:
    """The upstream's end-to-end headers as lines for the client's response.

    With ``replace_hsts`` the application's Strict-Transport-Security is left
    out: the route's own policy replaces it.
    """
    key = (id(headers), replace_hsts)
    known = _FORWARDED_LINES.get(key)
    if known is not None and known[0] is headers:
        return known[1]
    lines: list[bytes] = []
    for name, value in response_headers_to_forward(headers):
        if replace_hsts and name.lower() == b"strict-transport-security":
            continue
        lines += (name, b": ", value, b"\r\n")
    block = b"".join(lines)
    if isinstance(headers, tuple):  # shared parsed heads only; a list may change
        if len(_FORWARDED_LINES) >= _FORWARDED_LINES_MAX:
            _FORWARDED_LINES.clear()
        _FORWARDED_LINES[key] = (headers, block)
    return block


def h2_header_pairs(
    headers: Sequence[tuple[bytes, bytes]], *, replace_hsts: bool
) -> list[tuple[bytes, bytes]]:
    """The upstream's end-to-end headers for an HTTP/2 response (lower-case names).

    A new list each time: the caller appends the gateway's own headers.
    """
    key = (id(headers), replace_hsts)
    known = _H2_PAIRS.get(key)
    if known is not None and known[0] is headers:
        return list(known[1])
    pairs = []
    for name, value in response_headers_to_forward(headers):
        lower = name.lower()
        if replace_hsts and lower == b"strict-transport-security":
            continue
        pairs.append((lower, value))
    if isinstance(headers, tuple):  # shared parsed heads only, as above
        if len(_H2_PAIRS) >= _FORWARDED_LINES_MAX:
            _H2_PAIRS.clear()
        _H2_PAIRS[key] = (headers, tuple(pairs))
    return pairs


_H2_PAIRS: dict[tuple[int, bool], tuple[Sequence[tuple[bytes, bytes]], tuple[Any, ...]]] = {}


def abort_client(request: GatewayRequest) -> None:
    """Cut the client off (RST): a truncated body must not look complete."""
    transport = request.channel.transport
    if transport is not None:
        transport.abortConnection()  # type: ignore[attr-defined]


@implementer(IPushProducer)
class ProxiedResponse:
    """Streams one upstream response to the client; the client's pace sets the upstream's."""

    _log = Logger()

    def __init__(
        self,
        request: GatewayRequest,
        runtime: RouteRuntime,
        *,
        tls: bool,
        set_cookies: list[bytes] = [],  # noqa: B006 - never mutated
    ) -> None:
        self.request = request
        self.set_cookies = set_cookies
        self.runtime = runtime
        self.tls = tls
        self.exchange: Exchange | None = None
        self._producing = False
        # Watched by the site for client_send_timeout (the client stopped reading).
        self._stalled = False
        self._upgrade_headers: Sequence[tuple[bytes, bytes]] = ()
        # A head kept by response_head to go out with the body in hand (see
        # there). (An instance attribute: a class attribute read through an
        # instance is looked up the slow way on every read.)
        self._head_pending: bytes | None = None

    # -- upstream.ResponseSink ---------------------------------------------------

    def response_head(
        self,
        status: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        length: int | None,
    ) -> None:
        request = self.request
        # observe hook: upstream time is the time to the response head, in
        # ms, not rounded here: the access line writes it to 0.1 ms (":.1f",
        # the digits round() would keep), and a round() to 0.1 and the float's
        # repr in the line were two decimal conversions per request.
        started = request.idgw_upstream_started
        request.idgw_upstream_ms = None if started is None else (observe.now() - started) * 1000
        if status == 101:
            self._upgrade_headers = headers
            return
        if request.client_gone:
            return
        request.setResponseCode(status, reason or None)
        if length == 0 or status in NO_BODY_CODES or request.method == b"HEAD":
            # The answer is complete with its head: if the request body is
            # not, say Connection: close in this head (as response_end would).
            request.end_response_early()
        # The head goes out as the upstream sent it (minus hop-by-hop headers)
        # plus the gateway's own, written here in one piece: converting every
        # header into twisted.web's Headers and back cost more than the rest of
        # the response. The upstream parser has already refused heads with a
        # header name that is not a token, or a CR, LF or NUL out of place.
        hsts = self.runtime.hsts_header if self.tls else None
        exchange = self.exchange
        # The whole body is in hand and comes next (response_data, in this
        # same call from the upstream's read): the head goes out with it in
        # one write, one trip through the channel and the transport instead of
        # two (the bytes sent are the same).
        body_follows = bool(
            length
            and exchange is not None
            and exchange.body_in_hand
            and not exchange.is_head
            and status not in NO_BODY_CODES
        )
        if request.clientproto == HTTP_2:
            self._h2_head(request, status, headers, length, hsts, body_follows)
            return
        # (forwarded_header_lines, its usual answer looked up here)
        known = _FORWARDED_LINES.get((id(headers), hsts is not None))
        head = [
            request.clientproto,
            b" %d " % status,
            request.code_message,
            b"\r\n",
            known[1]
            if known is not None and known[0] is headers
            else forwarded_header_lines(headers, replace_hsts=hsts is not None),
        ]
        if length is not None:
            head += (b"Content-Length: %d\r\n" % length,)
        elif (
            request.clientproto == b"HTTP/1.1"
            and request.method != b"HEAD"
            and status not in NO_BODY_CODES
        ):
            # No length from the upstream: chunk it, so the connection can be
            # kept (as twisted.web does).
            head.append(b"Transfer-Encoding: chunked\r\n")
            request.chunked = 1
        if hsts is not None:
            head += (b"Strict-Transport-Security: ", hsts, b"\r\n")
        for value in self.set_cookies:
            head += (b"Set-Cookie: ", value, b"\r\n")
        # Set by the channel before the answer: Connection: close.
        for name, values in request.responseHeaders.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        request.startedWriting = 1
        if body_follows:
            self._head_pending = b"".join(head)
            return
        # One bytes object: the transport would otherwise queue each piece.
        request.channel.write(b"".join(head))
        if exchange is None or not exchange.body_in_hand:  # (see _start_streaming)
            self._start_streaming(request)

    def _start_streaming(self, request: GatewayRequest) -> None:
        """Take part in flow control both ways, unless the whole answer is in hand.

        A response that came in one read with its whole body (the usual small
        answer) ends within this call: registering as the client's producer
        only to unregister again would change nothing.
        """
        exchange = self.exchange
        if exchange is not None and exchange.body_in_hand:
            return
        request.registerProducer(self, True)
        self._producing = True

    def _h2_head(
        self,
        request: GatewayRequest,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        length: int | None,
        hsts: bytes | None,
        body_follows: bool,
    ) -> None:
        """The same head as HTTP/1.1's, as one HEADERS frame (lower-case names)."""
        pairs = h2_header_pairs(headers, replace_hsts=hsts is not None)
        if length is not None:
            pairs.append((b"content-length", b"%d" % length))
        if hsts is not None:
            pairs.append((b"strict-transport-security", hsts))
        for value in self.set_cookies:
            pairs.append((b"set-cookie", value))
        for name, values in request.responseHeaders.getAllRawHeaders():
            for value in values:
                pairs.append((name.lower(), value))
        request.startedWriting = 1
        request.channel.write_response_head(  # type: ignore[attr-defined]
            status, pairs, body_follows=body_follows
        )
        self._start_streaming(request)

    def response_data(self, data: bytes) -> None:
        request = self.request
        if request.startedWriting and not (
            request.chunked or request.finished or request.client_gone
        ):
            # What Request.write does once the head is out and the body is
            # not chunked, without its two frames per piece.
            request.sentLength += len(data)
            pending = self._head_pending
            if pending is not None:
                self._head_pending = None
                request.channel.write(pending + data)
            elif data:
                request.channel.write(data)
            return
        self._write_pending_head()
        request.write(data)

    def _write_pending_head(self) -> None:
        """The head response_head kept for the body that was to follow, sent
        now (nothing came with it, or after all not as expected)."""
        pending = self._head_pending
        if pending is not None:
            self._head_pending = None
            request = self.request
            if not (request.finished or request.client_gone):
                request.channel.write(pending)

    def response_end(self) -> None:
        request = self.request
        if self._head_pending is not None:
            self._write_pending_head()
        if self._producing or self._stalled:
            if not self._stop_streaming():
                return
        else:
            # (_stop_streaming, for an answer that never had to stream)
            self.exchange = None
            if request.client_gone or request.finished:
                return
        body = request.body
        if body is not None and not body.complete:
            request.end_response_early()
        request.finish()

    def _stop_streaming(self) -> bool:
        """Detach from the client; True if an answer can still be sent."""
        request = self.request
        if self._producing:
            self._producing = False
            request.unregisterProducer()
        if self._stalled:
            self._unwatch_stalled()
        # The exchange points back here (its sink): no cycle left to collect.
        self.exchange = None
        return not (request.client_gone or request.finished)

    def response_failed(self, why: str, detail: str) -> None:
        request = self.request
        if not self._stop_streaming():
            return
        if request.startedWriting:
            # Never end a half-sent response in a way that looks complete.
            self._log.warn(
                "upstream {upstream} failed mid-response ({why}: {detail}); aborting client",
                upstream=self.runtime.route.name,
                why=why,
                detail=detail,
            )
            abort_client(request)
            return
        if why == FAIL_TIMEOUT or why == FAIL_IDLE:
            status, message = 504, "The application did not answer in time."
        elif why == FAIL_CONNECT:
            status, message = 502, "The application is not reachable right now."
        else:
            status, message = 502, "The application gave an invalid answer."
        self._log.warn(
            "route {route}: upstream failed ({why}: {detail}) -> {status} [{request_id}]",
            route=self.runtime.route.name,
            why=why,
            detail=detail,
            status=status,
            request_id=request.request_id.decode(),
        )
        request.end_response_early()
        send_error(request, status, message, error="upstream_" + why, request_id=request.request_id)

    def body_too_large(self) -> None:
        if self.exchange is not None:
            self.exchange.cancel()
        request = self.request
        if not self._stop_streaming():
            return
        if request.startedWriting:
            abort_client(request)
            return
        request.end_response_early()
        send_error(request, 413, "The request body is too large.", request_id=request.request_id)

    def upgraded(self, connection: UpstreamConnection, leftover: bytes) -> None:
        request = self.request
        channel: GatewayChannel = request.channel  # type: ignore[assignment]
        if request.client_gone or channel.transport is None:
            connection.abandon()
            return
        client = channel.transport
        head = [b"HTTP/1.1 101 Switching Protocols\r\n"]
        # Over TLS the route's HSTS goes out on a 101 as on any other answer
        # (the application's own is replaced, as response_head does).
        hsts = self.runtime.hsts_header if self.tls else None
        for name, value in self._upgrade_headers:
            if hsts is not None and name.lower() == b"strict-transport-security":
                continue
            head += (name, b": ", value, b"\r\n")
        if hsts is not None:
            head += (b"Strict-Transport-Security: ", hsts, b"\r\n")
        # The gate's cookies go out here as on any answer: a refresh done for
        # this upgrade rotated the session's refresh token, and a browser whose
        # only traffic is WebSockets would otherwise keep the pre-refresh cookie
        # and be signed out once the refresh grace ends (WSO2 refuses the old
        # refresh token). Browsers store cookies set on a handshake's 101.
        for value in self.set_cookies:
            head += (b"Set-Cookie: ", value, b"\r\n")
        head.append(b"\r\n")
        client.writeSequence(head)
        # The upgrade gets its access line now, as the request it was: the
        # tunnel that follows may last for hours, and its request is never
        # finished (which is when twisted.web logs one).
        request.code = 101
        request.code_message = b"Switching Protocols"
        observe.log_access(request)
        pending = channel.take_unparsed_bytes()
        channel.setTimeout(None)
        route = self.runtime.route
        tunnel = WebSocketTunnel(
            connection,
            route=route.name,
            idle_timeout=route.websocket_idle_timeout,
            slot=request.idgw_websocket_slot,
        )
        if request.idgw_login is not None:
            # The tunnel ends with the session that opened it, judged by the
            # route's gate of the configuration in force (reloads included).
            tunnel.session = (request.idgw_login, request.idgw_session, request.idgw_session_id)
            holder = getattr(getattr(request.site, "resource", None), "holder", None)
            if holder is not None:
                tunnel.current_login = current_login_of(holder, route.name)
        # The tunnel gives the slot back when it closes, not the request.
        request.idgw_websocket_slot = None
        exchange = connection.exchange
        if exchange is not None:
            exchange.sink = tunnel  # type: ignore[assignment]
        client.unregisterProducer()  # type: ignore[attr-defined]
        channel.switch_to_tunnel(tunnel)
        site = getattr(channel, "site", None)
        if site is not None and hasattr(site, "watch_tunnel"):
            tunnel.watch_idle(site, site.reactor.seconds())
        if leftover:
            tunnel.response_data(leftover)
        if pending:
            tunnel.dataReceived(pending)

    # -- IPushProducer: the client's socket is full, or drained --------------------

    def pauseProducing(self) -> None:
        if self.exchange is not None and self.exchange.connection is not None:
            self.exchange.connection.pause_reading()
        # The client stopped reading: it has client_send_timeout to start again.
        site = getattr(self.request.channel, "site", None)
        if site is not None and hasattr(site, "watch_stalled"):
            site.watch_stalled(self)
            self._stalled = True

    def resumeProducing(self) -> None:
        if self.exchange is not None and self.exchange.connection is not None:
            self.exchange.connection.resume_reading()
        self._unwatch_stalled()

    def _unwatch_stalled(self) -> None:
        if not self._stalled:
            return
        self._stalled = False
        site = getattr(self.request.channel, "site", None)
        stalled = getattr(site, "stalled", None)
        if stalled:
            stalled.pop(self, None)

    def send_timed_out(self) -> None:
        """client_send_timeout: the client left the response unread too long."""
        if self.exchange is not None:
            self.exchange.cancel()
        abort_client(self.request)

    def stopProducing(self) -> None:
        if self._stalled:
            self._unwatch_stalled()
        if self.exchange is not None:
            self.exchange.cancel()


_new_response = object.__new__


def new_proxied_response(
    request: GatewayRequest, runtime: RouteRuntime, tls: bool, set_cookies: list[bytes]
) -> ProxiedResponse:
    """``ProxiedResponse(request, runtime, tls=..., set_cookies=...)``, the
    proxy's call on every request, without a class call's two trips through C
    (see upstream.new_exchange). Sets what ``__init__`` sets
    (tests/unit/test_proxied_response.py compares the two)."""
    sink: ProxiedResponse = _new_response(ProxiedResponse)
    sink.request = request
    sink.set_cookies = set_cookies
    sink.runtime = runtime
    sink.tls = tls
    sink.exchange = None
    sink._producing = False
    sink._stalled = False
    sink._upgrade_headers = ()
    sink._head_pending = None
    return sink
