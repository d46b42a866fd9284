"""RevocationList and ReplayCache, in memory and shared through a real redis-server.

Twisted code runs as in test_redis_store.py: each test gives an
``async def main(reactor)`` to ``tests.redis_process.run_in_reactor``, which
runs it on a fresh reactor instance and returns or raises its outcome. Two
``RedisClient`` objects on one server stand for two gateway processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from idgateway.sessions.model import Session
from idgateway.sessions.redis_client import RedisClient, RedisSettings, RedisUnavailable
from idgateway.sessions.revocation import LOCAL_ONLY_WARNING, ReplayCache, RevocationList
from tests.redis_process import RedisProcess, free_port, requires_redis, run_in_reactor, sleep

COMMAND_TIMEOUT = 0.5


def settings(url: str) -> RedisSettings:
    return RedisSettings(url=url, pool_size=2, connect_timeout=1.0, command_timeout=COMMAND_TIMEOUT)


class RecordingClient:
    """A RedisClient stand-in for code paths that must not touch Redis."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self._client, name)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with RedisProcess(tmp_path_factory.mktemp("redis"), password="pw") as server:
        yield server


@pytest.fixture
def redis(shared_redis: RedisProcess) -> RedisProcess:
    shared_redis.call("FLUSHALL")
    return shared_redis


async def until(reactor: Any, condition: Any, within: float = 2.0) -> float:
    """Poll ``condition()`` every 10 ms; the seconds it took to hold (fails if it never does)."""
    started = reactor.seconds()
    while not condition():
        if reactor.seconds() - started > within:
            raise AssertionError(f"still false after {within}s")
        await sleep(reactor, 0.01)
    return float(reactor.seconds() - started)


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


@requires_redis
def test_a_revoke_reaches_another_process_within_a_second(redis: RedisProcess) -> None:
    async def main(reactor: Any) -> None:
        client_a = RedisClient(reactor, settings(redis.url))
        client_b = RecordingClient(RedisClient(reactor, settings(redis.url)))
        process_a = RevocationList(reactor, client_a, ttl=600)
        process_b = RevocationList(reactor, client_b, ttl=600)  # type: ignore[arg-type]
        try:
            assert process_a.warning is None
            process_a.start()
            process_b.start()
            await until(reactor, lambda: process_a.loaded and process_b.loaded)

            client_b.calls.clear()
            assert not process_b.is_revoked("app", "sid-1")
            assert client_b.calls == []  # the hot path never asks Redis

            await process_a.revoke("app", "sid-1")
            assert process_a.is_revoked("app", "sid-1")
            took = await until(reactor, lambda: process_b.is_revoked("app", "sid-1"), within=1.0)
            assert took < 1.0
            assert not process_b.is_revoked("other", "sid-1")
            assert client_b.calls == []

            # Redis keeps it for a process that starts later, hashed, with the ttl
            # and its revocation time (from which a raised ttl extends it).
            key = f"idgw:revoked:app:{hashlib.sha256(b'sid-1').hexdigest()}"
            assert abs(float(redis.call("GET", key)) - reactor.seconds()) < 1
            assert 599_000 < redis.call("PTTL", key) <= 600_000
            assert redis.call("KEYS", "*sid-1*") == []
        finally:
            await client_a.close()
            await client_b._client.close()

    run_in_reactor(main)


@requires_redis
def test_a_process_starting_later_loads_current_revocations(redis: RedisProcess) -> None:
    async def main(reactor: Any) -> None:
        early_client = RedisClient(reactor, settings(redis.url))
        late_client = RedisClient(reactor, settings(redis.url))
        try:
            early = RevocationList(reactor, early_client, ttl=600)
            for n in range(1500):  # more than one SCAN step
                await early.revoke("app", f"sid-{n}")
            await early.revoke("route:with:colons", "sid-x")
            redis.call("SET", "idgw:revoked:app:not-a-hash", "1")  # ignored
            redis.call("SET", "idgw:app:s:unrelated", "x")

            late = RevocationList(reactor, late_client, ttl=600)
            late.start()
            await until(reactor, lambda: late.loaded)
            assert late.is_revoked("app", "sid-0")
            assert late.is_revoked("app", "sid-1499")
            assert late.is_revoked("route:with:colons", "sid-x")
            assert not late.is_revoked("route", "sid-x")
            assert not late.is_revoked("app", "sid-1500")
        finally:
            await early_client.close()
            await late_client.close()

    run_in_reactor(main)


@requires_redis
def test_revocations_missed_while_disconnected_are_loaded_on_resubscribe(
    redis: RedisProcess,
) -> None:
    async def main(reactor: Any) -> None:
        client_a = RedisClient(reactor, settings(redis.url))
        client_b = RedisClient(reactor, settings(redis.url))
        try:
            process_a = RevocationList(reactor, client_a)
            process_b = RevocationList(reactor, client_b)
            process_b.start()
            await until(reactor, lambda: process_b.loaded)
            # B's subscriber connection drops; A revokes before B is back.
            assert redis.call("CLIENT", "KILL", "TYPE", "pubsub") == 1
            await process_a.revoke("app", "sid-while-away")
            await until(reactor, lambda: process_b.loaded >= 2)
            assert process_b.is_revoked("app", "sid-while-away")
            # And the new subscription works.
            await process_a.revoke("app", "sid-after")
            await until(reactor, lambda: process_b.is_revoked("app", "sid-after"), within=1.0)
        finally:
            await client_a.close()
            await client_b.close()

    run_in_reactor(main)


@requires_redis
def test_revoke_without_redis_raises_but_remembers_locally() -> None:
    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, settings(f"redis://127.0.0.1:{free_port()}/0"))
        try:
            revoked = RevocationList(reactor, client)
            revoked.start()  # keeps trying in the background
            with pytest.raises(RedisUnavailable):
                await revoked.revoke("app", "sid-1")
            assert revoked.is_revoked("app", "sid-1")
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_replay_cache_is_shared_through_redis(redis: RedisProcess) -> None:
    async def main(reactor: Any) -> None:
        client_a = RedisClient(reactor, settings(redis.url))
        client_b = RedisClient(reactor, settings(redis.url))
        try:
            now = reactor.seconds()
            process_a = ReplayCache(reactor, client_a, leeway=60)
            process_b = ReplayCache(reactor, client_b, leeway=60)
            assert await process_a.first_use("https://idp", "jti-1", expires_at=now + 120)
            assert not await process_b.first_use("https://idp", "jti-1", expires_at=now + 120)
            assert not await process_a.first_use("https://idp", "jti-1", expires_at=now + 120)
            assert await process_b.first_use("https://idp", "jti-2", expires_at=now + 120)
            keys = redis.call("KEYS", "idgw:jti:*")
            assert len(keys) == 2
            for key in keys:  # until exp + leeway
                assert 179_000 < redis.call("PTTL", key) <= 180_000
            assert redis.call("KEYS", "*jti-1*") == []
        finally:
            await client_a.close()
            await client_b.close()

    run_in_reactor(main)


def test_revocation_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ttl"):
        RevocationList(Clock(), None, ttl=0)


# -- session ids, subjects, bounds, lifetimes that follow reloads ---------------------


def _session(**changes: Any) -> Session:
    fields: dict[str, Any] = {
        "id": "id-1",
        "route": "app",
        "sub": "alice",
        "user": "alice",
        "claims": {},
        "created_at": 1_000_000.0,
        "last_seen": 1_000_000.0,
        "provider_sid": "sid-1",
    }
    fields.update(changes)
    return Session(**fields)


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


@requires_redis
def test_ids_and_subs_travel_through_redis_and_a_raised_ttl_extends_the_keys(
    redis: RedisProcess,
) -> None:
    async def main(reactor: Any) -> None:
        client_a = RedisClient(reactor, settings(redis.url))
        client_b = RedisClient(reactor, settings(redis.url))
        process_a = RevocationList(reactor, client_a, ttl=600)
        process_b = RevocationList(reactor, client_b, ttl=600)
        try:
            process_a.start()
            process_b.start()
            await until(reactor, lambda: process_a.loaded and process_b.loaded)
            now = reactor.seconds()
            session = _session(id="id-x", sub="sub-x", provider_sid=None, created_at=now - 5)
            await process_a.revoke_session("app", "id-x", now - 5)
            await until(reactor, lambda: process_b.session_revoked("app", session), within=1.0)
            other = _session(id="id-y", sub="sub-y", provider_sid=None, created_at=now - 5)
            await process_a.revoke_sub("app", "sub-y", now)
            await until(reactor, lambda: process_b.session_revoked("app", other), within=1.0)
            key = f"idgw:revoked-id:app:{hashlib.sha256(b'id-x').hexdigest()}"
            assert 590_000 < redis.call("PTTL", key) <= 595_000
            # A reload raises the ttl: the keys follow (from their reference time).
            process_a.set_ttl(7200, {"app": 7200})
            await until(reactor, lambda: redis.call("PTTL", key) > 7_000_000)
            assert redis.call("PTTL", key) <= 7_195_000
            # A process starting later loads both kinds, at their reference times.
            late_client = RedisClient(reactor, settings(redis.url))
            late = RevocationList(reactor, late_client, ttl=7200)
            try:
                late.start()
                await until(reactor, lambda: late.loaded)
                assert late.session_revoked("app", session)
                assert late.session_revoked("app", other)
                later = _session(id="id-z", sub="sub-y", provider_sid=None, created_at=now + 5)
                assert not late.session_revoked("app", later)
            finally:
                await late_client.close()
        finally:
            await client_a.close()
            await client_b.close()

    run_in_reactor(main)
