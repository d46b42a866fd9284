"""Coalesced TCP writes: send what a reactor turn wrote, without epoll churn.

A Twisted TCP transport never sends from ``write()``: it queues the bytes and
asks the reactor to watch the socket for writability (an ``epoll_ctl``), the
next poll reports it writable, the transport sends and stops watching (a
second ``epoll_ctl``). A proxy writes once to the upstream and once to the
client per request, so that is four system calls and two extra trips through
the reactor's event dispatch per request, for sockets that are almost always
writable at once.

``coalesce_writes(transport)`` changes a plain ``tcp.Server`` or
``tcp.Client`` (anything else is left alone; for TLS, the gateway's channel
passes the TCP connection under the TLS layer) so that the
first write of a reactor turn schedules one flush at the start of the next
turn (``callLater(0)``; in a worker's lean event loop, right after the poll's
events are dispatched, which is the same point without a DelayedCall), shared
by every such transport; the flush runs the
transport's own ``doWrite`` (so flow control, producers and partial sends are
Twisted's; what it reads of a transport's internals is in
``idgateway._twisted.tcp``), and only a socket that did not take everything, or a connection
being closed, is handed to the reactor to watch as before. Writes made in the
same turn leave in one ``send``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.address import IPv6Address

from idgateway._twisted.reactor import LEAN, LeanEPollReactor
from idgateway._twisted.tcp import (
    COALESCING,
    DirectWrites,
    accept_as,
    accepted_log_prefix,
    accepted_repr,
    call_after_events,
    flush_transports,
    peer_address,
)


class _Flusher:
    """The transports waiting for the next turn's flush, per reactor.

    ``before`` holds flushes of layers above TCP (TLS): they run first, so the
    TCP writes they make leave in the same pass.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.waiting: list[Any] = []
        self.before: list[Callable[[], None]] = []
        self._scheduled = False

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            # In a worker's event loop, right after the poll's events (no
            # DelayedCall per turn); elsewhere at the start of the next turn.
            if not call_after_events(self.reactor, self.flush):
                self.reactor.callLater(0, self.flush)

    def add(self, transport: Any) -> None:
        self._schedule()
        self.waiting.append(transport)

    def add_before(self, flush: Callable[[], None]) -> None:
        self._schedule()
        self.before.append(flush)

    def flush(self) -> None:
        before, self.before = self.before, []
        for each in before:
            each()
        waiting, self.waiting = self.waiting, []
        self._scheduled = False
        if self.before:
            self._schedule()  # (a TLS flush asked for another: next turn)
        flush_transports(waiting)


_flushers: dict[int, _Flusher] = {}


def _flusher(reactor: Any) -> _Flusher:
    flusher = _flushers.get(id(reactor))
    if flusher is None or flusher.reactor is not reactor:
        flusher = _flushers[id(reactor)] = _Flusher(reactor)
    return flusher


class _Coalescing:
    """Mixin over a ``twisted.internet.tcp.Connection`` subclass."""

    reactor: Any
    _watched = False
    _flush_waiting = False
    _aborting = False

    # The reactor's flusher, looked up once per transport (not per write).
    _turn_flusher: _Flusher | None = None

    def startWriting(self) -> None:
        if self._watched or self._flush_waiting:
            return
        self._flush_waiting = True
        flusher = self._turn_flusher
        if flusher is None:
            flusher = self._turn_flusher = _flusher(self.reactor)
        # (_Flusher.add, without its two frames)
        if not flusher._scheduled:
            flusher._schedule()
        flusher.waiting.append(self)

    def _watch(self) -> None:
        self._watched = True
        super().startWriting()  # type: ignore[misc]

    def stopWriting(self) -> None:
        # doWrite calls this after every complete send; only _watch ever asks
        # the reactor to watch the socket, so otherwise there is nothing to undo.
        if self._watched:
            self._watched = False
            super().stopWriting()  # type: ignore[misc]


class CoalescingServer(DirectWrites, _Coalescing, tcp.Server):
    pass


class CoalescingClient(DirectWrites, _Coalescing, tcp.Client):
    pass


_UPGRADES: dict[type, type] = {tcp.Server: CoalescingServer, tcp.Client: CoalescingClient}

_UNSET = object()


class _Accepted(CoalescingServer):
    """A CoalescingServer as a listener's port makes it (``accept_listened``).

    An idle keep-alive connection is mostly its transport and its channel.
    Made coalescing from the start, no class change gives the instance a dict
    of its own (CPython 3.11 turns the shared attribute table of an instance
    whose class changes into a dict: about 1 KiB); and CPython stops adding
    names to a class's shared table once a few dozen instances exist, so a
    name first set after a burst of accepts (``_flush_waiting`` at the first
    response) would do the same. Its per-connection fields live in slots
    instead; ``__init__`` gives each the default the classes above have.
    (Not ``fileno``: set at accept, so always in the shared table, and once
    the connection is lost and Twisted deletes it, FileDescriptor.fileno's -1
    must answer again, which a slot would not.)
    """

    __slots__ = (
        "_aborting",
        "_addressType",
        "_flush_waiting",
        "_peer_address",
        "_tempDataBuffer",
        "_tempDataLen",
        "_turn_flusher",
        "_watched",
        "_writeDisconnected",
        "_writeDisconnecting",
        "connected",
        "dataBuffer",
        "disconnected",
        "disconnecting",
        "hostname",
        "offset",
        "producer",
        "producerPaused",
        "protocol",
        "reactor",
        "server",
        "sessionno",
        "socket",
        "streamingProducer",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for name, default in _ACCEPTED_DEFAULTS:
            setattr(self, name, default)
        super().__init__(*args, **kwargs)

    # The peer's address is kept as the address object getPeer() answers (its
    # channel keeps that one too), not also as the (host, port) tuple
    # tcp.Server keeps and makes a new address from at each getPeer().
    def _client_tuple(self) -> tuple[Any, ...]:
        peer: Any = self._peer_address
        if isinstance(peer, IPv6Address):
            return (peer.host, peer.port, peer.flowInfo, peer.scopeID)
        return (peer.host, peer.port)

    def _keep_peer_address(self, client: tuple[Any, ...]) -> None:
        self._peer_address = peer_address(self, client)

    client = property(_client_tuple, _keep_peer_address)  # type: ignore[assignment]

    def getPeer(self) -> Any:  # noqa: N802 - Twisted's name
        return self._peer_address


# (slot, the default a class above _Accepted gives it) for each slot that has one.
_ACCEPTED_DEFAULTS = tuple(
    (name, default)
    for name in _Accepted.__slots__
    if (default := getattr(CoalescingServer, name, _UNSET)) is not _UNSET
)


class AcceptedConnection(_Accepted):
    """A listener's connection on Twisted's own event loop, which asks for its
    log prefix at every event: made at accept, as stock."""

    __slots__ = ("logstr", "repstr")


def _ignore(transport: object, text: str) -> None:
    pass


class QuietAcceptedConnection(_Accepted):
    """A listener's connection on the workers' lean event loop, which does not
    ask for its log prefix at every event: it and the repr text are made when
    asked, not kept (two strings, about 160 bytes a connection)."""

    __slots__ = ()
    logstr = property(accepted_log_prefix, _ignore)  # type: ignore[assignment]
    repstr = property(accepted_repr, _ignore)


def accept_listened(port: Any) -> None:
    """Have a listener's ``port`` make its connections coalescing as it
    accepts them (``AcceptedConnection``, or ``QuietAcceptedConnection`` on
    the workers' lean event loop); any other port is left alone (its
    channels' ``coalesce_writes`` changes each transport's class instead)."""
    if COALESCING:
        quiet = isinstance(getattr(port, "reactor", None), LeanEPollReactor) and LEAN
        accept_as(port, QuietAcceptedConnection if quiet else AcceptedConnection)


def coalesce_writes(transport: object) -> None:
    """Make ``transport`` coalesce its writes if it is a plain TCP server or client."""
    upgrade = _UPGRADES.get(type(transport))
    if upgrade is not None and COALESCING:
        # Same instance layout (the subclass adds only defaults): only
        # startWriting and stopWriting differ.
        transport.__class__ = upgrade


class TurnWriteBuffer:
    """What Twisted's TLS transport does with small writes, without a timer each.

    ``BufferingTLSTransport`` gathers the writes of a reactor turn into one TLS
    record with a ``callLater(0)`` per connection: a DelayedCall made, sorted
    and run for every response. This gathers them the same way and flushes
    them from the shared per-turn flush above, just before the TCP writes that
    flush makes leave.
    """

    # As Twisted's _AggregateSmallWrites: past this, write out at once.
    MAX_BUFFER_SIZE = 64_000

    def __init__(self, write: Callable[[bytes], object], reactor: Any) -> None:
        self._write = write
        self._flusher = _flusher(reactor)
        self._buffer: list[bytes] = []
        self._left = self.MAX_BUFFER_SIZE
        self._queued = False

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            data = bytes(data)  # (a str is refused here; a bytearray is copied)
        self._buffer.append(data)
        self._left -= len(data)
        if self._left < 0:
            self.flush()
            return
        if not self._queued:
            self._queued = True
            self._flusher.add_before(self._queued_flush)

    def _queued_flush(self) -> None:
        self._queued = False
        self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._left = self.MAX_BUFFER_SIZE
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._write(data)

    def close(self) -> None:
        self.flush()
