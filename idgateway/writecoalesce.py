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
turn (``callLater(0)``), shared by every such transport; the flush runs the
transport's own ``doWrite`` (so flow control, producers and partial sends are
Twisted's), and only a socket that did not take everything, or a connection
being closed, is handed to the reactor to watch as before. Writes made in the
same turn leave in one ``send``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


class _Flusher:
    """The transports waiting for the next turn's flush, per reactor."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.waiting: list[Any] = []

    def add(self, transport: Any) -> None:
        if not self.waiting:
            self.reactor.callLater(0, self.flush)
        self.waiting.append(transport)

    def flush(self) -> None:
        waiting, self.waiting = self.waiting, []
        for transport in waiting:
            transport._flush_waiting = False
            if not transport.connected or transport._watched:
                continue
            if transport.disconnecting or transport._writeDisconnecting or transport._aborting:
                # Closing: the reactor's own path writes what is left, then closes.
                transport._watch()
                continue
            if transport.doWrite() is not None or transport.dataBuffer or transport._tempDataBuffer:
                # The kernel did not take it all, or the send failed: let the
                # reactor watch the socket (it reports a failure as before).
                transport._watch()


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

    def startWriting(self) -> None:
        if self._watched or self._flush_waiting:
            return
        self._flush_waiting = True
        _flusher(self.reactor).add(self)

    def _watch(self) -> None:
        self._watched = True
        super().startWriting()  # type: ignore[misc]

    def stopWriting(self) -> None:
        # doWrite calls this after every complete send; only _watch ever asks
        # the reactor to watch the socket, so otherwise there is nothing to undo.
        if self._watched:
            self._watched = False
            super().stopWriting()  # type: ignore[misc]


class CoalescingServer(_Coalescing, tcp.Server):
    pass


class CoalescingClient(_Coalescing, tcp.Client):
    pass


_UPGRADES: dict[type, type] = {tcp.Server: CoalescingServer, tcp.Client: CoalescingClient}


def coalesce_writes(transport: object) -> None:
    """Make ``transport`` coalesce its writes if it is a plain TCP server or client."""
    upgrade = _UPGRADES.get(type(transport))
    if upgrade is not None:
        # Same instance layout (the subclass adds only defaults): only
        # startWriting and stopWriting differ.
        transport.__class__ = upgrade
