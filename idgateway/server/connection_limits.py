"""How many client connections a listener holds, and saying so without a storm.

``max_connections`` per listener: past it a new connection is accepted and
closed at once (the Site's buildProtocol returns None, which twisted's port
turns into a close), and the refusals are reported at most once a second.

When the process runs out of descriptors anyway (upstream connections, files),
twisted's port accepts and closes with a reserved descriptor (EMFILE
recovery) and logs a line per closed socket: ``throttle_accept_logs`` sends
those through the same once-a-second report.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.logger import ILogObserver, Logger, globalLogPublisher
from zope.interface import implementer

from idgateway._twisted.tcp import port_logger, set_port_logger

# Descriptors left for everything that is not a client connection: logs,
# Redis, calls to providers, the admin listener, files read on reload.
FD_RESERVE = 128
# The default never goes below this, even on a tiny descriptor limit.
MIN_DEFAULT_CONNECTIONS = 16
# Reports of refused connections: at most one per this many seconds.
REPORT_INTERVAL = 1.0


def descriptor_limit() -> int:
    """This process's soft RLIMIT_NOFILE (a large number if unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def default_max_connections(listeners: int, soft_limit: int | None = None) -> int:
    """A listener's share of this process's descriptors.

    ``(soft RLIMIT_NOFILE - 128) // (2 * listeners)``, at least 16: each
    client connection may hold an upstream connection too (a WebSocket
    tunnel always does), hence the 2.
    """
    limit = descriptor_limit() if soft_limit is None else soft_limit
    share = (limit - FD_RESERVE) // (2 * max(1, listeners))
    return max(MIN_DEFAULT_CONNECTIONS, share)


def process_share(max_connections: int, workers: int) -> int:
    """What each of ``workers`` processes admits so that together they hold the limit."""
    if workers <= 1:
        return max_connections
    return max(1, max_connections // workers)


class OncePerSecond:
    """Counts events and logs their number at most once per REPORT_INTERVAL.

    The first event is reported at once; the ones after it within the
    interval are added up and reported when it ends (one DelayedCall while
    events keep coming, none otherwise).
    """

    _log = Logger()

    def __init__(self, clock: Any, message: str, **fields: Any) -> None:
        self.clock = clock
        self.message = message
        self.fields = fields
        self.total = 0
        self._pending = 0
        self._report: Any = None

    def note(self, count: int = 1) -> None:
        self.total += count
        self._pending += count
        if self._report is None:
            self._emit()

    def _emit(self) -> None:
        count, self._pending = self._pending, 0
        if count == 0:
            self._report = None
            return
        self._log.warn(self.message, count=count, total=self.total, **self.fields)
        self._report = self.clock.callLater(REPORT_INTERVAL, self._emit)

    def stop(self) -> None:
        if self._report is not None and self._report.active():
            self._report.cancel()
        self._report = None


@implementer(ILogObserver)
class AcceptLogThrottle:
    """A listening port's log observer: EMFILE recovery lines become one report a second.

    Every other event from the port goes on to the global log as before.
    """

    def __init__(self, clock: Any, address: str) -> None:
        self.closed = OncePerSecond(
            clock,
            "out of file descriptors (EMFILE) on {address}: closed {count} new "
            "connection(s) at accept since the last report ({total} in all); raise "
            "LimitNOFILE or lower max_connections",
            address=address,
        )

    def __call__(self, event: dict[str, Any]) -> None:
        text = event.get("log_format") or ""
        if "EMFILE" in text:
            if text.startswith("EMFILE recovery: Closed"):
                self.closed.note()
            return
        globalLogPublisher(event)


def throttle_accept_logs(port: Any, clock: Any, address: str) -> None:
    """Route ``port``'s accept-time log events through an AcceptLogThrottle.

    twisted.internet.tcp.Port logs through a private Logger
    (``idgateway._twisted.tcp.port_logger``); a port without one is left as it is, logging as stock
    twisted does.
    """
    logger = port_logger(port)
    if logger is not None:
        set_port_logger(
            port, Logger(namespace=logger.namespace, observer=AcceptLogThrottle(clock, address))
        )
