"""A logged-out cookie session is refused on its next request, however its
route's gate was built.

A gate (``RouteLogin``) cannot be built without a revocation list, and it
records a logout in the same list its checks read: the state builder's gate
shares the gateway's list (``state.revocation``), a gate built directly gets
one of its own or the one it is handed. Each case admits a session, ends it
(back-channel logout by sid or by sub, front-channel logout without a cookie,
sign-out), then replays the cookie: through the memo of admitted Cookie
headers, through the full checks, and in other Cookie headers.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

import pytest
from twisted.internet import defer

from idgateway.gate.session_check import ProviderHandle, RouteLogin
from idgateway.sessions.model import Session
from idgateway.sessions.revocation import RevocationList
from tests.route_gates import route_login
from tests.unit.gate_decisions import GateUnderTest, app1_config


class Gateway(GateUnderTest):
    """A state with route app1, and one gate of app1 that requests go through."""

    def __init__(self) -> None:
        super().__init__(app1_config(base64.b64encode(os.urandom(32)).decode("ascii")))
        built = self.runtime.login
        assert built is not None and self.state is not None
        self.built = built
        self.revocation = self.state.revocation  # the gateway's list

    def direct(self, revocation: RevocationList | None = None) -> RouteLogin:
        """A gate of the same route built without the state builder."""
        route = self.config.routes[0]
        assert route.auth is not None
        handle: ProviderHandle = self.built.provider
        return route_login(
            route.auth,
            self.clock,
            route=route,
            client=handle.client,
            issuer=handle.settings.issuer,
            revocation=revocation,
        )

    def answer(self, cookie_lines: list[bytes]) -> str:
        """What the gate does with a request carrying these Cookie lines."""
        return str(self.handle(self.request(cookie_lines))[0])


# How the gate was built: (gateway) -> the gate requests go through.
BUILDS: dict[str, Callable[[Gateway], RouteLogin]] = {
    "state-builder": lambda gateway: gateway.built,
    "direct-own-list": lambda gateway: gateway.direct(),
    "direct-gateway-list": lambda gateway: gateway.direct(gateway.revocation),
}


async def _back_channel_sid(gateway: Gateway, session: Session) -> None:
    await gateway.login.end_sessions(sid="sid-1", sub=None)


async def _back_channel_sub(gateway: Gateway, session: Session) -> None:
    await gateway.login.end_sessions(sid=None, sub="sub-1")


async def _front_channel_without_cookie(gateway: Gateway, session: Session) -> None:
    await gateway.login.end_sessions(sid="sid-1", sub=None, verified=False)


async def _sign_out(gateway: Gateway, session: Session) -> None:
    await gateway.login.end_session(False, 1, None, session)


LOGOUTS = {
    "back-channel-sid": _back_channel_sid,
    "back-channel-sub": _back_channel_sub,
    "front-channel-no-cookie": _front_channel_without_cookie,
    "sign-out": _sign_out,
}

# The logged-out cookie as the attacker replays it: (cookie) -> Cookie lines.
REPLAYS: dict[str, Callable[[bytes], list[bytes]]] = {
    "same-header": lambda cookie: [b"theme=dark; " + cookie],
    "memo-forgotten": lambda cookie: [b"theme=dark; " + cookie],
    "other-cookies-around": lambda cookie: [b"_ga=GA1.2; " + cookie + b"; theme=light"],
    "split-over-lines": lambda cookie: [b"theme=dark", cookie],
    "cookie-twice": lambda cookie: [cookie + b"; " + cookie],
}


@pytest.mark.parametrize("replay", REPLAYS)
@pytest.mark.parametrize("logout", LOGOUTS)
@pytest.mark.parametrize("build", BUILDS)
def test_a_logged_out_session_is_refused_on_its_next_request(
    build: str, logout: str, replay: str
) -> None:
    gateway = Gateway()
    login = BUILDS[build](gateway)
    gateway.use(login)
    session = gateway.session()
    cookie = gateway.cookie(session)
    lines = REPLAYS[replay](cookie)
    assert gateway.answer([b"theme=dark; " + cookie]) == "forward"
    assert gateway.answer(lines) == "forward"  # (and the memo has it, where it keeps it)
    ended = defer.ensureDeferred(LOGOUTS[logout](gateway, session))
    assert ended.called and ended.result is None  # (no Redis: ends at once)
    if replay == "memo-forgotten":
        login._admitted.clear()
    gateway.clock.advance(1)
    assert gateway.answer(lines) == "login"
    assert gateway.answer([b"theme=dark; " + cookie]) == "login"


@pytest.mark.parametrize("build", BUILDS)
def test_the_gate_records_a_logout_in_the_list_its_checks_read(build: str) -> None:
    gateway = Gateway()
    login = BUILDS[build](gateway)
    gateway.use(login)
    session = gateway.session()
    defer.ensureDeferred(login.end_sessions(sid="sid-1", sub=None))
    assert login.revocation.session_revoked("app1", session)
    shared = login.revocation is gateway.revocation
    assert shared == (build != "direct-own-list")
    # A gate with a list of its own leaves the gateway's alone, and the other way round.
    assert gateway.revocation.session_revoked("app1", session) == shared


def test_the_state_builders_gates_share_the_gateways_list_across_a_reload() -> None:
    gateway = Gateway()
    before = gateway.built
    session = gateway.session()
    cookie = gateway.cookie(session)
    assert gateway.answer([cookie]) == "forward"
    gateway.build(gateway.config_text)  # a reload
    after = gateway.login
    assert after is not before
    assert after.revocation is before.revocation is gateway.revocation
    # A logout the old gate takes (a request that began before the reload)
    # ends the session on the new one.
    defer.ensureDeferred(before.end_sessions(sid="sid-1", sub=None))
    assert gateway.answer([cookie]) == "login"


def test_a_gate_cannot_be_built_without_a_revocation_list() -> None:
    gateway = Gateway()
    route = gateway.config.routes[0]
    assert route.auth is not None
    with pytest.raises(TypeError, match="revocation"):
        RouteLogin(route, route.auth, gateway.built.provider, gateway.clock)  # type: ignore[call-arg]
