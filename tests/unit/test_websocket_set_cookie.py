"""A WebSocket handshake's 101 carries the gate's cookies, as any other answer does.

The soak (issue 16) found it: a session whose access token had expired was
refreshed for a WebSocket upgrade, the refresh rotated its refresh token, and
the 101 went out without the re-issued cookie. A browser that only opened
WebSockets kept the pre-refresh cookie; the gateway handed it the refresh's
result for the REFRESH_GRACE minute, then spent the rotated refresh token
again, the provider answered invalid_grant, and the upgrade was answered 302.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from idgateway.proxy.response import ProxiedResponse
from idgateway.server.channel import GatewayRequest, GatewaySite

UPGRADE = (
    b"GET /socket HTTP/1.1\r\nHost: app1\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
SWITCHED = [
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
]
REISSUED = b"_idgw_app1=sealed-refreshed-session; Path=/; HttpOnly; SameSite=Lax"


class _Hold(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[GatewayRequest] = []

    def render(self, request: GatewayRequest) -> Any:  # type: ignore[override]
        self.requests.append(request)
        return NOT_DONE_YET


class _Route:
    name = "app1"
    websocket_idle_timeout = None


class _Runtime:
    route = _Route()
    hsts_header = None


class _Upstream:
    """What the tunnel needs of the upstream connection before any frame."""

    exchange = None

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True


def _upgraded(set_cookies: list[bytes]) -> bytes:
    resource = _Hold()
    channel = GatewaySite(resource).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert channel is not None
    client = StringTransport()
    channel.makeConnection(client)
    channel.dataReceived(UPGRADE)
    [request] = resource.requests
    sink = ProxiedResponse(request, _Runtime(), tls=False, set_cookies=set_cookies)  # type: ignore[arg-type]
    upstream = _Upstream()
    sink.response_head(101, b"Switching Protocols", SWITCHED, None)
    sink.upgraded(upstream, b"")  # type: ignore[arg-type]
    assert not upstream.abandoned
    return client.value()


def test_the_101_carries_the_reissued_session_cookie() -> None:
    head = _upgraded([REISSUED])
    assert head == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Set-Cookie: " + REISSUED + b"\r\n\r\n"
    )


def test_every_cookie_of_a_chunked_session_goes_out_once() -> None:
    chunks = [b"_idgw_app1_0=a; Path=/", b"_idgw_app1_1=b; Path=/", b"_idgw_app1_2=; Max-Age=0"]
    head = _upgraded(chunks)
    for value in chunks:
        assert head.count(b"Set-Cookie: " + value + b"\r\n") == 1
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1


def test_without_cookies_the_101_is_the_upstreams() -> None:
    assert _upgraded([]) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
