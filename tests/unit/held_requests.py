"""Requests held at the resource, for the in-memory channel and response tests.

``HoldResource`` keeps every request it is given pending (``NOT_DONE_YET``),
in the order they came, and answers the oldest when told to; ``held_request``
sends raw bytes through a ``GatewaySite`` and hands back the one request held.
``ResponseRuntime`` is what ``ProxiedResponse`` reads of a ``RouteRuntime``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from idgateway.server.channel import GatewayRequest, GatewaySite


class HoldResource(Resource):
    """Answers only when told to."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[GatewayRequest] = []

    def render(self, request: GatewayRequest) -> Any:  # type: ignore[override]
        self.pending.append(request)
        return NOT_DONE_YET

    def answer(self) -> None:
        """A 200 "ok" to the oldest request held."""
        request = self.pending.pop(0)
        request.responseHeaders.setRawHeaders(b"content-length", [b"2"])
        request.write(b"ok")
        request.finish()


def held_request(raw: bytes) -> tuple[GatewayRequest, StringTransport]:
    """The request ``raw`` makes on a fresh connection, held (and forgotten by
    the resource); and the client's transport."""
    resource = HoldResource()
    channel = GatewaySite(resource).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    [request] = resource.pending
    resource.pending.clear()  # (the caller's is the only reference the test holds)
    return request, transport


class _Route:
    name = "app1"
    websocket_idle_timeout = None


class ResponseRuntime:
    """The things ProxiedResponse reads from a RouteRuntime."""

    route = _Route()

    def __init__(self, hsts_header: bytes | None = None) -> None:
        self.hsts_header = hsts_header
