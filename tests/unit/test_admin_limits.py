"""The admin listener's own limits: a few short connections, never the
descriptors the public listeners need."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource

from idgateway.server.admin import (
    ADMIN_CONNECTION_LIFETIME,
    ADMIN_IDLE_TIMEOUT,
    ADMIN_MAX_CONNECTIONS,
    AdminSite,
)


class AbortableTransport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def connect(site: AdminSite) -> tuple[object, AbortableTransport] | None:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    if channel is None:
        return None
    transport = AbortableTransport()
    channel.makeConnection(transport)
    return channel, transport


def test_connections_past_the_cap_are_closed_at_accept() -> None:
    site = AdminSite(Resource(), reactor=MemoryReactorClock())
    opened = [connect(site) for _ in range(ADMIN_MAX_CONNECTIONS)]
    assert all(each is not None for each in opened)
    assert connect(site) is None
    channel, _ = opened[0]  # type: ignore[misc]
    channel.connectionLost(None)  # type: ignore[attr-defined]
    assert connect(site) is not None


def test_a_trickling_connection_ends_at_its_lifetime() -> None:
    reactor = MemoryReactorClock()
    site = AdminSite(Resource(), reactor=reactor)
    channel, transport = connect(site)  # type: ignore[misc]
    for _ in range(int(ADMIN_CONNECTION_LIFETIME // 5)):
        channel.dataReceived(b"X")  # type: ignore[attr-defined]
        reactor.advance(5)
    assert transport.aborted or transport.disconnecting
    assert ADMIN_IDLE_TIMEOUT < ADMIN_CONNECTION_LIFETIME
