"""Workers' access lines in framed batches, when the master logs text on stdout.

The worker (``--access-text``) sends its access lines finished, as the
master's text log shows them; the master writes each batch in one write.
The log must stay what it was, byte for byte: these tests compare the two
paths (per-line records formatted by the master, and frames).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, textFileLogObserver

from idgateway.observe import access_log as observe_module
from idgateway.workers import log_relay
from idgateway.workers.log_relay import ACCESS_FRAME, ACCESS_FRAME_BYTES, MAX_FRAME
from idgateway.workers.log_stream import WorkerStdout
from idgateway.workers.master import MasterService, WorkerProtocol, _Worker

LINE = "GET /a 200 5B route=app1 user=alice gw=1.0ms up=0.5ms id=x ip=127.0.0.1"


class _WorkerPipe:
    """A worker's log set-up (log_json_to_stdout) writing into bytes, as into its pipe."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, text_for_worker: int | None) -> None:
        self.raw = io.BytesIO()
        self.stdout = io.TextIOWrapper(self.raw, encoding="utf-8", write_through=True)
        monkeypatch.setattr(log_relay.sys, "stdout", self.stdout)
        observers: list[Any] = []
        monkeypatch.setattr(
            "twisted.logger.globalLogBeginner.beginLoggingTo",
            lambda given, **kw: observers.extend(given),
        )
        monkeypatch.setattr(observe_module, "_direct_record", None)  # restored afterwards
        self.clock = Clock()
        log_relay.log_json_to_stdout(self.clock, text_for_worker=text_for_worker)
        [self.observe] = observers
        self.record = observe_module._direct_record
        assert self.record is not None
        self.log = Logger(namespace="idgateway.service", observer=self.observe)

    def access(self, when: float, line: str) -> None:
        assert self.record is not None
        self.record(when, line)

    def flush(self) -> None:
        self.clock.advance(log_relay.ACCESS_FLUSH_DELAY)

    def piped(self) -> bytes:
        self.stdout.flush()
        return self.raw.getvalue()


class _Out(io.StringIO):
    """twistd's stdout: counts the writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


class _Master:
    def __init__(self, out: Any) -> None:
        self.access_out = out


def master_log(piped: bytes, reads: Callable[[bytes], list[bytes]] | None = None) -> _Out:
    """What the master writes to its text stdout for a worker's piped bytes."""
    out = _Out()
    protocol = WorkerProtocol(
        master=_Master(out),  # type: ignore[arg-type]
        worker=_Worker(index=1),
        observer=textFileLogObserver(out),
    )
    for data in reads(piped) if reads else [piped]:
        protocol.childDataReceived(1, data)
    return out


def one_worker_session(pipe: _WorkerPipe, lines: list[tuple[float, str]]) -> bytes:
    """Access lines, an event, more access lines, as a worker logs them over time."""
    half = len(lines) // 2
    for when, line in lines[:half]:
        pipe.access(when, line)
    pipe.log.info("reloaded {path}", path="/etc/gw.yaml")
    for when, line in lines[half:]:
        pipe.access(when, line)
    pipe.flush()
    pipe.log.info("worker {n} stopping", n=1)
    return pipe.piped()


SAMPLES = [
    (1700000000.25, LINE),
    (1700000000.999999, LINE.replace("/a", "/b")),
    (1700000001.0, "GET /a\nforged 200 0B"),
    (1700000001.5, "GET /a\rforged\r\n 200 0B"),
    (1700000002.0, "GET /caf\u00e9 200 route=r\u00e9seau user=\u2028x"),
    (1700003600.0, "GET /\x1d12\nxx 200 \x1e{}"),
]


@pytest.fixture
def reference(monkeypatch: pytest.MonkeyPatch) -> str:
    """The log as the master wrote it from per-line records (before frames)."""
    with monkeypatch.context() as patch:
        pipe = _WorkerPipe(patch, text_for_worker=None)
        piped = one_worker_session(pipe, SAMPLES)
    assert piped.startswith(log_relay.ACCESS_RECORD.encode())
    return master_log(piped).getvalue()


def test_frames_write_the_very_log_the_records_did(
    monkeypatch: pytest.MonkeyPatch, reference: str
) -> None:
    pipe = _WorkerPipe(monkeypatch, text_for_worker=1)
    piped = one_worker_session(pipe, SAMPLES)
    assert piped.startswith(ACCESS_FRAME)
    out = master_log(piped)
    assert out.getvalue() == reference
    # Two frames (before and after the event) and the two events: four writes,
    # whatever the number of lines.
    access_writes = [w for w in out.writes if "[idgateway.access#info]" in w]
    assert len(access_writes) == 2
    assert [w.count("\n") for w in access_writes] == [3, 3]
    # (Split on "\n" only: str.splitlines also splits at \x1d, \x1e and U+2028.)
    lines = reference.split("\n")[:-1]
    assert len(lines) == len(SAMPLES) + 2
    assert "reloaded /etc/gw.yaml" in lines[3] and "stopping" in lines[-1]
    # \n and \r in a line are escaped: no line but the ones logged.
    assert lines[2].endswith("GET /a\\nforged 200 0B")
    assert lines[4].endswith("GET /a\\rforged\\r\\n 200 0B")


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda b: [b[i : i + 1] for i in range(len(b))], id="one-byte-reads"),
        pytest.param(lambda b: [b[i : i + 7] for i in range(0, len(b), 7)], id="7-byte-reads"),
        pytest.param(lambda b: [b[i : i + 8192] for i in range(0, len(b), 8192)], id="8KiB-reads"),
        pytest.param(lambda b: [b[:2], b[2:3], b[3:]], id="header-cut-after-the-mark"),
    ],
)
def test_a_frame_cut_into_reads_anywhere_is_written_whole(
    monkeypatch: pytest.MonkeyPatch, reference: str, cut: Callable[[bytes], list[bytes]]
) -> None:
    pipe = _WorkerPipe(monkeypatch, text_for_worker=1)
    out = master_log(one_worker_session(pipe, SAMPLES), cut)
    assert out.getvalue() == reference
    # Never part of a frame: each write ends a line.
    assert all(write.endswith("\n") for write in out.writes)


def test_random_reads_of_many_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [(1700000000.0 + n * 0.37, f"GET /{n} 200 {n}B") for n in range(400)]
    with monkeypatch.context() as patch:
        pipe = _WorkerPipe(patch, text_for_worker=None)
        for n, (when, line) in enumerate(lines):
            pipe.access(when, line)
            if n % 37 == 0:
                pipe.flush()
            if n % 101 == 0:
                pipe.log.info("event {n}", n=n)
        pipe.flush()
        reference = master_log(pipe.piped()).getvalue()
    pipe = _WorkerPipe(monkeypatch, text_for_worker=1)
    for n, (when, line) in enumerate(lines):
        pipe.access(when, line)
        if n % 37 == 0:
            pipe.flush()
        if n % 101 == 0:
            pipe.log.info("event {n}", n=n)
    pipe.flush()
    piped = pipe.piped()
    chooser = random.Random(17)
    reads, at = [], 0
    while at < len(piped):
        size = chooser.choice((1, 2, 5, 60, 333, 4096, 8192))
        reads.append(piped[at : at + size])
        at += size
    out = master_log(piped, lambda _: reads)
    assert out.getvalue() == reference
    assert reference.count("[idgateway.access#info] [worker 1] GET /") == 400


def test_two_workers_frames_never_mix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads from two workers alternate, worker 2 logging events between its
    batches while worker 1's frame is still arriving: each frame is written
    whole, in its order, and no event lands inside one."""
    pipes = []
    for index in (1, 2):
        with monkeypatch.context() as patch:
            pipe = _WorkerPipe(patch, text_for_worker=index)
            for n in range(50):
                pipe.access(1700000000.0 + n, f"GET /w{index}/{n} 200 0B")
                if index == 2 and n % 10 == 9:
                    pipe.log.info("worker 2 event {n}", n=n)
            pipe.flush()
            pipes.append(pipe.piped())
    out = _Out()
    protocols = [
        WorkerProtocol(
            master=_Master(out),  # type: ignore[arg-type]
            worker=_Worker(index=index),
            observer=textFileLogObserver(out),
        )
        for index in (1, 2)
    ]
    for at in range(0, max(map(len, pipes)), 100):
        for protocol, piped in zip(protocols, pipes, strict=True):
            if piped[at : at + 100]:
                protocol.childDataReceived(1, piped[at : at + 100])
    frames = [write for write in out.writes if "[idgateway.access#info]" in write]
    events = [write for write in out.writes if write not in frames]
    assert len(frames) == 1 + 5  # worker 1's one batch; worker 2's five
    assert len(events) == 5 and all(event.count("\n") == 1 for event in events)
    assert all("[worker 2] worker 2 event" in event for event in events)
    # Worker 1's batch was cut into 100-byte reads across worker 2's writes.
    [worker_1] = [frame for frame in frames if "[worker 1]" in frame]
    assert out.writes.index(worker_1) > 0
    for index in (1, 2):
        lines = [
            line
            for frame in frames
            for line in frame.splitlines()
            if f"[worker {index}] GET /w{index}/" in line
        ]
        assert [int(line.split("/")[2].split()[0]) for line in lines] == list(range(50))
    assert sum(frame.count("\n") for frame in frames) == 100


def test_a_worker_that_dies_mid_frame_leaves_no_torn_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipe = _WorkerPipe(monkeypatch, text_for_worker=1)
    for n in range(3):
        pipe.access(1700000000.0, f"GET /{n} 200 0B")
    pipe.flush()
    piped = pipe.piped()
    cut = piped.rindex(b"GET /2") + 3  # in the middle of the last line
    out = _Out()
    warnings = _Out()
    master = _Master(out)
    ended: list[Any] = []
    master.worker_ended = lambda worker, reason: ended.append(reason)  # type: ignore[attr-defined]
    protocol = WorkerProtocol(
        master=master,  # type: ignore[arg-type]
        worker=_Worker(index=1),
        observer=textFileLogObserver(warnings),
    )
    protocol.childDataReceived(1, piped[:cut])
    assert out.getvalue() == ""  # the frame is not all here
    protocol.processEnded(None)  # type: ignore[arg-type]
    lines = out.getvalue().splitlines()
    assert [line.split("] ")[-1] for line in lines] == ["GET /0 200 0B", "GET /1 200 0B"]
    assert out.getvalue().endswith("\n")
    torn = cut - (piped.rindex(b"\n", 0, cut) + 1)  # the last line, timestamp and all
    assert f"ended in the middle of an access line; its {torn} bytes are left out" in (
        warnings.getvalue()
    )
    assert ended == [None]


def test_a_worker_that_dies_after_a_frame_header_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = _Out()
    master = _Master(out)
    master.worker_ended = lambda worker, reason: None  # type: ignore[attr-defined]
    protocol = WorkerProtocol(
        master=master,  # type: ignore[arg-type]
        worker=_Worker(index=1),
        observer=textFileLogObserver(out),
    )
    protocol.childDataReceived(1, b"\x1d40\nGET /a 20")
    protocol.processEnded(None)  # type: ignore[arg-type]
    [line] = out.getvalue().splitlines()
    assert "[worker 1] ended in the middle of an access line; its 9 bytes are left out" in line


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"\x1d", id="mark-alone"),
        pytest.param(b"\x1d0", id="zero"),
        pytest.param(b"\x1d+5", id="plus"),
        pytest.param(b"\x1d 5", id="space"),
        pytest.param(b"\x1d-5", id="negative"),
        pytest.param(b"\x1d1_0", id="underscore"),
        pytest.param("\x1d\u0665".encode(), id="arabic-digit"),
        pytest.param(b"\x1d5x", id="trailing"),
        pytest.param(b"\x1d" + str(MAX_FRAME + 1).encode(), id="over-max-frame"),
        pytest.param(b"\x1d" + b"9" * 40, id="too-many-digits"),
    ],
)
def test_what_is_not_a_frame_header_is_a_line_of_the_worker(header: bytes) -> None:
    """Not written raw: passed on as the worker's text, with its prefix (the
    mark alone is blank space, as the master has always left blank lines out)."""
    out = master_log(header + b"\nGET /x 200 0B\n")
    lines = out.getvalue().split("\n")[:-1]
    assert len(lines) == (1 if header == b"\x1d" else 2)
    assert all(" [idgateway.workers.master#info] [worker 1] " in line for line in lines)
    assert lines[-1].endswith("[worker 1] GET /x 200 0B")
    assert "[idgateway.access" not in out.getvalue()


def test_a_large_batch_goes_in_frames_cut_between_lines() -> None:
    line = b"x" * 999 + b"\n"
    data = line * (3 * ACCESS_FRAME_BYTES // len(line))
    frames = log_relay.access_frames(data)
    assert len(frames) == 4
    stream_lines: list[bytes] = []
    frames_seen: list[bytes] = []
    stream = WorkerStdout(stream_lines.append, frames_seen.append)
    for frame in frames:
        header, _, body = frame.partition(b"\n")
        assert int(header[1:]) == len(body) <= ACCESS_FRAME_BYTES
        assert body.endswith(b"\n")
        stream.feed(frame)
    assert b"".join(frames_seen) == data and stream_lines == []
    # One line longer than a frame goes alone, whole.
    huge = b"y" * (ACCESS_FRAME_BYTES + 10) + b"\n"
    frames = log_relay.access_frames(line + huge + line)
    assert [frame.partition(b"\n")[2] for frame in frames] == [line, huge, line]


def test_the_worker_writes_a_frame_whole_through_short_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unbuffered stdout may take part of a write: the rest follows."""

    class ShortWrites(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            taken = bytes(b[:100])
            self.data += taken
            return len(taken)

    raw = ShortWrites()
    stdout = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # type: ignore[arg-type]
    monkeypatch.setattr(log_relay.sys, "stdout", stdout)
    monkeypatch.setattr("twisted.logger.globalLogBeginner.beginLoggingTo", lambda given, **kw: None)
    monkeypatch.setattr(observe_module, "_direct_record", None)
    clock = Clock()
    log_relay.log_json_to_stdout(clock, text_for_worker=1)
    record = observe_module._direct_record
    assert record is not None
    for n in range(20):
        record(1700000000.0, f"GET /{n} 200 0B")
    clock.advance(log_relay.ACCESS_FLUSH_DELAY)
    out = master_log(bytes(raw.data))
    assert len(out.getvalue().splitlines()) == 20 and len(out.writes) == 1


def test_a_line_that_cannot_be_encoded_does_not_lose_its_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipe = _WorkerPipe(monkeypatch, text_for_worker=1)
    pipe.access(1700000000.0, "GET /a 200 0B user=\udce9")  # a lone surrogate
    pipe.access(1700000000.0, "GET /b 200 0B")
    pipe.flush()
    lines = master_log(pipe.piped()).getvalue().splitlines()
    assert [line.split("] ")[-1] for line in lines] == [
        "GET /a 200 0B user=\\udce9",
        "GET /b 200 0B",
    ]


class _SpawnReactor:
    def __init__(self) -> None:
        self.spawned: list[list[str]] = []

    def seconds(self) -> float:
        return 0.0

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        self.spawned.append(args)

        class Process:
            pid = 4242

        return Process()


@pytest.mark.parametrize(("access_out", "flag"), [(io.StringIO(), True), (None, False)])
def test_workers_are_told_to_send_text_only_when_the_master_logs_text_on_stdout(
    tmp_path: Any, access_out: Any, flag: bool
) -> None:
    from idgateway.config.load import load_config

    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listeners:\n"
        "  - address: 127.0.0.1:8080\n"
        "routes:\n"
        "  - name: app\n"
        "    hosts: [app.localhost]\n"
        "    upstream: http://127.0.0.1:9\n"
    )
    reactor = _SpawnReactor()
    master = MasterService(
        load_config(str(path)),
        reactor,
        workers=2,
        install_signal_handlers=False,
        access_out=access_out,
    )
    master._spawn(master.workers[1])
    [args] = reactor.spawned
    assert ("--access-text" in args) is flag
    assert args[args.index("--index") + 1] == "1"


def test_a_per_line_record_cut_short_by_the_workers_end_is_left_out() -> None:
    """(JSON log, --logfile, syslog: the records.) A whole record still goes through."""
    events: list[dict[str, Any]] = []
    master = SimpleNamespace(access_out=None, worker_ended=lambda worker, reason: None)
    protocol = WorkerProtocol(
        master=master,  # type: ignore[arg-type]
        worker=_Worker(index=1),
        observer=events.append,  # type: ignore[arg-type]
    )
    protocol.childDataReceived(1, b"\x1f1700000000.5\tGET /a 200 0B\n\x1f1700000000.5\tGET /b 2")
    protocol.childDataReceived(2, b"a last word on stderr")
    protocol.processEnded(None)  # type: ignore[arg-type]
    assert [formatEvent(event) for event in events] == [
        "[worker 1] GET /a 200 0B",
        "[worker 1] a last word on stderr",
        "[worker 1] ended in the middle of an access line; its 22 bytes are left out of the log",
    ]


def test_records_and_frames_in_one_read_keep_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """(A master is not meant to get both from one worker; if it does, order holds.)"""
    pipe = _WorkerPipe(monkeypatch, text_for_worker=1)
    pipe.access(1700000001.0, "GET /framed 200 0B")
    pipe.flush()
    record = f"{log_relay.ACCESS_RECORD}1700000000.5\tGET /record 200 0B\n".encode()
    out = master_log(record + pipe.piped() + record)
    lines = out.getvalue().splitlines()
    assert [line.split("] ")[-1] for line in lines] == [
        "GET /record 200 0B",
        "GET /framed 200 0B",
        "GET /record 200 0B",
    ]
    assert all(" [idgateway.access#info] [worker 1] GET /" in line for line in lines)
