"""The workers' event loop: twisted's epoll reactor without a log context per event.

twisted's EPollReactor runs each ready descriptor's doRead/doWrite inside
``log.callWithLogger``, which pushes a legacy log context (the "system"
prefix of old-style ``log.msg`` lines) for every event: four Python frames and
a dict each time, about 6% of a worker's time when proxying. The gateway logs
through twisted.logger, which does not read that context, and
``_doReadOrWrite`` already catches and logs what doRead or doWrite raise. So
this reactor calls it directly; an exception that still escapes is logged
here, as callWithLogger would have, and the loop goes on.

The loop reads the epoll reactor's internals, so it lives in the seam
(``idgateway._twisted.reactor``), with the stock EPollReactor as its fallback.

Only worker processes (``workers:`` > 1) use it: the master picks their
entry point. A single-process gateway runs on whatever reactor twistd chose.
"""

from __future__ import annotations

from twisted.internet.epollreactor import EPollReactor

from idgateway._twisted.reactor import LeanEPollReactor

__all__ = ["LeanEPollReactor", "install"]


def install() -> EPollReactor:
    """Install LeanEPollReactor as twisted's global reactor (before anything imports it)."""
    from twisted.internet.main import installReactor

    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor
