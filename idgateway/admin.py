"""The admin listener: liveness and readiness, kept off the public listeners.

``GET /healthz``: the process answers (always 200 while it runs).
``GET /readyz``: 200 when every provider has been discovered and every Redis
is reachable, else 503; JSON with the detail per route either way.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from idgateway.proxy import StateHolder


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
        else:
            detail["ready"] = True
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
        async def answer() -> None:
            ready, detail = await readiness(self.holder)
            if request._disconnected:
                return
            body = json.dumps(detail, indent=2).encode() + b"\n"
            request.setResponseCode(200 if ready else 503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.write(body)
            request.finish()

        defer.ensureDeferred(answer())
        return NOT_DONE_YET


def admin_site(holder: StateHolder) -> Site:
    root = Resource()
    root.putChild(b"healthz", _Health())
    root.putChild(b"readyz", _Ready(holder))
    site = Site(root)
    site.noisy = False
    return site
