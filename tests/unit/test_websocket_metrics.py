"""idgateway_websockets_open{route}: a tunnel counts from its 101 until its connection ends.

All in memory: a GatewayService on a MemoryReactorClock, the client on a
StringTransport, the upstream connection built from the factory the proxy
handed to ``connectTCP`` and answered by hand with a 101.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from idgateway.config.load import load_config
from idgateway.observe.metrics import GatewayMetrics
from idgateway.server.admin import admin_site
from idgateway.server.service import GatewayService

CONFIG = """\
listeners:
  - address: 127.0.0.1:1
routes:
  - name: chat
    hosts: [chat.localhost]
    upstream: http://127.0.0.1:9
  - name: other
    hosts: [other.localhost]
    upstream: http://127.0.0.1:10
"""

UPGRADE = (
    b"GET /socket HTTP/1.1\r\nHost: chat.localhost\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


class Transport(StringTransport):
    def abortConnection(self) -> None:
        self.loseConnection()


def start(tmp_path: Path) -> tuple[GatewayService, MemoryReactorClock, GatewayMetrics]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    reactor = MemoryReactorClock()
    service = GatewayService(load_config(str(path)), reactor, install_signal_handlers=False)
    service.startService()
    metrics = GatewayMetrics()
    admin_site(service.holder, service, metrics=metrics)
    return service, reactor, metrics


def open_tunnel(service: GatewayService, reactor: MemoryReactorClock) -> tuple[Any, Any, Any]:
    """A client channel upgraded to a tunnel; (channel, client transport, upstream protocol)."""
    site = service._drain_sites[0]
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    client = Transport()
    channel.makeConnection(client)
    channel.dataReceived(UPGRADE)
    host, port, factory, _timeout, _bind = reactor.tcpClients[-1]
    assert (host, port) == ("127.0.0.1", 9)
    upstream = factory.buildProtocol(IPv4Address("TCP", host, port))
    upstream_transport = Transport()
    upstream.makeConnection(upstream_transport)
    assert b"GET /socket HTTP/1.1" in upstream_transport.value()
    upstream.dataReceived(SWITCHED)
    assert client.value().startswith(b"HTTP/1.1 101 Switching Protocols")
    return channel, client, upstream


def gauge(metrics: GatewayMetrics, route: str) -> float | None:
    return metrics.registry.get_sample_value("idgateway_websockets_open", {"route": route})


def test_tunnels_are_counted_while_open(tmp_path: Path) -> None:
    service, reactor, metrics = start(tmp_path)
    assert gauge(metrics, "chat") == 0
    assert gauge(metrics, "other") == 0

    first, _client, upstream = open_tunnel(service, reactor)
    assert gauge(metrics, "chat") == 1
    # Bytes go through: it really is a tunnel.
    first.dataReceived(b"\x81\x05hello")
    assert upstream.transport.value().endswith(b"\x81\x05hello")

    second, _, _ = open_tunnel(service, reactor)
    assert gauge(metrics, "chat") == 2
    assert gauge(metrics, "other") == 0
    text = generate_latest(metrics.registry).decode()
    assert 'idgateway_websockets_open{route="chat"} 2.0' in text
    assert "# TYPE idgateway_websockets_open gauge" in text

    # The client goes away: its tunnel stops counting, once.
    first.connectionLost(None)
    assert gauge(metrics, "chat") == 1
    first.connectionLost(None)
    assert gauge(metrics, "chat") == 1
    second.connectionLost(None)
    assert gauge(metrics, "chat") == 0


def test_an_ordinary_request_is_no_tunnel(tmp_path: Path) -> None:
    service, reactor, metrics = start(tmp_path)
    site = service._drain_sites[0]
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(Transport())
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: chat.localhost\r\n\r\n")
    assert len(site.connections) == 1
    assert gauge(metrics, "chat") == 0
