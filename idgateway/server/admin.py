"""The admin listener: liveness and readiness, kept off the public listeners.

``GET /healthz``: the process answers (always 200 while it runs).
``GET /readyz``: 200 when every provider has been discovered and every Redis
is reachable, else 503; JSON with the detail per route either way.
``GET /metrics``: Prometheus text exposition of ``idgateway.observe.metrics``.
``GET /status``: a read-only status page (routes, providers, TLS certificates,
session stores, config file, reloads): JSON for ``Accept: application/json``
or ``?format=json``, else HTML. No secrets: no client secrets, no Redis URLs.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from idgateway.config.values import mask_credentials
from idgateway.gate.jwks import JwksResource
from idgateway.observe.metrics import METRICS, GatewayMetrics
from idgateway.oidc.logout_paths import logout_paths
from idgateway.routing.state import StateHolder
from idgateway.server.tls import certificate_expiry


async def readiness(holder: StateHolder) -> tuple[bool, dict[str, Any]]:
    state = holder.current
    # A hung Redis keeps its connections open: only an answered PING counts.
    reachable = {settings: await client.ping() for settings, client in state.redis_clients.items()}
    providers = {
        settings.name: {
            "ready": handle.client.ready,
            "error": None if handle.client.ready else handle.client.last_error,
        }
        for settings, handle in state.providers.items()
    }
    redis = {
        client.description: {
            "ready": reachable[settings],
            "error": None if reachable[settings] else client.last_error,
        }
        for settings, client in state.redis_clients.items()
    }
    routes: dict[str, Any] = {}
    for name, runtime in state.runtimes.items():
        detail: dict[str, Any] = {"login": runtime.login is not None}
        if runtime.login is not None:
            login = runtime.login
            detail["provider"] = login.provider.settings.name
            detail["provider_ready"] = login.provider.client.ready
            detail["session_store"] = "redis" if login.store is not None else "cookie"
            ready = login.provider.client.ready
            session_redis = login.auth.session.redis
            if session_redis is not None:
                detail["redis_ready"] = reachable.get(session_redis, False)
                ready = ready and detail["redis_ready"]
            detail["ready"] = ready
        elif runtime.bearer is not None:
            # A token-only route cannot check a token before its provider's keys
            # and endpoints are known.
            handle = runtime.bearer.provider
            detail["provider"] = handle.settings.name
            detail["provider_ready"] = detail["ready"] = handle.client.ready
        else:
            detail["ready"] = True
        detail["bearer"] = runtime.bearer is not None
        routes[name] = detail
    ready = all(r["ready"] for r in routes.values()) and all(r["ready"] for r in redis.values())
    return ready, {"ready": ready, "routes": routes, "providers": providers, "redis": redis}


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n"


class _Ready(Resource):
    isLeaf = True

    def __init__(self, holder: StateHolder) -> None:
        super().__init__()
        self.holder = holder

    def render_GET(self, request: Request) -> Any:
        gone = client_gone_test(request)

        async def answer() -> None:
            ready, detail = await readiness(self.holder)
            if gone():
                return
            body = json.dumps(detail, indent=2).encode() + b"\n"
            request.setResponseCode(200 if ready else 503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.write(body)
            request.finish()

        defer.ensureDeferred(answer())
        return NOT_DONE_YET


class _Metrics(Resource):
    isLeaf = True

    def __init__(
        self, metrics: GatewayMetrics, gather: Callable[[], Awaitable[bytes]] | None = None
    ) -> None:
        super().__init__()
        self.metrics = metrics
        # With several workers: every worker's figures (idgateway.workers.metrics).
        self.gather = gather

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        if self.gather is None:
            return generate_latest(self.metrics.registry)
        gather = self.gather
        gone = client_gone_test(request)

        async def answer() -> None:
            body = await gather()
            if not gone():
                request.write(body)
                request.finish()

        defer.ensureDeferred(answer()).addErrback(lambda failure: _failed(request, failure, gone))
        return NOT_DONE_YET


async def status(holder: StateHolder, service: Any = None) -> dict[str, Any]:
    """What the gateway runs: routes, providers, certificates, session stores."""
    state = holder.current
    config = state.config
    reachable = {settings: await client.ping() for settings, client in state.redis_clients.items()}
    routes = []
    for route in config.routes:
        auth = route.auth
        store = None
        if auth is not None:
            store = auth.session.store
            redis = auth.session.redis
            store_client = state.redis_clients.get(redis) if redis is not None else None
            if store_client is not None:
                store = f"{store} ({store_client.description})"
        routes.append(
            {
                "name": route.name,
                "hosts": list(route.hosts),
                "default": route.default,
                "upstream": route.upstream.url,
                "paths": {sub.prefix: sub.upstream.url for sub in route.paths},
                "provider": None if auth is None else auth.oidc.provider,
                "session_store": store,
                # Which provider logout paths can end this route's sessions,
                # from the provider's discovery document (idgateway.oidc.logout_paths).
                "logout": None if auth is None else _logout_paths(state, route.name, auth),
                # Bearer tokens (idgateway.gate.bearer): which kinds, from which provider.
                "bearer": None
                if route.bearer is None
                else (
                    f"{route.bearer.settings.provider}: "
                    f"{', '.join(route.bearer.settings.tokens)}; dpop {route.bearer.settings.dpop}"
                ),
            }
        )
    providers = []
    for settings, handle in state.providers.items():
        provider = handle.client
        metadata = provider.metadata
        providers.append(
            {
                "name": settings.name,
                "issuer": mask_credentials(
                    metadata.issuer if metadata is not None else settings.issuer or ""
                )
                or None,
                "discovery_url": mask_credentials(settings.discovery_url or "") or None,
                "ready": provider.ready,
                "last_error": provider.last_error,
            }
        )
    certificates = []
    for listener in config.listeners:
        if listener.tls is None:
            continue
        for pair in listener.tls.certificates:
            try:
                expires: str | None = certificate_expiry(pair).isoformat()
                error = None
            except Exception as problem:  # an unreadable file: say so, keep the page
                expires, error = None, str(problem)
            certificates.append(
                {
                    "listener": f"{listener.host}:{listener.port}",
                    "cert": pair.cert,
                    "hostnames": list(pair.hostnames),
                    "expires": expires,
                    "error": error,
                }
            )
    session_stores = [
        {
            "redis": client.description,
            "reachable": reachable[settings],
            "last_error": None if reachable[settings] else client.last_error,
        }
        for settings, client in state.redis_clients.items()
    ]
    return {
        "config_file": config.source,
        # The reload count lives on the service (None when admin_site was not given it).
        "reloads": getattr(service, "reloads", None),
        "routes": routes,
        "providers": providers,
        "certificates": certificates,
        "session_stores": session_stores,
        # Which key signs identity assertions now, and which are published (rollovers).
        "assertion_keys": [
            {"path": key.path, "kid": key.kid, "alg": key.alg, "signs": index == 0}
            for index, key in enumerate(state.assertion_keys.keys)
        ],
    }


def _logout_paths(state: Any, route: str, auth: Any) -> dict[str, str]:
    runtime = state.runtimes.get(route)
    login = runtime.login if runtime is not None else None
    metadata = login.provider.client.metadata if login is not None else None
    return logout_paths(metadata, auth.oidc)


def _wants_json(request: Request) -> bool:
    if request.args.get(b"format") == [b"json"]:
        return True
    accept = request.getHeader(b"accept") or b""
    return b"application/json" in accept


def _cell(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, list):
        value = ", ".join(str(each) for each in value)
    elif isinstance(value, dict):
        value = ", ".join(f"{key} \u2192 {item}" for key, item in value.items())
    return html.escape(str(value))


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"<h2>{html.escape(title)}</h2><p>None.</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(key)}</th>" for key in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row[key])}</td>" for key in keys) + "</tr>" for row in rows
    )
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def status_html(detail: dict[str, Any]) -> bytes:
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>idgateway status</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style></head><body>",
        "<h1>idgateway status</h1>",
        f"<p>Config file: {_cell(detail['config_file'])}; reloads: {_cell(detail['reloads'])}</p>",
        _table("Routes", detail["routes"]),
        _table("Providers", detail["providers"]),
        _table("TLS certificates", detail["certificates"]),
        _table("Session stores", detail["session_stores"]),
        _table("Assertion keys", detail.get("assertion_keys", [])),
        "</body></html>",
    ]
    return "".join(parts).encode()


class _Status(Resource):
    isLeaf = True

    def __init__(self, holder: StateHolder, service: Any) -> None:
        super().__init__()
        self.holder = holder
        self.service = service

    def render_GET(self, request: Request) -> Any:
        gone = client_gone_test(request)

        async def answer() -> None:
            detail = await status(self.holder, self.service)
            if gone():
                return
            if _wants_json(request):
                body = json.dumps(detail, indent=2).encode() + b"\n"
                request.setHeader(b"content-type", b"application/json")
            else:
                body = status_html(detail)
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            request.write(body)
            request.finish()

        d = defer.ensureDeferred(answer())
        d.addErrback(lambda failure: _failed(request, failure, gone))
        return NOT_DONE_YET


def client_gone_test(request: Request) -> Callable[[], bool]:
    """A test of whether ``request``'s client went away (Request.notifyFinish)."""
    gone = False

    def lost(_failure: Any) -> None:
        nonlocal gone
        gone = True

    request.notifyFinish().addErrback(lost)
    return lambda: gone


def _failed(request: Request, failure: Any, gone: Callable[[], bool]) -> None:
    from twisted.logger import Logger

    Logger(namespace="idgateway.server.admin").failure("status page failed", failure)
    if not request.finished and not gone():
        request.setResponseCode(500)
        request.write(b"status unavailable\n")
        request.finish()


def bind_metrics(
    metrics: GatewayMetrics,
    holder: StateHolder,
    service: Any = None,
    *,
    connections: Callable[[], int] | None = None,
    websockets: Callable[[], dict[str, int]] | None = None,
) -> None:
    """Point ``metrics``' scrape-time values at ``holder`` and ``service``'s listeners."""
    if connections is None and service is not None:
        sites = getattr(service, "_drain_sites", None)
        if sites is not None:
            connections = lambda: sum(len(site.connections) for site in sites)  # noqa: E731
    if websockets is None and service is not None:
        websockets = getattr(service, "open_websockets", None)
    metrics.bind(holder, connections, websockets)


def admin_site(
    holder: StateHolder,
    service: Any = None,
    *,
    metrics: GatewayMetrics = METRICS,
    connections: Callable[[], int] | None = None,
    websockets: Callable[[], dict[str, int]] | None = None,
    reactor: Any = None,
) -> Site:
    """The admin Site. ``service`` (a GatewayService), when given, supplies the
    reload count, the open client connections and WebSocket tunnels of its
    listeners and, in worker 0, the other workers' metrics (``gather_metrics``)."""
    bind_metrics(metrics, holder, service, connections=connections, websockets=websockets)
    root = Resource()
    root.putChild(b"healthz", _Health())
    root.putChild(b"readyz", _Ready(holder))
    root.putChild(b"metrics", _Metrics(metrics, getattr(service, "gather_metrics", None)))
    root.putChild(b"status", _Status(holder, service))
    root.putChild(b".well-known", JwksResource(lambda: holder.current.assertion_keys))
    site = AdminSite(root, reactor=reactor)
    site.noisy = False
    return site


# The admin listener serves a scraper and a few people: a handful of
# connections, each short. Without limits, idle or trickling connections to it
# would use up the descriptors the public listeners need.
ADMIN_MAX_CONNECTIONS = 64
# A connection's whole life (keep-alive included): scrapers reconnect.
ADMIN_CONNECTION_LIFETIME = 60.0
ADMIN_IDLE_TIMEOUT = 15.0


class _AdminChannel(HTTPChannel):
    _lifetime: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        site: AdminSite = self.site  # type: ignore[attr-defined]
        site.open.add(self)
        self._lifetime = site.reactor.callLater(ADMIN_CONNECTION_LIFETIME, self._expired)

    def _expired(self) -> None:
        self._lifetime = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = connectionDone) -> None:
        if self._lifetime is not None and self._lifetime.active():
            self._lifetime.cancel()
        self._lifetime = None
        self.site.open.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)


class AdminSite(Site):
    """The admin listener's Site: at most ADMIN_MAX_CONNECTIONS connections
    (more are closed at accept), each for at most ADMIN_CONNECTION_LIFETIME
    seconds, idle for at most ADMIN_IDLE_TIMEOUT."""

    protocol = _AdminChannel  # type: ignore[assignment]

    def __init__(self, resource: Resource, reactor: Any = None) -> None:
        super().__init__(resource, timeout=ADMIN_IDLE_TIMEOUT, reactor=reactor)
        self.open: set[_AdminChannel] = set()

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.open) >= ADMIN_MAX_CONNECTIONS:
            return None  # closed at once by the port
        return super().buildProtocol(addr)
