"""GatewayH2Connection in memory: a real h2 client on one side, a GatewaySite
with a small resource on the other, a MemoryReactorClock for the timers."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from idgateway.config.model import HTTP2Limits
from idgateway.server.channel import GatewaySite
from idgateway.server.h2_connection import (
    CONTROL_FRAMES_PER_MINUTE,
    STREAM_HIGH_WATER,
    GatewayH2Connection,
    H2Offer,
)


class Answer(Resource):
    """Answers "hello" at once, or holds the request (path /hold) for the test."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []
        self.bodies: dict[bytes, bytearray] = {}

    def render(self, request: Any) -> Any:
        if request.path == b"/hold":
            self.held.append(request)
            return NOT_DONE_YET
        if request.path == b"/sized":
            request.setHeader(b"content-length", b"5")
            request.write(b"he")
            request.write(b"llo")
            request.finish()
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"Connection", b"close")  # never sent over h2
        request.write(b"hello " + request.getHeader(b"host"))
        request.finish()
        return NOT_DONE_YET


DEFAULT_LIMITS = HTTP2Limits()


class Pair:
    def __init__(
        self, limits: HTTP2Limits = DEFAULT_LIMITS, header_timeout: float | None = None
    ) -> None:
        self.clock = MemoryReactorClock()
        self.resource = Answer()
        self.site = GatewaySite(
            self.resource, reactor=self.clock, timeout=75, header_timeout=header_timeout
        )
        self.server = GatewayH2Connection(self.site, limits, self.clock)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.client = h2.connection.H2Connection(config=config)
        self.client.initiate_connection()
        self.events: list[Any] = []
        self.exchange()

    def exchange(self) -> list[Any]:
        new: list[Any] = []
        for _ in range(10):
            out = self.client.data_to_send()
            if out and not self.transport.disconnecting:
                self.server.dataReceived(out)
            back = self.transport.value()
            self.transport.clear()
            if not back and not out:
                break
            if back:
                new += self.client.receive_data(back)
        self.events += new
        return new

    def get(self, path: bytes = b"/", *, end: bool = True, **headers: bytes) -> int:
        stream_id = self.client.get_next_available_stream_id()
        block = [
            (b":method", b"GET" if end else b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"app.example"),
            (b":path", path),
        ] + [(name.replace("_", "-").encode(), value) for name, value in headers.items()]
        self.client.send_headers(stream_id, block, end_stream=end)
        self.exchange()
        return stream_id

    def of(self, kind: type, stream_id: int | None = None) -> list[Any]:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and (stream_id is None or e.stream_id == stream_id)
        ]


def test_a_stream_is_served_by_the_site_resource_with_host_from_authority() -> None:
    pair = Pair()
    stream_id = pair.get()
    [response] = pair.of(h2.events.ResponseReceived, stream_id)
    headers = dict(response.headers)
    assert headers[b":status"] == b"200"
    assert b"connection" not in headers  # connection-specific: never on h2
    assert b"".join(e.data for e in pair.of(h2.events.DataReceived, stream_id)) == (
        b"hello app.example"
    )
    assert pair.of(h2.events.StreamEnded, stream_id)


def test_the_offer_takes_alpn_h2_and_the_h2c_preface_only() -> None:
    offer_alpn = H2Offer("alpn", HTTP2Limits(), MemoryReactorClock())
    offer_h2c = H2Offer("prior_knowledge", HTTP2Limits(), MemoryReactorClock())

    class Channel:
        transport = StringTransport()

    channel = Channel()
    assert not offer_alpn.wants(channel, b"GET / HTTP/1.1\r\n")
    channel.transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
    assert offer_alpn.wants(channel, b"\x00")
    assert offer_h2c.wants(channel, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert offer_h2c.wants(channel, b"PRI * HT")
    assert not offer_h2c.wants(channel, b"PRI")  # too short to tell
    assert not offer_h2c.wants(channel, b"GET / HTTP/1.1\r\n")
    assert not offer_h2c.wants(channel, b"PRI * HTTP/1.1\r\n")


def test_idle_connections_get_goaway_and_close() -> None:
    pair = Pair()
    pair.get()
    pair.clock.advance(74)
    pair.site._time_out_idle()
    assert not pair.transport.disconnecting
    pair.clock.advance(2)
    pair.site._time_out_idle()
    pair.exchange()
    assert pair.transport.disconnecting
    [goaway] = pair.of(h2.events.ConnectionTerminated)
    assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR


def test_a_connection_with_a_stream_in_flight_is_not_idle() -> None:
    pair = Pair()
    pair.get(b"/hold")
    pair.clock.advance(200)
    pair.site._time_out_idle()
    assert not pair.transport.disconnecting


def test_drain_sends_goaway_refuses_new_streams_and_closes_after_the_last() -> None:
    pair = Pair()
    held = pair.get(b"/hold")
    pair.server.drain()
    pair.exchange()
    [goaway] = pair.of(h2.events.ConnectionTerminated)
    assert goaway.last_stream_id == held
    assert not pair.transport.disconnecting
    # A stream opened after the GOAWAY is refused...
    # (A raw frame: h2's client sends nothing after a GOAWAY either.)
    from hyperframe.frame import HeadersFrame

    late = held + 2
    frame = HeadersFrame(late, flags=["END_HEADERS", "END_STREAM"])
    frame.data = pair.client.encoder.encode(
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"a.example"),
            (b":path", b"/"),
        ]
    )
    pair.server.dataReceived(frame.serialize())
    assert len(pair.resource.held) == 1
    # ...and the request in flight still answers; then the connection closes.
    # (Read as raw frames: h2's client takes no frame after a GOAWAY.)
    [request] = pair.resource.held
    request.write(b"done")
    request.finish()
    frames = _frames(pair.transport.value())
    assert (late, "RstStreamFrame") in [(f.stream_id, type(f).__name__) for f in frames]
    data = [f for f in frames if type(f).__name__ == "DataFrame" and f.stream_id == held]
    assert b"".join(f.data for f in data) == b"done" and "END_STREAM" in data[-1].flags
    assert pair.transport.disconnecting


def _frames(data: bytes) -> list[Any]:
    from hyperframe.frame import Frame

    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def test_resets_past_the_limit_close_with_enhance_your_calm() -> None:
    pair = Pair(HTTP2Limits(max_resets_per_minute=5))
    for _ in range(5):
        stream_id = pair.get(b"/hold")
        pair.client.reset_stream(stream_id)
        pair.exchange()
    assert not pair.transport.disconnecting
    # A new minute starts the count again.
    pair.clock.advance(61)
    for _ in range(6):
        stream_id = pair.get(b"/hold")
        pair.client.reset_stream(stream_id)
        pair.exchange()
    assert pair.transport.disconnecting
    [goaway] = pair.of(h2.events.ConnectionTerminated)
    assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    # Every held request saw its client go.
    assert all(request.client_gone for request in pair.resource.held)


def test_pings_past_the_limit_close_with_enhance_your_calm() -> None:
    pair = Pair()
    for index in range(CONTROL_FRAMES_PER_MINUTE + 1):
        pair.client.ping(b"%08d" % index)
    pair.exchange()
    assert pair.transport.disconnecting
    assert pair.of(h2.events.ConnectionTerminated)[0].error_code == (
        h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    )


def test_a_response_held_back_by_the_window_pauses_its_producer() -> None:
    pair = Pair()
    stream_id = pair.get(b"/hold")
    [request] = pair.resource.held

    class Producer:
        paused = resumed = 0

        def pauseProducing(self) -> None:  # noqa: N802
            self.paused += 1

        def resumeProducing(self) -> None:  # noqa: N802
            self.resumed += 1

        def stopProducing(self) -> None:  # noqa: N802
            pass

    producer = Producer()
    request.registerProducer(producer, True)
    chunk = b"x" * 16384
    for _ in range(4 + STREAM_HIGH_WATER // len(chunk) + 1):
        request.write(chunk)
    # The client's window (64 KiB) let 4 chunks out; the rest is held, the producer paused.
    pair.exchange()
    assert producer.paused == 1 and producer.resumed == 0
    received = sum(e.flow_controlled_length for e in pair.of(h2.events.DataReceived, stream_id))
    assert received == 65535
    pair.client.increment_flow_control_window(10**6)
    pair.client.increment_flow_control_window(10**6, stream_id=stream_id)
    pair.exchange()
    assert producer.resumed == 1


def test_a_body_is_acknowledged_only_as_it_is_taken() -> None:
    pair = Pair(HTTP2Limits(initial_window_size=64 * 1024))
    stream_id = pair.get(b"/hold", end=False)
    [request] = pair.resource.held
    taken: list[bytes] = []

    class Pipe:
        complete = False

        def feed(self, data: bytes) -> None:
            taken.append(data)

    request.body = Pipe()
    transport = request.channel.transport
    transport.pauseProducing()
    for _ in range(4):
        pair.client.send_data(stream_id, b"y" * 15000)
    pair.exchange()
    assert sum(map(len, taken)) == 60000
    # Paused: nothing acknowledged, the client's window stays spent.
    assert pair.client.local_flow_control_window(stream_id) == 65536 - 60000
    transport.resumeProducing()
    pair.exchange()
    assert pair.client.local_flow_control_window(stream_id) == 65536


def test_a_body_that_stops_arriving_gets_408_at_client_body_timeout() -> None:
    pair = Pair()
    pair.site.body_timeout = 10
    stream_id = pair.get(b"/hold", end=False)
    [request] = pair.resource.held
    cancelled: list[bool] = []
    request.on_disconnect = lambda: cancelled.append(True)
    request.body = type("Pipe", (), {"complete": False, "feed": lambda self, data: None})()
    pair.client.send_data(stream_id, b"z" * 100)
    pair.exchange()
    pair.clock.advance(9)
    pair.site._time_out_idle()
    pair.exchange()
    assert not pair.of(h2.events.ResponseReceived, stream_id)
    pair.clock.advance(2)
    pair.site._time_out_idle()
    pair.exchange()
    [response] = pair.of(h2.events.ResponseReceived, stream_id)
    assert dict(response.headers)[b":status"] == b"408"
    assert cancelled == [True]
    # The rest of the body is not wanted: the stream is reset (NO_ERROR) after the answer.
    [reset] = pair.of(h2.events.StreamReset, stream_id)
    assert reset.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert not pair.transport.disconnecting  # other streams go on


def test_trailers_end_the_body_and_are_dropped_as_on_http11() -> None:
    from idgateway.server.channel import BodyPipe

    pair = Pair()
    stream_id = pair.get(b"/hold", end=False, te=b"trailers")
    [request] = pair.resource.held
    body = request.body = BodyPipe(request, None)
    pair.client.send_data(stream_id, b"part")
    pair.client.send_headers(stream_id, [(b"x-checksum", b"abc")], end_stream=True)
    pair.exchange()
    assert body.complete
    assert b"".join(body._pending) == b"part"
    assert request.requestHeaders.getRawHeaders(b"x-checksum") is None
    assert request.requestHeaders.getRawHeaders(b"te") == [b"trailers"]


def test_expect_100_continue_gets_an_interim_100_before_the_body() -> None:
    pair = Pair()
    stream_id = pair.get(b"/hold", end=False, expect=b"100-Continue")
    [interim] = pair.of(h2.events.InformationalResponseReceived, stream_id)
    assert dict(interim.headers)[b":status"] == b"100"
    assert not pair.of(h2.events.ResponseReceived, stream_id)
    # Then the body, then the final answer on the same stream.
    [request] = pair.resource.held
    pair.client.send_data(stream_id, b"body", end_stream=True)
    pair.exchange()
    request.write(b"done")
    request.finish()
    pair.exchange()
    [response] = pair.of(h2.events.ResponseReceived, stream_id)
    assert dict(response.headers)[b":status"] == b"200"
    assert pair.of(h2.events.StreamEnded, stream_id)


@pytest.mark.parametrize(
    "path, end, expect",
    [
        (b"/", False, b"100-continue"),  # answered at once: a 100 after it is not HTTP
        (b"/hold", True, b"100-continue"),  # no body follows
        (b"/hold", False, b"something-else"),
    ],
    ids=["answered-at-dispatch", "no-body", "other-expectation"],
)
def test_no_100_continue_when_it_would_be_wrong(path: bytes, end: bool, expect: bytes) -> None:
    pair = Pair()
    stream_id = pair.get(path, end=end, expect=expect)
    assert not pair.of(h2.events.InformationalResponseReceived, stream_id)


def test_no_complete_headers_block_within_client_header_timeout_is_goaway_and_close() -> None:
    pair = Pair(header_timeout=15)
    pair.clock.advance(14)
    pair.site._time_out_idle()
    assert not pair.transport.disconnecting
    pair.clock.advance(1)
    pair.site._time_out_idle()
    pair.exchange()
    assert pair.transport.disconnecting
    [goaway] = pair.of(h2.events.ConnectionTerminated)
    assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert goaway.last_stream_id == 0
    assert pair.server not in pair.site.heading_channels


def test_the_first_request_ends_the_header_deadline() -> None:
    pair = Pair(header_timeout=15)
    pair.clock.advance(10)
    pair.get()
    assert pair.server not in pair.site.heading_channels
    pair.clock.advance(30)
    pair.site._time_out_idle()
    assert not pair.transport.disconnecting  # (the idle timeout, 75 s, applies)


def test_the_data_that_completes_a_content_length_ends_the_stream() -> None:
    """No empty DATA frame after the body: the last DATA carries END_STREAM."""
    pair = Pair()
    pair.transport.clear()
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_headers(
        stream_id,
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"a"),
            (b":path", b"/sized"),
        ],
        end_stream=True,
    )
    pair.server.dataReceived(pair.client.data_to_send())
    frames = [f for f in _frames(pair.transport.value()) if f.stream_id == stream_id]
    assert [type(f).__name__ for f in frames] == ["HeadersFrame", "DataFrame", "DataFrame"]
    assert [f.data for f in frames[1:]] == [b"he", b"llo"]
    assert "END_STREAM" not in frames[1].flags and "END_STREAM" in frames[2].flags
    assert stream_id not in pair.server.streams
    pair.client.receive_data(pair.transport.value())  # (the client takes it as well-formed)


def test_a_completed_body_held_by_the_window_ends_the_stream_once_sent() -> None:
    pair = Pair()
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 3})
    pair.exchange()
    stream_id = pair.get(b"/sized")
    assert not pair.of(h2.events.StreamEnded, stream_id)  # 3 of 5 bytes sent
    pair.client.increment_flow_control_window(10, stream_id=stream_id)
    pair.exchange()
    body = b"".join(e.data for e in pair.of(h2.events.DataReceived, stream_id))
    assert body == b"hello"
    assert pair.of(h2.events.StreamEnded, stream_id)
    assert stream_id not in pair.server.streams


@pytest.mark.parametrize(
    ("method", "status", "length", "body"),
    [
        (b"GET", 200, 5, b"hello"),
        (b"GET", 503, 4, b"busy"),
        (b"GET", 200, 0, b""),
        (b"HEAD", 200, 5, b""),
        (b"GET", 204, None, b""),
        (b"GET", 304, None, b""),
    ],
)
def test_a_head_sent_with_its_body_in_hand_is_the_frames_sent_alone(
    method: bytes, status: int, length: int | None, body: bytes
) -> None:
    """proxy.response over HTTP/2: with the body in hand, HEADERS wait in h2's
    buffer for the DATA (one write); the client gets the same bytes."""
    from idgateway.proxy.response import ProxiedResponse
    from idgateway.proxy.upstream import Exchange

    class _Runtime:
        hsts_header = None

        class route:  # noqa: N801 - a stand-in for the route record
            name = "app1"

    written = []
    for in_hand in (True, False):
        pair = Pair()
        stream_id = pair.client.get_next_available_stream_id()
        pair.client.send_headers(
            stream_id,
            [
                (b":method", method),
                (b":scheme", b"https"),
                (b":authority", b"a"),
                (b":path", b"/hold"),
            ],
            end_stream=True,
        )
        pair.exchange()
        [request] = pair.resource.held
        sink = ProxiedResponse(request, _Runtime(), tls=False)  # type: ignore[arg-type]
        exchange = Exchange(b"", sink, is_head=method == b"HEAD")
        exchange.body_in_hand = in_hand
        sink.exchange = exchange
        writes = len(pair.transport.io.getvalue())
        sink.response_head(status, b"", (), length)
        if in_hand and body:
            assert pair.transport.io.getvalue()[writes:] == b"", "HEADERS wait for the DATA"
        if body:
            sink.response_data(body)
        sink.response_end()
        written.append(pair.transport.value())
        pair.exchange()
        [response] = pair.of(h2.events.ResponseReceived, stream_id)
        assert dict(response.headers)[b":status"] == b"%d" % status
        assert b"".join(e.data for e in pair.of(h2.events.DataReceived, stream_id)) == body
        assert pair.of(h2.events.StreamEnded, stream_id)
    assert written[0] == written[1]
