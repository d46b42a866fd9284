"""Microbenchmark of the workers' access-line relay: 10,000 lines, worker and master.

Worker side: a worker's ``access_record`` (what ``observe.access_log`` calls
for each finished request) for 10,000 access lines, and the batched writes
that carry them to the master (``workers.log_relay``). Master side: those
bytes fed to the master's ``WorkerProtocol`` in the 8 KiB reads Twisted's
process reader makes, with twistd's text log on stdout (the case of
``twistd -n``, the systemd unit and ``make demo``), written to /dev/null.

    .venv/bin/python bench/relay_micro.py            # µs per line, median of 7 runs
    .venv/bin/python bench/relay_micro.py --json     # (the figures as JSON)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LINES = 10_000
READ_SIZE = 8192  # twisted.internet.fdesc.readFromFD
LINE = (
    "GET /app/index.html 200 1234B route=app1 user=alice gw=0.4ms up=0.2ms "
    "id=0f3c2a9e1d4b7a65 ip=127.0.0.1"
)


class _Clock:
    """Just enough of a reactor for the worker's batching: run flushes by hand."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callLater(self, delay: float, f: Any, *args: Any) -> None:
        self.calls.append((f, args))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


def worker_side(batch: int) -> tuple[float, bytes]:
    """Seconds for LINES access records (flushed every ``batch``), and the bytes piped."""
    from twisted.logger import globalLogBeginner

    from idgateway.observe import access_log
    from idgateway.workers import log_relay

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    clock = _Clock()
    real_stdout, real_begin = sys.stdout, globalLogBeginner.beginLoggingTo
    sys.stdout = out
    globalLogBeginner.beginLoggingTo = lambda *a, **kw: None  # type: ignore[method-assign]
    try:
        try:
            log_relay.log_json_to_stdout(clock, text_for_worker=1)  # type: ignore[call-arg]
        except TypeError:  # before the framed batches
            log_relay.log_json_to_stdout(clock)
        record = access_log._direct_record
        assert record is not None
        when = time.time()
        started = time.perf_counter()
        for n in range(LINES):
            record(when + n * 0.0001, LINE)
            if n % batch == batch - 1:
                clock.run()
        clock.run()
        elapsed = time.perf_counter() - started
    finally:
        sys.stdout = real_stdout
        globalLogBeginner.beginLoggingTo = real_begin  # type: ignore[method-assign]
        access_log.send_access_lines_to(None)
    out.flush()
    return elapsed, raw.getvalue()


class _Master:
    def __init__(self, out: Any) -> None:
        self.access_out = out


def master_side(piped: bytes) -> float:
    """Seconds for the master to relay ``piped`` (8 KiB reads) to twistd's text stdout."""
    from twisted.logger import textFileLogObserver

    from idgateway.workers.master import WorkerProtocol, _Worker

    with open(os.devnull, "w") as devnull:
        protocol = WorkerProtocol(
            _Master(devnull),  # type: ignore[arg-type]
            _Worker(index=1),
            textFileLogObserver(devnull),
        )
        reads = [piped[i : i + READ_SIZE] for i in range(0, len(piped), READ_SIZE)]
        started = time.perf_counter()
        for data in reads:
            protocol.childDataReceived(1, data)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--batch", type=int, default=500, help="lines per 50 ms batch (500: 10k req/s a worker)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    worker_runs, master_runs = [], []
    for _ in range(args.runs):
        elapsed, piped = worker_side(args.batch)
        worker_runs.append(elapsed)
        master_runs.append(master_side(piped))
    result = {
        "lines": LINES,
        "batch": args.batch,
        "bytes_piped": len(piped),
        "worker_us_per_line": statistics.median(worker_runs) * 1e6 / LINES,
        "master_us_per_line": statistics.median(master_runs) * 1e6 / LINES,
        "master_ms_per_10k": statistics.median(master_runs) * 1e3,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{LINES} access lines in batches of {args.batch} ({len(piped)} bytes piped): "
        f"worker {result['worker_us_per_line']:.3f} µs/line, "
        f"master {result['master_us_per_line']:.3f} µs/line "
        f"({result['master_ms_per_10k']:.2f} ms per 10,000)"
    )


if __name__ == "__main__":
    main()
