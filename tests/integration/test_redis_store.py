"""RedisClient and RedisSessionStore against real redis-server processes.

How these tests run Twisted code: each test hands an ``async def main(reactor)``
to ``tests.redis_process.run_in_reactor``, which runs it on a fresh reactor
instance (never the global one) and returns its result or raises its
exception. The code under test takes the reactor as an argument, so nothing
needs pytest-twisted or trial, and no test can leave a connection or timer
behind for the next.

Servers are real ``redis-server`` processes on free ports (one shared by the
whole run for the ordinary tests, flushed before each: the ``redis`` fixture; private ones for fault
tests that kill, pause or restart them). Fault tests use a 0.5 s command
timeout and check that failures come within it (plus a second of slack).
Skipped when redis-server is not installed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import attrs
import pytest

from idgateway.redis.client import (
    RedisClient,
    RedisCommandError,
    RedisSettings,
    RedisUnavailable,
)
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.redis_store import RedisSessionStore
from tests.certs import make_ca
from tests.redis_process import (
    COMMAND_TIMEOUT,
    SHARED_PASSWORD,
    RedisProcess,
    SentinelProcess,
    free_port,
    redis_settings,
    redis_supports_tls,
    requires_redis,
    run_in_reactor,
    sleep,
)
from tests.session_factories import NOW, make_session

PASSWORD = SHARED_PASSWORD


class FakeClock:
    """The store's notion of now (TTL arithmetic); the client uses the reactor."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now


class CountingClient:
    """Delegates to a RedisClient (or nothing) and records every command method called."""

    def __init__(self, client: RedisClient | None) -> None:
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            assert self._client is not None, f"unexpected Redis call {name}"
            return await getattr(self._client, name)(*args, **kwargs)

        return call


KEYRING = KeyRing([os.urandom(32)])


def make_store(
    client: Any,
    clock: FakeClock,
    route: str = "app",
    inactivity_timeout: float = 600,
    max_duration: float = 3600,
    keyring: KeyRing = KEYRING,
) -> RedisSessionStore:
    return RedisSessionStore(
        client,
        route=route,
        keyring=keyring,
        inactivity_timeout=inactivity_timeout,
        max_duration=max_duration,
        clock=clock,
    )


# -- connection forms ------------------------------------------------------------------


@requires_redis
def test_password_and_database_from_the_url(redis: RedisProcess) -> None:
    url = redis.url.replace("/0", "/3")

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(url))
        try:
            assert await client.set("greeting", b"\x00hello\xff", px=60_000)
            assert await client.get("greeting") == b"\x00hello\xff"
            assert await client.get("missing") is None
            assert not await client.set("greeting", b"again", nx=True)
            assert await client.sadd("members", "a", "b") == 2
            assert await client.smembers("members") == {b"a", b"b"}
            assert await client.expire("members", 30)
            assert await client.eval("return {KEYS[1], ARGV[1]}", ["k"], ["v"]) == [b"k", b"v"]
            assert await client.delete("greeting", "members", "missing") == 2
            with pytest.raises(RedisCommandError, match="WRONGTYPE|not an integer"):
                await client.set("text", "abc")
                await client.command("INCR", "text")
            assert await client.ping()
            assert client.ready
        finally:
            await client.close()

    run_in_reactor(main)
    assert redis.call("GET", "text", db=3) == b"abc"
    assert redis.call("EXISTS", "text") == 0  # nothing in database 0


@requires_redis
def test_a_wrong_password_is_reported_without_repeating_it(redis: RedisProcess) -> None:
    url = f"redis://:not-the-password@127.0.0.1:{redis.port}/0"

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(url))
        try:
            with pytest.raises(RedisUnavailable) as raised:
                await client.get("anything")
            message = str(raised.value)
            assert "refused AUTH" in message
            assert "not-the-password" not in message
            assert not await client.ping()
            assert not client.ready
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_unix_socket_urls(tmp_path: Path) -> None:
    with RedisProcess(tmp_path, unix_socket=True) as server:
        assert server.socket_path is not None

        async def main(reactor: Any) -> None:
            three_slashes = RedisClient(reactor, redis_settings(f"unix://{server.socket_path}"))
            with_db = RedisClient(reactor, redis_settings(f"unix:{server.socket_path}?db=2"))
            try:
                await three_slashes.set("where", "db0")
                await with_db.set("where", "db2")
                assert await three_slashes.get("where") == b"db0"
                assert await with_db.get("where") == b"db2"
                assert three_slashes.description == f"Redis at unix:{server.socket_path}"
            finally:
                await three_slashes.close()
                await with_db.close()

        run_in_reactor(main)
        assert server.call("GET", "where", db=2) == b"db2"


@requires_redis
@pytest.mark.skipif(not redis_supports_tls(), reason="this redis-server was built without TLS")
def test_rediss_verifies_the_server_against_the_ca_file(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    leaf = ca.issue(tmp_path / "ca", ["127.0.0.1"])
    other_ca = make_ca(tmp_path / "other", name="some other CA")
    with RedisProcess(
        tmp_path, password=PASSWORD, tls=(leaf.cert_path, leaf.key_path, ca.cert_path)
    ) as server:
        assert server.url.startswith("rediss://")

        async def main(reactor: Any) -> None:
            good = RedisClient(reactor, redis_settings(server.url, ca_file=str(ca.cert_path)))
            wrong = RedisClient(
                reactor, redis_settings(server.url, ca_file=str(other_ca.cert_path))
            )
            try:
                assert await good.set("over", "tls")
                assert await good.get("over") == b"tls"
                with pytest.raises(RedisUnavailable, match="certificate verify failed"):
                    await wrong.get("over")
            finally:
                await good.close()
                await wrong.close()

        run_in_reactor(main)


@requires_redis
def test_sentinel_names_the_master_and_is_asked_again_after_a_loss(tmp_path: Path) -> None:
    with (
        RedisProcess(tmp_path / "a") as first,
        RedisProcess(tmp_path / "b") as second,
        SentinelProcess(tmp_path / "s", first.port) as sentinel,
    ):
        nobody = free_port()  # a sentinel that is down: the next one is asked

        async def main(reactor: Any) -> None:
            client = RedisClient(
                reactor,
                RedisSettings(
                    sentinels=(("127.0.0.1", nobody), ("127.0.0.1", sentinel.port)),
                    master_name="mymaster",
                    pool_size=2,
                    connect_timeout=1.0,
                    command_timeout=COMMAND_TIMEOUT,
                ),
            )
            unknown = RedisClient(
                reactor,
                RedisSettings(
                    sentinels=(("127.0.0.1", sentinel.port),),
                    master_name="nosuchmaster",
                    command_timeout=COMMAND_TIMEOUT,
                ),
            )
            try:
                assert "via Sentinel" in client.description
                assert await client.set("where", "first")
                with pytest.raises(RedisUnavailable, match="does not know a master 'nosuchmaster'"):
                    await unknown.get("where")

                # A failover, by hand: the sentinel now names the second
                # server, and the first one goes away.
                sentinel.move_master(second.port)
                first.kill()
                for _ in range(40):
                    try:
                        if await client.set("where", "second"):
                            break
                    except RedisUnavailable:
                        await sleep(reactor, 0.05)
                assert await client.get("where") == b"second"
            finally:
                await client.close()
                await unknown.close()

        run_in_reactor(main)
        assert second.call("GET", "where") == b"second"


@requires_redis
def test_sentinel_master_must_really_be_a_master(tmp_path: Path) -> None:
    with (
        RedisProcess(tmp_path / "a") as master,
        RedisProcess(tmp_path / "b") as replica,
        SentinelProcess(tmp_path / "s", master.port) as sentinel,
    ):
        replica.call("REPLICAOF", "127.0.0.1", master.port)
        sentinel.move_master(replica.port)  # a sentinel that is wrong, or a stale answer

        async def main(reactor: Any) -> None:
            client = RedisClient(
                reactor,
                RedisSettings(
                    sentinels=(("127.0.0.1", sentinel.port),),
                    master_name="mymaster",
                    command_timeout=COMMAND_TIMEOUT,
                ),
            )
            try:
                with pytest.raises(RedisUnavailable, match="is a slave, not the master"):
                    await client.get("x")
            finally:
                await client.close()

        run_in_reactor(main)


# -- the session store ------------------------------------------------------------------


@requires_redis
def test_save_and_load_round_trip(redis: RedisProcess) -> None:
    clock = FakeClock()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        store = make_store(client, clock)
        try:
            session_id = store.new_session_id()
            session = make_session()
            await store.save(session_id, session)
            assert await store.load(session_id) == session
            assert await store.load(store.new_session_id()) is None
            await store.delete(session_id)
            assert await store.load(session_id) is None
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_a_save_only_over_a_stored_session_never_brings_an_ended_one_back(
    redis: RedisProcess,
) -> None:
    clock = FakeClock()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        store = make_store(client, clock)
        try:
            session_id = store.new_session_id()
            session = make_session(provider_sid="sid-9", sub="dave")
            assert await store.save(session_id, session)
            clock.now += 60
            later = attrs.evolve(session, last_seen=clock.now)
            assert await store.save(session_id, later, only_if_stored=True)
            assert await store.load(session_id) == later
            ttl = await client.command("PTTL", store.session_key(session_id))
            assert 590_000 < int(ttl) <= 600_000, "the slide started the TTL again"
            await store.delete(session_id, later)  # a sign-out elsewhere
            assert not await store.save(session_id, later, only_if_stored=True)
            assert await store.load(session_id) is None
            # Nor does it file the ended session in its indexes again.
            assert await store.delete_by_sid("sid-9") == 0
            assert not await client.command("EXISTS", store._index_key("sub", "dave"))
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_redis_holds_only_hashes_and_ciphertext(redis: RedisProcess) -> None:
    clock = FakeClock()
    session = make_session()
    session_id = RedisSessionStore.new_session_id()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        try:
            await make_store(client, clock).save(session_id, session)
        finally:
            await client.close()

    run_in_reactor(main)
    data = redis.all_data()
    id_hash = hashlib.sha256(session_id.encode()).hexdigest()
    sid_hash = hashlib.sha256(b"provider-sid-1").hexdigest()
    sub_hash = hashlib.sha256(b"user-1").hexdigest()
    assert set(data) == {
        f"idgw:app:s:{id_hash}".encode(),
        f"idgw:app:sid:{sid_hash}".encode(),
        f"idgw:app:sub:{sub_hash}".encode(),
    }
    assert data[f"idgw:app:sid:{sid_hash}".encode()] == [id_hash.encode()]
    dump = repr(data).encode()
    for secret in (session_id, "alice", "wonderland", "user-1", "provider-sid-1", "token-value"):
        assert secret.encode() not in dump, secret


@requires_redis
def test_values_are_bound_to_their_key_and_route(redis: RedisProcess) -> None:
    clock = FakeClock()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        app = make_store(client, clock, route="app")
        other = make_store(client, clock, route="other")  # same key ring
        try:
            mine, victim = app.new_session_id(), app.new_session_id()
            await app.save(mine, make_session())
            # A value copied under another id, or into another route, is refused.
            value = await client.get(app.session_key(mine))
            assert value is not None
            await client.set(app.session_key(victim), value)
            await client.set(other.session_key(mine), value)
            assert await app.load(mine) is not None
            assert await app.load(victim) is None
            assert await other.load(mine) is None
            # A retired key ring cannot open it either.
            assert (
                await make_store(client, clock, keyring=KeyRing([os.urandom(32)])).load(mine)
                is None
            )
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_ttl_slides_with_inactivity_and_stops_at_max_duration(redis: RedisProcess) -> None:
    clock = FakeClock()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        store = make_store(client, clock, inactivity_timeout=600, max_duration=3600)
        try:
            session_id = store.new_session_id()
            key = store.session_key(session_id)
            await store.save(session_id, make_session())
            assert 599_000 < await client.command("PTTL", key) <= 600_000

            clock.now = NOW + 1000  # used again later: the TTL starts over
            await store.save(session_id, make_session(last_seen=clock.now))
            assert 599_000 < await client.command("PTTL", key) <= 600_000

            clock.now = NOW + 3500  # 100 s of max_duration left
            await store.save(session_id, make_session(last_seen=clock.now))
            assert 99_000 < await client.command("PTTL", key) <= 100_000

            clock.now = NOW + 3600  # over: saving deletes it
            await store.save(session_id, make_session(last_seen=clock.now))
            assert await client.get(key) is None
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_load_refuses_a_session_past_max_duration_even_if_redis_kept_it(
    redis: RedisProcess,
) -> None:
    clock = FakeClock()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        store = make_store(client, clock, max_duration=3600)
        try:
            session_id = store.new_session_id()
            await store.save(session_id, make_session())
            clock.now = NOW + 3601  # this process's clock is ahead of Redis's
            assert await store.load(session_id) is None
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_load_is_one_get_and_garbage_ids_cost_nothing(redis: RedisProcess) -> None:
    clock = FakeClock()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        try:
            real = make_store(client, clock)
            session_id = real.new_session_id()
            await real.save(session_id, make_session())

            counting = CountingClient(client)
            store = make_store(counting, clock)
            assert await store.load(session_id) is not None
            assert counting.calls == ["get"]

            counting.calls.clear()
            assert await store.load(store.new_session_id()) is None  # well-formed, guessed
            assert counting.calls == ["get"]

            offline = CountingClient(None)  # any call would fail the test
            store = make_store(offline, clock)
            for garbage in ["", "x", session_id + "A", session_id[:-1] + "!", "a" * 4096, "é" * 43]:
                assert await store.load(garbage) is None
            assert offline.calls == []
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_sign_out_takes_the_session_out_of_its_indexes(redis: RedisProcess) -> None:
    """Issue 16's soak: keys must stay bounded by live sessions, so a signed-out
    session's sid set goes with it (it used to stay for max_duration), and the
    user's sub set keeps only the sessions still alive."""
    clock = FakeClock()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        store = make_store(client, clock)
        try:
            first, second = store.new_session_id(), store.new_session_id()
            ended = make_session(provider_sid="sid-1", sub="alice")
            await store.save(first, ended)
            await store.save(second, make_session(provider_sid="sid-2", sub="alice"))
            before = await client.command("DBSIZE")
            assert before == 5  # two sessions, two sid sets, one sub set

            await store.delete(first, ended)

            assert await store.load(first) is None
            assert await store.load(second) is not None
            sid_1 = f"idgw:app:sid:{hashlib.sha256(b'sid-1').hexdigest()}"
            sub = f"idgw:app:sub:{hashlib.sha256(b'alice').hexdigest()}"
            assert await client.command("EXISTS", sid_1) == 0
            assert await client.command("SMEMBERS", sub) == [
                store.session_key(second).rsplit(":", 1)[1].encode()
            ]
            assert await client.command("DBSIZE") == 3
            # Without the session (an old caller): the session key only, as before.
            await store.delete(second)
            assert await client.command("DBSIZE") == 2
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_delete_by_sid_and_by_sub_remove_only_those_sessions(redis: RedisProcess) -> None:
    clock = FakeClock()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        store = make_store(client, clock, max_duration=3600)
        other_route = make_store(client, clock, route="other")
        try:
            ids = {name: store.new_session_id() for name in ("a1", "a2", "b", "c", "d")}
            await store.save(ids["a1"], make_session(provider_sid="sid-a", sub="alice"))
            await store.save(ids["a2"], make_session(provider_sid="sid-a", sub="alice"))
            await store.save(ids["b"], make_session(provider_sid="sid-b", sub="alice"))
            await store.save(ids["c"], make_session(provider_sid=None, sub="carol"))
            await store.save(ids["d"], make_session(provider_sid="sid-d", sub="dave"))
            elsewhere = other_route.new_session_id()
            await other_route.save(
                elsewhere, make_session(route="other", provider_sid="sid-a", sub="alice")
            )
            sid_index = f"idgw:app:sid:{hashlib.sha256(b'sid-a').hexdigest()}"
            assert 3_599_000 < await client.command("PTTL", sid_index) <= 3_600_000

            assert await store.delete_by_sid("sid-a") == 2
            assert await store.load(ids["a1"]) is None
            assert await store.load(ids["a2"]) is None
            assert await store.load(ids["b"]) is not None
            assert await client.get(sid_index) is None
            assert await store.delete_by_sid("sid-a") == 0
            assert await store.delete_by_sid("never-seen") == 0

            assert await store.delete_by_sub("alice") == 1  # b; a1 and a2 were gone already
            assert await store.load(ids["b"]) is None
            assert await store.delete_by_sub("carol") == 1
            assert await store.load(ids["c"]) is None
            assert await store.load(ids["d"]) is not None
            assert await other_route.load(elsewhere) is not None
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_indexes_drop_sessions_that_ended(redis: RedisProcess) -> None:
    clock = FakeClock()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        store = make_store(client, clock)
        try:
            ids = [store.new_session_id() for _ in range(20)]
            for session_id in ids:
                await store.save(session_id, make_session(provider_sid=None, sub="frequent"))
            for session_id in ids[:-2]:
                await store.delete(session_id)
            await store.save(
                store.new_session_id(), make_session(provider_sid=None, sub="frequent")
            )
            index = f"idgw:app:sub:{hashlib.sha256(b'frequent').hexdigest()}"
            assert len(await client.smembers(index)) == 3
        finally:
            await client.close()

    run_in_reactor(main)


@requires_redis
def test_the_refresh_lock_is_exclusive_and_only_its_holder_unlocks(redis: RedisProcess) -> None:
    clock = FakeClock()

    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(redis.url))
        other_process = RedisClient(reactor, redis_settings(redis.url))
        store = make_store(client, clock)
        other = make_store(other_process, clock)
        try:
            session_id = store.new_session_id()
            token = await store.lock(session_id)
            assert token
            assert await other.lock(session_id) is None
            await other.unlock(session_id, "not-the-token")
            assert await other.lock(session_id) is None
            await store.unlock(session_id, token)
            second = await other.lock(session_id, ttl_ms=100)
            assert second and second != token
            assert await store.lock(session_id) is None
            await sleep(reactor, 0.15)  # the holder died: the lock expires
            assert await store.lock(session_id) is not None
            assert await store.lock("not an id") is None
        finally:
            await client.close()
            await other_process.close()

    run_in_reactor(main)


# -- faults ----------------------------------------------------------------------------


@requires_redis
def test_redis_killed_gives_redis_unavailable_promptly_and_then_recovers(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, password=PASSWORD)
    clock = FakeClock()
    with server:

        async def main(reactor: Any) -> None:
            client = RedisClient(reactor, redis_settings(server.url))
            store = make_store(client, clock)
            try:
                session_id = store.new_session_id()
                await store.save(session_id, make_session())
                server.kill()
                for _ in range(5):
                    started = reactor.seconds()
                    with pytest.raises(RedisUnavailable):
                        await store.load(session_id)
                    assert reactor.seconds() - started < COMMAND_TIMEOUT + 1
                assert not await client.ping()
                assert not client.ready
                assert client.last_error

                # Restarted, empty: the same client finds it by itself.
                server.start()
                for _ in range(40):
                    if await client.ping():
                        break
                    await sleep(reactor, 0.05)
                assert client.ready
                assert await store.load(session_id) is None  # users log in again
            finally:
                await client.close()

        run_in_reactor(main)


@requires_redis
def test_a_hung_redis_fails_calls_within_the_command_timeout(tmp_path: Path) -> None:
    with RedisProcess(tmp_path) as server:

        async def main(reactor: Any) -> None:
            client = RedisClient(reactor, redis_settings(server.url))
            try:
                assert await client.set("key", "value")
                server.pause()
                try:
                    for _ in range(2):  # the connection in use, then a fresh one
                        started = reactor.seconds()
                        with pytest.raises(RedisUnavailable, match="within 0.5 s"):
                            await client.get("key")
                        assert reactor.seconds() - started < COMMAND_TIMEOUT + 1
                    # A new client: the kernel accepts the connection, Redis never answers.
                    fresh = RedisClient(reactor, redis_settings(server.url))
                    started = reactor.seconds()
                    with pytest.raises(RedisUnavailable):
                        await fresh.get("key")
                    assert reactor.seconds() - started < COMMAND_TIMEOUT + 1
                    await fresh.close()
                finally:
                    server.resume()
                for _ in range(40):
                    if await client.ping():
                        break
                    await sleep(reactor, 0.05)
                assert await client.get("key") == b"value"
            finally:
                await client.close()

        run_in_reactor(main)


@requires_redis
def test_restarted_redis_is_found_again_without_a_new_client(tmp_path: Path) -> None:
    with RedisProcess(tmp_path) as server:
        clock = FakeClock()

        async def main(reactor: Any) -> None:
            client = RedisClient(reactor, redis_settings(server.url))
            store = make_store(client, clock)
            try:
                session_id = store.new_session_id()
                await store.save(session_id, make_session())
                server.restart()  # graceful, same port, nothing saved
                loaded: Any = "unset"
                for _ in range(40):
                    try:
                        loaded = await store.load(session_id)
                        break
                    except RedisUnavailable:
                        await sleep(reactor, 0.05)
                assert loaded is None
                await store.save(session_id, make_session())
                assert await store.load(session_id) is not None
            finally:
                await client.close()

        run_in_reactor(main)


@requires_redis
def test_nothing_listening_fails_fast_and_closed_clients_refuse() -> None:
    async def main(reactor: Any) -> None:
        client = RedisClient(reactor, redis_settings(f"redis://127.0.0.1:{free_port()}/0"))
        try:
            started = reactor.seconds()
            with pytest.raises(RedisUnavailable, match="refused"):
                await client.get("x")
            assert reactor.seconds() - started < COMMAND_TIMEOUT
            assert not await client.ping()
        finally:
            await client.close()
        with pytest.raises(RedisUnavailable, match="closed"):
            await client.get("x")

    run_in_reactor(main)
