"""A provider that hangs or is down while sessions are due for a token refresh
(issue 16's fault suite): requests with a still-good access token go on after
REFRESH_PATIENCE instead of the provider call's timeout, and a provider that
could not be asked is asked again per session after REFRESH_RETRY, not on
every request."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from idgateway.gate import session_check as gate_module
from idgateway.gate.session_check import UNAVAILABLE
from idgateway.oidc.client import TokenEndpointError
from tests.unit.test_gate import make_login, session, token_endpoint, tokens

__all__ = ["token_endpoint"]  # the fixture, used by name below

PATIENCE = gate_module.REFRESH_PATIENCE
RETRY = gate_module.REFRESH_RETRY


def test_a_hung_refresh_holds_requests_only_for_the_patience(token_endpoint):
    calls, answers = token_endpoint
    clock = Clock()
    login = make_login(clock)
    hung: defer.Deferred[object] = defer.Deferred()
    answers.append(hung)
    s = session(0)  # its access token is good for 300 s

    first = defer.ensureDeferred(login.refreshed(s))
    assert not first.called
    clock.advance(PATIENCE - 0.1)
    assert not first.called
    clock.advance(0.1)
    assert first.result is UNAVAILABLE  # type: ignore[attr-defined]  # go on with the old token

    # The refresh still runs; later requests do not wait for it at all.
    clock.advance(3)
    assert defer.ensureDeferred(login.refreshed(s)).result is UNAVAILABLE  # type: ignore[attr-defined]
    assert calls == ["rt-1"]

    # It ends after all: the next request (old cookie) gets its result, no new call.
    hung.callback(tokens(2))
    later = defer.ensureDeferred(login.refreshed(s))
    assert later.result.refresh_token == "rt-2"  # type: ignore[attr-defined]
    assert calls == ["rt-1"]


def test_a_provider_that_cannot_be_asked_is_asked_again_after_the_retry_period(
    token_endpoint,
):
    calls, answers = token_endpoint
    clock = Clock()
    login = make_login(clock)
    s = session(0)
    answers.append(TokenEndpointError("temporarily_unavailable", "down", 0))
    assert defer.ensureDeferred(login.refreshed(s)).result is UNAVAILABLE  # type: ignore[attr-defined]
    for _ in range(10):  # requests in the retry period: no provider call
        clock.advance(RETRY / 20)
        assert defer.ensureDeferred(login.refreshed(s)).result is UNAVAILABLE  # type: ignore[attr-defined]
    assert calls == ["rt-1"]
    clock.advance(RETRY)
    answers.append(tokens(2))
    again = defer.ensureDeferred(login.refreshed(s))
    assert again.result.refresh_token == "rt-2"  # type: ignore[attr-defined]
    assert calls == ["rt-1", "rt-1"]


def test_with_an_expired_token_a_request_waits_for_the_refresh(token_endpoint):
    calls, answers = token_endpoint
    clock = Clock()
    clock.advance(1000)
    login = make_login(clock)
    slow: defer.Deferred[object] = defer.Deferred()
    answers.append(slow)
    expired = session(0, access_expires_at=999)
    waiting = defer.ensureDeferred(login.refreshed(expired))
    clock.advance(PATIENCE + 1)
    assert not waiting.called  # nothing good to go on with: wait
    # A second request of the same session waits for the same call too.
    second = defer.ensureDeferred(login.refreshed(expired))
    assert not second.called
    slow.callback(tokens(2))
    assert waiting.result.access_token == "at-2"  # type: ignore[attr-defined]
    assert second.result.access_token == "at-2"  # type: ignore[attr-defined]
    assert calls == ["rt-1"]


def test_a_refused_refresh_is_not_remembered(token_endpoint):
    calls, answers = token_endpoint
    login = make_login(Clock())
    answers.append(TokenEndpointError("invalid_grant", "revoked", 400))
    assert defer.ensureDeferred(login.refreshed(session(0))).result is None  # type: ignore[attr-defined]
    answers.append(TokenEndpointError("invalid_grant", "revoked", 400))
    assert defer.ensureDeferred(login.refreshed(session(0))).result is None  # type: ignore[attr-defined]
    assert calls == ["rt-1", "rt-1"]


def admitted_cookies(login, session_: object, **admit: bool) -> list[bytes]:
    """What ``admit`` hands the proxy as Set-Cookie for this cookie session."""
    from types import SimpleNamespace

    forwarded: dict[str, object] = {}
    request = SimpleNamespace(idgw_reading=SimpleNamespace(rules_route=None))
    visit = SimpleNamespace(
        request=request,
        session_id=None,
        host=b"app1.localhost",
        tls=False,
        chunks=1,
        state=None,
        runtime=None,
        upstream_cookie=b"",
        resource=SimpleNamespace(forward=lambda *a, **kw: forwarded.update(kw)),
    )
    login.admit(visit, session_, **admit)
    return forwarded["set_cookies"]  # type: ignore[return-value]


def test_a_session_served_while_its_refresh_is_pending_is_not_re_issued():
    # Re-issuing it (sliding expiry) would hand the browser the old refresh
    # token while the refresh may be rotating it: the new cookie would be lost.
    clock = Clock()
    clock.advance(1000)
    login = make_login(clock)
    stale = session(0, last_seen=0, access_expires_at=2000)  # last seen long ago
    assert admitted_cookies(login, stale, reissue=False)  # normally: slides
    assert admitted_cookies(login, stale, reissue=False, slide=False) == []
