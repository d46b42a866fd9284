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
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import attrs
import txredisapi
from cryptography import x509
from OpenSSL.crypto import X509
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

# One class for the config and the client: the config builds it, we use it.
from idgateway._twisted.redis import replies_outstanding
from idgateway.config.model import RedisSettings
from idgateway.config.redis_url import URL_EXAMPLE, parse_redis_url

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


class RedisUnavailable(Exception):
    """Redis could not answer (down, too slow, refused us); the gateway answers 503."""


class RedisCommandError(RedisUnavailable):
    """Redis answered a command with an error (a wrong type, a missing permission).

    A ``RedisUnavailable`` too, so one ``except RedisUnavailable`` covers every
    Redis failure.
    """


# -- URLs ----------------------------------------------------------------------


@attrs.frozen
class _Target:
    """Where the connections go, from RedisSettings."""

    tls: bool
    host: str | None
    port: int | None
    path: str | None
    username: str | None
    password: str | None
    db: int
    sentinels: tuple[tuple[str, int], ...]
    master_name: str | None

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> _Target:
        if settings.pool_size < 1:
            raise ValueError(f"Redis pool_size must be at least 1, not {settings.pool_size}")
        for name in ("connect_timeout", "command_timeout"):
            if not getattr(settings, name) > 0:
                raise ValueError(f"Redis {name} must be more than 0 seconds")
        sentinels = tuple((str(host), int(port)) for host, port in settings.sentinels)
        if sentinels:
            if not settings.master_name:
                raise ValueError(
                    "Redis sentinels need master_name, the name the sentinels monitor "
                    "(e.g. mymaster)"
                )
            # A URL with sentinels only brings the password, database and TLS;
            # the sentinels say where the master is.
            parts = parse_redis_url(settings.url) if settings.url else None
            if parts is not None and parts["scheme"] == "unix":
                raise ValueError(
                    "Redis sentinels name TCP masters; a unix: URL cannot go with them"
                )
            return cls(
                tls=bool(parts and parts["tls"]),
                host=None,
                port=None,
                path=None,
                username=parts["username"] if parts else None,
                password=parts["password"] if parts else None,
                db=parts["db"] if parts else 0,
                sentinels=sentinels,
                master_name=settings.master_name,
            )
        if not settings.url:
            raise ValueError(
                f"Redis needs a url (e.g. {URL_EXAMPLE}) or sentinels with a master_name"
            )
        parts = parse_redis_url(settings.url)
        return cls(
            tls=parts["tls"],
            host=parts["host"],
            port=parts["port"],
            path=parts["path"],
            username=parts["username"],
            password=parts["password"],
            db=parts["db"],
            sentinels=(),
            master_name=None,
        )

    def describe(self) -> str:
        """Where we connect, without the password."""
        if self.sentinels:
            listed = ", ".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"Redis master {self.master_name!r} via Sentinel {listed}"
        if self.path is not None:
            return f"Redis at unix:{self.path}"
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"Redis at {scheme}://{host}:{self.port}/{self.db}"


def _tls_options(host: str, ca_file: str | None) -> Any:
    """Verified TLS for ``host`` (no ALPN: Redis does not speak HTTP).

    Cached per CA file version, so a replaced CA file is read again.
    """
    if ca_file is None:
        return optionsForClientTLS(host, trustRoot=platformTrust())
    try:
        status = os.stat(ca_file)
    except OSError as error:
        raise ValueError(f"cannot read the Redis CA file {ca_file}: {error.strerror}") from None
    return _tls_options_from_file(host, ca_file, (status.st_mtime_ns, status.st_size))


@functools.lru_cache(maxsize=32)
def _tls_options_from_file(host: str, ca_file: str, _version: tuple[int, int]) -> Any:
    try:
        with open(ca_file, "rb") as file:
            pem = file.read()
    except OSError as error:
        raise ValueError(f"cannot read the Redis CA file {ca_file}: {error.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError(f"no PEM certificates in the Redis CA file {ca_file}") from None
    trust = trustRootFromCertificates(
        [Certificate(X509.from_cryptography(certificate)) for certificate in certificates]
    )
    return optionsForClientTLS(host, trustRoot=trust)


# -- connections -----------------------------------------------------------------


class _Protocol(txredisapi.BaseRedisProtocol):  # type: ignore[misc]
    """txredisapi's RESP protocol on our reactor, remembering why it was lost."""

    def __init__(self, reactor: Any) -> None:
        # charset=None and no number conversion: values come back as the bytes stored.
        super().__init__(charset=None, convertNumbers=False)
        self.callLater = reactor.callLater
        self.lost_reason: Failure | None = None
        self.on_lost: Callable[[_Protocol], None] | None = None

    def connectionMade(self) -> Any:
        set_keep_alive = getattr(self.transport, "setTcpKeepAlive", None)
        if set_keep_alive is not None:
            try:
                set_keep_alive(True)
            except OSError:
                pass
        return super().connectionMade()

    def connectionLost(self, why: Failure) -> None:
        self.lost_reason = why
        # Leave the pool before failing the waiting calls: their callers may
        # send their next command from inside that errback.
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self)
        super().connectionLost(why)

    @property
    def outstanding(self) -> int:
        return replies_outstanding(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


class _SubscriberProtocol(_Protocol):
    """A connection in subscribe mode: messages go to ``on_message``, replies to callers."""

    def __init__(self, reactor: Any, on_message: Callable[[bytes, bytes], None]) -> None:
        super().__init__(reactor)
        self._on_message = on_message
        self.channels: set[bytes] = set()

    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            self._on_message(reply[1], reply[2])
            return
        super().replyReceived(reply)


def _describe_failure(failure: Failure | BaseException | None) -> str:
    error = failure.value if isinstance(failure, Failure) else failure
    if error is None:
        return "connection closed"
    if isinstance(error, RedisUnavailable):
        return str(error)
    text = str(error).strip() or type(error).__name__
    # Twisted's connection errors read "Connection was refused by other side: 111: ...".
    return text.rstrip(".")


class _Slot:
    """One pooled connection: connects, reconnects with backoff, reports changes."""

    def __init__(self, client: RedisClient, subscriber: bool = False) -> None:
        self._client = client
        self.subscriber = subscriber
        self.protocol: _Protocol | None = None
        self._attempt: defer.Deferred[_Protocol] | None = None
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
        attempt = defer.ensureDeferred(self._client._open(self.subscriber))
        self._attempt = attempt
        attempt.addCallbacks(self._opened, self._failed)

    def _opened(self, protocol: _Protocol) -> None:
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
        self._client._slot_failed(self, _describe_failure(failure))

    def _lost(self, protocol: _Protocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
        if self._closed:
            return
        # Straight back: most losses are a restarted server or an idle timeout.
        self._retry = self._client._reactor.callLater(0, self.start)
        self._client._slot_lost(self, _describe_failure(protocol.lost_reason))

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


@attrs.define
class _Subscription:
    channel: bytes
    on_message: Callable[[bytes], None]
    on_subscribed: Callable[[], None] | None


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
        self._target = _Target.from_settings(settings)
        if self._target.tls:
            # Fail now, at start, on an unreadable CA file rather than on first use.
            _tls_options(self._target.host or "localhost", settings.ca_file)
        self.description = self._target.describe()
        self._slots = [_Slot(self) for _ in range(settings.pool_size)]
        self._waiters: list[defer.Deferred[None]] = []
        self._started = False
        self._closed = False
        self._last_error: str | None = None
        self._was_ready = False
        self._subscriber: _Slot | None = None
        self._subscriptions: list[_Subscription] = []
        self._subscriber_ping: LoopingCall | None = None

    # -- state -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when at least one connection is open and answered its setup."""
        return any(slot.protocol is not None for slot in self._slots)

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
        self, key: str | bytes, value: str | bytes, px: int | None = None, nx: bool = False
    ) -> bool:
        """SET; with ``nx``, False when the key already existed."""
        args: list[Any] = ["SET", key, value]
        if px is not None:
            if px < 1:
                raise ValueError(f"px must be at least 1 ms, not {px}")
            args += ["PX", int(px)]
        if nx:
            args.append("NX")
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

    async def _command(self, *args: Any) -> Any:
        deadline = self._reactor.seconds() + self._settings.command_timeout
        protocol = await self._connection(deadline)
        if deadline <= self._reactor.seconds():
            raise RedisUnavailable(
                f"no connection to {self.description} within {self._settings.command_timeout:g} s"
            )
        try:
            reply = protocol.execute_command(*args)
        except txredisapi.ConnectionError as error:
            raise RedisUnavailable(f"{self.description}: {_describe_failure(error)}") from None
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
                f"({_describe_failure(protocol.lost_reason or error)})"
            ) from None

    def _reply_error(
        self, protocol: _Protocol, args: tuple[Any, ...], error: Exception
    ) -> RedisUnavailable:
        message = str(error)
        code = message.split(" ", 1)[0].upper()
        where = f"{self.description} refused {_command_name(args)}: {message}"
        if code in _RECONNECT_REPLIES:
            protocol.abort()
        if code in _UNAVAILABLE_REPLIES:
            return RedisUnavailable(where)
        return RedisCommandError(where)

    async def _within(self, deferred: defer.Deferred[_T], deadline: float) -> _T:
        remaining = deadline - self._reactor.seconds()
        if remaining <= 0:
            deferred.cancel()
            raise defer.TimeoutError()
        deferred.addTimeout(remaining, self._reactor)
        return await deferred

    # -- the pool --------------------------------------------------------------

    def _pick(self) -> _Protocol | None:
        best: _Protocol | None = None
        for slot in self._slots:
            protocol = slot.protocol
            if protocol is None or not protocol.connected:
                continue
            if best is None or protocol.outstanding < best.outstanding:
                best = protocol
                if not protocol.outstanding:
                    break
        return best

    async def _connection(self, deadline: float) -> _Protocol:
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
            self._start_subscribing(slot.protocol, list(self._subscriptions))
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

    # -- connecting ------------------------------------------------------------

    async def _open(self, subscriber: bool) -> _Protocol:
        target = self._target
        host: str | None
        port: int | None
        if target.sentinels:
            host, port = await self._ask_sentinels()
        else:
            host, port = target.host, target.port
        attempt = defer.ensureDeferred(self._connect_and_set_up(host, port, subscriber))
        attempt.addTimeout(self._settings.connect_timeout, self._reactor)
        try:
            return await attempt
        except defer.TimeoutError:
            raise RedisUnavailable(
                f"connecting to {self._where(host, port)} took longer than "
                f"{self._settings.connect_timeout:g} s"
            ) from None

    def _where(self, host: str | None, port: int | None) -> str:
        if self._target.path is not None:
            return f"unix:{self._target.path}"
        return f"{host}:{port}"

    def _endpoint(self, host: str | None, port: int | None) -> IStreamClientEndpoint:
        timeout = self._settings.connect_timeout
        if self._target.path is not None:
            return UNIXClientEndpoint(self._reactor, self._target.path, timeout=timeout)
        assert host is not None and port is not None
        endpoint = self._tcp_endpoint(host, port)
        if self._target.tls:
            endpoint = wrapClientTLS(
                _tls_options(host, self._settings.ca_file), endpoint, clock=self._reactor
            )
        return endpoint

    def _tcp_endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        timeout = self._settings.connect_timeout
        # An address needs no resolver thread, and a refused connection is
        # reported at once rather than after HostnameEndpoint's 0.3 s
        # attempt delay.
        if isIPAddress(host):
            return TCP4ClientEndpoint(self._reactor, host, port, timeout=timeout)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(self._reactor, host, port, timeout=timeout)
        return HostnameEndpoint(self._reactor, host, port, timeout=timeout)

    async def _connect_and_set_up(
        self, host: str | None, port: int | None, subscriber: bool
    ) -> _Protocol:
        where = self._where(host, port)
        if subscriber:
            factory = Factory.forProtocol(
                functools.partial(_SubscriberProtocol, self._reactor, self._dispatch)
            )
        else:
            factory = Factory.forProtocol(functools.partial(_Protocol, self._reactor))
        try:
            protocol = cast(_Protocol, await self._endpoint(host, port).connect(factory))
        except defer.CancelledError:
            raise
        except Exception as error:
            raise RedisUnavailable(
                f"cannot connect to {where}: {_describe_failure(error)}"
            ) from None
        try:
            await self._set_up(protocol, where, subscriber)
        except BaseException:
            protocol.abort()
            raise
        return protocol

    async def _set_up(self, protocol: _Protocol, where: str, subscriber: bool) -> None:
        target = self._target

        async def run(*args: Any) -> Any:
            try:
                return await protocol.execute_command(*args)
            except txredisapi.ResponseError as error:
                shown = "AUTH" if args[0] == "AUTH" else " ".join(str(arg) for arg in args)
                raise RedisUnavailable(f"{where} refused {shown}: {error}") from None
            except txredisapi.ConnectionError:
                reason = _describe_failure(protocol.lost_reason)
                raise RedisUnavailable(f"{where} closed the connection: {reason}") from None

        answered = False
        if target.password is not None:
            if target.username:
                await run("AUTH", target.username, target.password)
            else:
                await run("AUTH", target.password)
            answered = True
        if target.sentinels:
            role = await run("ROLE")
            if not role or role[0] != b"master":
                shown = role[0].decode("ascii", "replace") if role else "unknown"
                raise RedisUnavailable(f"{where} is a {shown}, not the master")
            answered = True
        # The subscriber subscribes once ready (see _resubscribe); SELECT does
        # not matter to publish/subscribe.
        if target.db and not subscriber:
            await run("SELECT", target.db)
            answered = True
        if not answered:
            # Proves the server answers, not just that the kernel accepted us.
            await run("PING")

    async def _ask_sentinels(self) -> tuple[str, int]:
        """The master's address from the first sentinel that knows it."""
        target = self._target
        problems = []
        for host, port in target.sentinels:
            attempt = defer.ensureDeferred(self._ask_sentinel(host, port))
            attempt.addTimeout(self._settings.connect_timeout, self._reactor)
            try:
                reply = await attempt
            except defer.TimeoutError:
                problems.append(
                    f"{host}:{port} did not answer within {self._settings.connect_timeout:g} s"
                )
                continue
            except RedisUnavailable as error:
                problems.append(str(error))
                continue
            if not reply or len(reply) != 2:
                problems.append(f"{host}:{port} does not know a master {target.master_name!r}")
                continue
            try:
                return bytes(reply[0]).decode("ascii"), int(reply[1])
            except (ValueError, UnicodeDecodeError):
                problems.append(f"{host}:{port} gave a strange address {reply!r}")
        raise RedisUnavailable(
            f"no Sentinel named the master {target.master_name!r}: {'; '.join(problems)}"
        )

    async def _ask_sentinel(self, host: str, port: int) -> Any:
        endpoint = self._tcp_endpoint(host, port)
        try:
            protocol = cast(
                _Protocol,
                await endpoint.connect(
                    Factory.forProtocol(functools.partial(_Protocol, self._reactor))
                ),
            )
        except defer.CancelledError:
            raise
        except Exception as error:
            raise RedisUnavailable(f"Sentinel {host}:{port}: {_describe_failure(error)}") from None
        try:
            return await protocol.execute_command(
                "SENTINEL", "get-master-addr-by-name", self._target.master_name
            )
        except txredisapi.ResponseError as error:
            raise RedisUnavailable(f"Sentinel {host}:{port} refused: {error}") from None
        except txredisapi.ConnectionError:
            reason = _describe_failure(protocol.lost_reason)
            raise RedisUnavailable(f"Sentinel {host}:{port}: {reason}") from None
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()

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
        subscription = _Subscription(channel.encode("utf-8"), on_message, on_subscribed)
        self._subscriptions.append(subscription)
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

    def _start_subscribing(self, protocol: _Protocol, subscriptions: list[_Subscription]) -> None:
        d = defer.ensureDeferred(self._subscribe_and_tell(protocol, subscriptions))
        d.addErrback(lambda _: None)  # a failed SUBSCRIBE drops the connection; see below

    async def _subscribe_and_tell(
        self, protocol: _Protocol, subscriptions: list[_Subscription]
    ) -> None:
        assert isinstance(protocol, _SubscriberProtocol)
        for subscription in subscriptions:
            channel = subscription.channel
            if channel not in protocol.channels:
                protocol.channels.add(channel)
                reply = protocol.execute_command("SUBSCRIBE", channel)
                try:
                    await self._within(
                        reply, self._reactor.seconds() + self._settings.command_timeout
                    )
                except Exception:
                    # Reconnecting subscribes to every channel again.
                    protocol.abort()
                    raise
        for subscription in subscriptions:
            if subscription.on_subscribed is not None:
                try:
                    subscription.on_subscribed()
                except Exception:
                    self._log.failure("A Redis subscriber failed on (re)subscription")

    def _dispatch(self, channel: bytes, message: bytes) -> None:
        channel = bytes(channel)
        for subscription in list(self._subscriptions):
            if subscription.channel == channel:
                try:
                    subscription.on_message(bytes(message))
                except Exception:
                    self._log.failure("A Redis subscriber failed on a message")

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
