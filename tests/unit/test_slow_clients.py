"""Slow and many clients, in memory: the head deadline, the body idle timeout,
max_connections, max_websockets and idle tunnels, and their config keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher

from idgateway.config.load import ConfigError, load_config
from idgateway.config.model import Config, Listener, Route, Upstream
from idgateway.proxy.websocket_limits import WebSocketSlots
from idgateway.proxy.websocket_tunnel import WebSocketTunnel
from idgateway.server.channel import IDLE_SWEEP_INTERVAL, BodyPipe, GatewayRequest
from idgateway.server.connection_limits import (
    AcceptLogThrottle,
    default_max_connections,
    process_share,
)
from idgateway.server.service import DrainableSite, GatewayService
from tests.unit.held_requests import HoldResource


class _Hold(HoldResource):
    """Keeps every request pending; counts the clients that left."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = 0

    def render(self, request: GatewayRequest) -> Any:  # type: ignore[override]
        def cancel() -> None:
            self.cancelled += 1

        request.on_disconnect = cancel
        return super().render(request)


def _site(
    header: float | None = 15.0, body: float | None = 60.0, max_connections: int | None = None
) -> tuple[DrainableSite, _Hold, MemoryReactorClock]:
    clock = MemoryReactorClock()
    resource = _Hold()
    site = DrainableSite(
        resource,
        reactor=clock,
        timeout=75,
        header_timeout=header,
        body_timeout=body,
        max_connections=max_connections,
        address="127.0.0.1:8080",
    )
    return site, resource, clock


def _connect(site: DrainableSite, port: int = 1) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def _tick(clock: MemoryReactorClock, seconds: float) -> None:
    """Advance in sweep-sized steps, as a running reactor would."""
    for _ in range(int(seconds / IDLE_SWEEP_INTERVAL)):
        clock.advance(IDLE_SWEEP_INTERVAL)


HEAD = b"GET / HTTP/1.1\r\nHost: app1.example.com\r\nUser-Agent: slow\r\n\r\n"


# ---- client_header_timeout ---------------------------------------------------------------


def test_a_head_trickled_byte_by_byte_is_cut_at_the_deadline() -> None:
    site, resource, clock = _site(header=15)
    channel, transport = _connect(site)
    # A byte a second: the idle timeout (75 s) never fires, the deadline does.
    for byte in HEAD[:14]:
        channel.dataReceived(bytes([byte]))
        _tick(clock, 1)
    assert not transport.disconnecting
    channel.dataReceived(HEAD[14:15])
    _tick(clock, 1)
    assert transport.disconnecting
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nConnection: close\r\n" in response
    assert resource.pending == []
    assert site.heading_channels == set()


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([b""], id="nothing-sent"),
        pytest.param([b"GET / HTTP/1.1\r\n"], id="request-line-only"),
        pytest.param([b"GET / HTTP/1.1\r\nHost: a\r\n"], id="no-blank-line"),
        pytest.param([b"GET / HTTP/1.1\r\n"] + [b"X-A: 1\r\n"] * 45, id="endless-headers"),
        pytest.param([b"\r\n"] * 20, id="blank-lines"),
        pytest.param([b"GET / HTTP/1.1\r\n X-Folded: 1\r\n"], id="folded-header"),
    ],
)
def test_every_unfinished_head_is_cut(pieces: list[bytes]) -> None:
    site, resource, clock = _site(header=5)
    channel, transport = _connect(site)
    for piece in pieces:
        # (A closed TCP transport stops reading: nothing arrives after a 400.)
        if piece and not transport.disconnecting:
            channel.dataReceived(piece)
        clock.advance(0.1)
    _tick(clock, 6)
    assert transport.disconnecting
    assert transport.value().startswith(b"HTTP/1.1 408") or transport.value().startswith(
        b"HTTP/1.1 400"
    )
    assert resource.pending == []


def test_bytes_arriving_do_not_move_the_deadline() -> None:
    site, _, clock = _site(header=3)
    channel, transport = _connect(site)
    channel.dataReceived(b"G")
    for _ in range(20):
        clock.advance(0.25)
        if not transport.disconnecting:
            channel.dataReceived(b"E")
    assert transport.disconnecting


def test_a_whole_head_in_one_read_is_never_timed() -> None:
    site, resource, clock = _site(header=2)
    channel, transport = _connect(site)
    channel.dataReceived(HEAD)
    assert len(resource.pending) == 1
    assert site.heading_channels == set()
    # The request takes long to answer: that is not the head's business.
    _tick(clock, 10)
    assert not transport.disconnecting


def test_a_slow_head_that_finishes_in_time_is_served() -> None:
    site, resource, clock = _site(header=15)
    channel, transport = _connect(site)
    for start in range(0, len(HEAD), 10):
        channel.dataReceived(HEAD[start : start + 10])
        clock.advance(0.5)
    assert len(resource.pending) == 1
    assert site.heading_channels == set()
    _tick(clock, 30)
    assert not transport.disconnecting


def test_the_next_heads_deadline_runs_from_its_own_first_byte() -> None:
    site, resource, clock = _site(header=5)
    channel, transport = _connect(site)
    channel.dataReceived(HEAD)
    request = resource.pending.pop()
    request.setHeader(b"content-length", b"2")
    request.write(b"ok")
    request.finish()
    # Idle keep-alive between requests: the idle timeout's business, not the head's.
    _tick(clock, 20)
    assert not transport.disconnecting
    channel.dataReceived(b"GET / HT")
    _tick(clock, 4)
    assert not transport.disconnecting
    _tick(clock, 2)
    assert transport.disconnecting


def test_a_listener_without_a_deadline_keeps_only_the_idle_timeout() -> None:
    site, _, clock = _site(header=None)
    channel, transport = _connect(site)
    channel.dataReceived(b"GET")
    _tick(clock, 60)
    assert not transport.disconnecting
    assert site.heading_channels == set()


def test_many_slow_heads_cut_in_one_sweep_make_one_log_line() -> None:
    site, _, clock = _site(header=2)
    transports = [_connect(site, port)[1] for port in range(1, 501)]
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        _tick(clock, 3)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert all(transport.disconnecting for transport in transports)
    cut = [e for e in events if "client_header_timeout" in e.get("log_format", "")]
    assert len(cut) == 1 and cut[0]["count"] == 500
    assert not [e for e in events if e.get("log_failure")]


def test_no_delayed_call_per_slow_head() -> None:
    site, _, clock = _site(header=15)
    for port in range(1, 101):
        channel, _ = _connect(site, port)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
    # The one sweep, nothing per connection.
    assert len(clock.getDelayedCalls()) == 1


# ---- client_body_timeout -----------------------------------------------------------------


POST = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n"


def test_a_stalled_body_gets_408_and_the_upstream_is_cancelled() -> None:
    site, resource, clock = _site(body=10)
    channel, transport = _connect(site)
    channel.dataReceived(POST + b"x" * 10)
    assert len(resource.pending) == 1
    _tick(clock, 9)
    assert not transport.disconnecting
    _tick(clock, 2)
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 408 "), response
    assert b"client_body_timeout" in response
    assert b"Connection: close" in response
    assert resource.cancelled == 1
    assert transport.disconnecting


def test_a_body_that_keeps_coming_is_not_cut() -> None:
    site, resource, clock = _site(body=3)
    channel, transport = _connect(site)
    channel.dataReceived(POST)
    for _ in range(20):
        channel.dataReceived(b"x" * 4)
        _tick(clock, 2)
    assert not transport.disconnecting
    assert len(resource.pending) == 1


def test_a_body_the_gateway_holds_back_is_not_the_clients_silence() -> None:
    site, resource, clock = _site(body=3)
    channel, transport = _connect(site)
    channel.dataReceived(POST + b"x")
    body = resource.pending[0].body
    assert isinstance(body, BodyPipe)
    body.pause()  # the upstream is slow to take it
    _tick(clock, 30)
    assert not transport.disconnecting
    body.resume()
    _tick(clock, 5)
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_a_stalled_chunked_body_is_cut() -> None:
    site, resource, clock = _site(body=5)
    channel, transport = _connect(site)
    channel.dataReceived(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
    )
    _tick(clock, 7)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert resource.cancelled == 1


def test_a_stalled_body_after_the_response_began_is_cut_without_a_second_status() -> None:
    site, resource, clock = _site(body=5)
    channel, transport = _connect(site)
    channel.dataReceived(POST)
    request = resource.pending[0]
    request.write(b"partial")
    _tick(clock, 7)
    assert transport.disconnecting
    assert b"408" not in transport.value()


# ---- max_connections ---------------------------------------------------------------------


def test_connections_past_max_connections_are_closed_at_accept() -> None:
    site, _, clock = _site(max_connections=3)
    for port in range(1, 4):
        _connect(site, port)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        refused = [site.buildProtocol(IPv4Address("TCP", "127.0.0.1", p)) for p in range(50)]
        clock.advance(0.5)
        refused += [site.buildProtocol(IPv4Address("TCP", "127.0.0.1", p)) for p in range(20)]
        clock.advance(0.6)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert refused == [None] * 70
    reports = [e for e in events if "max_connections" in e.get("log_format", "")]
    # The first at once, the rest of that second in one more line.
    assert [e["count"] for e in reports] == [1, 69]
    assert reports[-1]["total"] == 70
    assert not [e for e in events if e.get("log_failure")]


def test_a_closed_connection_frees_its_place() -> None:
    site, _, _ = _site(max_connections=1)
    channel, transport = _connect(site)
    assert site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2)) is None
    channel.connectionLost(None)
    assert site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2)) is not None


def test_the_tls_factory_passes_a_refusal_on() -> None:
    from idgateway.server.tls import GatewayTLSFactory

    site, _, _ = _site(max_connections=1)
    _connect(site)
    factory = GatewayTLSFactory.__new__(GatewayTLSFactory)
    factory.wrappedFactory = site
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2)) is None


@pytest.mark.parametrize(
    ("soft", "listeners", "expected"),
    [(65536, 1, 32704), (65536, 2, 16352), (1024, 1, 448), (200, 4, 16), (20000, 1, 9936)],
)
def test_default_max_connections(soft: int, listeners: int, expected: int) -> None:
    assert default_max_connections(listeners, soft) == expected


@pytest.mark.parametrize(
    ("limit", "workers", "expected"), [(100, 1, 100), (100, 4, 25), (3, 4, 1), (101, 2, 50)]
)
def test_max_connections_is_shared_among_workers(limit: int, workers: int, expected: int) -> None:
    assert process_share(limit, workers) == expected


def test_emfile_recovery_lines_become_one_report_a_second() -> None:
    clock = MemoryReactorClock()
    throttle = AcceptLogThrottle(clock, "127.0.0.1:8080")
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(1000):
            throttle({"log_format": "EMFILE encountered; releasing reserved file descriptor."})
            throttle({"log_format": "EMFILE recovery: Closed socket from {address}"})
            throttle({"log_format": "Re-reserving EMFILE recovery file descriptor."})
        clock.advance(1.0)
        throttle({"log_format": "something else", "log_level": None})
    finally:
        globalLogPublisher.removeObserver(events.append)
    emfile = [e for e in events if "EMFILE" in e.get("log_format", "")]
    assert [e["count"] for e in emfile] == [1, 999]
    assert any(e.get("log_format") == "something else" for e in events)


# ---- max_websockets and websocket_idle_timeout -------------------------------------------


def _route(max_websockets: int = 2) -> Route:
    upstream = Upstream(url="http://127.0.0.1:1", kind="http", host="127.0.0.1", port=1)
    return Route(name="ws", hosts=("ws.example",), upstream=upstream, max_websockets=max_websockets)


def test_websocket_slots_hold_the_limit_and_release_once() -> None:
    slots = WebSocketSlots()
    route = _route(2)
    first, second = slots.take(route), slots.take(route)
    assert first is not None and second is not None
    assert slots.take(route) is None
    first.release()
    first.release()  # twice: still one place freed
    assert slots.open["ws"] == 1
    third = slots.take(route)
    assert third is not None and slots.take(route) is None


@pytest.mark.parametrize(("limit", "workers", "share"), [(1024, 4, 256), (3, 4, 1), (0, 4, 0)])
def test_max_websockets_is_shared_among_workers(limit: int, workers: int, share: int) -> None:
    assert WebSocketSlots(workers).limit_for(_route(limit)) == share


class _Upstream:
    def __init__(self) -> None:
        self.transport = StringTransport()
        self.abandoned = 0

    def abandon(self) -> None:
        self.abandoned += 1


def test_an_idle_tunnel_is_closed_and_gives_its_slot_back() -> None:
    site, _, clock = _site()
    slots = WebSocketSlots()
    route = _route(1)
    upstream = _Upstream()
    tunnel = WebSocketTunnel(
        upstream,  # type: ignore[arg-type]
        route="ws",
        idle_timeout=10,
        slot=slots.take(route),
    )
    client = StringTransport()
    client.registerProducer = lambda *a: None  # type: ignore[method-assign]
    upstream.transport.registerProducer = lambda *a: None  # type: ignore[method-assign]
    tunnel.makeConnection(client)
    tunnel.watch_idle(site, clock.seconds())
    # Traffic either way keeps it open.
    for _ in range(5):
        _tick(clock, 5)
        tunnel.dataReceived(b"ping")
        _tick(clock, 5)
        tunnel.response_data(b"pong")
    assert not client.disconnecting
    _tick(clock, 12)
    assert client.disconnecting
    assert upstream.abandoned >= 1
    tunnel.connectionLost(None)
    assert slots.open["ws"] == 0
    assert site.tunnels == set()


# ---- the config keys -----------------------------------------------------------------------


MINIMAL = """\
listeners:
  - address: 127.0.0.1:8080
{listener}
routes:
  - name: app1
    hosts: [app1.example.com]
    upstream: http://127.0.0.1:3000
{route}
{top}
"""


def _load(tmp_path: Path, listener: str = "", route: str = "", top: str = "") -> Config:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL.format(listener=listener, route=route, top=top))
    return load_config(str(path), {})


def test_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path)
    assert (config.client_header_timeout, config.client_body_timeout) == (15.0, 60.0)
    (listener,) = config.listeners
    assert (listener.client_header_timeout, listener.max_connections) == (None, None)
    assert (config.routes[0].max_websockets, config.routes[0].websocket_idle_timeout) == (
        1024,
        3600.0,
    )


def test_listener_values_override_the_top_level(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        listener="    client_header_timeout: 2s\n    client_body_timeout: 3s\n"
        "    max_connections: 40",
        top="client_header_timeout: 9s\nclient_body_timeout: 1m",
    )
    service = GatewayService.__new__(GatewayService)
    assert service.listener_limits(config.listeners[0], config) == (2.0, 3.0, 40)
    plain = Listener(host="127.0.0.1", port=1)
    header, body, _ = service.listener_limits(plain, config)
    assert (header, body) == (9.0, 60.0)


BAD_VALUES = [
    ("top", "client_header_timeout: 0", "client_header_timeout", "longer than zero"),
    ("top", "client_header_timeout: soon", "client_header_timeout", "duration"),
    ("top", "client_header_timeout: -5s", "client_header_timeout", "duration"),
    ("top", "client_body_timeout: 0s", "client_body_timeout", "longer than zero"),
    ("top", "client_body_timeout: [1]", "client_body_timeout", "duration"),
    ("listener", "    client_header_timeout: 0", "listeners[0].client_header_timeout", "zero"),
    ("listener", "    client_body_timeout: x", "listeners[0].client_body_timeout", "duration"),
    ("listener", "    max_connections: 0", "listeners[0].max_connections", "at least 1"),
    ("listener", "    max_connections: -1", "listeners[0].max_connections", "at least 1"),
    ("listener", "    max_connections: many", "listeners[0].max_connections", "whole number"),
    ("listener", "    max_connections: 1.5", "listeners[0].max_connections", "whole number"),
    ("listener", "    max_connections: '100'", "listeners[0].max_connections", "whole number"),
    ("listener", "    max_connections: true", "listeners[0].max_connections", "whole number"),
    ("route", "    max_websockets: -1", "routes[0].max_websockets", "at least 0"),
    ("route", "    max_websockets: lots", "routes[0].max_websockets", "whole number"),
    ("route", "    websocket_idle_timeout: 0", "routes[0].websocket_idle_timeout", "zero"),
    ("route", "    websocket_idle_timeout: 1y", "routes[0].websocket_idle_timeout", "duration"),
]


@pytest.mark.parametrize(("where", "line", "key", "says"), BAD_VALUES)
def test_bad_values_name_the_file_line_and_key(
    tmp_path: Path, where: str, line: str, key: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, **{where: line})
    (problem,) = caught.value.problems
    assert problem.key == key
    assert problem.file.endswith("gateway.yaml") and problem.line is not None
    assert says in problem.message, problem.message


def test_twisted_ports_still_log_accept_errors_through_their_logger() -> None:
    """throttle_accept_logs relies on tcp.Port._logger (private): fail loudly if it goes."""
    from twisted.internet import tcp
    from twisted.logger import Logger

    from idgateway.server.connection_limits import throttle_accept_logs

    assert isinstance(tcp.Port._logger, Logger)
    port = tcp.Port(0, None, reactor=MemoryReactorClock())  # type: ignore[arg-type]
    throttle_accept_logs(port, MemoryReactorClock(), "127.0.0.1:1")
    assert isinstance(port._logger.observer, AcceptLogThrottle)
    assert port._logger.namespace == tcp.Port._logger.namespace


def test_the_service_applies_the_limits_and_a_reload_changes_them(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    text = (
        "listeners:\n  - address: 127.0.0.1:1\n    max_connections: {limit}\n"
        "client_header_timeout: {header}\n"
        "routes:\n  - name: app\n    hosts: [app.localhost]\n    upstream: http://127.0.0.1:9\n"
    )
    path.write_text(text.format(limit=10, header="5s"))
    reactor = MemoryReactorClock()
    service = GatewayService(load_config(str(path)), reactor, install_signal_handlers=False)
    service.startService()
    try:
        (site,) = service._drain_sites
        assert (site.header_timeout, site.body_timeout, site.max_connections) == (5.0, 60.0, 10)
        path.write_text(text.format(limit=3, header="7s"))
        assert service.reload()
        assert (site.header_timeout, site.max_connections) == (7.0, 3)
    finally:
        service.stopService()
