"""How a worker's log reaches the master: JSON records on the worker's stdout.

The worker writes each event as one JSON line (access lines in a cheaper text
form, batched); the master (``WorkerProtocol`` in ``workers.master``) reads
them and re-publishes each into its own log with a ``[worker N]`` prefix.
"""

from __future__ import annotations

import fcntl
import sys
from typing import Any, cast

from twisted.logger import (
    ILogObserver,
)
from twisted.python.failure import Failure

# A worker output line longer than this is passed on in pieces.
MAX_LINE = 1024 * 1024


# Set on the event a worker logs once it is serving.
READY_FIELD = "gateway_worker_ready"


WORKER_FIELD = "gateway_worker"


# A failure's traceback as text: JSON keeps a failure's frames but not its
# exception, so the worker sends the traceback it would have printed.
TRACEBACK_FIELD = "gateway_worker_traceback"


# A text access line travels from worker to master as this mark, the event's
# time, a tab and the line: a JSON record per request cost the worker more
# than a tenth of the request and the master as much again to decode.
ACCESS_RECORD = "\x1f"


ACCESS_NAMESPACE = "idgateway.access"


# How long a worker gathers access records before writing them to the master:
# one pipe write (and one read in the master) per batch, not per request.
ACCESS_FLUSH_DELAY = 0.05


class WorkerError(Exception):
    """An error logged by a worker process (the message is its last traceback line)."""


class WorkerFailure(Failure):
    """A failure a worker logged, carrying the traceback as the worker formatted it."""

    def __init__(self, traceback: str) -> None:
        lines = traceback.strip().splitlines()
        super().__init__(WorkerError(lines[-1] if lines else "error in a worker"))
        self.worker_traceback = traceback

    def getTraceback(self, elideFrameworkCode: int = 0, detail: str = "default") -> str:
        return self.worker_traceback


# The pipe a worker's log goes through to the master, when the kernel allows
# (Linux): about eight 50 ms batches of access records at full speed (0.4 s),
# instead of the default 64 KiB (about two). A write to a full pipe blocks the
# worker, every connection of it included, for as long as the master is not
# reading. (Not more: an unprivileged user's pipes share a budget,
# fs.pipe-user-pages-soft, 64 MiB by default, and a gateway may run many
# workers.)
LOG_PIPE_BYTES = 256 * 1024


def widen_log_pipe(stream: Any) -> None:
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    try:
        fcntl.fcntl(stream.fileno(), set_size, LOG_PIPE_BYTES)
    except (OSError, ValueError):
        # Not a pipe (a terminal, a file), over the limit, or no descriptor
        # at all (io.UnsupportedOperation is a ValueError): keep what it is.
        pass


def log_json_to_stdout(reactor: Any) -> None:
    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    # Here, not at the top: the master reads this module's record format but
    # must not import the access log (and the metrics and data path behind it).
    from idgateway.observe import access_log as observe_module

    widen_log_pipe(sys.stdout)

    as_json = jsonFileLogObserver(sys.stdout)
    out = sys.stdout
    # Access records wait here (not in sys.stdout, which may be unbuffered,
    # e.g. with PYTHONUNBUFFERED) and go out in one write per batch.
    pending: list[str] = []

    def flush() -> None:
        if pending:
            out.write("".join(pending))
            pending.clear()
            out.flush()

    def access_record(when: float, line: str) -> None:
        # Text access lines: a compact record, written in batches.
        line = line.replace("\n", "\\n").replace("\r", "\\r")
        if not pending:
            reactor.callLater(ACCESS_FLUSH_DELAY, flush)
        pending.append(f"{ACCESS_RECORD}{when!r}\t{line}\n")

    def observe(event: dict[str, Any]) -> None:
        line = event.get("access_line")
        if isinstance(line, str) and event.get("log_namespace") == ACCESS_NAMESPACE:
            access_record(event.get("log_time", 0.0), line)
            return
        flush()  # what was logged before this goes out before it
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            event = dict(event)
            event[TRACEBACK_FIELD] = failure.getTraceback()
        as_json(event)

    globalLogBeginner.beginLoggingTo(
        [cast(ILogObserver, observe)], redirectStandardIO=False, discardBuffer=False
    )
    # Text access lines skip twisted.logger and become records directly.
    observe_module.send_access_lines_to(access_record)
