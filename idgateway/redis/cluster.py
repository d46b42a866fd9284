"""A Redis Cluster client with the public API of ``RedisClient``.

The cluster splits the keyspace into 16384 slots (``redis.slots``), each
served by one primary. This client:

* reads the slot map (``CLUSTER SLOTS``) from the first node that answers,
  current primaries first, then the configured seeds;
* keeps one ``RedisClient`` (one pool, with its deadlines and reconnects)
  per primary, and sends each command to the primary of its key's slot;
* follows ``MOVED`` (the slot lives elsewhere now: remember it, and read the
  map again in the background) and ``ASK`` (one command on the node that is
  importing the slot, after ``ASKING``);
* reads the map again when a node fails or the cluster says it is down, at
  most every ``_MIN_REFRESH_INTERVAL``, and every ``_REFRESH_INTERVAL`` in
  any case, so a failover (a replica promoted) is followed without a
  restart, and closes the pools of nodes that are no longer primaries;
* subscribes on one node (a cluster delivers every ``PUBLISH`` to the
  subscribers of every node) and moves the subscription to another node when
  that one stays unreachable; subscribers are told on every (re)subscription,
  as with ``RedisClient``, so they reload what they may have missed.

Multi-key commands (``EVAL`` with keys, ``DEL`` of several keys) must keep
their keys in one slot (use a ``{hash tag}``), except ``delete``, which
deletes per slot. ``scan_keys`` visits every primary.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from idgateway.config.model import RedisSettings
from idgateway.config.redis_url import parse_cluster_seed
from idgateway.redis.client import RedisClient, set_arguments
from idgateway.redis.cluster_pubsub import MovingSubscription
from idgateway.redis.errors import RedisCommandError, RedisUnavailable
from idgateway.redis.slot_map import Address, parse_cluster_slots, parse_redirect
from idgateway.redis.slots import SLOT_COUNT, key_slot

__all__ = ["AnyRedisClient", "RedisClusterClient", "redis_client_for"]

# Redirections followed for one call before giving up (a slot moving twice
# while we ask is already unusual).
_MAX_REDIRECTS = 5
# The map is read again at most this often after failures, and this often anyway.
_MIN_REFRESH_INTERVAL = 0.25
_REFRESH_INTERVAL = 30.0
# How often the subscription's node is checked (see MovingSubscription).
_WATCH_INTERVAL = 1.0
# Replies that mean "the cluster cannot serve this slot now" (a failover in
# progress, a slot being migrated): read the map again, answer "unavailable".
_CLUSTER_UNAVAILABLE = ("CLUSTERDOWN", "TRYAGAIN")


class RedisClusterClient:
    """Commands for a Redis Cluster, routed by key slot; the API of ``RedisClient``.

    ``reactor`` provides TCP connections and time (pass the reactor);
    ``node_client`` makes the pool of one node (tests pass fakes).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: RedisSettings,
        node_client: Callable[[Any, RedisSettings], RedisClient] | None = None,
    ) -> None:
        if not settings.cluster:
            raise ValueError("a Redis Cluster client needs seed URLs (cluster: [redis://...])")
        self._reactor = reactor
        self._settings = settings
        self._make_node = node_client or RedisClient
        seeds = [parse_cluster_seed(url) for url in settings.cluster]
        first = seeds[0]
        self._scheme = "rediss" if first["tls"] else "redis"
        userinfo = ""
        if first["password"] is not None:
            user = quote(first["username"] or "", safe="")
            userinfo = f"{user}:{quote(first['password'], safe='')}@"
        self._userinfo = userinfo
        self._seeds: list[Address] = [(seed["host"], seed["port"]) for seed in seeds]
        shown = ", ".join(f"{self._scheme}://{_host_port(address)}" for address in self._seeds)
        self.description = f"Redis Cluster via {shown}"
        self._slots: list[Address | None] = [None] * SLOT_COUNT
        self._primaries: list[Address] = []
        self._nodes: dict[Address, RedisClient] = {}
        self._refreshing: list[defer.Deferred[None]] | None = None
        self._last_refresh = -math.inf
        self._last_error: str | None = None
        self._start_called = False
        self._closed = False
        self._loop: LoopingCall | None = None
        # Publish/subscribe: one node's client at a time.
        self._subscription = MovingSubscription(
            self._subscriber_client,
            lambda: list(dict.fromkeys([*self._primaries, *self._seeds])),
            self.description,
        )
        # Nodes whose calls failed since the map was last read: asked for the
        # map last (a hung node would cost a whole command timeout).
        self._suspects: set[Address] = set()

    # -- nodes -----------------------------------------------------------------

    def node_settings(self, address: Address) -> RedisSettings:
        """The settings of one node's pool: the seeds' scheme and password, its address."""
        settings = self._settings
        return RedisSettings(
            url=f"{self._scheme}://{self._userinfo}{_host_port(address)}/0",
            ca_file=settings.ca_file,
            pool_size=settings.pool_size,
            connect_timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
        )

    def _node(self, address: Address) -> RedisClient:
        client = self._nodes.get(address)
        if client is None:
            if self._closed:
                raise RedisUnavailable("the Redis client was closed")
            client = self._nodes[address] = self._make_node(
                self._reactor, self.node_settings(address)
            )
            if self._start_called:
                client.start()
        return client

    @property
    def primaries(self) -> list[Address]:
        """The primaries of the slot map last read, in slot order."""
        return list(self._primaries)

    def slot_address(self, slot: int) -> Address | None:
        return self._slots[slot]

    # -- state -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when the slot map is known and every primary has an open connection."""
        return bool(self._primaries) and all(
            address in self._nodes and self._nodes[address].ready for address in self._primaries
        )

    @property
    def last_error(self) -> str | None:
        if self._last_error is not None:
            return self._last_error
        for address in self._primaries:
            client = self._nodes.get(address)
            if client is not None and client.last_error is not None:
                return f"{_host_port(address)}: {client.last_error}"
        return None

    def start(self) -> None:
        """Read the slot map and connect to every primary now (calls do it when needed)."""
        if self._start_called or self._closed:
            return
        self._start_called = True
        for client in self._nodes.values():
            client.start()
        self._background(self._refresh_soon(force=True))
        loop = self._loop = LoopingCall(self._watch)
        loop.clock = self._reactor
        loop.start(_WATCH_INTERVAL, now=False)

    async def ping(self) -> bool:
        """Whether every primary answers a PING within the command timeout."""
        try:
            if not self._primaries:
                await self._refresh()
        except RedisUnavailable:
            return False
        answers = await self._ping_primaries()
        if not all(answers):
            # A failed primary may have been replaced already: look before saying no.
            try:
                await self._refresh_soon()
            except RedisUnavailable:
                return False
            answers = await self._ping_primaries()
        return bool(answers) and all(answers)

    async def _ping_primaries(self) -> list[bool]:
        answers: list[bool] = await defer.gatherResults(
            [defer.ensureDeferred(self._node(a).ping()) for a in list(self._primaries)]
        )
        return answers

    def close(self) -> defer.Deferred[Any]:
        """Close every node's connections; fires when they are closed. Later calls fail."""
        self._closed = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        closing = [client.close() for client in self._nodes.values()]
        self._nodes.clear()
        closing.append(self._subscription.close())
        return defer.gatherResults(closing, consumeErrors=True)

    # -- the slot map ----------------------------------------------------------------

    def _refresh_soon(self, force: bool = False) -> defer.Deferred[None]:
        """Read the map again unless that happened very recently; fires when it is read.

        One reading at a time: callers arriving meanwhile wait for it (each
        with a Deferred of its own, since a Deferred's result goes to one awaiter).
        """
        if self._refreshing is None:
            if not force and self._reactor.seconds() - self._last_refresh < _MIN_REFRESH_INTERVAL:
                return defer.succeed(None)
            waiter: defer.Deferred[None] = defer.Deferred()
            self._refreshing = [waiter]
            defer.ensureDeferred(self._read_map()).addBoth(self._refreshed)
            return waiter
        waiter = defer.Deferred()
        self._refreshing.append(waiter)
        return waiter

    def _refreshed(self, result: Any) -> None:
        waiters, self._refreshing = self._refreshing or [], None
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    async def _refresh(self) -> None:
        await self._refresh_soon(force=True)

    async def _read_map(self) -> None:
        if self._closed:
            raise RedisUnavailable("the Redis client was closed")
        self._last_refresh = self._reactor.seconds()
        suspects = self._suspects
        ready = [
            a
            for a in self._primaries
            if a not in suspects and a in self._nodes and self._nodes[a].ready
        ]
        candidates = list(dict.fromkeys([*ready, *self._primaries, *self._seeds]))
        candidates.sort(key=lambda address: address in suspects)  # stable: suspects last
        problems = []
        for address in candidates:
            client = self._node(address)
            try:
                reply = await client.command("CLUSTER", "SLOTS")
                ranges = parse_cluster_slots(reply, address)
            except (RedisUnavailable, ValueError) as error:
                problems.append(str(error))
                continue
            if not ranges:
                problems.append(f"{_host_port(address)} serves no slots (is the cluster created?)")
                continue
            self._install(ranges)
            self._suspects = set()
            self._last_error = None
            return
        self._last_error = "no node answered CLUSTER SLOTS: " + "; ".join(problems)
        self._drop_unused()
        raise RedisUnavailable(f"{self.description}: {self._last_error}")

    def _install(self, ranges: list[tuple[int, int, Address]]) -> None:
        slots: list[Address | None] = [None] * SLOT_COUNT
        primaries: dict[Address, None] = {}
        for first, last, address in sorted(ranges):
            slots[first : last + 1] = [address] * (last - first + 1)
            primaries[address] = None
        changed = list(primaries) != self._primaries
        self._slots = slots
        self._primaries = list(primaries)
        if changed:
            covered = sum(last - first + 1 for first, last, _ in ranges)
            self._log.info(
                "{where}: {count} primaries ({primaries}) serve {covered} of {total} slots",
                where=self.description,
                count=len(primaries),
                primaries=", ".join(_host_port(a) for a in primaries),
                covered=covered,
                total=SLOT_COUNT,
            )
        for address in self._primaries:
            self._node(address)
        self._drop_unused()

    def _drop_unused(self) -> None:
        """Close the pools of nodes that serve no slot (a failed or demoted primary, a seed)."""
        keep = set(self._primaries)
        for address in [a for a in self._nodes if a not in keep]:
            client = self._nodes.pop(address)
            client.close()

    def _watch(self) -> None:
        if self._reactor.seconds() - self._last_refresh >= _REFRESH_INTERVAL:
            self._background(self._refresh_soon())
        self._subscription.check()

    def _background(self, d: defer.Deferred[Any]) -> None:
        d.addErrback(lambda _: None)  # remembered in last_error; calls report it

    # -- routing -------------------------------------------------------------------

    async def _for_key(self, key: str | bytes, *args: Any) -> Any:
        return await self._for_slot(key_slot(key), args)

    async def _for_slot(self, slot: int, args: tuple[Any, ...]) -> Any:
        if self._closed:
            raise RedisUnavailable("the Redis client was closed")
        if not self._start_called:
            self.start()
        deadline = self._reactor.seconds() + self._settings.command_timeout
        if self._slots[slot] is None:
            await self._refresh_soon(force=not self._primaries)
        ask: Address | None = None
        for _ in range(_MAX_REDIRECTS):
            address = ask or self._slots[slot]
            if address is None:
                raise RedisUnavailable(
                    f"{self.description}: no primary serves slot {slot} now "
                    f"({self._last_error or 'the cluster map has a gap'})"
                )
            client = self._node(address)
            try:
                if ask is not None:
                    return await client.asking(*args)
                return await client.command(*args)
            except RedisCommandError as error:
                redirect = parse_redirect(error.reply)
                if redirect is None:
                    if error.reply.split(" ", 1)[0] in _CLUSTER_UNAVAILABLE:
                        self._background(self._refresh_soon())
                        raise RedisUnavailable(str(error)) from None
                    raise
                kind, moved_slot, target = redirect
                if kind == "ASK":
                    ask = target
                    continue
                ask = None
                # Trust the redirection for this slot now; the rest of the
                # map has probably moved too, so read it again.
                self._slots[moved_slot] = target
                self._node(target)
                self._background(self._refresh_soon())
            except RedisUnavailable:
                # The node is down or too slow: perhaps a failover is under
                # way. Read the map again (rate-limited); try once more only
                # if the slot moved and time is left.
                self._suspects.add(address)
                if ask is not None or self._reactor.seconds() >= deadline:
                    self._background(self._refresh_soon())
                    raise
                try:
                    await self._refresh_soon()
                except RedisUnavailable:
                    pass
                if self._slots[slot] == address or self._reactor.seconds() >= deadline:
                    raise
        raise RedisUnavailable(
            f"{self.description}: slot {slot} was redirected more than {_MAX_REDIRECTS} times"
        )

    async def _any_node(self, *args: Any) -> Any:
        """A keyless command, on a primary (after reading the map if need be)."""
        if not self._primaries:
            await self._refresh_soon(force=True)
        return await self._for_slot(0, args)

    # -- commands ------------------------------------------------------------------------

    async def get(self, key: str | bytes) -> bytes | None:
        value = await self._for_key(key, "GET", key)
        return value if value is None else bytes(value)

    async def set(
        self,
        key: str | bytes,
        value: str | bytes,
        px: int | None = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool:
        """SET; with ``nx``, False when the key already existed; with ``xx``,
        False when it did not (and nothing is stored)."""
        args = set_arguments(key, value, px, nx, xx)
        return await self._for_key(key, *args) is not None

    async def delete(self, *keys: str | bytes) -> int:
        """DEL, one command per slot (the keys may live on different nodes)."""
        if not keys:
            return 0
        by_slot: dict[int, list[str | bytes]] = {}
        for key in keys:
            by_slot.setdefault(key_slot(key), []).append(key)
        if len(by_slot) == 1:
            return int(await self._for_key(keys[0], "DEL", *keys))
        counts = await _all(
            [self._for_slot(slot, ("DEL", *group)) for slot, group in by_slot.items()]
        )
        return sum(int(count) for count in counts)

    async def eval(
        self, script: str, keys: Sequence[str | bytes] = (), args: Sequence[Any] = ()
    ) -> Any:
        """EVAL on the primary of the keys' slot (they must share one: a hash tag)."""
        if not keys:
            return await self._any_node("EVAL", script, 0, *args)
        slot = key_slot(keys[0])
        if any(key_slot(key) != slot for key in keys[1:]):
            raise ValueError("a script's keys must share one cluster slot; give them a {hash tag}")
        return await self._for_slot(slot, ("EVAL", script, len(keys), *keys, *args))

    async def sadd(self, key: str | bytes, *members: str | bytes) -> int:
        return int(await self._for_key(key, "SADD", key, *members))

    async def smembers(self, key: str | bytes) -> builtins.set[bytes]:
        return {bytes(member) for member in await self._for_key(key, "SMEMBERS", key)}

    async def expire(self, key: str | bytes, seconds: float) -> bool:
        return bool(await self._for_key(key, "PEXPIRE", key, max(1, int(seconds * 1000))))

    async def publish(self, channel: str, message: str | bytes) -> int:
        """PUBLISH; the cluster passes it to the subscribers of every node."""
        return int(await self._for_key(channel, "PUBLISH", channel, message))

    async def command(self, *args: Any) -> Any:
        """Any other command; its key (if any) is the second word: ``command("PTTL", key)``."""
        if len(args) >= 2:
            return await self._for_key(args[1], *args)
        return await self._any_node(*args)

    async def scan_keys(self, pattern: str, count: int = 1000) -> list[bytes]:
        """Every key matching ``pattern`` on every primary (SCAN, ``count`` per step)."""
        if not self._primaries:
            await self._refresh_soon(force=True)
        found: list[bytes] = []
        for address in list(self._primaries):
            client = self._node(address)
            cursor: bytes | str = "0"
            while True:
                reply = await client.command("SCAN", cursor, "MATCH", pattern, "COUNT", count)
                cursor = reply[0]
                found.extend(bytes(key) for key in reply[1])
                if cursor in (b"0", "0"):
                    break
        return found

    # -- publish/subscribe -------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        """As ``RedisClient.subscribe``: on one node, moved to another if it fails."""
        if self._closed:
            raise RedisUnavailable("the Redis client was closed")
        self._subscription.add(channel, on_message, on_subscribed)
        if not self._start_called:
            self.start()  # the watch loop moves the subscription when needed

    @property
    def subscribed(self) -> bool:
        return self._subscription.subscribed

    @property
    def subscriber_address(self) -> Address | None:
        return self._subscription.address

    def _subscriber_client(self, address: Address) -> RedisClient:
        # Its own client: it only subscribes, so one pooled connection is plenty
        # (and is opened only if a command is sent, which none is).
        settings = attrs.evolve(self.node_settings(address), pool_size=1)
        return self._make_node(self._reactor, settings)


AnyRedisClient = RedisClient | RedisClusterClient


def redis_client_for(reactor: Any, settings: RedisSettings) -> AnyRedisClient:
    """The client ``settings`` describe: a cluster's, or one server's (or Sentinel's)."""
    if settings.cluster:
        return RedisClusterClient(reactor, settings)
    return RedisClient(reactor, settings)


async def _all(calls: list[Any]) -> list[Any]:
    """Every call's result, run at once; the first failure is raised as itself."""
    try:
        results: list[Any] = await defer.gatherResults(
            [defer.ensureDeferred(call) for call in calls], consumeErrors=True
        )
    except defer.FirstError as error:
        error.subFailure.raiseException()
    return results


def _host_port(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
