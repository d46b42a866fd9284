"""Refresh timing from the access token's real lifetime (issue 15 §1): never at
login, never per request, a new cookie at most once a minute; and the warnings a
login gives about the provider (short tokens, no sid), once per provider."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from idgateway.gate import session_check as gate_module
from idgateway.oidc.client import TokenResponse
from tests.unit.test_gate import make_login, session
from tests.unit.test_userinfo_auto import (
    log_in,
    provider,  # noqa: F401 - a fixture
)
from tests.unit.test_userinfo_auto import make_login as make_callback_login


def test_a_token_no_longer_than_the_leeway_is_not_refreshed_at_login():
    login = make_login(Clock(), refresh_leeway=60.0)
    fresh = session(1000, access_expires_at=1060, tokens_at=1000)
    for now in range(1000, 1060):
        assert not login._needs_refresh(fresh, now), now
    assert login._needs_refresh(fresh, 1060), "expired: refresh"


@pytest.mark.parametrize(
    ("lifetime", "leeway", "first_due"),
    [
        (3600, 60, 3540),  # the configured leeway when the token is long
        (300, 200, 150),  # at most half the lifetime
        (100, 60, 60),  # half is 50, but not within a minute of the last tokens
        (30, 60, 30),  # shorter than a minute: only once expired
    ],
)
def test_the_effective_leeway(lifetime: int, leeway: float, first_due: int):
    login = make_login(Clock(), refresh_leeway=leeway)
    s = session(0, access_expires_at=lifetime, tokens_at=0)
    assert not login._needs_refresh(s, first_due - 1)
    assert login._needs_refresh(s, first_due)


def test_a_session_from_before_the_upgrade_keeps_the_old_rule():
    login = make_login(Clock(), refresh_leeway=60.0)
    old = session(0, access_expires_at=300, tokens_at=None)
    assert not login._needs_refresh(old, 239)
    assert login._needs_refresh(old, 240)


@pytest.fixture
def rotating_provider(monkeypatch):
    """A provider with 60 s access tokens that rotates refresh tokens."""
    calls: list[tuple[float, str]] = []
    clock = Clock()

    async def fake_refresh(http, metadata, creds, *, refresh_token, clock=clock, timeout=10):
        n = len(calls) + 2
        calls.append((clock.seconds(), refresh_token))
        return TokenResponse(f"at-{n}", "Bearer", 60, f"rt-{n}", None, None)

    monkeypatch.setattr(gate_module, "refresh_tokens", fake_refresh)
    return clock, calls


def test_a_request_every_second_for_ten_minutes_refreshes_once_a_minute(rotating_provider):
    clock, calls = rotating_provider
    login = make_login(clock, refresh_leeway=60.0)
    clock.advance(1000)
    current = session(1000, access_expires_at=1060, tokens_at=1000)
    new_cookies = 0
    for _ in range(600):
        clock.advance(1)
        now = clock.seconds()
        if login._needs_refresh(current, now):
            result = defer.ensureDeferred(login.refreshed(current)).result  # type: ignore[attr-defined]
            assert isinstance(result, gate_module.Session)
            assert result.tokens_at == now
            current = result
            new_cookies += 1
        assert (current.access_expires_at or 0) >= now, "the upstream never gets a dead token"
    assert 9 <= len(calls) <= 10
    assert new_cookies == len(calls)
    times = [t for t, _ in calls]
    assert all(b - a >= 60 for a, b in zip(times, times[1:], strict=False))
    # Every refresh spent the newest (rotated) refresh token.
    assert [rt for _, rt in calls] == [f"rt-{n}" for n in range(1, len(calls) + 1)]


def test_short_tokens_and_missing_sid_are_warned_once_per_provider(provider):  # noqa: F811
    provider["id_token_claims"] = {"sub": "u1", "email": "a@x", "groups": ["g"]}
    login = make_callback_login()
    short = TokenResponse("at", "Bearer", 60, "rt", "id.token.jwt", None)

    async def exchange_code(*args: Any, **kwargs: Any) -> TokenResponse:
        return short

    from idgateway.gate import endpoints

    original = endpoints.exchange_code
    endpoints.exchange_code = exchange_code  # type: ignore[assignment]
    try:
        request, warnings = log_in(login)
        assert request.code == 302
        assert sum("less than twice session.refresh_leeway" in w for w in warnings) == 1
        assert sum("cannot end this session by sid" in w for w in warnings) == 1
        _, again = log_in(login)
        assert not any("refresh_leeway" in w or "by sid" in w for w in again)
    finally:
        endpoints.exchange_code = original  # type: ignore[assignment]


def test_a_provider_with_sid_and_long_tokens_gives_no_warning(provider):  # noqa: F811
    provider["id_token_claims"] = {"sub": "u1", "sid": "p", "email": "a@x", "groups": ["g"]}
    request, warnings = log_in(make_callback_login())
    assert request.code == 302 and warnings == []


def test_the_login_records_when_its_tokens_came(provider):  # noqa: F811
    login = make_callback_login()
    login.clock.advance(500)  # type: ignore[attr-defined]
    request, _ = log_in(login)
    cookies = {}
    for value in request.responseHeaders.getRawHeaders(b"set-cookie", []):
        name, _, rest = value.partition(b"=")
        cookies[name] = rest.split(b";")[0]
    s, _ = login.codecs[False].decode(cookies)
    assert s is not None and s.tokens_at == 500 and s.access_expires_at == 4100
    assert not login._needs_refresh(s, 500)
    assert attrs.evolve(s).tokens_at == 500
