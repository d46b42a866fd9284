"""Workers' log relay: text access lines travel as compact records, not JSON."""

from __future__ import annotations

import io
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from idgateway import workers
from idgateway.workers import ACCESS_RECORD, WorkerProtocol, _Worker


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


def test_the_worker_writes_access_lines_compactly_and_flushes_once_per_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    flushes: list[int] = []
    real_flush = out.flush
    monkeypatch.setattr(out, "flush", lambda: (flushes.append(1), real_flush()))
    monkeypatch.setattr(workers.sys, "stdout", out)
    began: list[Any] = []
    monkeypatch.setattr(
        "twisted.logger.globalLogBeginner.beginLoggingTo",
        lambda observers, **kw: began.extend(observers),
    )
    clock = Clock()
    workers._log_json_to_stdout(clock)
    [observe] = began
    for n in range(3):
        observe(
            {
                "log_namespace": "idgateway.access",
                "log_time": 10.0 + n,
                "access_line": f"GET /{n} 200 1B user=a\nb",
            }
        )
    assert flushes == []  # not yet: once the reactor turn is over
    clock.advance(0)
    assert flushes == [1]
    # (split on "\n" only: str.splitlines also splits at the JSON records' \x1e)
    assert out.getvalue().split("\n")[:-1] == [
        f"{ACCESS_RECORD}{10.0 + n!r}\tGET /{n} 200 1B user=a\\nb" for n in range(3)
    ]
    # Everything else is still a JSON record (and flushed at once).
    Logger(namespace="other", observer=observe).info("hello {x}", x=1)
    assert out.getvalue().split("\n")[-2].startswith("\x1e{")
