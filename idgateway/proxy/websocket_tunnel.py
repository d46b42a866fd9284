"""A WebSocket connection after the upgrade: bytes both ways, the session still checked.

The tunnel ends when the session that opened it ends (logout, revocation),
when it is idle too long, or when either side closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from idgateway.proxy.upstream import (
    UpstreamConnection,
)
from idgateway.proxy.websocket_frames import CLOSE_POLICY_VIOLATION, FrameBoundaries
from idgateway.proxy.websocket_limits import WebSocketSlot
from idgateway.routing.state import StateHolder


def current_login_of(holder: StateHolder, route: str) -> Callable[[], Any]:
    def current() -> Any:
        runtime = holder.current.runtimes.get(route)
        return None if runtime is None else runtime.login

    return current


_tunnel_log = Logger(namespace="idgateway.proxy.websocket_tunnel.WebSocketTunnel")


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
