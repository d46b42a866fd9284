"""One route's login gate (``RouteLogin``) for tests, built in memory.

The state builder gives every gate the gateway's one revocation list; a gate
built here gets a list of its own (this process only), unless the test hands
it one: a gate without revocation checks cannot be built.
"""

from __future__ import annotations

from typing import Any

import attrs

from idgateway.config.model import ProviderSettings, Route, RouteAuth, Upstream
from idgateway.gate.session_check import ProviderHandle, RouteLogin
from idgateway.oidc.provider import ProviderMetadata
from idgateway.sessions.revocation import RevocationList

ISSUER = "https://op/oauth2/token"

# The route of the gate tests: app1.localhost, an upstream nobody calls.
APP1 = Route(
    name="app1",
    hosts=("app1.localhost",),
    upstream=Upstream(url="http://127.0.0.1:1", kind="http", host="127.0.0.1", port=1),
)


class FakeProvider:
    """A provider whose discovery has answered (the gate tests never call it)."""

    metadata = ProviderMetadata(
        issuer=ISSUER,
        authorization_endpoint="https://op/oauth2/authorize",
        token_endpoint="https://op/oauth2/token",
        jwks_uri="https://op/oauth2/jwks",
    )
    last_error = None


def route_login(
    auth: RouteAuth,
    clock: Any,
    *,
    route: Route = APP1,
    client: Any = None,
    issuer: str = ISSUER,
    http: Any = None,
    redis: Any = None,
    revocation: RevocationList | None = None,
) -> RouteLogin:
    """The gate of ``route`` with ``auth`` (a FakeProvider's unless ``client``
    is given), and ``revocation`` or a list of its own."""
    handle = ProviderHandle(
        settings=ProviderSettings(name=auth.oidc.provider, issuer=issuer),
        client=FakeProvider() if client is None else client,
        http=http,
    )
    return RouteLogin(
        attrs.evolve(route, auth=auth),
        auth,
        handle,
        clock,
        redis=redis,
        revocation=RevocationList(clock, None) if revocation is None else revocation,
    )
