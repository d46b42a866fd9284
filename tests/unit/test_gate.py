"""The login gate's session lifetime and refresh logic, with a Clock."""

from __future__ import annotations

import base64

import attrs
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from idgateway.config.model import OIDCSettings, RouteAuth, SessionSettings
from idgateway.gate import session_check as gate_module
from idgateway.gate.session_check import UNAVAILABLE, RouteLogin
from idgateway.oidc.client import TokenEndpointError, TokenResponse
from idgateway.sessions.model import Session
from tests.route_gates import route_login

KEY = base64.b64encode(b"k" * 32).decode()


def make_login(clock: Clock, **session: object) -> RouteLogin:
    auth = RouteAuth(
        oidc=OIDCSettings(provider="wso2", client_id="c", client_secret="s"),
        session=SessionSettings(keys=(KEY,), **session),  # type: ignore[arg-type]
    )
    return route_login(auth, clock)


def session(now: float, **changes: object) -> Session:
    base = Session(
        id="s1",
        route="app1",
        sub="sub-1",
        user="alice",
        claims={},
        created_at=now,
        last_seen=now,
        access_token="at-1",
        access_expires_at=now + 300,
        refresh_token="rt-1",
    )
    return attrs.evolve(base, **changes)


def test_inactivity_and_maximum_duration():
    clock = Clock()
    clock.advance(1000)
    login = make_login(clock, inactivity_timeout=600.0, max_duration=3600.0)
    s = session(clock.seconds())
    assert login._alive(s, clock.seconds())
    clock.advance(599)
    assert login._alive(s, clock.seconds())
    clock.advance(2)
    assert not login._alive(s, clock.seconds()), "inactive too long"
    fresh = attrs.evolve(s, last_seen=clock.seconds())
    clock.advance(3000)
    assert not login._alive(attrs.evolve(fresh, last_seen=clock.seconds()), clock.seconds())
    assert not login._alive(attrs.evolve(s, route="app2"), clock.seconds()), "foreign route"


def test_refresh_is_due_within_the_leeway():
    clock = Clock()
    login = make_login(clock, refresh_leeway=60.0)
    s = session(0)
    assert not login._needs_refresh(s, 239)
    assert login._needs_refresh(s, 240)
    assert not login._needs_refresh(attrs.evolve(s, refresh_token=None), 1000)


@pytest.fixture
def token_endpoint(monkeypatch):
    calls: list[str] = []
    answers: list[object] = []

    async def fake_refresh(http, metadata, creds, *, refresh_token, clock=None, timeout=10):
        calls.append(refresh_token)
        answer = answers.pop(0)
        if isinstance(answer, defer.Deferred):
            answer = await answer
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(gate_module, "refresh_tokens", fake_refresh)
    return calls, answers


def tokens(n: int) -> TokenResponse:
    return TokenResponse(
        access_token=f"at-{n}",
        token_type="Bearer",
        expires_in=300,
        refresh_token=f"rt-{n}",
        id_token=None,
        scope=None,
    )


def test_concurrent_refreshes_share_one_call_and_late_cookies_get_its_result(token_endpoint):
    calls, answers = token_endpoint
    clock = Clock()
    login = make_login(clock)
    gate_answer: defer.Deferred[TokenResponse] = defer.Deferred()
    answers.append(gate_answer)
    s = session(0)
    first = defer.ensureDeferred(login.refreshed(s))
    second = defer.ensureDeferred(login.refreshed(s))
    assert calls == ["rt-1"]
    gate_answer.callback(tokens(2))
    a, b = first.result, second.result  # type: ignore[attr-defined]
    assert a.refresh_token == "rt-2" and b.refresh_token == "rt-2"
    # A request still carrying the old cookie, a little later: no second call.
    clock.advance(10)
    late = defer.ensureDeferred(login.refreshed(s))
    assert late.result.access_token == "at-2"  # type: ignore[attr-defined]
    assert calls == ["rt-1"]
    # After the grace period the old refresh token is really dead.
    clock.advance(gate_module.REFRESH_GRACE)
    answers.append(TokenEndpointError("invalid_grant", "rotated", 400))
    assert defer.ensureDeferred(login.refreshed(s)).result is None  # type: ignore[attr-defined]


def test_a_reload_keeps_refreshes_running_and_their_results(token_endpoint):
    """The gate built by a reload adopts the old one's refreshes: a request with
    the pre-refresh cookie never spends the rotated refresh token again."""
    calls, answers = token_endpoint
    clock = Clock()
    old = make_login(clock)
    answer: defer.Deferred[TokenResponse] = defer.Deferred()
    answers.append(answer)
    s = session(0)
    running = defer.ensureDeferred(old.refreshed(s))
    new = make_login(clock)
    new.provider = old.provider  # the state builder keeps an unchanged provider's client
    new.adopt(old)
    joined = defer.ensureDeferred(new.refreshed(s))  # during the refresh
    answer.callback(tokens(2))
    assert running.result.refresh_token == joined.result.refresh_token == "rt-2"  # type: ignore[attr-defined]
    clock.advance(10)
    newer = make_login(clock)
    newer.provider = old.provider
    newer.adopt(new)
    late = defer.ensureDeferred(newer.refreshed(s))  # after it, still the old cookie
    assert late.result.access_token == "at-2"  # type: ignore[attr-defined]
    assert calls == ["rt-1"]
    # Another provider client: nothing is carried over.
    other = make_login(clock)
    other.adopt(newer)
    assert other._recent == {} and other._refreshing == {}


def test_provider_trouble_is_unavailable_not_a_logout(token_endpoint):
    _, answers = token_endpoint
    login = make_login(Clock())
    answers.append(TokenEndpointError("temporarily_unavailable", "down", 0))
    assert defer.ensureDeferred(login.refreshed(session(0))).result is UNAVAILABLE  # type: ignore[attr-defined]
    answers.append(TokenEndpointError("invalid_grant", "revoked", 400))
    assert defer.ensureDeferred(login.refreshed(session(0, id="s2"))).result is None  # type: ignore[attr-defined]


def test_secure_origin_trusts_x_forwarded_proto_only_from_trusted_proxies():
    from types import SimpleNamespace

    from twisted.internet.address import IPv4Address
    from twisted.web.http_headers import Headers

    from idgateway.gate.session_check import secure_origin
    from idgateway.proxy.headers import TrustedProxies

    def request(peer: str, proto: str | None):
        headers = Headers()
        if proto is not None:
            headers.setRawHeaders(b"x-forwarded-proto", [proto.encode()])
        return SimpleNamespace(requestHeaders=headers, client=IPv4Address("TCP", peer, 1234))

    state = SimpleNamespace(trusted=TrustedProxies(["10.0.0.0/8"]))
    plain, tls = SimpleNamespace(tls=False), SimpleNamespace(tls=True)
    assert secure_origin(tls, request("1.2.3.4", None), state)
    assert secure_origin(plain, request("10.1.1.1", "https"), state)
    assert not secure_origin(plain, request("1.2.3.4", "https"), state), "untrusted peer"
    assert not secure_origin(plain, request("10.1.1.1", "http"), state)
    assert not secure_origin(plain, request("10.1.1.1", None), state)


def _with_revocation(clock: Clock) -> RouteLogin:
    from idgateway.sessions.revocation import RevocationList

    login = make_login(clock, max_duration=3600.0)
    login.revocation = RevocationList(clock, None, ttl=3600)
    return login


def test_ending_a_cookie_session_kills_every_copy_of_its_cookie():
    clock = Clock()
    clock.advance(1_000_000)
    login = _with_revocation(clock)
    mine = session(clock.seconds())
    assert not login._revoked(mine)
    clear = defer.ensureDeferred(login.end_session(False, 1, None, mine))
    assert clear.called and b"Max-Age=0" in clear.result[0]
    # The same session, from a copy of the cookie taken before (or refreshed since).
    assert login._revoked(mine)
    assert login._revoked(attrs.evolve(mine, access_token="at-2", last_seen=clock.seconds()))
    assert not login._revoked(session(clock.seconds(), id="s2"))


def test_a_sub_only_logout_ends_that_subjects_earlier_cookie_sessions():
    clock = Clock()
    clock.advance(1_000_000)
    login = _with_revocation(clock)
    before = session(clock.seconds() - 10)
    ended = defer.ensureDeferred(login.end_sessions(sid=None, sub="sub-1"))
    assert ended.result == "sub revoked"
    assert login._revoked(before)
    assert not login._revoked(session(clock.seconds() - 10, id="s3", sub="sub-2"))
    clock.advance(1)
    assert not login._revoked(session(clock.seconds(), id="s4"))  # a later login
    # A logout token issued in the future cannot kill logins yet to come.
    ended = defer.ensureDeferred(
        login.end_sessions(sid=None, sub="sub-1", since=clock.seconds() + 3600)
    )
    clock.advance(1)
    assert not login._revoked(session(clock.seconds(), id="s5"))
    nothing = defer.ensureDeferred(login.end_sessions(sid=None, sub=None))
    assert nothing.result == "nothing to end"


def test_a_tunnels_session_ends_at_max_duration_and_on_revocation():
    """RouteLogin.session_ended: what the once-a-second tunnel sweep asks."""
    from idgateway.sessions.revocation import RevocationList

    clock = Clock()
    clock.advance(1000)
    login = make_login(clock, inactivity_timeout=600.0, max_duration=3600.0)
    login.revocation = RevocationList(clock, None, ttl=3600.0)
    s = session(clock.seconds())
    assert login.session_ended(s, None) is False
    # A tunnel is not a request: inactivity is left to the session's HTTP requests.
    clock.advance(601)
    assert login.session_ended(s, None) is False
    assert login.session_ended(attrs.evolve(s, route="app2"), None) is True
    done = defer.ensureDeferred(login.revocation.revoke_session("app1", s.id, s.created_at))
    assert done.called
    assert login.session_ended(s, None) is True
    other = attrs.evolve(s, id="s2")
    assert login.session_ended(other, None) is False
    clock.advance(3000)
    assert login.session_ended(other, None) is True  # past max_duration
