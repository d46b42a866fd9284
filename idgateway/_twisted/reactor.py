"""twisted.internet.epollreactor internals: the workers' lean event loop.

Private names used (EPollReactor): ``_poller`` (the epoll object),
``_selectables`` (descriptor -> selectable), ``_doReadOrWrite`` (one event's
dispatch, which already catches and logs what doRead/doWrite raise).
``LeanEPollReactor.doPoll`` is EPollReactor's without ``log.callWithLogger``
around each event (see ``idgateway.workers.event_loop``). Without those names
(``LEAN`` False), ``LeanEPollReactor`` is the stock EPollReactor.
"""

from __future__ import annotations

import errno

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

from idgateway._twisted import note_fallback


class _LeanEPollReactor(EPollReactor):
    """EPollReactor, its events dispatched without callWithLogger."""

    # (The namespace it always had, before it moved into the seam.)
    _lean_log = Logger(namespace="idgateway.workers.event_loop.LeanEPollReactor")

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
