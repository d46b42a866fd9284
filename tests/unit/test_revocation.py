"""RevocationList and ReplayCache without Redis (shared through a real redis-server:
tests/integration/test_revocation.py).

Twisted code runs as in the Redis tests: each test gives an ``async def main(reactor)``
to ``tests.redis_process.run_in_reactor``, which runs it on a fresh reactor instance
(no sockets, no processes) and returns or raises its outcome.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from idgateway.sessions.revocation import LOCAL_ONLY_WARNING, ReplayCache, RevocationList
from tests.redis_process import run_in_reactor
from tests.session_factories import minimal_session as _session

# -- without Redis -------------------------------------------------------------------


def test_revocation_in_memory_only() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    revoked = RevocationList(clock, None, ttl=3600)
    assert revoked.warning == LOCAL_ONLY_WARNING
    revoked.start()  # nothing to start

    assert not revoked.is_revoked("app", "sid-1")
    run_in_reactor(lambda reactor: revoked.revoke("app", "sid-1"))
    assert revoked.is_revoked("app", "sid-1")
    assert not revoked.is_revoked("other", "sid-1")  # routes are separate
    assert not revoked.is_revoked("app", "sid-2")
    assert not revoked.is_revoked("app", None)
    clock.advance(3599)
    assert revoked.is_revoked("app", "sid-1")
    clock.advance(1)
    assert not revoked.is_revoked("app", "sid-1")


def test_revocation_memory_is_pruned() -> None:
    clock = Clock()
    revoked = RevocationList(clock, None, ttl=10)

    async def main(reactor: Any) -> None:
        for n in range(3000):
            await revoked.revoke("app", f"sid-{n}")
            clock.advance(0.01)

    run_in_reactor(main)
    # Entries older than the ttl were dropped as the table grew.
    assert len(revoked._revoked) < 2100
    assert revoked.is_revoked("app", "sid-2999")
    assert not revoked.is_revoked("app", "sid-0")


def test_replay_cache_in_memory() -> None:
    clock = Clock()
    clock.advance(1000)
    cache = ReplayCache(clock, None, leeway=60)

    async def main(reactor: Any) -> None:
        assert await cache.first_use("https://idp/t1", "jti-1", expires_at=1120)
        assert not await cache.first_use("https://idp/t1", "jti-1", expires_at=1120)
        assert await cache.first_use("https://idp/t2", "jti-1", expires_at=1120)  # other issuer
        assert await cache.first_use("https://idp/t1", "jti-2", expires_at=1120)
        clock.advance(179)  # exp + leeway not yet reached
        assert not await cache.first_use("https://idp/t1", "jti-1", expires_at=1120)
        clock.advance(1)
        assert await cache.first_use("https://idp/t1", "jti-1", expires_at=1120)
        # Even an already expired token is remembered for a moment.
        assert await cache.first_use("https://idp/t1", "old", expires_at=0)
        assert not await cache.first_use("https://idp/t1", "old", expires_at=0)

    run_in_reactor(main)


# -- with Redis ----------------------------------------------------------------------


def test_revocation_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ttl"):
        RevocationList(Clock(), None, ttl=0)


# -- session ids, subjects, bounds, lifetimes that follow reloads ---------------------


def _clock_at(seconds: float) -> Clock:
    clock = Clock()
    clock.advance(seconds)
    return clock


def test_a_signed_out_session_id_stays_dead_until_its_max_duration() -> None:
    clock = _clock_at(1_000_100)
    revoked = RevocationList(clock, None, ttl=3600)
    session = _session()
    assert not revoked.session_revoked("app", session)
    run_in_reactor(lambda reactor: revoked.revoke_session("app", "id-1", session.created_at))
    assert revoked.session_revoked("app", session)
    # The same id (a copy of the cookie, or a refreshed cookie) is dead too.
    assert revoked.session_revoked("app", _session(last_seen=1_000_050.0, access_token="new"))
    assert not revoked.session_revoked("app", _session(id="id-2"))
    assert not revoked.session_revoked("other", session)
    clock.advance(3600 - 100 - 1)
    assert revoked.session_revoked("app", session)
    clock.advance(1)  # created_at + max_duration: the cookie is dead anyway
    assert not revoked.session_revoked("app", session)
    assert revoked.size() == 0


def test_revoking_a_sub_ends_the_sessions_begun_until_then() -> None:
    clock = _clock_at(1_000_100)
    revoked = RevocationList(clock, None, ttl=3600)
    run_in_reactor(lambda reactor: revoked.revoke_sub("app", "alice", 1_000_050.0))
    assert revoked.session_revoked("app", _session(created_at=1_000_000.0))
    assert revoked.session_revoked("app", _session(id="id-2", created_at=1_000_050.0))
    assert not revoked.session_revoked("app", _session(id="id-3", created_at=1_000_051.0))
    assert not revoked.session_revoked("app", _session(id="id-4", sub="bob"))
    assert not revoked.session_revoked("app2", _session(id="id-5"))


@pytest.mark.parametrize("kind", ["sid", "id", "sub"])
def test_each_kind_is_bounded_oldest_first_and_fails_closed(kind: str) -> None:
    clock = _clock_at(1_000_000)
    revoked = RevocationList(clock, None, ttl=3600, max_entries=100)

    async def main(reactor: Any) -> None:
        for n in range(1000):
            if kind == "sid":
                await revoked.revoke("app", f"sid-{n}")
            elif kind == "id":
                await revoked.revoke_session("app", f"id-{n}", clock.seconds())
            else:
                await revoked.revoke_sub("app", f"sub-{n}", clock.seconds())
            clock.advance(0.001)

    run_in_reactor(main)
    assert revoked.size() == 100
    field = {"sid": "provider_sid", "id": "id", "sub": "sub"}[kind]
    newest = _session(**{field: f"{kind}-999"}, created_at=clock.seconds() - 10)
    oldest = _session(**{field: f"{kind}-0"}, created_at=clock.seconds() - 10)
    assert revoked.session_revoked("app", newest)
    # Fail closed: the dropped revocation does not bring its session back; the
    # route's sessions that began before it are refused too (log in again).
    assert revoked.session_revoked("app", oldest)
    unrelated_old = _session(id="never-revoked", sub="x", created_at=clock.seconds() - 10)
    assert revoked.session_revoked("app", unrelated_old)
    fresh = _session(id="fresh", sub="x", provider_sid="fresh", created_at=clock.seconds() + 2)
    assert not revoked.session_revoked("app", fresh)
    assert not revoked.session_revoked("other-route", unrelated_old)


def test_a_raised_ttl_extends_entries_and_keeps_outlived_sessions_dead() -> None:
    clock = _clock_at(1_000_000)
    revoked = RevocationList(clock, None, ttl=3600)
    revoked.set_ttl(3600, {"app": 600, "other": 3600})
    assert revoked.ttl_for("app") == 600 and revoked.ttl_for("unknown") == 3600
    run_in_reactor(lambda reactor: revoked.revoke("app", "sid-1"))
    outlived = _session(id="old", provider_sid=None, created_at=clock.seconds() - 700)
    clock.advance(500)
    # The reload raises app's max_duration to an hour: the entry now lasts an
    # hour from the logout, and a session that had outlived the old 10 minutes
    # does not come back.
    revoked.set_ttl(3600, {"app": 3600, "other": 3600})
    clock.advance(200)
    assert revoked.session_revoked("app", _session(created_at=clock.seconds() - 1000))
    assert revoked.session_revoked("app", outlived)
    assert not revoked.session_revoked("other", outlived)
    fresh = _session(id="new", provider_sid="sid-2", created_at=clock.seconds())
    assert not revoked.session_revoked("app", fresh)
    clock.advance(3600 - 700)
    assert not revoked.is_revoked("app", "sid-1")
    # Lowering never revives: sessions are checked against the new, shorter limit.
    revoked.set_ttl(60, {"app": 60})
    assert revoked.ttl_for("app") == 60
    with pytest.raises(ValueError, match="ttl"):
        revoked.set_ttl(0)


def test_unverified_revocations_have_a_budget_per_route() -> None:
    clock = _clock_at(1_000_000)
    revoked = RevocationList(clock, None)
    admitted = sum(revoked.admit_unverified("app") for _ in range(100))
    assert admitted == 30
    assert revoked.admit_unverified("other")  # routes have their own
    clock.advance(10)
    assert sum(revoked.admit_unverified("app") for _ in range(100)) == 5
    clock.advance(3600)
    assert sum(revoked.admit_unverified("app") for _ in range(100)) == 30


def test_unverified_sids_are_capped_apart_and_never_fail_closed() -> None:
    """A flood of front-channel sids nobody proved (the budget lets a few
    through per process) cannot get other sessions refused, on its route or
    another: past their own cap the oldest are simply dropped."""
    clock = _clock_at(1_000_000)
    revoked = RevocationList(clock, None, ttl=3600, max_entries=100)
    bystander = _session(id="b", sub="b", provider_sid="b-sid", created_at=clock.seconds() - 10)

    async def main(reactor: Any) -> None:
        await revoked.revoke("app", "real-sid")  # a proven one (back-channel)
        for n in range(500):
            await revoked.revoke("app", f"made-up-{n}", verified=False)
            clock.advance(0.001)

    run_in_reactor(main)
    assert not revoked.session_revoked("app", bystander)
    assert not revoked.session_revoked("other", bystander)
    assert revoked.is_revoked("app", "real-sid")
    assert revoked.is_revoked("app", "made-up-499")
    assert not revoked.is_revoked("app", "made-up-0")  # dropped, nothing else
    assert revoked.size() <= 1 + 100 // 10
