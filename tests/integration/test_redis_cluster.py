"""Sessions, logouts, refresh locks and revocations on a real six-node Redis Cluster.

Three primaries and three replicas on loopback (tests/redis_cluster.py); the
client code runs on a fresh reactor per test (``run_in_reactor``). Two
cluster clients stand for two gateway processes. The failover test has its
own cluster, since it kills a primary.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from idgateway.config.model import RedisSettings
from idgateway.redis.client import RedisClient
from idgateway.redis.cluster import RedisClusterClient
from idgateway.redis.errors import RedisUnavailable
from idgateway.redis.slots import key_slot
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.redis_store import (
    RedisSessionStore,
    _hash_text,
    session_key_hash,
)
from idgateway.sessions.revocation import ReplayCache, RevocationList
from tests.certs import make_ca
from tests.redis_cluster import RedisCluster, requires_redis_cluster
from tests.redis_process import (
    RedisProcess,
    redis_supports_tls,
    run_in_reactor,
    short_tempdir,
    sleep,
)
from tests.session_factories import NOW, make_session

pytestmark = requires_redis_cluster

KEYRING = KeyRing([os.urandom(32)])


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now


def cluster_settings(cluster: RedisCluster, **overrides: Any) -> RedisSettings:
    values: dict[str, Any] = {
        "cluster": tuple(cluster.seeds),
        "pool_size": 2,
        "connect_timeout": 1.0,
        "command_timeout": 0.5,
    }
    values.update(overrides)
    return RedisSettings(**values)


def make_store(client: Any, clock: Any, route: str = "app") -> RedisSessionStore:
    return RedisSessionStore(
        client,
        route=route,
        keyring=KEYRING,
        inactivity_timeout=600,
        max_duration=3600,
        clock=clock,
    )


async def until(reactor: Any, condition: Any, within: float = 5.0) -> float:
    started = reactor.seconds()
    while not condition():
        if reactor.seconds() - started > within:
            raise AssertionError(f"still false after {within}s")
        await sleep(reactor, 0.02)
    return float(reactor.seconds() - started)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    workdir = short_tempdir("rcl")
    with RedisCluster(Path(workdir)) as running:
        yield running


@pytest.fixture
def flushed(cluster: RedisCluster) -> RedisCluster:
    for node in cluster.primaries():
        node.call("FLUSHALL")
    return cluster


def test_sessions_spread_over_the_primaries_and_stay_in_one_slot_each(
    flushed: RedisCluster,
) -> None:
    cluster = flushed

    async def main(reactor: Any) -> None:
        client = RedisClusterClient(reactor, cluster_settings(cluster))
        clock = FakeClock()
        store = make_store(client, clock)
        try:
            ids = [RedisSessionStore.new_session_id() for _ in range(30)]
            for number, session_id in enumerate(ids):
                await store.save(session_id, make_session(sub=f"user-{number % 3}"))
            for session_id in ids:
                loaded = await store.load(session_id)
                assert loaded is not None and loaded.sub.startswith("user-")
            # The session and its refresh lock share a slot (the hash is the tag).
            digest = session_key_hash(ids[0])
            assert store.session_key(ids[0]) == f"idgw:app:s:{{{digest}}}"
            token = await store.lock(ids[0])
            assert token is not None and await store.lock(ids[0]) is None
            lock_key = f"idgw:app:lock:{{{digest}}}"
            assert key_slot(lock_key) == key_slot(store.session_key(ids[0]))
            assert cluster.call(lock_key, "GET", lock_key) == token.encode()
            await store.unlock(ids[0], "not-the-token")
            assert await store.lock(ids[0]) is None
            await store.unlock(ids[0], token)
            assert await store.lock(ids[0]) is not None
            assert client.ready and await client.ping()
        finally:
            await client.close()

    run_in_reactor(main)
    # Every primary holds some of them: the cluster really shares the load.
    per_node = [len(node.call("KEYS", "idgw:app:s:*")) for node in cluster.primaries()]
    assert len(per_node) == 3 and all(per_node) and sum(per_node) == 30


def test_logout_by_sid_and_by_sub_reach_sessions_on_every_node(flushed: RedisCluster) -> None:
    cluster = flushed

    async def main(reactor: Any) -> None:
        client = RedisClusterClient(reactor, cluster_settings(cluster))
        other_process = RedisClusterClient(reactor, cluster_settings(cluster))
        clock = FakeClock()
        store, other = make_store(client, clock), make_store(other_process, clock)
        try:
            shared_sid = [RedisSessionStore.new_session_id() for _ in range(12)]
            for session_id in shared_sid:
                await store.save(session_id, make_session(provider_sid="sid-1", sub="alice"))
            bobs = [RedisSessionStore.new_session_id() for _ in range(25)]
            for session_id in bobs:
                await store.save(session_id, make_session(provider_sid=None, sub="bob"))
            bystander = RedisSessionStore.new_session_id()
            await store.save(bystander, make_session(provider_sid="sid-2", sub="carol"))
            slots = {key_slot(store.session_key(s)) for s in shared_sid}
            owners = {cluster.slot_owner(slot).port for slot in slots}
            assert len(owners) >= 2, "the sessions of one sid should span nodes"

            # Another process ends them (a back-channel logout it received).
            assert await other.delete_by_sid("sid-1") == 12
            for session_id in shared_sid:
                assert await store.load(session_id) is None
            assert await other.delete_by_sid("sid-1") == 0
            # bob's index passed the prune threshold: ended sessions were pruned.
            await store.delete(bobs[0])
            await store.save(RedisSessionStore.new_session_id(), make_session(sub="bob"))
            assert await other.delete_by_sub("bob") == 25
            for session_id in bobs:
                assert await store.load(session_id) is None
            assert await store.load(bystander) is not None
            # A sign-out with the session at hand takes it out of its indexes
            # too, each index in its own slot.
            carol = make_session(provider_sid="sid-2", sub="carol")
            await store.delete(bystander, carol)
            assert await store.load(bystander) is None
        finally:
            await client.close()
            await other_process.close()

    run_in_reactor(main)
    assert not [k for k in cluster.keys("idgw:app:s:*") if b"{" not in k]
    # The signed-out session's sid and sub indexes are gone (they held only it).
    assert not cluster.keys(f"idgw:app:sid:{_hash_text('sid-2')}")
    assert not cluster.keys(f"idgw:app:sub:{_hash_text('carol')}")


def test_a_save_only_over_a_stored_session_never_brings_an_ended_one_back(
    flushed: RedisCluster,
) -> None:
    cluster = flushed

    async def main(reactor: Any) -> None:
        client = RedisClusterClient(reactor, cluster_settings(cluster))
        clock = FakeClock()
        store = make_store(client, clock)
        try:
            session_id = RedisSessionStore.new_session_id()
            session = make_session(provider_sid="sid-9", sub="dave")
            assert await store.save(session_id, session)
            later = attrs.evolve(session, last_seen=session.last_seen + 60)
            assert await store.save(session_id, later, only_if_stored=True)
            assert await store.load(session_id) == later
            await store.delete_by_sid("sid-9")  # a logout elsewhere
            assert not await store.save(session_id, later, only_if_stored=True)
            assert await store.load(session_id) is None
        finally:
            await client.close()

    run_in_reactor(main)
    assert not cluster.keys("idgw:app:s:*")


def test_revocations_travel_between_processes_and_load_from_every_node(
    flushed: RedisCluster,
) -> None:
    cluster = flushed

    async def main(reactor: Any) -> None:
        clients = [RedisClusterClient(reactor, cluster_settings(cluster)) for _ in range(3)]
        first = RevocationList(reactor, clients[0], ttl=600)
        second = RevocationList(reactor, clients[1], ttl=600)
        try:
            first.start()
            second.start()
            await until(reactor, lambda: first.loaded and second.loaded)
            sids = [f"sid-{n}" for n in range(20)]
            for sid in sids:
                await first.revoke("app", sid)
            await first.revoke_sub("app", "mallory", reactor.seconds())
            await until(reactor, lambda: all(second.is_revoked("app", sid) for sid in sids))
            # A process starting now finds every one of them, on whichever node.
            late = RevocationList(reactor, clients[2], ttl=600)
            assert await late.load() == 21
            assert all(late.is_revoked("app", sid) for sid in sids)
            # A raised ttl extends the keys, node by node.
            late.set_ttl(7200)
            key = f"idgw:revoked:app:{__import__('hashlib').sha256(b'sid-3').hexdigest()}"
            await until(reactor, lambda: cluster.call(key, "PTTL", key) > 3_600_000)
            # The replay cache shares its memory through the cluster too.
            replay_a, replay_b = ReplayCache(reactor, clients[0]), ReplayCache(reactor, clients[1])
            expires = reactor.seconds() + 60
            assert await replay_a.first_use("https://idp", "jti-1", expires)
            assert not await replay_b.first_use("https://idp", "jti-1", expires)
        finally:
            for client in clients:
                await client.close()

    run_in_reactor(main)
    owners = {cluster.primary_for(k).port for k in cluster.keys("idgw:revoked:*")}
    assert len(owners) == 3


def test_a_primary_killed_under_load_loses_no_replicated_session(tmp_path: Path) -> None:
    """SIGKILL a primary while two processes read sessions: the replica takes over,
    sessions written before survive, and the clients follow without a restart."""
    with RedisCluster(short_tempdir("rcf")) as cluster:

        async def main(reactor: Any) -> dict[str, Any]:
            client = RedisClusterClient(reactor, cluster_settings(cluster))
            listener = RedisClusterClient(reactor, cluster_settings(cluster))
            clock = FakeClock()
            store = make_store(client, clock)
            heard = RevocationList(reactor, listener, ttl=600)
            telling = RevocationList(reactor, client, ttl=600)
            results: dict[str, Any] = {"ok": 0, "unavailable": 0, "missing": 0}
            try:
                heard.start()
                await until(reactor, lambda: heard.loaded)
                ids = [RedisSessionStore.new_session_id() for _ in range(150)]
                for session_id in ids:
                    await store.save(session_id, make_session())
                cluster.replicate()  # what "written before" means: replicated (WAIT 1)
                subscribed_on = listener.subscriber_address
                assert subscribed_on is not None
                # Kill the primary the listener subscribes on, if it is one (its
                # subscription must move); else the first session's primary.
                victim = next(
                    (n for n in cluster.primaries() if n.port == subscribed_on[1]),
                    cluster.primary_for(store.session_key(ids[0])),
                )
                stop = False

                async def load_steadily() -> None:
                    while not stop:
                        session_id = random.choice(ids)
                        try:
                            found = await store.load(session_id)
                        except RedisUnavailable:
                            results["unavailable"] += 1
                        else:
                            results["ok" if found is not None else "missing"] += 1
                        await sleep(reactor, 0.002)

                loaders = [load_steadily() for _ in range(4)]
                from twisted.internet import defer

                running = [defer.ensureDeferred(loader) for loader in loaders]
                await until(reactor, lambda: results["ok"] >= 20)
                results["ok_before"] = results["ok"]
                killed_at = reactor.seconds()
                cluster.kill(victim)

                async def all_readable() -> bool:
                    try:
                        return all([await store.load(s) is not None for s in ids[:20]])
                    except RedisUnavailable:
                        return False

                while not await all_readable():
                    assert reactor.seconds() - killed_at < 15, "the client did not follow"
                    await sleep(reactor, 0.1)
                results["recovered_after"] = reactor.seconds() - killed_at
                await sleep(reactor, 0.3)
                stop = True
                await defer.gatherResults(running)
                # Every session written before the kill is there, through the new map.
                lost = [s for s in ids if await store.load(s) is None]
                results["lost"] = len(lost)
                assert victim.port not in [port for _, port in client.primaries]
                # The listener's subscription moved (or stayed on a live node): a
                # revocation published now still reaches it.
                await until(reactor, lambda: listener.subscribed, within=10)
                await telling.revoke("app", "after-failover")
                await until(reactor, lambda: heard.is_revoked("app", "after-failover"), 5)
                return results
            finally:
                await client.close()
                await listener.close()

        results = run_in_reactor(main, timeout=40)
    print("failover under load:", results)  # shown with pytest -s
    assert results["lost"] == 0, results
    assert results["missing"] == 0, results
    assert results["ok"] > results["ok_before"] >= 20, results
    assert results["recovered_after"] < 10, results


@pytest.mark.skipif(not redis_supports_tls(), reason="this redis-server was built without TLS")
def test_a_tls_cluster_is_verified_node_by_node(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    # Nodes present their certificate to each other on the cluster bus.
    leaf = ca.issue(tmp_path / "ca", ["127.0.0.1"], client_auth=True)
    other_ca = make_ca(tmp_path / "other", name="some other CA")
    tls = (leaf.cert_path, leaf.key_path, ca.cert_path)
    with RedisCluster(short_tempdir("rct"), tls=tls) as cluster:
        assert all(seed.startswith("rediss://:s3cret@") for seed in cluster.seeds)

        async def main(reactor: Any) -> None:
            # TLS handshakes on a busy machine: more time than the 0.5 s elsewhere.
            slow = {"connect_timeout": 3.0, "command_timeout": 3.0}
            good = RedisClusterClient(
                reactor, cluster_settings(cluster, ca_file=str(ca.cert_path), **slow)
            )
            wrong = RedisClusterClient(
                reactor, cluster_settings(cluster, ca_file=str(other_ca.cert_path), **slow)
            )
            store = make_store(good, FakeClock())
            try:
                ids = [RedisSessionStore.new_session_id() for _ in range(12)]
                for session_id in ids:
                    await store.save(session_id, make_session())
                for session_id in ids:
                    assert await store.load(session_id) is not None
                assert len(good.primaries) == 3 and await good.ping()
                with pytest.raises(RedisUnavailable, match="certificate verify failed"):
                    await wrong.get("anything")
            finally:
                await good.close()
                await wrong.close()

        run_in_reactor(main)
        per_node = [len(node.call("KEYS", "idgw:app:s:*")) for node in cluster.primaries()]
        assert sum(per_node) == 12 and all(per_node)


def test_a_hung_primary_is_failed_over_and_followed() -> None:
    """SIGSTOP a primary: calls to it time out (503) instead of hanging, the cluster
    promotes its replica, and the client follows; when the old primary wakes up
    as a replica, nothing goes back to it."""
    with RedisCluster(short_tempdir("rch")) as cluster:

        async def main(reactor: Any) -> dict[str, Any]:
            client = RedisClusterClient(reactor, cluster_settings(cluster))
            store = make_store(client, FakeClock())
            results: dict[str, Any] = {"timed_out": 0}
            try:
                ids = [RedisSessionStore.new_session_id() for _ in range(60)]
                for session_id in ids:
                    await store.save(session_id, make_session())
                cluster.replicate()
                victim = cluster.primary_for(store.session_key(ids[0]))
                victim.pause()
                paused_at = reactor.seconds()
                try:
                    while True:
                        started = reactor.seconds()
                        try:
                            if await store.load(ids[0]) is not None:
                                break
                        except RedisUnavailable:
                            results["timed_out"] += 1
                            # The command timeout (0.5 s), plus slack for a busy machine:
                            # never the seconds a hung server would hold a call.
                            assert reactor.seconds() - started < 2.0
                        assert reactor.seconds() - paused_at < 15, "not followed"
                        await sleep(reactor, 0.05)
                    results["recovered_after"] = reactor.seconds() - paused_at
                    results["lost"] = len([s for s in ids if await store.load(s) is None])
                finally:
                    victim.resume()
                resumed_at = reactor.seconds()
                await until(reactor, lambda: victim.role() == "slave", within=10)
                results["demoted_after_resume"] = reactor.seconds() - resumed_at
                assert ("127.0.0.1", victim.port) not in client.primaries
                assert all([await store.load(s) is not None for s in ids])
                return results
            finally:
                await client.close()

        results = run_in_reactor(main, timeout=40)
    print("hung primary:", results)  # shown with pytest -s
    assert results["timed_out"] >= 1 and results["lost"] == 0, results
    assert results["recovered_after"] < 10, results


def test_a_slot_migrating_under_the_client_is_followed_by_ask_then_moved(
    flushed: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reshard one session's slot by hand, as ``redis-cli --cluster reshard`` does:
    while it migrates, a key already moved is reached with ASKING (on the same
    connection as the command); once done, MOVED updates the client's map."""
    cluster = flushed
    asked: list[tuple[Any, ...]] = []
    plain_asking = RedisClient.asking

    async def counting_asking(self: RedisClient, *args: Any) -> Any:
        asked.append(args)
        return await plain_asking(self, *args)

    monkeypatch.setattr(RedisClient, "asking", counting_asking)

    def node_id(node: Any) -> str:
        return str(node.call("CLUSTER", "MYID").decode())

    async def main(reactor: Any) -> None:
        client = RedisClusterClient(reactor, cluster_settings(cluster))
        store = make_store(client, FakeClock())
        try:
            moved_id = RedisSessionStore.new_session_id()
            await store.save(moved_id, make_session(sub="moved"))
            key = store.session_key(moved_id)
            slot = key_slot(key)
            source = cluster.slot_owner(slot)
            target = next(n for n in cluster.primaries() if n.port != source.port)
            # A key with the session's tag: same slot, left on the source for now.
            other_key = f"{{{key.split('{')[1].rstrip('}')}}}:other"
            cluster.call(other_key, "SET", other_key, "still here")
            target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
            source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))
            source.call(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "AUTH", "s3cret", "KEYS", key
            )
            # Mid-migration: the moved session is on the target (ASK), the other
            # key still on the source; the client's map still names the source.
            loaded = await store.load(moved_id)
            assert loaded is not None and loaded.sub == "moved"
            assert await client.get(other_key) == b"still here"
            assert client.slot_address(slot) == ("127.0.0.1", source.port)
            assert [args[0] for args in asked] == ["GET"]
            # The migration ends: every node learns the slot's new owner.
            source.call(
                "MIGRATE",
                "127.0.0.1",
                target.port,
                "",
                0,
                5000,
                "AUTH",
                "s3cret",
                "KEYS",
                other_key,
            )
            for node in cluster.primaries():
                node.call("CLUSTER", "SETSLOT", slot, "NODE", node_id(target))
            loaded = await store.load(moved_id)
            assert loaded is not None and loaded.sub == "moved"
            assert client.slot_address(slot) == ("127.0.0.1", target.port)
            assert len(asked) == 1  # MOVED, not ASK, once the slot has moved
            assert await client.get(other_key) == b"still here"
        finally:
            await client.close()

    run_in_reactor(main)


def test_url_pointing_at_a_cluster_node_says_to_use_cluster(flushed: RedisCluster) -> None:
    cluster = flushed
    key = "idgw:somewhere"
    elsewhere = next(n for n in cluster.primaries() if n is not cluster.primary_for(key))

    async def main(reactor: Any) -> None:
        url = f"redis://:s3cret@127.0.0.1:{elsewhere.port}/0"
        plain = RedisClient(reactor, RedisSettings(url=url, pool_size=1, command_timeout=0.5))
        try:
            with pytest.raises(RedisUnavailable, match="give cluster: \\[its URL"):
                await plain.get(key)
        finally:
            await plain.close()

    run_in_reactor(main)


def test_cluster_pointing_at_a_plain_redis_says_so(redis: RedisProcess) -> None:
    async def main(reactor: Any) -> None:
        seed = redis.url.rsplit("/", 1)[0]
        client = RedisClusterClient(
            reactor, RedisSettings(cluster=(seed,), pool_size=1, command_timeout=0.5)
        )
        try:
            with pytest.raises(RedisUnavailable, match="cluster support disabled"):
                await client.get("k")
            assert not await client.ping()
            assert "cluster support disabled" in (client.last_error or "")
        finally:
            await client.close()

    run_in_reactor(main)
