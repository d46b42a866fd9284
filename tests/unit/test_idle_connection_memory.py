"""An idle keep-alive connection stays small: its channel shares its attribute names.

CPython keeps one table of attribute names per class, shared by its
instances, for up to 30 names; an instance that needs one more gets a dict
of its own, five times the size. twisted.web's channel sets 25 names itself,
so DrainableChannel keeps the gateway's own fields in slots. These tests
answer requests on fresh channels and check each channel still shares the
table (a subclass per test: the table belongs to the class, and other tests
may have added names to DrainableChannel's).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from idgateway.config.load import load_config
from idgateway.server.service import DrainableChannel, GatewayService

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
    # A shared-names dict is the size of its values; one of its own (what a
    # copy is) also holds the names and their hashes.
    attributes = vars(channel)
    return sys.getsizeof(attributes) < sys.getsizeof(dict(attributes))


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
    # the idle keep-alive connections after them share the class's table.
    site = _site(tmp_path)
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
