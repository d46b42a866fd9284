"""Client connections' idle timeout: swept once a second, no DelayedCall per request."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from idgateway.server.channel import IDLE_SWEEP_INTERVAL, GatewaySite
from tests.unit.held_requests import HoldResource


def _site() -> tuple[GatewaySite, HoldResource, MemoryReactorClock]:
    clock = MemoryReactorClock()
    resource = HoldResource()
    return GatewaySite(resource, reactor=clock, timeout=75), resource, clock


def _connect(site: GatewaySite) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def test_an_idle_connection_is_closed_after_the_timeout() -> None:
    site, _, clock = _site()
    _, transport = _connect(site)
    clock.advance(74)
    assert not transport.disconnecting
    clock.advance(IDLE_SWEEP_INTERVAL + 1)
    assert transport.disconnecting
    # Nothing left to watch: the sweep stops, no timer is left behind.
    clock.advance(IDLE_SWEEP_INTERVAL)
    assert site.idle_channels == set()
    # (twisted.web's abort, should the closing connection hang, is the only timer.)
    assert {call.func.__name__ for call in clock.getDelayedCalls()} == {"forceAbortClient"}


def test_a_request_in_flight_is_never_timed_out_and_activity_restarts_the_clock() -> None:
    site, resource, clock = _site()
    channel, transport = _connect(site)
    clock.advance(50)
    channel.dataReceived(GET)
    clock.advance(200)  # the application takes its time: not idle
    assert not transport.disconnecting
    resource.answer()
    assert transport.value().endswith(b"ok")
    clock.advance(74)  # idle again since the answer, 74 s ago
    assert not transport.disconnecting
    channel.dataReceived(GET[:10])  # part of a head is activity too
    clock.advance(74)
    assert not transport.disconnecting
    clock.advance(2 + IDLE_SWEEP_INTERVAL)
    assert transport.disconnecting


def test_requests_schedule_no_delayed_calls() -> None:
    site, resource, clock = _site()
    channel, _ = _connect(site)
    calls = len(clock.getDelayedCalls())
    for _ in range(5):
        channel.dataReceived(GET)
        resource.answer()
    assert len(clock.getDelayedCalls()) == calls  # only the site's one sweep
