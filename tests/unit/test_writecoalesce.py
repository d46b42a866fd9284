"""Coalesced TCP writes: one flush per reactor turn, the reactor only when needed."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from idgateway.server.socket_writes import (
    CoalescingClient,
    CoalescingServer,
    _Coalescing,
    coalesce_writes,
)


class _Descriptor:
    """Stands in for twisted's FileDescriptor: records what the reactor is asked."""

    def __init__(self, reactor: Any, takes: int = 1 << 30) -> None:
        self.reactor = reactor
        self.connected = 1
        self.disconnecting = False
        self._writeDisconnecting = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0
        self.producer: Any = None
        self.streamingProducer = False
        self.producerPaused = False
        self.sent: list[bytes] = []
        self.calls: list[str] = []
        self.takes = takes  # how many bytes the "kernel" accepts per send
        self.fails = False
        self.socket = self  # (send, below)

    def send(self, data: bytes) -> int:
        if self.fails:
            raise ConnectionResetError("gone")
        self.sent.append(data[: self.takes])
        return min(len(data), self.takes)

    def write(self, data: bytes) -> None:
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)
        self.startWriting()

    def startWriting(self) -> None:
        self.calls.append("watch")

    def stopWriting(self) -> None:
        self.calls.append("unwatch")

    def doWrite(self) -> Any:
        if self.fails:
            return ConnectionResetError("gone")
        data = self.dataBuffer[self.offset :] + b"".join(self._tempDataBuffer)
        self._tempDataBuffer, self._tempDataLen, self.offset = [], 0, 0
        sent, self.dataBuffer = data[: self.takes], data[self.takes :]
        self.sent.append(sent)
        if not self.dataBuffer:
            self.stopWriting()
        return None


class _Transport(_Coalescing, _Descriptor):
    SEND_LIMIT = 128 * 1024


def test_writes_of_one_turn_leave_in_one_send_without_watching_the_socket() -> None:
    clock = Clock()
    transport = _Transport(clock)
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert transport.sent == [] and "watch" not in transport.calls
    clock.advance(0)
    assert transport.sent == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    assert "watch" not in transport.calls


def test_what_the_kernel_does_not_take_is_left_to_the_reactor() -> None:
    clock = Clock()
    transport = _Transport(clock, takes=3)
    transport.write(b"abcdef")
    clock.advance(0)
    assert transport.sent == [b"abc"] and transport.calls == ["watch"]
    # Watched: further writes wait for the reactor, no second flush.
    transport.write(b"gh")
    assert clock.getDelayedCalls() == []
    transport.takes = 1 << 30
    transport.doWrite()  # the reactor reports the socket writable: all of it goes
    assert transport.calls[-1] == "unwatch"
    transport.write(b"ij")
    clock.advance(0)
    assert transport.sent[-1] == b"ij"


def test_a_failed_send_or_a_closing_connection_goes_to_the_reactor() -> None:
    clock = Clock()
    failing = _Transport(clock)
    failing.fails = True
    failing.write(b"x")
    clock.advance(0)
    assert failing.calls == ["watch"]  # the reactor's doWrite reports the loss
    closing = _Transport(clock)
    closing.write(b"last words")
    closing.disconnecting = True  # loseConnection() after the write
    clock.advance(0)
    assert closing.sent == [] and closing.calls == ["watch"]
    gone = _Transport(clock)
    gone.write(b"x")
    gone.connected = 0
    clock.advance(0)
    assert gone.sent == [] and gone.calls == []


def test_one_scheduled_flush_serves_every_transport_of_the_turn() -> None:
    clock = Clock()
    transports = [_Transport(clock) for _ in range(5)]
    for t in transports:
        t.write(b"a")
        t.write(b"b")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert [t.sent for t in transports] == [[b"ab"]] * 5


def test_only_plain_tcp_transports_change() -> None:
    server = tcp.Server.__new__(tcp.Server)
    client = tcp.Client.__new__(tcp.Client)
    other = _Transport(Clock())
    coalesce_writes(server)
    coalesce_writes(client)
    coalesce_writes(other)
    assert type(server) is CoalescingServer and type(client) is CoalescingClient
    assert type(other) is _Transport


def test_over_tls_the_tcp_connection_under_the_tls_layer_coalesces() -> None:
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    from idgateway.server.channel import GatewaySite

    class _TLSLayer(StringTransport):
        """Stands in for TLSMemoryBIOProtocol: a transport over a TCP transport."""

        def __init__(self, tcp_transport: object) -> None:
            super().__init__()
            self.transport = tcp_transport

    tcp_transport = tcp.Server.__new__(tcp.Server)
    channel = GatewaySite(Resource()).buildProtocol(None)
    assert channel is not None
    channel.makeConnection(_TLSLayer(tcp_transport))
    assert type(tcp_transport) is CoalescingServer
    channel.setTimeout(None)  # leave no idle sweep behind


# -- TurnWriteBuffer: the TLS layer's small writes, gathered per turn -------------------


def test_a_turns_tls_writes_become_one_record_and_leave_with_the_tcp_flush() -> None:
    from idgateway.server.socket_writes import TurnWriteBuffer

    clock = Clock()
    tcp_below = _Transport(clock)
    records: list[bytes] = []

    def tls_write(data: bytes) -> None:  # what TLSMemoryBIOProtocol.write does, roughly
        records.append(data)
        tcp_below.write(b"<record " + data + b">")

    buffer = TurnWriteBuffer(tls_write, clock)
    buffer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    buffer.write(bytearray(b"body"))  # copied, as Twisted's aggregator does
    assert records == [] and tcp_below.sent == []
    assert len(clock.getDelayedCalls()) == 1  # one shared flush, no timer per connection
    clock.advance(0)
    assert records == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    # The TCP write the TLS flush made left in the same pass, not a turn later.
    assert tcp_below.sent == [b"<record HTTP/1.1 200 OK\r\n\r\nbody>"]
    assert clock.getDelayedCalls() == []


def test_a_large_tls_write_goes_out_at_once_and_close_flushes() -> None:
    from idgateway.server.socket_writes import TurnWriteBuffer

    clock = Clock()
    records: list[bytes] = []
    buffer = TurnWriteBuffer(records.append, clock)
    buffer.write(b"x" * (TurnWriteBuffer.MAX_BUFFER_SIZE + 1))
    assert len(records) == 1
    buffer.write(b"tail")
    buffer.close()
    assert records[-1] == b"tail"
    clock.advance(0)  # the queued flush finds nothing left
    assert len(records) == 2


def test_many_connections_tls_writes_share_one_flush() -> None:
    from idgateway.server.socket_writes import TurnWriteBuffer

    clock = Clock()
    records: list[bytes] = []
    buffers = [TurnWriteBuffer(records.append, clock) for _ in range(5)]
    for n, buffer in enumerate(buffers):
        buffer.write(b"%d" % n)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert sorted(records) == [b"0", b"1", b"2", b"3", b"4"]


# -- DirectWrites and the flush's own send, on a real socket ---------------------------


def _server_over_socketpair() -> tuple[Any, Any, Any]:
    import socket

    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactorClock

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(1)
    reactor = MemoryReactorClock()
    server = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, reactor)  # type: ignore[arg-type]
    coalesce_writes(server)
    assert type(server) is CoalescingServer
    return server, theirs, reactor


def test_a_turns_writes_leave_in_one_send_on_a_real_socket() -> None:
    server, peer, reactor = _server_over_socketpair()
    server.write(b"HTTP/1.1 200 OK\r\n\r\n")
    server.write(b"body")
    server.writeSequence([b"-", b"more"])
    assert server._tempDataLen == len(b"HTTP/1.1 200 OK\r\n\r\nbody-more")
    reactor.advance(0)
    assert peer.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nbody-more"
    assert server._tempDataBuffer == [] and server._tempDataLen == 0
    assert server.dataBuffer == b"" and not server._watched
    server.connectionLost(Failure(ConnectionDone()))


def test_only_a_turns_first_write_asks_for_the_flush_and_the_next_turn_asks_again() -> None:
    server, peer, reactor = _server_over_socketpair()
    asked: list[bool] = []
    start_writing = server.startWriting

    def counted() -> None:
        asked.append(server._flush_waiting)
        start_writing()

    server.startWriting = counted  # type: ignore[method-assign]
    server.write(b"head ")
    server.write(b"body")
    assert asked == [False]  # (the second write found the flush already asked for)
    assert len(reactor.getDelayedCalls()) == 1
    reactor.advance(0)
    assert peer.recv(100) == b"head body"
    server.write(b"next turn")
    assert asked == [False, False] and len(reactor.getDelayedCalls()) == 1
    reactor.advance(0)
    assert peer.recv(100) == b"next turn"
    server.connectionLost(Failure(ConnectionDone()))


def test_writes_that_are_not_bytes_are_refused_as_twisted_refuses_them() -> None:
    import pytest

    server, _peer, _reactor = _server_over_socketpair()
    with pytest.raises(TypeError):
        server.write("text")  # type: ignore[arg-type]
    server.write(b"")
    assert server._tempDataBuffer == []


def test_a_full_buffer_pauses_the_producer_and_a_paused_one_is_resumed_by_twisteds_write() -> None:
    server, peer, reactor = _server_over_socketpair()
    calls: list[str] = []

    class _Producer:
        def pauseProducing(self) -> None:
            calls.append("pause")

        def resumeProducing(self) -> None:
            calls.append("resume")

        def stopProducing(self) -> None:
            calls.append("stop")

    server.registerProducer(_Producer(), True)
    server.write(b"x" * (server.bufferSize + 1))
    assert calls == ["pause"] and server.producerPaused
    reactor.advance(0)  # a paused producer: Twisted's doWrite sends and resumes it
    assert calls == ["pause", "resume"] and not server.producerPaused
    received = b""
    while len(received) < server.bufferSize + 1:
        received += peer.recv(1 << 20)
    server.connectionLost(Failure(ConnectionDone()))


def test_what_the_socket_does_not_take_waits_for_the_reactor() -> None:
    import socket

    server, peer, reactor = _server_over_socketpair()
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = b"y" * 100_000
    server.write(data)
    reactor.advance(0)
    assert server._watched, "the rest is left to the reactor"
    assert 0 < server.offset < len(data) and server.dataBuffer == data
    received = b""
    while len(received) < len(data):
        received += peer.recv(1 << 20)
        server.doWrite()  # (the reactor, when the socket drains)
    assert received == data
    server.connectionLost(Failure(ConnectionDone()))


def test_in_a_workers_event_loop_the_flush_follows_the_polls_events_untimed() -> None:
    import socket

    from twisted.internet.protocol import Protocol

    from idgateway._twisted.reactor import LeanEPollReactor
    from idgateway._twisted.tcp import call_after_events

    reactor = LeanEPollReactor()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(1)
    seen: list[str] = []

    class _Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
            self.transport.write(b"echo " + data)  # type: ignore[union-attr]
            self.transport.write(b"!")  # type: ignore[union-attr]
            seen.append("read")
            assert call_after_events(reactor, lambda: seen.append("after"))

    server = tcp.Server(ours, _Echo(), ("127.0.0.1", 1), None, 1, reactor)  # type: ignore[arg-type]
    server.protocol.makeConnection(server)
    coalesce_writes(server)
    server.startReading()
    assert not call_after_events(reactor, lambda: None), "outside a poll: declined"
    theirs.send(b"hi")
    reactor.doPoll(1)
    assert theirs.recv(100) == b"echo hi!"
    assert seen == ["read", "after"]
    assert reactor.getDelayedCalls() == []
    # Outside a poll's events (a timed call, say), a write still flushes at
    # the start of the next turn.
    server.write(b"later")
    [flush] = reactor.getDelayedCalls()
    reactor.runUntilCurrent()
    assert theirs.recv(100) == b"later"
    server.stopReading()
    server.connectionLost(Failure(ConnectionDone()))
    reactor._poller.close()


def test_an_after_events_call_that_fails_is_logged_and_the_rest_still_run() -> None:
    import socket

    from twisted.internet.abstract import FileDescriptor

    from idgateway._twisted.reactor import LeanEPollReactor
    from idgateway._twisted.tcp import call_after_events

    reactor = LeanEPollReactor()
    ours, theirs = socket.socketpair()
    ran: list[str] = []

    def fails() -> None:
        raise RuntimeError("boom")

    class _Readable(FileDescriptor):
        def fileno(self) -> int:
            return ours.fileno()

        def doRead(self) -> None:  # noqa: N802 - Twisted's name
            ours.recv(10)
            call_after_events(reactor, fails)
            call_after_events(reactor, lambda: ran.append("second"))

    readable = _Readable(reactor)
    reactor.addReader(readable)
    theirs.send(b"x")
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor.doPoll(1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert ran == ["second"]
    assert any("after a poll's events" in e.get("log_format", "") for e in events)
    reactor.removeReader(readable)
    reactor._poller.close()
    ours.close()
    theirs.close()


@pytest.mark.parametrize("outcome", ["data", "done", "raises"])
def test_a_lean_loops_read_event_ends_as_twisteds_would(outcome: str) -> None:
    import socket

    from twisted.internet import main
    from twisted.internet.abstract import FileDescriptor
    from twisted.logger import globalLogPublisher

    from idgateway._twisted.reactor import LeanEPollReactor

    reactor = LeanEPollReactor()
    ours, theirs = socket.socketpair()
    lost: list[Any] = []

    class _Readable(FileDescriptor):
        def fileno(self) -> int:
            return ours.fileno()

        def doRead(self) -> Any:  # noqa: N802 - Twisted's name
            ours.recv(10)
            if outcome == "raises":
                raise ValueError("bad protocol")
            return main.CONNECTION_DONE if outcome == "done" else None

        def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
            lost.append(reason)

    readable = _Readable(reactor)
    reactor.addReader(readable)
    theirs.send(b"x")
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor.doPoll(1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    if outcome == "data":
        assert lost == [] and readable in reactor.getReaders()
    else:
        [reason] = lost
        assert readable not in reactor.getReaders()
        if outcome == "raises":
            assert reason.check(ValueError)
            assert any(e.get("isError") for e in events), "logged, as Twisted logs it"
        else:
            assert reason.check(ConnectionDone)
    reactor.removeReader(readable)
    reactor._poller.close()
    ours.close()
    theirs.close()


def test_resuming_a_transport_being_read_is_a_no_op_and_a_paused_one_reads_again() -> None:
    import socket

    from twisted.internet.protocol import Protocol

    from idgateway._twisted.reactor import LeanEPollReactor

    reactor = LeanEPollReactor()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    received: list[bytes] = []

    class _Collect(Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
            received.append(data)

    server = tcp.Server(ours, _Collect(), ("127.0.0.1", 1), None, 1, reactor)  # type: ignore[arg-type]
    coalesce_writes(server)
    server.startReading()
    server.resumeProducing()  # already reading: nothing to do
    assert server in reactor.getReaders()
    server.pauseProducing()
    assert server not in reactor.getReaders()
    server.resumeProducing()
    assert server in reactor.getReaders()
    theirs.send(b"again")
    reactor.doPoll(1)
    assert received == [b"again"]
    server.disconnecting = True
    server.stopReading()
    server.resumeProducing()  # closing: stays unwatched, as stock
    assert server not in reactor.getReaders()
    server.disconnecting = False
    server.connectionLost(Failure(ConnectionDone()))
    reactor._poller.close()
    theirs.close()
