"""The per-request pipeline: route by Host, check, forward, stream the answer back.

    client -> GatewayRequest -> GatewayResource.render -> route -> (gate) -> Exchange
           <- ProxiedResponse (an upstream.ResponseSink) <- UpstreamConnection

The gate (login, authorization, identity headers) sits between routing and
forwarding; routes without a login go straight through.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from idgateway.gate import bearer_endpoints, endpoints
from idgateway.gate.jwks import JWKS_PATH, send_jwks
from idgateway.http.paths import AmbiguousPath, PathReading
from idgateway.http.syntax import REQUEST_TARGET_CHARS
from idgateway.observe import access_log as observe
from idgateway.proxy.headers import (
    is_websocket_upgrade,
    new_request_id,
    request_head,
    request_id_from,
)
from idgateway.proxy.response import new_proxied_response
from idgateway.proxy.upstream import new_exchange
from idgateway.routing.state import GatewayState, RouteRuntime, StateHolder
from idgateway.server.answers import send_error
from idgateway.server.channel import GatewayRequest
from idgateway.sessions.cookie import strip_cookies


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
        incoming_id = request.requestHeaders.getRawHeaders(b"x-request-id")
        # (request_id_from's answer without one, the usual case, asked here)
        request_id = request_id_from(incoming_id) if incoming_id else new_request_id()
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
        if uri.translate(None, REQUEST_TARGET_CHARS):
            # Every parser in front checks the target, but twisted.web's (the
            # HTTP/1.1 fallback) lets DEL and 0x80-0xB0 through: forwarded
            # verbatim, a byte such as 0x85 is whitespace to some upstreams.
            return self._refuse(request, 400, "The request target has a byte it may not have.")
        if request.method == b"CONNECT":
            # A gateway, not a forward proxy: no tunnel to anywhere (nginx, too,
            # refuses CONNECT), whatever the target.
            return self._refuse(request, 405, "CONNECT is not served here.")
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
        if JWKS_PATH in reading.matched:
            # The gateway's own: no login, public path, sub-route or upstream may
            # answer it in its place, under any reading of the path.
            send_jwks(request, state.assertion_keys)
            return NOT_DONE_YET
        body = request.body
        if body is not None and route.max_body_size is not None:
            if body.length is not None and body.length > route.max_body_size:
                return self._refuse(request, 413, "The request body is too large.")
            body.limit = route.max_body_size
        login, bearer = runtime.login, runtime.bearer
        if bearer is not None and (login is None or bearer.claims_request(request, reading.text)):
            # A token (or a token-only route): judged as a token, never as a session.
            bearer_endpoints.serve(bearer, self, request, state, runtime, host)
        elif login is not None:
            text = reading.texts[0]  # (reading.text, without the property's call)
            if text.startswith("/oauth2/") or text == login.redirect_path:
                endpoints.dispatch(login, self, request, state, runtime, host, text)
            else:
                login.handle(self, request, state, runtime, host)
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
        identity_lines: bytes = b"",
    ) -> None:
        """Send the request upstream.

        ``cookie`` is the Cookie header to send instead of the client's (None:
        none at all; True: the client's, untouched), ``identity`` the identity
        headers (or ``identity_lines``, the same as ``header_lines`` wrote
        them, after them), ``set_cookies`` Set-Cookie values for the response.
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
        trusted = state.trusted
        # (build_request_head's arguments, in request_head's order)
        head = request_head(
            request.method,
            target,
            # (read once through, the Connection header being at hand)
            headers.getAllRawHeaders(),
            connection,
            host if route.preserve_host else upstream.host_header_bytes,  # host_header
            client_ip.encode(),
            self.proto,
            self.port_bytes,
            host,  # original_host
            request.request_id,
            # trusted_peer (trusts() is False without trusted proxies: the usual
            # case, asked here)
            bool(trusted.networks) and trusted.trusts(client_ip),
            # strip, strip_prefixes
            runtime.strip_headers if cookie is True else runtime.strip_headers_and_cookie,
            runtime.strip_prefixes,
            identity,  # extra
            identity_lines,  # extra_lines
            cookie if isinstance(cookie, bytes) else None,  # cookie
            None if body is None else body.length,  # body_length
            chunked,  # chunked_body
            b"websocket" if upgrade else None,  # upgrade
        )
        # (ProxiedResponse(...) and Exchange(...), their arguments in order)
        sink = new_proxied_response(request, runtime, self.tls, set_cookies)
        exchange = new_exchange(
            head,
            sink,
            body,
            chunked,  # chunked_body
            request.method == b"HEAD",  # is_head
            upgrade and body is None,  # upgrade
            route.response_timeout,
            route.idle_timeout,
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


def _header_bytes(request: GatewayRequest) -> int:
    total = len(request.uri) + len(request.method) + 12
    for name, values in request.requestHeaders.getAllRawHeaders():
        for value in values:
            total += len(name) + len(value) + 4
    return total
