"""Workers' log relay: text access lines travel as compact records, not JSON."""

from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import (
    Logger,
    capturedLogs,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
)

from idgateway.config.model import LoggingSettings
from idgateway.observe import access_log as observe_module
from idgateway.workers import log_relay as workers
from idgateway.workers.log_relay import ACCESS_RECORD
from idgateway.workers.master import WorkerProtocol, _Worker


def relay(*lines: bytes) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    protocol = WorkerProtocol(
        master=None,  # type: ignore[arg-type]
        worker=_Worker(index=1),
        observer=events.append,  # type: ignore[arg-type]
    )
    protocol.childDataReceived(1, b"".join(line + b"\n" for line in lines))
    return events


def test_an_access_record_becomes_the_workers_access_line() -> None:
    line = "GET /a 200 5B route=app1 user=alice gw=1.0ms up=0.5ms id=x ip=127.0.0.1"
    [event] = relay(f"{ACCESS_RECORD}1700000000.25\t{line}".encode())
    assert event["log_namespace"] == "idgateway.access"
    assert event["log_time"] == 1700000000.25
    assert event["gateway_worker"] == 1
    assert formatEvent(event) == "[worker 1] " + line


def test_a_broken_access_record_is_passed_on_as_text() -> None:
    events = relay(f"{ACCESS_RECORD}not-a-time\tGET /".encode(), f"{ACCESS_RECORD}no tab".encode())
    assert [formatEvent(e) for e in events] == [
        f"[worker 1] {ACCESS_RECORD}not-a-time\tGET /",
        f"[worker 1] {ACCESS_RECORD}no tab",
    ]
    assert all(e["log_namespace"] != "idgateway.access" for e in events)


def test_the_worker_writes_access_lines_compactly_and_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    flushes: list[int] = []
    real_flush = out.flush

    def counting_flush() -> None:
        flushes.append(1)
        real_flush()

    monkeypatch.setattr(out, "flush", counting_flush)
    monkeypatch.setattr(workers.sys, "stdout", out)
    began: list[Any] = []
    monkeypatch.setattr(
        "twisted.logger.globalLogBeginner.beginLoggingTo",
        lambda observers, **kw: began.extend(observers),
    )
    clock = Clock()
    monkeypatch.setattr(observe_module, "_direct_record", None)  # restored afterwards
    workers.log_json_to_stdout(clock)
    [observe] = began
    for n in range(3):
        observe(
            {
                "log_namespace": "idgateway.access",
                "log_time": 10.0 + n,
                "access_line": f"GET /{n} 200 1B user=a\nb",
            }
        )
    assert flushes == []  # not yet: in a batch
    clock.advance(workers.ACCESS_FLUSH_DELAY)
    assert flushes == [1]
    # (split on "\n" only: str.splitlines also splits at the JSON records' \x1e)
    assert out.getvalue().split("\n")[:-1] == [
        f"{ACCESS_RECORD}{10.0 + n!r}\tGET /{n} 200 1B user=a\\nb" for n in range(3)
    ]
    # Everything else is still a JSON record (and flushed at once).
    Logger(namespace="other", observer=observe).info("hello {x}", x=1)
    assert out.getvalue().split("\n")[-2].startswith("\x1e{")

    # A finished request's access line becomes a record without a log event.
    request = SimpleNamespace(
        idgw_logging=LoggingSettings(),
        idgw_started=time.monotonic(),
        idgw_upstream_ms=0.4,
        idgw_route="app1",
        idgw_user="alice",
        idgw_cut_off=False,
        client=SimpleNamespace(host="198.51.100.7"),
        method=b"GET",
        path=b"/direct",
        code=200,
        sentLength=5,
        request_id=b"rid-1",
    )
    with capturedLogs() as events:
        observe_module.log_access(request)
    assert events == []
    clock.advance(workers.ACCESS_FLUSH_DELAY)
    record = out.getvalue().split("\n")[-2]
    assert record.startswith(ACCESS_RECORD)
    assert re.search(
        r"\tGET /direct 200 5B route=app1 user=alice gw=\d+\.\dms up=0.4ms id=rid-1 "
        r"ip=198.51.100.7$",
        record,
    )


class _Master:
    """What WorkerProtocol asks of the master when twistd logs text on stdout."""

    def __init__(self, out: io.StringIO) -> None:
        self.access_out = out


def test_with_a_text_log_on_stdout_access_lines_are_written_as_twistd_would() -> None:
    out = io.StringIO()
    text_observer = textFileLogObserver(out)  # what twistd -n writes to stdout with
    protocol = WorkerProtocol(
        master=_Master(out),  # type: ignore[arg-type]
        worker=_Worker(index=1),
        observer=text_observer,
    )
    line = "GET /a 200 5B route=app1 gw=1.0ms id=x ip=127.0.0.1"
    other = Logger(namespace="idgateway.service")
    records = io.StringIO()
    other.observer = jsonFileLogObserver(records, recordSeparator="\x1e")
    other.info("worker {n} serving", n=1)
    protocol.childDataReceived(
        1,
        (
            f"{ACCESS_RECORD}1700000000.25\t{line}\n"
            f"{records.getvalue()}"
            f"{ACCESS_RECORD}1700000001.5\t{line}\n"
        ).encode(),
    )
    written = out.getvalue().splitlines()
    # The same text the observer would have written for the relayed events...
    expected = []
    for when in (1700000000.25, 1700000001.5):
        via_observer = io.StringIO()
        WorkerProtocol(
            master=None,  # type: ignore[arg-type]
            worker=_Worker(index=1),
            observer=textFileLogObserver(via_observer),
        )._relay_access(when, line)
        expected.append(via_observer.getvalue().rstrip("\n"))
    # ... in the order the worker logged them.
    assert written[0] == expected[0]
    assert written[1].endswith("[idgateway.service#info] [worker 1] worker 1 serving")
    assert written[2] == expected[1]
    assert len(written) == 3


@pytest.mark.parametrize(
    ("parent", "expected"),
    [
        ({"nodaemon": True, "logfile": None, "syslog": False, "logger": None}, True),
        ({"nodaemon": False, "logfile": "-", "syslog": False, "logger": None}, True),
        ({"nodaemon": True, "logfile": "/var/log/gw.log", "syslog": False, "logger": None}, False),
        ({"nodaemon": True, "logfile": None, "syslog": True, "logger": None}, False),
        ({"nodaemon": True, "logfile": None, "syslog": False, "logger": "x.y"}, False),
        ({"nodaemon": False, "logfile": None, "syslog": False, "logger": None}, False),
    ],
)
def test_the_master_writes_access_lines_itself_only_when_twistd_logs_text_to_stdout(
    parent: dict[str, Any], expected: bool
) -> None:
    from idgateway.tap import Options, log_is_text_on_stdout

    options = Options()
    options.parent = parent  # type: ignore[attr-defined,assignment]
    assert log_is_text_on_stdout(options) is expected
    assert log_is_text_on_stdout(Options()) is False  # not run by twistd


def test_a_workers_log_pipe_is_widened_and_anything_else_left_alone(tmp_path):
    import fcntl
    import os

    from idgateway.workers import log_relay as workers

    read_end, write_end = os.pipe()
    try:
        with open(write_end, "w", closefd=False) as stream:
            workers.widen_log_pipe(stream)
        if hasattr(fcntl, "F_GETPIPE_SZ"):
            assert fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) >= workers.LOG_PIPE_BYTES
    finally:
        os.close(read_end)
        os.close(write_end)
    # A file (twistd -n > file, say) is not a pipe: no error, nothing changed.
    with open(tmp_path / "log", "w") as log:
        workers.widen_log_pipe(log)
    workers.widen_log_pipe(io.StringIO())  # no descriptor at all


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(b"/a\nforged", id="lf"),
        pytest.param(b"/a\rforged", id="cr"),
        pytest.param(b"/a\x85forged", id="nel-byte"),
        pytest.param("/a\u2028forged".encode(), id="u2028"),
        pytest.param(b"/a\x1e{}", id="record-separator"),
        pytest.param(b"/a\x00\x1b[2J", id="nul-esc"),
    ],
)
def test_a_hostile_target_crosses_the_pipe_as_one_record(
    monkeypatch: pytest.MonkeyPatch, path: bytes
) -> None:
    """Worker side (the record writer) to master side (the relay): one access line."""
    out = io.StringIO()
    monkeypatch.setattr(workers.sys, "stdout", out)
    monkeypatch.setattr(
        "twisted.logger.globalLogBeginner.beginLoggingTo", lambda observers, **kw: None
    )
    monkeypatch.setattr(observe_module, "_direct_record", None)  # restored afterwards
    clock = Clock()
    workers.log_json_to_stdout(clock)
    request = SimpleNamespace(
        idgw_logging=LoggingSettings(),
        idgw_started=time.monotonic(),
        idgw_upstream_ms=None,
        idgw_route="app1",
        idgw_user="a\u2028b",
        idgw_cut_off=False,
        client=SimpleNamespace(host="198.51.100.7"),
        method=b"GET",
        path=path,
        code=200,
        sentLength=5,
        request_id=b"rid-1",
    )
    observe_module.log_access(request)
    clock.advance(workers.ACCESS_FLUSH_DELAY)
    piped = out.getvalue().encode("utf-8")
    assert piped.count(b"\n") == 1
    [event] = relay(piped.rstrip(b"\n"))
    assert event["log_namespace"] == "idgateway.access"
    line = formatEvent(event)
    assert line.startswith("[worker 1] GET /a\\x") and " user=a\\xE2\\x80\\xA8b " in line
    assert all(" " <= char <= "~" for char in line)
