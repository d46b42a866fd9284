"""RevocationList and ReplayCache shared through a real redis-server (the in-memory half is
tests/unit/test_revocation.py).

Twisted code runs as in test_redis_store.py: each test gives an
``async def main(reactor)`` to ``tests.redis_process.run_in_reactor``, which
runs it on a fresh reactor instance and returns or raises its outcome. Two
``RedisClient`` objects on one server stand for two gateway processes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from idgateway.redis.client import RedisClient, RedisUnavailable
from idgateway.sessions.revocation import ReplayCache, RevocationList
from tests.redis_process import (
    RedisProcess,
    free_port,
    redis_settings,
    requires_redis,
    run_in_reactor,
    sleep,
)
from tests.session_factories import minimal_session as _session


async def until(reactor: Any, condition: Any, within: float = 2.0) -> float:
    """Poll ``condition()`` every 10 ms; the seconds it took to hold (fails if it never does)."""
    started = reactor.seconds()
    while not condition():
        if reactor.seconds() - started > within:
            raise AssertionError(f"still false after {within}s")
        await sleep(reactor, 0.01)
    return float(reactor.seconds() - started)


class RecordingClient:
    """A RedisClient stand-in for code paths that must not touch Redis."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self._client, name)


@requires_redis
def test_a_revoke_reaches_another_process_within_a_second(redis: RedisProcess) -> None:
    async def main(reactor: Any) -> None:
        client_a = RedisClient(reactor, redis_settings(redis.url))
        client_b = RecordingClient(RedisClient(reactor, redis_settings(redis.url)))
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
        early_client = RedisClient(reactor, redis_settings(redis.url))
        late_client = RedisClient(reactor, redis_settings(redis.url))
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
        client_a = RedisClient(reactor, redis_settings(redis.url))
        client_b = RedisClient(reactor, redis_settings(redis.url))
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
        client = RedisClient(reactor, redis_settings(f"redis://127.0.0.1:{free_port()}/0"))
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
        client_a = RedisClient(reactor, redis_settings(redis.url))
        client_b = RedisClient(reactor, redis_settings(redis.url))
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


@requires_redis
def test_ids_and_subs_travel_through_redis_and_a_raised_ttl_extends_the_keys(
    redis: RedisProcess,
) -> None:
    async def main(reactor: Any) -> None:
        client_a = RedisClient(reactor, redis_settings(redis.url))
        client_b = RedisClient(reactor, redis_settings(redis.url))
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
            late_client = RedisClient(reactor, redis_settings(redis.url))
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
