"""An idle keep-alive connection stays small: no dict of its own.

CPython keeps one table of attribute names per class, shared by its
instances; an instance that needs a name the table lacks gets a dict of its
own, several times the size. The table stops taking names once a few dozen
instances exist (so a name first set after a burst of accepts, such as
twisted.web's ``persistent`` at the first request, gives every later channel
a dict), and changing an instance's class gives it a dict at once. So
DrainableChannel keeps twisted.web's and the gateway's per-connection fields
in slots, and listeners make their accepted transports coalescing from the
start (``AcceptedConnection``, slotted too). These tests answer requests on
many fresh channels and check each holds no dict of its own (a subclass per
test: the table belongs to the class, and other tests may have added names
to DrainableChannel's).
"""

from __future__ import annotations

import gc
import socket
import sys
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from idgateway._twisted.reactor import LeanEPollReactor
from idgateway.config.load import load_config
from idgateway.server.service import DrainableChannel, GatewayService
from idgateway.server.socket_writes import QuietAcceptedConnection

REQUESTS = {
    "GET": b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n",
    "POST with a length": (
        b"POST /form HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 5\r\n\r\nhello"
    ),
    "POST chunked": (
        b"POST /form HTTP/1.1\r\nHost: nowhere.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    ),
    "two requests": b"GET /a HTTP/1.1\r\nHost: nowhere.test\r\n\r\n" * 2,
}


def _site(tmp_path: Path) -> Any:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listeners:\n  - address: 127.0.0.1:1\n"
        "routes:\n  - name: app\n    hosts: [app.localhost]\n    upstream: http://127.0.0.1:9\n"
    )
    service = GatewayService(
        load_config(str(path)), MemoryReactorClock(), install_signal_handlers=False
    )
    service.startService()
    site = service._drain_sites[0]

    class FreshChannel(DrainableChannel):
        """DrainableChannel with a shared-name table no other test has touched."""

    site.protocol = FreshChannel
    return site


def _shares_its_names(channel: Any) -> bool:
    # Nothing outside the slots, or a shared-names dict: the size of its
    # values; one of its own (what a copy is) also holds the names and their
    # hashes.
    attributes = vars(channel)
    return not attributes or sys.getsizeof(attributes) < sys.getsizeof(dict(attributes))


def _answer(site: Any, request_bytes: bytes, port: int) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(request_bytes)
    # Answered by the gateway itself (no route has that host).
    assert transport.value().startswith(b"HTTP/1.1 ")
    assert not channel.requests
    return channel, transport


@pytest.mark.parametrize("request_bytes", REQUESTS.values(), ids=list(REQUESTS))
def test_an_answered_connection_keeps_a_shared_attribute_table(
    tmp_path: Path, request_bytes: bytes
) -> None:
    # Whatever the first connections met (bodies, several requests, a close),
    # the idle keep-alive connections after them share the class's table,
    # also once more channels exist than the table takes names for (a burst
    # of accepts before any request).
    site = _site(tmp_path)
    burst = [site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000 + n)) for n in range(40)]
    assert len(burst) == 40
    first = [_answer(site, request_bytes, 5000 + index) for index in range(2)]
    idle = [_answer(site, REQUESTS["GET"], 6000 + index) for index in range(2)]
    for channel, transport in first + idle:
        if not transport.disconnecting:
            assert _shares_its_names(channel), sorted(vars(channel))
    for channel, transport in idle:
        assert not transport.disconnecting
        assert _shares_its_names(channel), sorted(vars(channel))


def test_the_slotted_fields_start_at_the_channels_defaults(tmp_path: Path) -> None:
    site = _site(tmp_path)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    assert channel._silent is True
    assert channel._host is None and channel._peer is None
    assert channel._head_since is None and channel._idle_period is None
    assert channel._idle_since == 0.0 and channel._reading_body is False


# -- the whole of an idle keep-alive connection, measured ---------------------

# Idle keep-alive connections measured (after as many warm-up ones).
MEASURED_CONNECTIONS = 1000
# A regression guard, not a benchmark: 1.5 KiB of tracemalloc-counted memory
# per idle connection when this was written (3.4 KiB before channels and
# transports kept their fields in slots and dicts of their own went away).
MAX_BYTES_PER_IDLE_CONNECTION = 2048
# Requests in flight at once (as many upstream connections, at most).
REQUESTS_AT_ONCE = 20


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


def _pump(reactor: Any, done: Callable[[], bool], turns: int = 3000) -> None:
    for _ in range(turns):
        reactor.iterate(0.005)
        if done():
            return
    raise AssertionError("the gateway did not answer in time")


def _turns(reactor: Any, count: int) -> None:
    for _ in range(count):
        reactor.iterate(0.005)


def _all_answered(waiting: list[socket.socket]) -> bool:
    """Whether each of ``waiting`` has its answer (those that have leave the list)."""
    for client in list(waiting):
        try:
            if client.recv(65536).startswith(b"HTTP/1.1 200 "):
                waiting.remove(client)
        except BlockingIOError:
            pass
    return not waiting


def _open_answered(reactor: Any, port: int, clients: list[socket.socket]) -> None:
    """Connect ``clients`` to the gateway, each with one GET answered, left open.

    The requests go a batch at a time: the gateway's pool to the upstream
    (and the upstream's own connections) stay as few as the warm-up left them.
    """
    for client in clients:
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
    _turns(reactor, 20)
    for start in range(0, len(clients), REQUESTS_AT_ONCE):
        batch = clients[start : start + REQUESTS_AT_ONCE]
        for client in batch:
            client.send(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        _pump(reactor, partial(_all_answered, list(batch)))


def test_an_idle_keep_alive_connection_holds_little_memory(tmp_path: Path) -> None:
    reactor = LeanEPollReactor()
    # (No idle timeout: its DelayedCalls would count here.)
    upstream = reactor.listenTCP(0, Site(_Hello(), timeout=None), interface="127.0.0.1")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"listeners:\n  - address: 127.0.0.1:{port}\n"
        "routes:\n  - name: app\n    hosts: [app.localhost]\n"
        f"    upstream: http://127.0.0.1:{upstream.getHost().port}\n"
    )
    service = GatewayService(load_config(str(path)), reactor, install_signal_handlers=False)
    service.startService()
    warm = [socket.socket() for _ in range(50)]
    # (Made before the measure: the client side is not the gateway's.)
    measured = [socket.socket() for _ in range(MEASURED_CONNECTIONS)]
    clients = warm + measured
    try:
        _open_answered(reactor, port, warm)  # (the upstream pool, first-use caches)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            _open_answered(reactor, port, measured)
            _turns(reactor, 10)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        # What this test's own lines hold (the client side) is not counted.
        clients_side = [tracemalloc.Filter(False, __file__)]
        grown = sum(
            stat.size_diff
            for stat in after.filter_traces(clients_side).compare_to(
                before.filter_traces(clients_side), "filename"
            )
        )
        per_connection = grown / MEASURED_CONNECTIONS
        site = service._drain_sites[0]
        assert len(site.connections) == len(clients)
        channel = next(iter(site.connections))
        transport = channel.transport
        assert type(transport) is QuietAcceptedConnection
        # Its log prefix and repr, made when asked, read as stock Twisted's.
        assert transport.logPrefix() == (
            f"DrainableChannel,{transport.sessionno},{transport.client[0]}"
        )
        assert repr(transport) == f"<DrainableChannel #{transport.sessionno} on {port}>"
        assert per_connection < MAX_BYTES_PER_IDLE_CONNECTION, per_connection
    finally:
        for client in clients:
            client.close()
        _pump(reactor, lambda: not service._drain_sites[0].connections)
        service.stopService()
        upstream.stopListening()
        for _ in range(5):
            reactor.iterate(0)
        reactor.disconnectAll()
        reactor._poller.close()
