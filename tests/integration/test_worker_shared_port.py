"""Workers sharing a listening socket take one connection per wake-up."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from idgateway.config.model import Listener
from idgateway.workers.shared_port import adopt_shared_port, bind_listener


class _Counting(Factory):
    def __init__(self) -> None:
        self.built: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = Protocol()
        self.built.append(protocol)
        return protocol


def test_a_burst_of_connections_is_taken_one_per_wake_up() -> None:
    listener = Listener(host="127.0.0.1", port=0)
    sock = bind_listener(listener)
    clients = []
    try:
        address = sock.getsockname()
        for _ in range(3):
            client = socket.create_connection(address, timeout=5)
            clients.append(client)
        reactor = MemoryReactorClock()
        factory = _Counting()
        port = adopt_shared_port(reactor, sock.fileno(), socket.AF_INET, factory)
        assert port in reactor.getReaders()

        # tcp.Port's default would take all three in the first turn (and aim
        # for 20 more next time); a shared port leaves the rest to the next
        # turn, or to another worker.
        port.doRead()  # type: ignore[attr-defined]
        assert len(factory.built) == 1
        port.doRead()  # type: ignore[attr-defined]
        port.doRead()  # type: ignore[attr-defined]
        assert len(factory.built) == 3
        port.doRead()  # type: ignore[attr-defined]  # nothing waiting: no error, nothing built
        assert len(factory.built) == 3
        assert port.numberAccepts == 1  # type: ignore[attr-defined]
        for protocol in factory.built:
            assert protocol.transport is not None
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        reactor.advance(0)  # the aborted connections' connectionLost
        port.connectionLost(None)  # type: ignore[attr-defined]
    finally:
        for client in clients:
            client.close()
        sock.close()
