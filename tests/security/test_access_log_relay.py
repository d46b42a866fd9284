"""An access line cannot forge a log line on its way from a worker to the log.

With twistd's text log on the master's stdout, a worker sends its access lines
finished, in length-framed batches the master writes as they are
(``workers.log_relay``, ``workers.log_stream``). What a client controls (the
target, the user name a provider vouches for, a request id) must come out as
one line of that log, under its own timestamp and ``[worker N]``, whatever it
holds: line breaks, a frame mark and length, a forged log line, sheer size.
"""

from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import textFileLogObserver

from idgateway.config.model import LoggingSettings
from idgateway.observe import access_log as observe_module
from idgateway.workers import log_relay
from idgateway.workers.master import WorkerProtocol, _Worker

FORGED = "2026-12-07T12:00:00+0000 [idgateway.access#info] [worker 0] GET /admin 200 0B"

# A line of the master's text log: twistd's timestamp, then the namespace.
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[idgateway\.access#info\] \[worker 1\] [A-Z]"
)

VECTORS = [
    pytest.param({"path": b"/a\nforged"}, id="lf-in-target"),
    pytest.param({"path": b"/a\rforged"}, id="cr-in-target"),
    pytest.param({"path": ("/a\r\n" + FORGED).encode()}, id="forged-line-in-target"),
    pytest.param({"path": b"/a\n\x1d99\n" + b"x" * 99}, id="frame-header-in-target"),
    pytest.param({"path": b"/a\x1d5\nabcd"}, id="frame-mark-in-target"),
    pytest.param({"path": b"/a\x1f1.0\tGET /forged"}, id="record-mark-in-target"),
    pytest.param({"path": b"/a\x1e{}\n"}, id="json-record-in-target"),
    pytest.param({"path": b"/a\x85\xe2\x80\xa8forged"}, id="nel-and-u2028-in-target"),
    pytest.param({"path": b"/a\x00\x1b[2J\x08"}, id="nul-esc-backspace"),
    pytest.param({"path": b"/" + b"\n" * 65536}, id="oversize-64k-of-lf"),
    pytest.param({"path": b"/" + b"a" * (2 * 1024 * 1024)}, id="oversize-past-a-frame"),
    pytest.param({"idgw_user": "alice\n" + FORGED}, id="forged-line-in-user"),
    pytest.param({"idgw_user": "\x1d12\nalice"}, id="frame-header-in-user"),
    pytest.param({"idgw_user": "\udce9\ud800"}, id="lone-surrogates-in-user"),
    pytest.param({"request_id": b"rid\n" + FORGED.encode()}, id="forged-line-in-request-id"),
    pytest.param({"request_id": b"rid\r\x1d3\nabc"}, id="frame-in-request-id"),
    pytest.param({"method": b"GET\n\x1d1\n"}, id="frame-in-method"),
]


def hostile_request(**changes: Any) -> SimpleNamespace:
    request = SimpleNamespace(
        idgw_logging=LoggingSettings(),
        idgw_started=time.monotonic(),
        idgw_upstream_ms=0.3,
        idgw_route="app1",
        idgw_user="alice",
        idgw_cut_off=False,
        client=SimpleNamespace(host="198.51.100.7"),
        method=b"GET",
        path=b"/",
        code=200,
        sentLength=5,
        request_id=b"rid-1",
    )
    for name, value in changes.items():
        setattr(request, name, value)
    return request


def worker_pipe(monkeypatch: pytest.MonkeyPatch, requests: list[SimpleNamespace]) -> bytes:
    """The bytes a worker (--access-text, index 1) writes for these requests."""
    raw = io.BytesIO()
    monkeypatch.setattr(
        log_relay.sys, "stdout", io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    )
    monkeypatch.setattr(
        "twisted.logger.globalLogBeginner.beginLoggingTo", lambda observers, **kw: None
    )
    monkeypatch.setattr(observe_module, "_direct_record", None)  # restored afterwards
    clock = Clock()
    log_relay.log_json_to_stdout(clock, text_for_worker=1)
    for request in requests:
        observe_module.log_access(request)
    clock.advance(log_relay.ACCESS_FLUSH_DELAY)
    return raw.getvalue()


class _Master:
    def __init__(self, out: io.StringIO) -> None:
        self.access_out = out


@pytest.mark.parametrize("one_byte_reads", [False, True], ids=["whole", "one-byte-reads"])
@pytest.mark.parametrize("changes", VECTORS)
def test_a_hostile_access_line_is_one_line_of_the_log(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any], one_byte_reads: bool
) -> None:
    # The hostile request between two plain ones: none of the three may bleed.
    piped = worker_pipe(
        monkeypatch,
        [
            hostile_request(path=b"/before"),
            hostile_request(**changes),
            hostile_request(path=b"/after"),
        ],
    )
    out = io.StringIO()
    protocol = WorkerProtocol(
        master=_Master(out),  # type: ignore[arg-type]
        worker=_Worker(index=1),
        observer=textFileLogObserver(out),
    )
    if one_byte_reads and len(piped) < 100_000:
        for at in range(len(piped)):
            protocol.childDataReceived(1, piped[at : at + 1])
    else:
        for at in range(0, len(piped), 8192):
            protocol.childDataReceived(1, piped[at : at + 8192])
    log = out.getvalue()
    assert log.endswith("\n")
    lines = log.split("\n")[:-1]
    assert len(lines) == 3, lines[:5]
    assert all(LOG_LINE.match(line) for line in lines)
    assert " GET /before 200 " in lines[0] and " GET /after 200 " in lines[2]
    assert not any(line.startswith(FORGED) for line in lines)
    if "request_id" not in changes:
        # What the client sent is escaped: nothing but printable ASCII. (A
        # request id arrives checked, proxy.headers.request_id_from; here the
        # relay alone keeps even an unchecked one on its line.)
        assert all(" " <= char <= "~" for char in lines[1])
