"""What the gate needs from the routing layer, declared as protocols.

``routing`` builds the gate (``routing.state`` makes a ``RouteLogin`` per
route) and calls it (``routing.resource``); the gate calls back through the
few members below. Declaring them here keeps the imports one way: nothing in
``gate`` imports ``routing``, not even for type checking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from idgateway.http.paths import PathJudge
    from idgateway.proxy.headers import TrustedProxies
    from idgateway.server.channel import GatewayRequest
    from idgateway.sessions.revocation import ReplayCache, RevocationList


class GatewayView(Protocol):
    """The gateway state a request started with (``routing.state.GatewayState``)."""

    @property
    def trusted(self) -> TrustedProxies: ...

    @property
    def revocation(self) -> RevocationList: ...

    @property
    def replay(self) -> ReplayCache: ...


class RouteView(Protocol):
    """One route's running parts (``routing.state.RouteRuntime``)."""

    @property
    def paths(self) -> PathJudge: ...

    @property
    def own_cookie(self) -> Callable[[bytes], bool] | None: ...

    @property
    def has_login(self) -> bool: ...


class TokenChallenges(Protocol):
    """What the session gate asks of a route's token gate (``gate.bearer.BearerGate``)."""

    def challenges(self, host: bytes, tls: bool) -> list[tuple[bytes, bytes]]: ...


class Forwarder(Protocol):
    """The resource that sends a request upstream (``routing.resource.GatewayResource``)."""

    @property
    def tls(self) -> bool: ...

    # state and runtime are the ones the resource handed to the gate, passed
    # back unchanged: typed Any because the resource's own types are narrower
    # than the views above (a protocol's parameters may not be narrowed).
    def forward(
        self,
        request: GatewayRequest,
        state: Any,
        runtime: Any,
        host: bytes,
        *,
        cookie: bytes | None | bool = True,
        identity: list[tuple[bytes, bytes]] = ...,
        set_cookies: list[bytes] = ...,
        identity_lines: bytes = ...,
    ) -> None: ...
