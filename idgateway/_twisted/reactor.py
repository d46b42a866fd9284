"""twisted.internet.epollreactor internals: the workers' lean event loop.

Private names used (EPollReactor): ``_poller`` (the epoll object),
``_selectables`` (descriptor -> selectable), ``_doReadOrWrite`` (one event's
dispatch, which already catches and logs what doRead/doWrite raise).
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
from collections.abc import Callable

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

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
                    do_read_or_write(selectable, fd, event)
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
)

LeanEPollReactor: type[EPollReactor]
if LEAN:
    LeanEPollReactor = _LeanEPollReactor
else:  # pragma: no cover - an epoll reactor built otherwise
    note_fallback("EPollReactor._poller/_selectables/_doReadOrWrite", "workers use EPollReactor")
    LeanEPollReactor = EPollReactor
