"""How a worker's log reaches the master: JSON records on the worker's stdout.

The worker writes each event as one JSON line (access lines in a cheaper text
form, batched); the master (``WorkerProtocol`` in ``workers.master``) reads
them and re-publishes each into its own log with a ``[worker N]`` prefix.

When the master writes its log as text on its stdout (``twistd -n``, the
systemd unit), it tells its workers so (``--access-text``): a worker then
sends its access lines finished, exactly as they appear in that log, in
framed batches (``ACCESS_FRAME``) that the master writes out as they are.
"""

from __future__ import annotations

import fcntl
import sys
from typing import Any, cast

from twisted.logger import (
    ILogObserver,
)
from twisted.python.failure import Failure

from idgateway.observe.log_time import text_timestamp

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


# With ``--access-text``, a batch of finished access lines travels as this
# mark, its length in bytes in decimal, a newline, and that many bytes of whole
# lines, each ending in a newline: the master writes it to its stdout in one
# write, with no work per line (per line, decoding and formatting a record
# was nearly all of the master's CPU time).
ACCESS_FRAME = b"\x1d"


# A worker cuts a larger batch into frames of at most this many bytes (between
# lines); the master takes a frame of up to MAX_FRAME bytes (an access line
# longer than a frame, which the request head limits rule out, goes alone).
ACCESS_FRAME_BYTES = MAX_LINE


MAX_FRAME = 16 * MAX_LINE


def access_text_prefix(index: int) -> str:
    """What follows the timestamp in worker ``index``'s access lines in the text log."""
    return f" [{ACCESS_NAMESPACE}#info] [worker {index}] "


def access_frames(data: bytes) -> list[bytes]:
    """Whole text lines (``data`` ends in a newline) as frames for the master."""
    if len(data) <= ACCESS_FRAME_BYTES:
        return [b"%b%d\n%b" % (ACCESS_FRAME, len(data), data)]
    frames = []
    start, size = 0, len(data)
    while start < size:
        end = start + ACCESS_FRAME_BYTES
        if end < size:
            cut = data.rfind(b"\n", start, end)
            if cut < 0:  # one line longer than a frame: a frame of its own
                cut = data.find(b"\n", end)
            end = size if cut < 0 else cut + 1
        else:
            end = size
        frames.append(b"%b%d\n%b" % (ACCESS_FRAME, end - start, data[start:end]))
        start = end
    return frames


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


def log_json_to_stdout(reactor: Any, *, text_for_worker: int | None = None) -> None:
    """Log as records on stdout for the master; ``text_for_worker``: access
    lines finished, as worker N's lines in the master's text log (framed)."""
    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    # Here, not at the top: the master reads this module's record format but
    # must not import the access log (and the metrics and data path behind it).
    from idgateway.observe import access_log as observe_module

    widen_log_pipe(sys.stdout)

    as_json = jsonFileLogObserver(sys.stdout)
    out = sys.stdout
    # Frames go to the bytes under the text stream: their lengths are in bytes.
    raw = getattr(out, "buffer", None) if text_for_worker is not None else None
    # Access records wait here (not in sys.stdout, which may be unbuffered,
    # e.g. with PYTHONUNBUFFERED) and go out in one write per batch.
    pending: list[str] = []

    def flush_records() -> None:
        if pending:
            out.write("".join(pending))
            pending.clear()
            out.flush()

    def access_record(when: float, line: str) -> None:
        # Text access lines: a compact record, written in batches.
        if "\n" in line or "\r" in line:  # (two searches cost less than two replaces)
            line = line.replace("\n", "\\n").replace("\r", "\\r")
        if not pending:
            reactor.callLater(ACCESS_FLUSH_DELAY, flush_records)
        pending.append(f"{ACCESS_RECORD}{when!r}\t{line}\n")

    flush, record = flush_records, access_record
    if raw is not None:
        prefix = access_text_prefix(cast(int, text_for_worker))

        def flush_frames() -> None:
            if pending:
                # (Not strict: a line that cannot be encoded must not take the
                # batch with it.)
                data = "".join(pending).encode("utf-8", "backslashreplace")
                pending.clear()
                out.flush()  # anything written as text before goes first
                for frame in access_frames(data):
                    _write_all(raw, frame)
                raw.flush()

        # The timestamp of the last second seen: (second, its text).
        stamp: list[Any] = [None, ""]

        def access_text(when: float, line: str) -> None:
            # The line as the master's text log shows it: twistd's timestamp of
            # the request's time (workers inherit the master's TZ), then the
            # namespace and this worker. \n and \r escaped: one line each.
            if "\n" in line or "\r" in line:
                line = line.replace("\n", "\\n").replace("\r", "\\r")
            if not pending:
                reactor.callLater(ACCESS_FLUSH_DELAY, flush_frames)
            second = int(when)
            if second != stamp[0]:  # (inline: a call per request cost more than the rest)
                stamp[:] = second, text_timestamp(when)
            pending.append(f"{stamp[1]}{prefix}{line}\n")

        flush, record = flush_frames, access_text

    def observe(event: dict[str, Any]) -> None:
        line = event.get("access_line")
        if isinstance(line, str) and event.get("log_namespace") == ACCESS_NAMESPACE:
            record(event.get("log_time", 0.0), line)
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
    observe_module.send_access_lines_to(record)


def _write_all(raw: Any, data: bytes) -> None:
    # An unbuffered stdout (PYTHONUNBUFFERED) is a raw file, whose write may
    # take part of the data (a signal during a write to a full pipe): a frame
    # cut short would swallow what follows it.
    view = memoryview(data)
    while view:
        written = raw.write(view)
        view = view[written or 0 :]
