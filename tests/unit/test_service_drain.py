"""GatewayService's drain (SIGTERM in a single process), on a memory reactor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from idgateway.config.load import load_config
from idgateway.server.service import DrainableSite, GatewayService


def make_service(tmp_path: Path) -> tuple[GatewayService, MemoryReactorClock]:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listeners:\n  - address: 127.0.0.1:1\n"
        "routes:\n  - name: app\n    hosts: [app.localhost]\n    upstream: http://127.0.0.1:9\n"
    )
    reactor = MemoryReactorClock()
    service = GatewayService(load_config(str(path)), reactor, install_signal_handlers=False)
    service.startService()
    return service, reactor


class AbortableTransport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def connect(site: DrainableSite) -> tuple[Any, AbortableTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = AbortableTransport()
    channel.makeConnection(transport)
    return channel, transport


def test_drain_with_no_connections_fires_at_once_and_refuses_reloads(tmp_path: Path) -> None:
    service, reactor = make_service(tmp_path)
    assert len(service._drain_sites) == 1
    done: list[object] = []
    service.drain_connections(30).addCallback(done.append)
    assert done == [None]
    assert service._ports == {}
    assert reactor.getDelayedCalls() == []
    # A SIGHUP now would listen again on the closed ports.
    assert service.reload() is False


def test_idle_connection_closes_and_stuck_one_is_cut_at_the_timeout(tmp_path: Path) -> None:
    service, reactor = make_service(tmp_path)
    site = service._drain_sites[0]
    idle, idle_transport = connect(site)
    busy, busy_transport = connect(site)
    busy.dataReceived(b"GET /slow HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
    assert busy.requests
    done: list[object] = []
    service.drain_connections(30).addCallback(done.append)
    # The idle connection closes now; the busy one is given its time.
    assert idle_transport.disconnecting
    assert not busy_transport.disconnecting
    idle.connectionLost(None)
    assert done == []
    reactor.advance(30)
    assert busy_transport.aborted
    busy.connectionLost(None)
    assert done == [None]
