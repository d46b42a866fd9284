"""The per-request pipeline: route by Host, check, forward, stream the answer back.

    client -> GatewayRequest -> GatewayResource.render -> route -> (gate) -> Exchange
           <- ProxiedResponse (an upstream.ResponseSink) <- UpstreamConnection

The gate (login, authorization, identity headers) sits between routing and
forwarding; routes without a login go straight through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from idgateway import observe
from idgateway.forwarding import (
    build_request_head,
    is_websocket_upgrade,
    request_id_from,
    response_headers_to_forward,
)
from idgateway.pages import send_error
from idgateway.paths import AmbiguousPath, PathReading
from idgateway.request import GatewayChannel, GatewayRequest
from idgateway.runtime import GatewayState, RouteRuntime
from idgateway.sessions.cookie import strip_cookies
from idgateway.upstream import (
    FAIL_CONNECT,
    FAIL_IDLE,
    FAIL_TIMEOUT,
    Exchange,
    UpstreamConnection,
)
from idgateway.websocket_frames import CLOSE_POLICY_VIOLATION, FrameBoundaries
from idgateway.websocket_limits import WebSocketSlot, WebSocketSlots


class StateHolder:
    """The one mutable cell: the current GatewayState, replaced whole on reload."""

    def __init__(self, state: GatewayState) -> None:
        self.current = state
        # Open WebSocket tunnels per route (they outlive reloads).
        self.websockets = WebSocketSlots()


class GatewayResource(Resource):
    """The root of every listener's Site: every path is handled here."""

    isLeaf = True
    _log = Logger()

    def __init__(self, holder: StateHolder, *, tls: bool, port: int) -> None:
        super().__init__()
        self.holder = holder
        self.tls = tls
        self.proto = b"https" if tls else b"http"
        self.port_bytes = b"%d" % port

    def render(self, request: GatewayRequest) -> Any:  # type: ignore[override]
        state = self.holder.current
        # observe hook: the access log's settings and clock start.
        request.idgw_logging = state.config.logging
        request.idgw_started = observe.now()
        request_id = request_id_from(request.requestHeaders.getRawHeaders(b"x-request-id"))
        request.request_id = request_id
        hosts = request.requestHeaders.getRawHeaders(b"host")
        if not hosts:
            if request.clientproto == b"HTTP/1.1":
                return self._refuse(request, 400, "HTTP/1.1 requests need a Host header.")
            raw_host = b""
        elif len(hosts) > 1:
            return self._refuse(request, 400, "The request has more than one Host header.")
        else:
            raw_host = hosts[0]
        resolved = state.routes.resolve_host_header(raw_host)
        if resolved is None:
            return self._refuse(
                request, 400, "The Host header is not a valid host name.", error="bad_host"
            )
        # From here on only the normalised host is used: it goes into every URL
        # the gateway builds (redirect_uri, login and logout URLs, X-Forwarded-Host).
        route, host = resolved
        if route is None:
            return self._refuse(
                request, 421, "This gateway serves no site by that name.", error="unknown_host"
            )
        if self.tls:
            sni = request.channel.tls_server_name()  # type: ignore[attr-defined]
            if sni is not None and state.routes.route_for_name(sni) is not route:
                return self._refuse(
                    request,
                    421,
                    "The TLS server name and the Host header name different sites.",
                    error="misdirected_request",
                )
        request.idgw_route = route.name  # observe hook
        runtime = state.runtimes[route.name]
        if not host and (
            request.clientproto != b"HTTP/1.0"
            or runtime.login is not None
            or runtime.bearer is not None
            or route.https_redirect
        ):
            # No host to build a URL with (redirect_uri, https_redirect): an
            # HTTP/1.0 request without Host reaches only plain proxy routes.
            return self._refuse(request, 400, "The request needs a Host header.", error="bad_host")
        uri = request.uri
        if not uri.startswith(b"/"):
            if uri == b"*" and request.method == b"OPTIONS":
                return self._refuse(request, 400, "OPTIONS * is not served here.")
            return self._refuse(request, 400, "The request target must be a path.")
        try:
            reading = runtime.paths.read(request.path)
        except AmbiguousPath as why:
            return self._refuse(
                request,
                400,
                f"The request path cannot be read one way only: {why}.",
                error="ambiguous_path",
            )
        request.idgw_reading = reading
        if route.https_redirect and not self.tls:
            return self._redirect_to_https(request, host, runtime, reading)
        if (request.head_size or _header_bytes(request)) > route.max_header_size:
            return self._refuse(request, 431, "The request headers are too large.")
        body = request.body
        if body is not None and route.max_body_size is not None:
            if body.length is not None and body.length > route.max_body_size:
                return self._refuse(request, 413, "The request body is too large.")
            body.limit = route.max_body_size
        if runtime.login is not None:
            runtime.login.handle(self, request, state, runtime, host)
        elif runtime.bearer is not None:
            runtime.bearer.handle(self, request, state, runtime, host)
        elif runtime.own_cookie is not None and request.requestHeaders.hasHeader(b"cookie"):
            # An open route beside login routes: their session cookies (a shared
            # cookie_domain) must not reach this upstream either.
            cookies = request.requestHeaders.getRawHeaders(b"cookie", [])
            self.forward(
                request, state, runtime, host, cookie=strip_cookies(cookies, runtime.own_cookie)
            )
        else:
            self.forward(request, state, runtime, host)
        return NOT_DONE_YET

    def forward(
        self,
        request: GatewayRequest,
        state: GatewayState,
        runtime: RouteRuntime,
        host: bytes,
        *,
        cookie: bytes | None | bool = True,
        identity: list[tuple[bytes, bytes]] = [],  # noqa: B006 - never mutated
        set_cookies: list[bytes] = [],  # noqa: B006 - never mutated
    ) -> None:
        """Send the request upstream.

        ``cookie`` is the Cookie header to send instead of the client's (None:
        none at all; True: the client's, untouched), ``identity`` the identity
        headers, ``set_cookies`` Set-Cookie values for the response.
        """
        route = runtime.route
        reading = request.idgw_reading
        pool, upstream = runtime.pool_for(reading)
        headers = request.requestHeaders
        connection = headers.getRawHeaders(b"connection")
        upgrade = connection is not None and is_websocket_upgrade(
            connection, headers.getRawHeaders(b"upgrade")
        )
        body = request.body
        if upgrade:
            slot = self.holder.websockets.take(route)
            if slot is None:
                self._refuse(
                    request,
                    503,
                    "Too many WebSocket connections are open on this route "
                    f"(max_websockets: {route.max_websockets}); try again later.",
                    error="too_many_websockets",
                )
                return
            request.idgw_websocket_slot = slot
        chunked = body is not None and body.length is None
        peer = request.client
        client_ip = getattr(peer, "host", None) or "unix"
        # The upstream gets the path the gate judged, and the query unchanged.
        target = request.uri
        if not reading.unchanged:
            target = reading.canonical + target[len(request.path) :]
        if upstream.base_path:
            target = upstream.base_path.encode() + target
        head = build_request_head(
            method=request.method,
            target=target,
            headers=list(headers.getAllRawHeaders()),
            connection=connection,
            host_header=host if route.preserve_host else upstream.host_header_bytes,
            client_ip=client_ip.encode(),
            proto=self.proto,
            port=self.port_bytes,
            original_host=host,
            request_id=request.request_id,
            trusted_peer=state.trusted.trusts(client_ip),
            strip=runtime.strip_headers if cookie is True else runtime.strip_headers_and_cookie,
            strip_prefixes=runtime.strip_prefixes,
            extra=[*identity, (b"Cookie", cookie)] if isinstance(cookie, bytes) else identity,
            body_length=None if body is None else body.length,
            chunked_body=chunked,
            upgrade=b"websocket" if upgrade else None,
        )
        sink = ProxiedResponse(request, runtime, tls=self.tls, set_cookies=set_cookies)
        exchange = Exchange(
            head,
            sink,
            body=body,
            chunked_body=chunked,
            is_head=request.method == b"HEAD",
            upgrade=upgrade and body is None,
            response_timeout=route.response_timeout,
            idle_timeout=route.idle_timeout,
        )
        sink.exchange = exchange
        request.on_disconnect = exchange.cancel
        request.on_body_exceeded = sink.body_too_large
        request.idgw_upstream_started = observe.now()  # observe hook
        pool.submit(exchange)

    def _refuse(
        self, request: GatewayRequest, status: int, detail: str, error: str | None = None
    ) -> Any:
        request.end_response_early()
        send_error(request, status, detail, error=error, request_id=request.request_id)
        return NOT_DONE_YET

    def _redirect_to_https(
        self, request: GatewayRequest, host: bytes, runtime: RouteRuntime, reading: PathReading
    ) -> Any:
        # ``host`` is the normalised Host header and the target its canonical
        # path: "GET @evil.com/" never gets here (400 above).
        name = host.rsplit(b":", 1)[0] if not host.endswith(b"]") else host
        target = reading.canonical + request.uri[len(request.path) :]
        location = b"https://" + name + runtime.https_port_suffix + target
        request.setResponseCode(308)
        request.responseHeaders.setRawHeaders(b"location", [location])
        request.responseHeaders.setRawHeaders(b"content-length", [b"0"])
        request.end_response_early()
        request.finish()
        return NOT_DONE_YET


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


def _header_bytes(request: GatewayRequest) -> int:
    total = len(request.uri) + len(request.method) + 12
    for name, values in request.requestHeaders.getAllRawHeaders():
        for value in values:
            total += len(name) + len(value) + 4
    return total


def _abort_client(request: GatewayRequest) -> None:
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

    # -- upstream.ResponseSink ---------------------------------------------------

    def response_head(
        self,
        status: int,
        reason: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        length: int | None,
    ) -> None:
        request = self.request
        # observe hook: upstream time is the time to the response head.
        request.idgw_upstream_ms = observe.upstream_elapsed_ms(request.idgw_upstream_started)
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
        head = [
            request.clientproto,
            b" %d " % status,
            request.code_message,
            b"\r\n",
            forwarded_header_lines(headers, replace_hsts=hsts is not None),
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
        # One bytes object: the transport would otherwise queue each piece.
        request.channel.write(b"".join(head))
        request.registerProducer(self, True)
        self._producing = True

    def response_data(self, data: bytes) -> None:
        self.request.write(data)

    def response_end(self) -> None:
        request = self.request
        if not self._stop_streaming():
            return
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
            _abort_client(request)
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
            _abort_client(request)
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
        for name, value in self._upgrade_headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        client.writeSequence(head)
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
                tunnel.current_login = _current_login_of(holder, route.name)
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
        _abort_client(self.request)

    def stopProducing(self) -> None:
        if self._stalled:
            self._unwatch_stalled()
        if self.exchange is not None:
            self.exchange.cancel()


def _current_login_of(holder: StateHolder, route: str) -> Callable[[], Any]:
    def current() -> Any:
        runtime = holder.current.runtimes.get(route)
        return None if runtime is None else runtime.login

    return current


_tunnel_log = Logger(namespace="idgateway.proxy.WebSocketTunnel")


class WebSocketTunnel(Protocol):
    """After a 101: bytes both ways, unchanged, each side pacing the other.

    Idle tunnels are closed by the client listener's once-a-second sweep
    (GatewaySite.watch_tunnel): each chunk only sets a flag, the sweep turns
    the flag into a time.
    """

    def __init__(
        self,
        upstream: UpstreamConnection,
        *,
        route: str = "-",
        idle_timeout: float | None = None,
        slot: WebSocketSlot | None = None,
    ) -> None:
        self.upstream = upstream
        self.route = route
        self.idle_timeout = idle_timeout
        self._slot = slot
        self._site: Any = None
        self._active = False
        self._idle_since = 0.0
        # (the route's gate, the session, its Redis id) on routes with a login.
        self.session: tuple[Any, Any, str | None] | None = None
        # The route's gate in the current configuration (None: gone, or no login).
        self.current_login: Callable[[], Any] | None = None
        self._checking = False
        # Frames going to the client, so that a close frame of ours goes between two.
        self._frames = FrameBoundaries()

    def watch_idle(self, site: Any, now: float) -> None:
        if self.idle_timeout is not None and self.transport is not None:
            self._site = site
            self._idle_since = now
            site.watch_tunnel(self)

    def idle_expired(self, now: float) -> bool:
        if self._active:
            self._active = False
            self._idle_since = now
            return False
        return now - self._idle_since >= self.idle_timeout  # type: ignore[operator]

    def close_idle(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()
            self._abort_if_lingering()
        self.upstream.abandon()

    def _abort_if_lingering(self) -> None:
        # A clean close waits for the client to read what is buffered; one that
        # never reads would keep the descriptor and the route's WebSocket slot.
        if self._site is not None:
            self._site.watch_closing(self)

    def session_verdict(self) -> Any:
        """True when the session that opened the tunnel ended; a Deferred for
        Redis sessions (one check in flight per tunnel); False otherwise."""
        if self.session is None or self._checking:
            return False
        login, session, session_id = self.session
        if self.current_login is not None:
            current = self.current_login()
            if current is not login:
                # A reload: the session must still be this route's (same
                # provider, client, keys), and the new max_duration applies.
                if current is None or not current.keeps_sessions_of(login):
                    return True
                self.session = (current, session, session_id)
                login = current
        verdict = login.session_ended(session, session_id)
        if not isinstance(verdict, bool):
            self._checking = True

            def checked(ended: bool) -> bool:
                self._checking = False
                return ended

            def failed(failure: Any) -> bool:
                self._checking = False
                _tunnel_log.failure("checking a WebSocket tunnel's session", failure)
                return False

            verdict.addCallbacks(checked, failed)
        return verdict

    def end_with_session(self) -> None:
        """Close with 1008 (policy violation) between two frames, or cut the
        connection if the upstream is in the middle of one."""
        self.upstream.abandon()
        transport = self.transport
        if transport is None:
            return
        if self._frames.at_boundary:
            transport.write(CLOSE_POLICY_VIOLATION)
            transport.loseConnection()
            self._abort_if_lingering()
        else:
            transport.abortConnection()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        client: ITransport = self.transport  # type: ignore[assignment]
        upstream_transport = self.upstream.transport
        assert upstream_transport is not None
        # Each transport is the other's producer: a full socket on one side
        # stops reads on the other.
        client.registerProducer(upstream_transport, True)  # type: ignore[attr-defined]
        upstream_transport.registerProducer(client, True)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self._active = True
        if self.upstream.transport is not None:
            self.upstream.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._slot is not None:
            slot, self._slot = self._slot, None
            slot.release()
        if self._site is not None:
            self._site.tunnels.discard(self)
            self._site.closing_channels.pop(self, None)
            self._site = None
        self.upstream.abandon()

    # upstream.ResponseSink, for the upstream's side of the tunnel
    def response_data(self, data: bytes) -> None:
        self._active = True
        if self.transport is not None:
            if self.session is not None:
                self._frames.feed(data)
            self.transport.write(data)

    def response_end(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()
            self._abort_if_lingering()

    def response_failed(self, why: str, detail: str) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
