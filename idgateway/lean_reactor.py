"""The workers' event loop: twisted's epoll reactor without a log context per event.

twisted's EPollReactor runs each ready descriptor's doRead/doWrite inside
``log.callWithLogger``, which pushes a legacy log context (the "system"
prefix of old-style ``log.msg`` lines) for every event: four Python frames and
a dict each time, about 6% of a worker's time when proxying. The gateway logs
through twisted.logger, which does not read that context, and
``_doReadOrWrite`` already catches and logs what doRead or doWrite raise. So
this reactor calls it directly; an exception that still escapes is logged
here, as callWithLogger would have, and the loop goes on.

Only worker processes (``workers:`` > 1) use it: the master picks their
entry point. A single-process gateway runs on whatever reactor twistd chose.
"""

from __future__ import annotations

import errno

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger


class LeanEPollReactor(EPollReactor):
    _lean_log = Logger()

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


def install() -> LeanEPollReactor:
    """Install LeanEPollReactor as twisted's global reactor (before anything imports it)."""
    from twisted.internet.main import installReactor

    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor
