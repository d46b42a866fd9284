"""twisted.internet.epollreactor internals: the workers' lean event loop.

Private names used (EPollReactor): ``_poller`` (the epoll object),
``_selectables`` (descriptor -> selectable), ``_doReadOrWrite`` (one event's
dispatch, which already catches and logs what doRead/doWrite raise), and
``_disconnectSelectable`` (what ``_doReadOrWrite`` ends with when a read
says the connection is over): a plain read event (the usual one) is
dispatched as ``_doReadOrWrite`` dispatches it, without its frame.
``LeanEPollReactor.doPoll`` is EPollReactor's without ``log.callWithLogger``
around each event (see ``idgateway.workers.event_loop``), and it runs what
``idgateway._twisted.tcp.call_after_events`` was given once a poll's events
are dispatched (the per-turn write flush of ``idgateway.server.socket_writes``,
which otherwise costs a ``DelayedCall`` made, queued and run per turn). Without those names
(``LEAN`` False), ``LeanEPollReactor`` is the stock EPollReactor, and
``call_after_events`` always declines.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from select import EPOLLIN

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger
from twisted.python import log

from idgateway._twisted import note_fallback


class _LeanEPollReactor(EPollReactor):
    """EPollReactor, its events dispatched without callWithLogger."""

    # (The namespace it always had, before it moved into the seam.)
    _lean_log = Logger(namespace="idgateway.workers.event_loop.LeanEPollReactor")
    # While a poll's events are being dispatched: what to call once they are.
    _after_events: list[Callable[[], object]] | None = None

    def doPoll(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            ready = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        do_read_or_write = self._doReadOrWrite
        after: list[Callable[[], object]] = []
        self._after_events = after
        try:
            for fd, event in ready:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    if event != EPOLLIN:
                        do_read_or_write(selectable, fd, event)
                        continue
                    # A read event alone: _doReadOrWrite's read path, spelled out.
                    try:
                        if selectable.fileno() == -1:
                            do_read_or_write(selectable, fd, event)
                            continue
                        why = selectable.doRead()
                    except BaseException:
                        why = sys.exc_info()[1]
                        log.err()
                    if why:
                        self._disconnectSelectable(selectable, why, True)
                except Exception:
                    self._lean_log.failure(
                        "unhandled error handling {selectable!r}", selectable=selectable
                    )
        finally:
            # (What the calls below ask for goes to callLater, as outside a poll.)
            self._after_events = None
        for call in after:
            try:
                call()
            except Exception:
                self._lean_log.failure("unhandled error after a poll's events: {call!r}", call=call)

    doIteration = doPoll


_names_in_init = EPollReactor.__init__.__code__.co_names
LEAN = (
    "_poller" in _names_in_init
    and "_selectables" in _names_in_init
    and callable(getattr(EPollReactor, "_doReadOrWrite", None))
    and callable(getattr(EPollReactor, "_disconnectSelectable", None))
    and getattr(EPollReactor, "_POLL_IN", None) == EPOLLIN
)

LeanEPollReactor: type[EPollReactor]
if LEAN:
    LeanEPollReactor = _LeanEPollReactor
else:  # pragma: no cover - an epoll reactor built otherwise
    note_fallback("EPollReactor._poller/_selectables/_doReadOrWrite", "workers use EPollReactor")
    LeanEPollReactor = EPollReactor
