"""A small asynchronous Redis client: a pool of txredisapi protocol connections.

txredisapi's protocol does the RESP parsing and command encoding; its own
connection pools are not used, because they run on the global reactor, turn
every connection problem (a TLS certificate refused, a wrong password) into
"Lost connection", and let a call wait forever while Redis is down. Here:

* every call has a deadline of ``command_timeout`` from the moment it is made,
  including the wait for a connection; past it the call fails with
  ``RedisUnavailable`` and a connection that did not answer is dropped;
* connections come back by themselves: a lost one reconnects at once, then
  with a backoff capped at ``_MAX_RETRY_DELAY``; a call that finds no
  connection starts an attempt right away instead of waiting out the backoff,
  and fails fast (with the reason) when there is nothing to wait for;
* with Sentinel, every connection attempt first asks the sentinels (in order)
  for the master's address, and checks that the server it reached is a master,
  so a failover is followed on the next reconnect;
* one dedicated subscriber connection re-subscribes after reconnects and then
  tells each subscriber, which can reload what it may have missed.

Commands are pipelined: a call goes to the ready connection with the fewest
replies outstanding. Bulk replies are ``bytes`` (never converted to numbers).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import txredisapi
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

# One class for the config and the client: the config builds it, we use it.
from idgateway.config.model import RedisSettings
from idgateway.config.redis_url import parse_redis_url
from idgateway.redis.connection import Connector, tls_options
from idgateway.redis.errors import RedisCommandError, RedisUnavailable, describe_failure
from idgateway.redis.protocol import RedisProtocol, SubscriberProtocol
from idgateway.redis.pubsub import Subscription, Subscriptions
from idgateway.redis.target import Target

__all__ = [
    "RedisClient",
    "RedisCommandError",
    "RedisSettings",
    "RedisUnavailable",
    "parse_redis_url",
]

_T = TypeVar("_T")

# Reconnect backoff: the first retry after a lost connection is immediate,
# failures then wait 50 ms, 100 ms, ... up to this.
_FIRST_RETRY_DELAY = 0.05
_MAX_RETRY_DELAY = 1.0
# A call finding no connection starts an attempt at once, unless the last
# attempt failed less than this ago (then it fails fast with that reason).
_MIN_KICK_INTERVAL = 0.1
# The subscriber connection is silent when nothing is published; a PING this
# often notices a connection that died without a FIN.
_SUBSCRIBER_PING_INTERVAL = 30.0

# Error replies that mean "this server cannot serve us now", not "bad command".
_UNAVAILABLE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "NOAUTH", "BUSY", "TRYAGAIN")
# After these the connection itself is wrong (a demoted master, lost auth).
_RECONNECT_REPLIES = ("READONLY", "NOAUTH", "MASTERDOWN")


class _Slot:
    """One pooled connection: connects, reconnects with backoff, reports changes."""

    def __init__(self, client: RedisClient, subscriber: bool = False) -> None:
        self._client = client
        self.subscriber = subscriber
        self.protocol: RedisProtocol | None = None
        self._attempt: defer.Deferred[RedisProtocol] | None = None
        self._retry: Any = None
        self._failures = 0
        self.last_failure_at: float | None = None
        self._closed = False

    @property
    def connecting(self) -> bool:
        return self._attempt is not None

    def start(self) -> None:
        if self._closed or self.protocol is not None or self._attempt is not None:
            return
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        attempt = defer.ensureDeferred(self._client._connector.open(self.subscriber))
        self._attempt = attempt
        attempt.addCallbacks(self._opened, self._failed)

    def _opened(self, protocol: RedisProtocol) -> None:
        self._attempt = None
        if self._closed:
            protocol.transport.loseConnection()
            return
        if protocol.lost_reason is not None:  # lost between setup and now
            self._failed(protocol.lost_reason)
            return
        self._failures = 0
        self.protocol = protocol
        protocol.on_lost = self._lost
        self._client._slot_ready(self)

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if self._closed or failure.check(defer.CancelledError):
            return
        self._failures += 1
        self.last_failure_at = self._client._reactor.seconds()
        self._schedule_retry()
        self._client._slot_failed(self, describe_failure(failure))

    def _lost(self, protocol: RedisProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
        if self._closed:
            return
        # Straight back: most losses are a restarted server or an idle timeout.
        self._retry = self._client._reactor.callLater(0, self.start)
        self._client._slot_lost(self, describe_failure(protocol.lost_reason))

    def _schedule_retry(self) -> None:
        delay = min(_MAX_RETRY_DELAY, _FIRST_RETRY_DELAY * 2 ** (self._failures - 1))
        self._retry = self._client._reactor.callLater(delay, self.start)

    def kick(self) -> None:
        """Connect now rather than when the backoff says."""
        if self.protocol is None and self._attempt is None:
            self.start()

    def close(self) -> defer.Deferred[Any]:
        self._closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        protocol, self.protocol = self.protocol, None
        if protocol is None or protocol.transport is None:
            return defer.succeed(None)
        done: defer.Deferred[Any] = protocol.whenDisconnected()
        protocol.on_lost = None
        protocol.transport.loseConnection()
        return done


def set_arguments(
    key: str | bytes, value: str | bytes, px: int | None, nx: bool, xx: bool
) -> list[Any]:
    """The words of a SET (one Redis or a cluster alike)."""
    args: list[Any] = ["SET", key, value]
    if px is not None:
        if px < 1:
            raise ValueError(f"px must be at least 1 ms, not {px}")
        args += ["PX", int(px)]
    if nx:
        args.append("NX")
    if xx:
        args.append("XX")
    return args


class RedisClient:
    """A pool of ``settings.pool_size`` connections to one Redis (or Sentinel master).

    Connections open on first use (or ``start()``). Every call returns or
    raises ``RedisUnavailable`` within ``settings.command_timeout`` seconds.
    ``reactor`` provides TCP/UNIX connections and time (pass the reactor).
    """

    _log = Logger()

    def __init__(self, reactor: Any, settings: RedisSettings) -> None:
        self._reactor = reactor
        self._settings = settings
        self._target = Target.from_settings(settings)
        self._subscriptions = Subscriptions()
        self._connector = Connector(reactor, settings, self._target, self._subscriptions.dispatch)
        if self._target.tls:
            # Fail now, at start, on an unreadable CA file rather than on first use.
            tls_options(self._target.host or "localhost", settings.ca_file)
        self.description = self._target.describe()
        self._slots = [_Slot(self) for _ in range(settings.pool_size)]
        self._waiters: list[defer.Deferred[None]] = []
        self._started = False
        self._closed = False
        self._last_error: str | None = None
        self._was_ready = False
        self._subscriber: _Slot | None = None
        self._subscriber_ping: LoopingCall | None = None

    # -- state -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when at least one connection is open and answered its setup."""
        return any(slot.protocol is not None for slot in self._slots)

    @property
    def subscribed(self) -> bool:
        """True when the publish/subscribe connection is open (and subscribed)."""
        slot = self._subscriber
        return slot is not None and slot.protocol is not None and slot.protocol.connected

    @property
    def last_error(self) -> str | None:
        """Why the last connection attempt failed or the last connection was lost."""
        return self._last_error

    def start(self) -> None:
        """Begin connecting the pool now (calls do this themselves when needed)."""
        if self._started or self._closed:
            return
        self._started = True
        for slot in self._slots:
            slot.start()

    async def ping(self) -> bool:
        """Whether Redis answers a PING within the command timeout (for readiness)."""
        try:
            return bool(await self._command("PING") in ("PONG", b"PONG"))
        except RedisUnavailable:
            return False

    def close(self) -> defer.Deferred[Any]:
        """Close every connection; fires when they are closed. Later calls fail."""
        self._closed = True
        if self._subscriber_ping is not None and self._subscriber_ping.running:
            self._subscriber_ping.stop()
        self._wake_waiters(RedisUnavailable("the Redis client was closed"))
        slots = list(self._slots)
        if self._subscriber is not None:
            slots.append(self._subscriber)
        return defer.gatherResults([slot.close() for slot in slots], consumeErrors=True)

    # -- commands ------------------------------------------------------------

    async def get(self, key: str | bytes) -> bytes | None:
        value = await self._command("GET", key)
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
        return await self._command(*args) is not None

    async def delete(self, *keys: str | bytes) -> int:
        if not keys:
            return 0
        return int(await self._command("DEL", *keys))

    async def eval(
        self, script: str, keys: Sequence[str | bytes] = (), args: Sequence[Any] = ()
    ) -> Any:
        """EVAL (one round trip; Redis caches the compiled script by its hash)."""
        return await self._command("EVAL", script, len(keys), *keys, *args)

    async def sadd(self, key: str | bytes, *members: str | bytes) -> int:
        return int(await self._command("SADD", key, *members))

    async def smembers(self, key: str | bytes) -> builtins.set[bytes]:
        return {bytes(member) for member in await self._command("SMEMBERS", key)}

    async def expire(self, key: str | bytes, seconds: float) -> bool:
        return bool(await self._command("PEXPIRE", key, max(1, int(seconds * 1000))))

    async def publish(self, channel: str, message: str | bytes) -> int:
        return int(await self._command("PUBLISH", channel, message))

    async def command(self, *args: Any) -> Any:
        """Any other command, e.g. ``command("PTTL", key)``."""
        return await self._command(*args)

    async def asking(self, *args: Any) -> Any:
        """``ASKING`` and then the command, on one connection (a Redis Cluster ``ASK``)."""
        return await self._command(*args, asking=True)

    async def _command(self, *args: Any, asking: bool = False) -> Any:
        deadline = self._reactor.seconds() + self._settings.command_timeout
        protocol = await self._connection(deadline)
        if deadline <= self._reactor.seconds():
            raise RedisUnavailable(
                f"no connection to {self.description} within {self._settings.command_timeout:g} s"
            )
        try:
            if asking:
                # Pipelined back to back: ASKING holds for the next command only.
                protocol.execute_command("ASKING").addErrback(lambda _: None)
            reply = protocol.execute_command(*args)
        except txredisapi.ConnectionError as error:
            raise RedisUnavailable(f"{self.description}: {describe_failure(error)}") from None
        try:
            return await self._within(reply, deadline)
        except defer.TimeoutError:
            # Whatever it is doing, it is no good to anyone waiting behind us.
            protocol.abort()
            raise RedisUnavailable(
                f"{self.description} did not answer {_command_name(args)} within "
                f"{self._settings.command_timeout:g} s"
            ) from None
        except txredisapi.ResponseError as error:
            raise self._reply_error(protocol, args, error) from None
        except txredisapi.ConnectionError as error:
            raise RedisUnavailable(
                f"{self.description}: lost the connection during {_command_name(args)} "
                f"({describe_failure(protocol.lost_reason or error)})"
            ) from None

    def _reply_error(
        self, protocol: RedisProtocol, args: tuple[Any, ...], error: Exception
    ) -> RedisUnavailable:
        message = str(error)
        code = message.split(" ", 1)[0].upper()
        where = f"{self.description} refused {_command_name(args)}: {message}"
        if code in ("MOVED", "ASK"):
            # A cluster node reached as one server: say what to configure.
            where += "; it is a Redis Cluster node: give cluster: [its URL, ...] instead of url"
        if code in _RECONNECT_REPLIES:
            protocol.abort()
        if code in _UNAVAILABLE_REPLIES:
            return RedisUnavailable(where)
        return RedisCommandError(where, message)

    async def _within(self, deferred: defer.Deferred[_T], deadline: float) -> _T:
        remaining = deadline - self._reactor.seconds()
        if remaining <= 0:
            deferred.cancel()
            raise defer.TimeoutError()
        deferred.addTimeout(remaining, self._reactor)
        return await deferred

    # -- the pool --------------------------------------------------------------

    def _pick(self) -> RedisProtocol | None:
        best: RedisProtocol | None = None
        for slot in self._slots:
            protocol = slot.protocol
            if protocol is None or not protocol.connected:
                continue
            if best is None or protocol.outstanding < best.outstanding:
                best = protocol
                if not protocol.outstanding:
                    break
        return best

    async def _connection(self, deadline: float) -> RedisProtocol:
        while True:
            protocol = self._pick()
            if protocol is not None:
                return protocol
            if self._closed:
                raise RedisUnavailable("the Redis client was closed")
            if not self._started:
                self.start()
            elif not any(slot.connecting for slot in self._slots):
                self._kick_one()
            protocol = self._pick()
            if protocol is not None:
                return protocol
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(waiter)
            try:
                await self._within(waiter, deadline)
            except defer.TimeoutError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                reason = f" (last error: {self._last_error})" if self._last_error else ""
                raise RedisUnavailable(
                    f"no connection to {self.description} within "
                    f"{self._settings.command_timeout:g} s{reason}"
                ) from None

    def _kick_one(self) -> None:
        now = self._reactor.seconds()
        for slot in self._slots:
            if slot.protocol is None and not slot.connecting:
                if slot.last_failure_at is None or now - slot.last_failure_at >= _MIN_KICK_INTERVAL:
                    slot.kick()
                    return
        raise RedisUnavailable(f"{self.description} is unavailable: {self._last_error}")

    def _wake_waiters(self, error: Exception | None = None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.called:
                continue
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)

    def _slot_ready(self, slot: _Slot) -> None:
        if slot.subscriber:
            assert slot.protocol is not None
            self._start_subscribing(slot.protocol, list(self._subscriptions.all))
            return
        if not self._was_ready:
            self._was_ready = True
            self._log.info("Connected to {where}", where=self.description)
        self._last_error = None
        self._wake_waiters()

    def _slot_failed(self, slot: _Slot, reason: str) -> None:
        if slot.subscriber:
            return
        if self._last_error != reason and not self.ready:
            self._log.warn(
                "Cannot connect to {where}: {reason}", where=self.description, reason=reason
            )
        self._last_error = reason
        if not self.ready and not any(other.connecting for other in self._slots):
            self._wake_waiters(RedisUnavailable(f"{self.description} is unavailable: {reason}"))

    def _slot_lost(self, slot: _Slot, reason: str) -> None:
        if slot.subscriber:
            return
        self._last_error = reason
        if self._was_ready and not self.ready:
            self._was_ready = False
            self._log.warn(
                "Lost every connection to {where}: {reason}", where=self.description, reason=reason
            )

    # -- publish/subscribe ---------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Call ``on_message(payload)`` for every message published on ``channel``.

        Uses one dedicated connection, re-subscribed after every reconnect.
        ``on_subscribed`` runs each time the subscription is (re)established:
        messages published while disconnected are lost, so that is the moment
        to reload whatever they would have said.
        """
        if self._closed:
            raise RedisUnavailable("the Redis client was closed")
        subscription = Subscription(channel.encode("utf-8"), on_message, on_subscribed)
        self._subscriptions.add(subscription)
        if self._subscriber is None:
            self._subscriber = _Slot(self, subscriber=True)
            ping = self._subscriber_ping = LoopingCall(self._ping_subscriber)
            ping.clock = self._reactor
            ping.start(_SUBSCRIBER_PING_INTERVAL, now=False)
            self._subscriber.start()
            return
        protocol = self._subscriber.protocol
        if protocol is not None:  # else: subscribed and told once connected
            self._start_subscribing(protocol, [subscription])

    def _start_subscribing(
        self, protocol: RedisProtocol, subscriptions: list[Subscription]
    ) -> None:
        assert isinstance(protocol, SubscriberProtocol)
        d = defer.ensureDeferred(
            self._subscriptions.subscribe_on(protocol, subscriptions, self._within_command_timeout)
        )
        d.addErrback(lambda _: None)  # a failed SUBSCRIBE drops the connection; see below

    def _within_command_timeout(self, reply: defer.Deferred[Any]) -> Any:
        return self._within(reply, self._reactor.seconds() + self._settings.command_timeout)

    async def _ping_subscriber_once(self) -> None:
        slot = self._subscriber
        protocol = slot.protocol if slot is not None else None
        if protocol is None:
            return
        reply = protocol.execute_command("PING")
        try:
            await self._within(reply, self._reactor.seconds() + self._settings.command_timeout)
        except Exception:
            protocol.abort()

    def _ping_subscriber(self) -> defer.Deferred[None]:
        d = defer.ensureDeferred(self._ping_subscriber_once())
        d.addErrback(lambda _: None)
        return d


def _command_name(args: tuple[Any, ...]) -> str:
    if not args:
        return "a command"
    name = args[0]
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return str(name).upper()
