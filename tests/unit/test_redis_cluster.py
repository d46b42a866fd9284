"""Redis Cluster in memory: key slots, the slot map, MOVED/ASK, failover, the moving subscription.

The cluster client talks to each node through a ``RedisClient``; here each
node is a fake with that API, answering like a cluster node would (``MOVED``
for slots it does not serve, ``ASK`` for keys of a slot it is migrating).
Against a real six-node cluster: tests/integration/test_redis_cluster.py.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from idgateway.config.model import RedisSettings
from idgateway.redis.client import RedisClient
from idgateway.redis.cluster import RedisClusterClient, redis_client_for
from idgateway.redis.errors import RedisCommandError, RedisUnavailable
from idgateway.redis.slot_map import parse_cluster_slots, parse_redirect
from idgateway.redis.slots import SLOT_COUNT, crc16, hashed_part, key_slot
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.redis_store import RedisSessionStore, session_key_hash

# -- slots ---------------------------------------------------------------------------


def test_crc16_is_the_xmodem_crc_of_the_cluster_spec() -> None:
    # The check value given in the Redis Cluster specification.
    assert crc16(b"123456789") == 0x31C3
    assert crc16(b"") == 0


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        # Values from redis-server 7's CLUSTER KEYSLOT.
        ("foo", 12182),
        ("user1000", 3443),
        ("{user1000}.following", 3443),
        ("{user1000}.followers", 3443),
        # An empty tag does not count: the whole key is hashed.
        ("foo{}{bar}", 8363),
        # The first '{' and the first '}' after it.
        ("foo{{bar}}zap", key_slot("{bar")),
        ("{bar", 4015),
        ("a}b{c", crc16(b"a}b{c") % SLOT_COUNT),
    ],
)
def test_key_slot_follows_the_spec(key: str, slot: int) -> None:
    assert key_slot(key) == slot
    assert key_slot(key.encode()) == slot


@pytest.mark.parametrize(
    ("key", "part"),
    [
        (b"{}", b"{}"),
        (b"x{}y", b"x{}y"),
        (b"{a}{b}", b"a"),
        (b"{", b"{"),
        (b"}{", b"}{"),
        (b"idgw:app:s:{abc}", b"abc"),
    ],
)
def test_hash_tags(key: bytes, part: bytes) -> None:
    assert hashed_part(key) == part


def test_text_keys_are_hashed_as_utf8() -> None:
    assert key_slot("caf\u00e9") == key_slot("caf\u00e9".encode())


# -- the slot map and redirections ------------------------------------------------------


def test_cluster_slots_reply_is_read() -> None:
    reply = [
        [0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7000, b"id4"]],
        [5461, 10922, [b"", 7001, b"id2"]],  # the node asked, not knowing its address
        [10923, 16383, [b"10.0.0.3", 7002, b"id3"]],
    ]
    assert parse_cluster_slots(reply, ("10.0.0.2", 7001)) == [
        (0, 5460, ("10.0.0.1", 7000)),
        (5461, 10922, ("10.0.0.2", 7001)),
        (10923, 16383, ("10.0.0.3", 7002)),
    ]


@pytest.mark.parametrize(
    "reply",
    [
        b"OK",
        [[0, 100]],
        [[0, 20000, [b"h", 1]]],
        [[5, 4, [b"h", 1]]],
        [[0, 1, [b"h"]]],
        [[0, 1, b"h:1"]],
    ],
)
def test_strange_cluster_slots_replies_are_refused(reply: Any) -> None:
    with pytest.raises(ValueError):
        parse_cluster_slots(reply, ("h", 1))


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        ("MOVED 3999 127.0.0.1:6381", ("MOVED", 3999, ("127.0.0.1", 6381))),
        ("ASK 3999 10.0.0.2:7000", ("ASK", 3999, ("10.0.0.2", 7000))),
        ("MOVED 1 [::1]:7000", ("MOVED", 1, ("::1", 7000))),
        ("MOVED 1 ::1:7000", ("MOVED", 1, ("::1", 7000))),
        ("WRONGTYPE Operation against a key", None),
        ("MOVED x 127.0.0.1:1", None),
        ("MOVED 1 127.0.0.1", None),
        ("MOVED 1 :7000", None),
        ("", None),
    ],
)
def test_redirections_are_read(reply: str, parsed: Any) -> None:
    assert parse_redirect(reply) == parsed


# -- a fake cluster ------------------------------------------------------------------------


class FakeCluster:
    """Nodes by address, who serves which slot, and one shared keyspace."""

    def __init__(self, owners: dict[tuple[str, int], range]) -> None:
        self.owners = owners
        self.data: dict[bytes, Any] = {}
        self.down: set[tuple[str, int]] = set()
        # slot -> (from, to): keys of the slot not on `from` are on `to` (ASK).
        self.migrating: dict[int, tuple[tuple[str, int], tuple[str, int]]] = {}
        self.clients: list[FakeNode] = []
        self.log: list[tuple[tuple[str, int], tuple[Any, ...]]] = []
        self.cluster_down = False

    def owner(self, slot: int) -> tuple[str, int]:
        return next(addr for addr, slots in self.owners.items() if slot in slots)

    def client(self, reactor: Any, settings: RedisSettings) -> FakeNode:
        host, _, port = (settings.url or "").split("@")[-1].rsplit("/", 1)[0].rpartition(":")
        node = FakeNode(self, (host.replace("redis://", ""), int(port)), settings)
        self.clients.append(node)
        return node

    def slots_reply(self) -> list[Any]:
        return [
            [r.start, r.stop - 1, [addr[0].encode(), addr[1], b"id"]]
            for addr, r in self.owners.items()
        ]


def refused(reply: str) -> RedisCommandError:
    """What RedisClient raises for an error reply."""
    return RedisCommandError(f"Redis at redis://10.0.0.9:7000/0 refused a command: {reply}", reply)


def _key(args: tuple[Any, ...]) -> bytes:
    key = args[1] if args[0] != "EVAL" else args[3]
    return key if isinstance(key, bytes) else str(key).encode()


class FakeNode:
    def __init__(self, cluster: FakeCluster, address: tuple[str, int], settings: Any) -> None:
        self.cluster = cluster
        self.address = address
        self.settings = settings
        self.closed = False
        self.started = False
        self.channels: list[str] = []
        self.subscribed = True

    @property
    def ready(self) -> bool:
        return self.address not in self.cluster.down

    @property
    def last_error(self) -> str | None:
        return None if self.ready else "Connection refused"

    def start(self) -> None:
        self.started = True

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

    async def ping(self) -> bool:
        return self.ready

    def subscribe(self, channel: str, on_message: Any, on_subscribed: Any = None) -> None:
        self.channels.append(channel)
        if on_subscribed is not None:
            on_subscribed()

    async def asking(self, *args: Any) -> Any:
        return self._run(args, asking=True)

    async def command(self, *args: Any) -> Any:
        return self._run(args, asking=False)

    def _run(self, args: tuple[Any, ...], asking: bool) -> Any:
        cluster = self.cluster
        cluster.log.append((self.address, args))
        if self.address in cluster.down:
            raise RedisUnavailable(f"cannot connect to {self.address}: Connection refused")
        if args[:2] == ("CLUSTER", "SLOTS"):
            return cluster.slots_reply()
        if args[0] in ("SCAN",):
            mine = [k for k in cluster.data if cluster.owner(key_slot(k)) == self.address]
            return [b"0", mine]
        if cluster.cluster_down:
            raise refused("CLUSTERDOWN The cluster is down")
        slot = key_slot(_key(args))
        migrating = cluster.migrating.get(slot)
        if asking:
            assert migrating is not None and migrating[1] == self.address
        elif cluster.owner(slot) != self.address:
            owner = cluster.owner(slot)
            raise refused(f"MOVED {slot} {owner[0]}:{owner[1]}")
        elif migrating is not None and _key(args) not in cluster.data:
            target = migrating[1]
            raise refused(f"ASK {slot} {target[0]}:{target[1]}")
        key = _key(args)
        if args[0] == "GET":
            return cluster.data.get(key)
        if args[0] == "SET":
            cluster.data[key] = args[2]
            return b"OK"
        if args[0] == "DEL":
            keys = [a if isinstance(a, bytes) else str(a).encode() for a in args[1:]]
            assert len({key_slot(k) for k in keys}) == 1, "CROSSSLOT"
            return sum(1 for k in keys if cluster.data.pop(k, None) is not None)
        if args[0] == "EVAL":
            return [args[0], self.address]
        raise AssertionError(f"unexpected {args}")


A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.3", 7000)
D = ("10.0.0.4", 7000)


def make(
    owners: dict[tuple[str, int], range] | None = None, seeds: tuple[str, ...] = ()
) -> tuple[FakeCluster, RedisClusterClient, Clock]:
    cluster = FakeCluster(
        owners or {A: range(0, 5461), B: range(5461, 10923), C: range(10923, SLOT_COUNT)}
    )
    settings = RedisSettings(
        cluster=seeds or ("redis://:pw@10.0.0.1:7000", "redis://:pw@10.0.0.2:7000"),
        command_timeout=1.0,
    )
    clock = Clock()
    return cluster, RedisClusterClient(clock, settings, node_client=cluster.client), clock


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    d = defer.ensureDeferred(coroutine)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the call did not finish"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def key_on(cluster: FakeCluster, address: tuple[str, int], prefix: str = "k") -> str:
    keys = (f"{prefix}{i}" for i in range(10_000))
    return next(key for key in keys if cluster.owner(key_slot(key)) == address)


def test_commands_go_to_the_primary_of_their_slot() -> None:
    cluster, client, _ = make()
    for address in (A, B, C):
        key = key_on(cluster, address)
        assert run(client.set(key, b"v")) is True
        assert cluster.log[-1] == (address, ("SET", key, b"v"))
        assert run(client.get(key)) == b"v"
    assert client.primaries == [A, B, C]


def test_node_urls_carry_the_seeds_password_and_scheme() -> None:
    cluster, client, _ = make(seeds=("rediss://u:p%40ss@10.0.0.1:7000",))
    assert client.node_settings(("10.0.0.9", 7001)).url == "rediss://u:p%40ss@10.0.0.9:7001/0"
    assert "p%40ss" not in client.description and "p@ss" not in client.description


def test_moved_is_followed_and_remembered() -> None:
    cluster, client, clock = make()
    key = key_on(cluster, A)
    run(client.get(key))
    # The slot moves to B (a reshard, or a failover the map has not seen yet).
    slot = key_slot(key)
    cluster.owners = {A: range(0, slot), B: range(slot, 10923), C: range(10923, SLOT_COUNT)}
    cluster.log.clear()
    assert run(client.set(key, b"v")) is True
    assert [entry[0] for entry in cluster.log if entry[1][0] == "SET"] == [A, B]
    assert client.slot_address(slot) == B
    clock.advance(1)
    cluster.log.clear()
    run(client.get(key))
    assert [entry[0] for entry in cluster.log] == [B]


def test_ask_is_followed_once_without_changing_the_map() -> None:
    cluster, client, _ = make()
    key = key_on(cluster, A)
    run(client.get(key))
    slot = key_slot(key)
    cluster.migrating[slot] = (A, D)
    cluster.log.clear()
    assert run(client.get(key)) is None
    assert [entry[0] for entry in cluster.log] == [A, D]
    assert client.slot_address(slot) == A


def test_endless_redirections_end_in_unavailable() -> None:
    cluster, client, _ = make()
    key = key_on(cluster, A)
    run(client.get(key))
    slot = key_slot(key)

    def bounce(args: tuple[Any, ...], asking: bool) -> Any:
        raise refused(f"MOVED {slot} 10.0.0.2:7000")

    for node in cluster.clients:
        node._run = bounce  # type: ignore[method-assign]
    original = cluster.client

    def bouncing_client(reactor: Any, settings: RedisSettings) -> FakeNode:
        node = original(reactor, settings)
        node._run = bounce  # type: ignore[method-assign]
        return node

    client._make_node = bouncing_client
    with pytest.raises(RedisUnavailable, match="redirected more than"):
        run(client.get(key))


def test_clusterdown_is_unavailable_and_rereads_the_map() -> None:
    cluster, client, clock = make()
    key = key_on(cluster, B)
    run(client.get(key))
    cluster.cluster_down = True
    clock.advance(1)
    cluster.log.clear()
    with pytest.raises(RedisUnavailable, match="CLUSTERDOWN") as caught:
        run(client.get(key))
    assert not isinstance(caught.value, RedisCommandError)
    assert any(args[:2] == ("CLUSTER", "SLOTS") for _, args in cluster.log)


def test_other_errors_are_command_errors() -> None:
    cluster, client, _ = make()
    key = key_on(cluster, A)

    async def wrong_type(*args: Any) -> Any:
        raise refused("WRONGTYPE Operation against a key")

    run(client.get(key))
    client._nodes[A].command = wrong_type  # type: ignore[method-assign]
    with pytest.raises(RedisCommandError, match="WRONGTYPE"):
        run(client.get(key))


def test_a_failed_primary_is_replaced_after_the_map_is_read_again() -> None:
    cluster, client, clock = make()
    key = key_on(cluster, A)
    run(client.set(key, b"v"))
    cluster.down.add(A)
    # Before the failover: the cluster still names A; the call fails, quickly.
    clock.advance(1)
    with pytest.raises(RedisUnavailable, match="Connection refused"):
        run(client.get(key))
    # A replica (D) is promoted: the next failure re-reads the map and retries there.
    cluster.owners = {D: range(0, 5461), B: range(5461, 10923), C: range(10923, SLOT_COUNT)}
    clock.advance(1)
    assert run(client.get(key)) == b"v"
    assert client.primaries == [D, B, C]
    # A's pool is closed: it serves no slot.
    assert all(node.closed for node in cluster.clients if node.address == A)
    assert A not in client._nodes


def test_a_hung_primary_is_asked_for_the_map_last() -> None:
    cluster, client, clock = make()
    key = key_on(cluster, A)
    run(client.get(key))
    hung = client._nodes[A]

    async def hangs(*args: Any) -> Any:
        cluster.log.append((A, args))
        clock.advance(1.0)  # the whole command timeout
        raise RedisUnavailable("10.0.0.1:7000 did not answer GET within 1 s")

    hung.command = hangs  # type: ignore[method-assign]
    cluster.log.clear()
    with pytest.raises(RedisUnavailable, match="did not answer"):
        run(client.get(key))
    # No time was left to retry, but the map is read again meanwhile, from B
    # (ready, not suspect) rather than from the node that just hung.
    reads = [addr for addr, args in cluster.log if args[0] == "CLUSTER"]
    assert reads == [B]


def test_the_map_is_read_from_the_next_seed_when_the_first_is_down() -> None:
    cluster, client, _ = make()
    cluster.down.add(A)
    key = key_on(cluster, C)
    assert run(client.set(key, b"v")) is True
    assert [addr for addr, args in cluster.log if args[0] == "CLUSTER"] == [A, B]


def test_no_seed_answering_is_unavailable_with_each_reason() -> None:
    cluster, client, _ = make()
    cluster.down.update({A, B})
    with pytest.raises(RedisUnavailable) as caught:
        run(client.get("k"))
    text = str(caught.value)
    assert "no node answered CLUSTER SLOTS" in text and "10.0.0.1" in text and "10.0.0.2" in text
    assert client.last_error is not None


def test_a_gap_in_the_map_is_unavailable() -> None:
    cluster, client, _ = make(owners={A: range(0, 100)})
    with pytest.raises(RedisUnavailable, match="no primary serves slot"):
        run(client.get(key_on(FakeCluster({A: range(0, 100), B: range(100, SLOT_COUNT)}), B)))


def test_map_reads_are_rate_limited() -> None:
    cluster, client, clock = make()
    key = key_on(cluster, A)
    run(client.get(key))
    cluster.down.add(A)
    for _ in range(20):
        with pytest.raises(RedisUnavailable):
            run(client.get(key))
    reads = [args for _, args in cluster.log if args[0] == "CLUSTER"]
    assert len(reads) == 1  # the first read only: the rest came too soon after it


def test_delete_splits_keys_by_slot_and_sums() -> None:
    cluster, client, _ = make()
    keys = [key_on(cluster, address) for address in (A, B, C)]
    for key in keys:
        run(client.set(key, b"v"))
    assert run(client.delete(*keys, "missing")) == 3


def test_a_script_s_keys_must_share_a_slot() -> None:
    cluster, client, _ = make()
    a, b = key_on(cluster, A), key_on(cluster, B)
    with pytest.raises(ValueError, match="hash tag"):
        run(client.eval("return 1", [a, b]))
    assert run(client.eval("return 1", ["{s}:x", "{s}:y"]))[1] == cluster.owner(key_slot("s"))


def test_scan_keys_visits_every_primary() -> None:
    cluster, client, _ = make()
    keys = [key_on(cluster, address, "idgw:revoked:") for address in (A, B, C)]
    for key in keys:
        run(client.set(key, b"1"))
    assert sorted(run(client.scan_keys("idgw:revoked*"))) == sorted(k.encode() for k in keys)
    assert {addr for addr, args in cluster.log if args[0] == "SCAN"} == {A, B, C}


def test_ready_and_ping_need_every_primary() -> None:
    cluster, client, clock = make()
    assert not client.ready
    assert run(client.ping()) is True
    assert client.ready
    cluster.down.add(C)
    assert not client.ready
    clock.advance(1)
    assert run(client.ping()) is False
    # C's replica (D) took over: ping looks at the map again before saying no.
    cluster.owners = {A: range(0, 5461), B: range(5461, 10923), D: range(10923, SLOT_COUNT)}
    clock.advance(1)
    assert run(client.ping()) is True
    assert client.primaries == [A, B, D] and client.ready


def test_subscription_moves_to_another_node_when_its_node_stays_down() -> None:
    cluster, client, clock = make()
    told: list[str] = []
    client.subscribe("idgw:revoked", lambda message: None, lambda: told.append("subscribed"))
    first = client.subscriber_address
    assert told == ["subscribed"]
    subscriber = next(n for n in cluster.clients if n.channels)
    assert subscriber.settings.pool_size == 1
    # One missed check is not enough (a reconnect may be under way)...
    subscriber.subscribed = False
    clock.advance(1.0)
    assert client.subscriber_address == first
    # ...two are: another node, subscribed to every channel, subscribers told again.
    clock.advance(1.0)
    assert client.subscriber_address != first
    assert subscriber.closed
    moved = [n for n in cluster.clients if n.channels and not n.closed]
    assert len(moved) == 1 and moved[0].channels == ["idgw:revoked"]
    assert told == ["subscribed", "subscribed"]


def test_close_closes_every_pool_and_refuses_later_calls() -> None:
    cluster, client, _ = make()
    client.start()
    client.subscribe("c", lambda m: None)
    run(client.get("x"))
    client.close()
    assert all(node.closed for node in cluster.clients)
    with pytest.raises(RedisUnavailable, match="closed"):
        run(client.get("x"))


def test_the_factory_picks_the_cluster_client_only_for_cluster_settings() -> None:
    clock = Clock()
    assert isinstance(
        redis_client_for(clock, RedisSettings(cluster=("redis://h:1",))), RedisClusterClient
    )
    plain = redis_client_for(clock, RedisSettings(url="redis://h:1"))
    assert not isinstance(plain, RedisClusterClient)


# -- session keys: cluster mode only -------------------------------------------------------


def _store(client: Any) -> RedisSessionStore:
    return RedisSessionStore(
        client,
        route="app1",
        keyring=KeyRing([b"k" * 32]),
        inactivity_timeout=600,
        max_duration=3600,
        clock=Clock(),
    )


SESSION_ID = "A" * 42 + "E"


def test_one_redis_keeps_its_key_names_so_an_upgrade_keeps_its_sessions() -> None:
    store = _store(RedisClient(Clock(), RedisSettings(url="redis://127.0.0.1:6379/0")))
    digest = session_key_hash(SESSION_ID)
    assert store.session_key(SESSION_ID) == f"idgw:app1:s:{digest}"
    assert store._lock_key(SESSION_ID) == f"idgw:app1:lock:{digest}"


def test_on_a_cluster_a_session_and_its_lock_share_a_slot() -> None:
    _, client, _ = make()
    store = _store(client)
    digest = session_key_hash(SESSION_ID)
    assert store.session_key(SESSION_ID) == f"idgw:app1:s:{{{digest}}}"
    assert store._lock_key(SESSION_ID) == f"idgw:app1:lock:{{{digest}}}"
    assert key_slot(store.session_key(SESSION_ID)) == key_slot(store._lock_key(SESSION_ID))
