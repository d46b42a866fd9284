"""DirectRecordTLS (direct OpenSSL calls) behaves as TurnBufferedTLS (pyOpenSSL's calls).

Each scenario drives a gateway TLS server protocol of each class against the
same pyOpenSSL client over memory BIOs, and what the server's application,
the client and the connection's end see must be the same for both; the
scenarios cover what an attacker sends to a TLS listener after the handshake
(records split byte by byte, many records at once, corrupted records, a
truncated stream, an unexpected alert, data after close_notify) besides the
ordinary exchanges.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from idgateway._twisted import tls_direct
from idgateway._twisted.tls import TurnBufferedTLS
from idgateway._twisted.tls_direct import DirectRecordTLS, GatewayTLS
from idgateway.config.model import CertificatePair, TLSSettings
from idgateway.server.tls import GatewayTLSFactory, SNIServerContexts
from tests.certs import make_ca

CLASSES = (TurnBufferedTLS, DirectRecordTLS)
REQUEST = b"GET / HTTP/1.1\r\nHost: app1.localhost\r\n\r\n"


class App(Protocol):
    """The server's application: records what it gets; answers each chunk."""

    def __init__(self, answer: Callable[[bytes], Any]) -> None:
        self.received = b""
        self.answer = answer
        self.lost: Failure | None = None
        self.written_early = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        reply = self.answer(data)
        if reply is not None:
            self.transport.write(reply)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason


@attrs.define
class Rig:
    clock: Clock
    server: Any
    wire: StringTransport
    client: SSL.Connection
    app: App
    client_received: bytes = b""
    client_end: str | None = None  # how the client's reading ended

    def to_server(self, data: bytes | None = None) -> None:
        """The client's pending records (or ``data``) to the server, then the
        server's answer (after its per-turn flush) back to the client."""
        if data is None:
            try:
                data = self.client.bio_read(2**20)
            except SSL.WantReadError:
                data = b""
        if data:
            self.server.dataReceived(data)
        self.clock.advance(0)
        self.from_server()

    def from_server(self) -> None:
        out = self.wire.value()
        self.wire.clear()
        if out:
            self.client.bio_write(out)
        while self.client_end is None:
            try:
                self.client_received += self.client.recv(2**16)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.client_end = "close_notify"
            except SSL.Error as e:
                self.client_end = type(e).__name__

    def end_of_transport(self) -> None:
        """What the TCP connection does once the TLS layer closed or aborted it."""
        if self.wire.disconnecting or getattr(self.wire, "disconnected", False):
            self.server.connectionLost(Failure(ConnectionDone()))

    def outcome(self) -> tuple[bytes, bytes, str | None, str | None]:
        """What the application got, what the client got, how the client's
        reading ended, and the reason the application was given (the exception
        with OpenSSL's error list, for an error)."""
        lost = self.app.lost
        return (
            self.app.received,
            self.client_received,
            self.client_end,
            None if lost is None else repr(lost.value),
        )


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> SNIServerContexts:
    directory: Path = tmp_path_factory.mktemp("tls-direct")
    leaf = make_ca(directory).issue(directory, ["app1.localhost"])
    pair = CertificatePair(cert=str(leaf.cert_path), key=str(leaf.key_path))
    return SNIServerContexts(TLSSettings(certificates=(pair,)))


def connect(
    contexts: SNIServerContexts,
    cls: type,
    answer: Callable[[bytes], Any] = lambda data: None,
    early: bytes = b"",
) -> Rig:
    clock = Clock()
    app = App(answer)

    class AppWritingEarly(App):
        def connectionMade(self) -> None:
            if early:
                self.transport.write(early)  # type: ignore[union-attr]

    app.__class__ = AppWritingEarly
    factory = GatewayTLSFactory(contexts, False, Factory.forProtocol(lambda: app), clock=clock)
    factory.protocol = cls
    server = factory.buildProtocol(None)
    assert type(server) is cls
    wire = StringTransport()
    server.makeConnection(wire)
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"app1.localhost")
    rig = Rig(clock, server, wire, client, app)
    for _ in range(6):  # the handshake's flights
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        rig.to_server()
    assert server._handshakeDone
    return rig


def exchange_requests(rig: Rig) -> None:
    for i in range(3):
        rig.client.write(REQUEST + str(i).encode())
        rig.to_server()


def large_response(rig: Rig) -> None:
    rig.client.write(REQUEST)
    rig.to_server()  # the app answers 100 KB: seven 16 KB records


def large_request(rig: Rig) -> None:
    rig.client.sendall(b"P" * 100_000)  # seven records in one dataReceived
    rig.to_server()


def records_byte_by_byte(rig: Rig) -> None:
    rig.client.write(REQUEST)
    for byte in rig.client.bio_read(2**20):
        rig.to_server(bytes([byte]))


def records_and_garbage(rig: Rig) -> None:
    rig.client.write(REQUEST)
    records = rig.client.bio_read(2**20)
    rig.to_server(records + b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a forged record
    rig.end_of_transport()


def corrupted_record(rig: Rig) -> None:
    rig.client.write(REQUEST)
    records = bytearray(rig.client.bio_read(2**20))
    records[-1] ^= 0x01  # the AEAD tag no longer matches
    rig.to_server(bytes(records))
    rig.end_of_transport()


def not_tls_after_handshake(rig: Rig) -> None:
    rig.to_server(b"GET / HTTP/1.1\r\nHost: app1.localhost\r\n\r\n")
    rig.end_of_transport()


def client_close_notify(rig: Rig) -> None:
    rig.client.write(REQUEST)
    rig.client.shutdown()
    rig.to_server()
    rig.end_of_transport()


def data_after_close_notify(rig: Rig) -> None:
    rig.client.shutdown()
    close = rig.client.bio_read(2**20)
    rig.to_server(close + b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    rig.end_of_transport()


def truncated_record(rig: Rig) -> None:
    rig.client.write(REQUEST)
    records = rig.client.bio_read(2**20)
    rig.to_server(records[:-5])  # the rest never comes
    rig.server.connectionLost(Failure(ConnectionDone()))


def server_closes_after_answer(rig: Rig) -> None:
    rig.client.write(REQUEST)
    rig.to_server()
    rig.server.loseConnection()
    rig.clock.advance(0)
    rig.from_server()
    rig.end_of_transport()


def answer_per_request(data: bytes) -> bytes | None:
    if data.startswith(b"GET"):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + data[-1:]
    return None


SCENARIOS: list[tuple[str, Callable[[Rig], None], Callable[[bytes], Any], bytes]] = [
    ("three requests", exchange_requests, answer_per_request, b""),
    ("100 KB response", large_response, lambda data: b"R" * 100_000, b""),
    ("100 KB request", large_request, lambda data: None, b""),
    ("records byte by byte", records_byte_by_byte, answer_per_request, b""),
    ("forged record after a good one", records_and_garbage, answer_per_request, b""),
    ("corrupted record", corrupted_record, answer_per_request, b""),
    ("plain HTTP after the handshake", not_tls_after_handshake, answer_per_request, b""),
    ("close_notify", client_close_notify, answer_per_request, b""),
    ("data after close_notify", data_after_close_notify, answer_per_request, b""),
    ("truncated record", truncated_record, answer_per_request, b""),
    ("server closes after its answer", server_closes_after_answer, answer_per_request, b""),
    ("app writes before the handshake", exchange_requests, answer_per_request, b"early bytes"),
    # The one-record write path and its edges.
    ("empty write", exchange_requests, lambda data: b"", b""),
    ("one full record", exchange_requests, lambda data: b"r" * 2**14, b""),
    ("one byte over a record", exchange_requests, lambda data: b"r" * (2**14 + 1), b""),
    ("a bytearray", exchange_requests, lambda data: bytearray(b"from a bytearray"), b""),
    ("a memoryview", exchange_requests, lambda data: memoryview(b"from a memoryview"), b""),
]


@pytest.mark.parametrize(
    ("scenario", "answer", "early"),
    [s[1:] for s in SCENARIOS],
    ids=[s[0] for s in SCENARIOS],
)
def test_direct_records_behave_as_pyopenssls_calls(
    contexts: SNIServerContexts,
    scenario: Callable[[Rig], None],
    answer: Callable[[bytes], Any],
    early: bytes,
) -> None:
    outcomes = []
    for cls in CLASSES:
        rig = connect(contexts, cls, answer, early)
        scenario(rig)
        outcomes.append(rig.outcome())
    stock, direct = outcomes
    assert direct == stock


def test_what_the_scenarios_see(contexts: SNIServerContexts) -> None:
    """The scenarios test something: what the stock path gives in a few of them."""
    rig = connect(contexts, DirectRecordTLS, lambda data: b"R" * 100_000)
    large_response(rig)
    assert rig.client_received == b"R" * 100_000

    rig = connect(contexts, DirectRecordTLS)
    large_request(rig)
    assert rig.app.received == b"P" * 100_000

    rig = connect(contexts, DirectRecordTLS, answer_per_request)
    records_byte_by_byte(rig)
    assert rig.app.received == REQUEST
    assert rig.client_received.endswith(b"hello\n")

    rig = connect(contexts, DirectRecordTLS, answer_per_request)
    corrupted_record(rig)
    assert rig.app.received == b""  # nothing of a record that fails its tag
    assert rig.app.lost is not None and rig.app.lost.check(SSL.Error)
    assert rig.client_end is not None  # the server's alert

    rig = connect(contexts, DirectRecordTLS, answer_per_request)
    client_close_notify(rig)
    assert rig.app.received == REQUEST
    assert rig.app.lost is not None and rig.app.lost.check(ConnectionDone)
    assert rig.client_end == "close_notify"

    rig = connect(contexts, DirectRecordTLS, lambda data: b"r" * (2**14 + 1))
    exchange_requests(rig)
    assert rig.client_received == b"r" * (3 * (2**14 + 1))

    rig = connect(contexts, DirectRecordTLS, answer_per_request, b"early bytes")
    exchange_requests(rig)
    assert rig.client_received.startswith(b"early bytes")


def test_the_gateway_uses_direct_records_when_the_names_are_there() -> None:
    assert tls_direct.DIRECT
    assert GatewayTLS is DirectRecordTLS
    assert GatewayTLSFactory.protocol is GatewayTLS


@pytest.mark.parametrize("cls", CLASSES)
def test_producer_calls_reach_the_tcp_transport(contexts: SNIServerContexts, cls: type) -> None:
    """HTTPChannel pauses and resumes the TLS transport as a producer: both
    classes hand that to the TCP connection underneath."""
    rig = connect(contexts, cls)
    assert rig.wire.producerState == "producing"
    rig.server.pauseProducing()
    assert rig.wire.producerState == "paused"
    rig.server.resumeProducing()
    assert rig.wire.producerState == "producing"
    rig.server.stopProducing()
    assert rig.wire.producerState == "stopped"
