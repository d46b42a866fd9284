"""The workers' epoll reactor: events delivered without a log context, failures logged."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.logger import capturedLogs
from twisted.python import context, log

from idgateway.workers.event_loop import LeanEPollReactor


class _Reader:
    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock = sock
        self.fail = fail
        self.got: list[bytes] = []
        self.systems: list[object] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "Reader"

    def doRead(self) -> None:
        self.systems.append(context.get(log.ILogContext, {}).get("system"))
        self.got.append(self.sock.recv(100))
        if self.fail:
            raise RuntimeError("boom")

    def connectionLost(self, reason: object) -> None:
        pass


@pytest.fixture
def reactor() -> Iterator[LeanEPollReactor]:
    reactor = LeanEPollReactor()
    yield reactor
    reactor._poller.close()


def test_ready_descriptors_are_read_without_a_legacy_log_context(
    reactor: LeanEPollReactor,
) -> None:
    a, b = socket.socketpair()
    with a, b:
        reader = _Reader(a)
        reactor.addReader(reader)
        b.sendall(b"hello")
        reactor.doIteration(1)
        assert reader.got == [b"hello"]
        # twisted's reactor would have pushed the reader's logPrefix here.
        assert reader.systems == ["-"]
        reactor.doIteration(0)  # nothing more to read: no call
        assert reader.got == [b"hello"]
        reactor.removeReader(reader)


def test_a_failing_reader_is_logged_and_the_others_still_run(reactor: LeanEPollReactor) -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        failing, healthy = _Reader(a, fail=True), _Reader(c)
        reactor.addReader(failing)
        reactor.addReader(healthy)
        b.sendall(b"one")
        d.sendall(b"two")
        reactor.doIteration(1)
        assert failing.got == [b"one"] and healthy.got == [b"two"]
        # twisted's _doReadOrWrite logs the failure and disconnects the reader.
        assert failing not in reactor.getReaders()
        assert healthy in reactor.getReaders()
        reactor.removeReader(healthy)


class _BrokenOnLoss(_Reader):
    def connectionLost(self, reason: object) -> None:
        raise RuntimeError("broken connectionLost")


def test_an_error_escaping_twisteds_handling_is_logged_and_the_loop_goes_on(
    reactor: LeanEPollReactor,
) -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        broken, healthy = _BrokenOnLoss(a, fail=True), _Reader(c)
        reactor.addReader(broken)
        reactor.addReader(healthy)
        b.sendall(b"one")
        d.sendall(b"two")
        with capturedLogs() as events:
            reactor.doIteration(1)
        assert broken.got == [b"one"] and healthy.got == [b"two"]
        [event] = [e for e in events if e.get("log_namespace", "").endswith("LeanEPollReactor")]
        assert "broken connectionLost" in str(event["log_failure"].value)
        reactor.removeAll()
