"""A WebSocket handshake's 101 carries the gate's cookies, as any other answer does
(and the route's HSTS over TLS), and gets an access line.

The soak (issue 16) found it: a session whose access token had expired was
refreshed for a WebSocket upgrade, the refresh rotated its refresh token, and
the 101 went out without the re-issued cookie. A browser that only opened
WebSockets kept the pre-refresh cookie; the gateway handed it the refresh's
result for the REFRESH_GRACE minute, then spent the rotated refresh token
again, the provider answered invalid_grant, and the upgrade was answered 302.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from idgateway.config.model import LoggingSettings
from idgateway.observe import access_log
from idgateway.proxy.response import ProxiedResponse
from tests.unit.held_requests import ResponseRuntime, held_request

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


class _Upstream:
    """What the tunnel needs of the upstream connection before any frame."""

    exchange = None

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True


def _upgraded(
    set_cookies: list[bytes],
    *,
    tls: bool = False,
    hsts: bytes | None = None,
    switched: list[tuple[bytes, bytes]] = SWITCHED,
    access_lines: list[str] | None = None,
) -> bytes:
    request, client = held_request(UPGRADE)
    request.idgw_logging = LoggingSettings()
    request.idgw_route = "app1"
    request.idgw_user = "alice"
    runtime = ResponseRuntime(hsts)
    sink = ProxiedResponse(request, runtime, tls=tls, set_cookies=set_cookies)  # type: ignore[arg-type]
    upstream = _Upstream()
    sink.response_head(101, b"Switching Protocols", switched, None)
    taken: list[tuple[float, str]] = []
    access_log.send_access_lines_to(lambda when, line: taken.append((when, line)))
    try:
        sink.upgraded(upstream, b"")  # type: ignore[arg-type]
    finally:
        access_log.send_access_lines_to(None)
    assert not upstream.abandoned
    if access_lines is not None:
        access_lines.extend(line for _, line in taken)
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


HSTS = b"max-age=31536000; includeSubDomains"


def test_over_tls_the_101_carries_the_routes_hsts_instead_of_the_applications() -> None:
    switched = [*SWITCHED, (b"strict-Transport-Security", b"max-age=0")]
    head = _upgraded([], tls=True, hsts=HSTS, switched=switched)
    assert head.count(b"Strict-Transport-Security") == 1
    assert b"Strict-Transport-Security: " + HSTS + b"\r\n" in head
    assert b"max-age=0" not in head


def test_over_plain_http_no_hsts_is_added() -> None:
    switched = [*SWITCHED, (b"Strict-Transport-Security", b"max-age=5")]
    head = _upgraded([], tls=False, hsts=HSTS, switched=switched)
    assert HSTS not in head
    assert b"Strict-Transport-Security: max-age=5\r\n" in head


def test_the_upgrade_gets_one_access_line_when_the_101_goes_out() -> None:
    lines: list[str] = []
    _upgraded([REISSUED], access_lines=lines)
    [line] = lines
    assert line.startswith("GET /socket 101 0B route=app1 user=alice gw=")
    assert line.endswith(" ip=192.168.1.1")  # (StringTransport's peer)
