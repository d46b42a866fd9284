"""The pooled HTTP/1.1 upstream client, driven in memory."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from idgateway.proxy.upstream import (
    FAIL_CONNECT,
    FAIL_PROTOCOL,
    FAIL_RESET,
    FAIL_TIMEOUT,
    Exchange,
    ResponseHead,
    UpstreamPool,
    parse_response_head,
)


class FakeEndpoint:
    def __init__(self, refuse: bool = False) -> None:
        self.transports: list[StringTransport] = []
        self.protocols: list[Any] = []
        self.refuse = refuse

    def connect(self, factory):
        if self.refuse:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return succeed(protocol)


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.body = b""

    def response_head(self, status, reason, headers, length):
        self.events.append(("head", status, reason, headers, length))

    def response_data(self, data):
        self.body += data

    def response_end(self):
        self.events.append(("end",))

    def response_failed(self, why, detail):
        self.events.append(("failed", why))

    def upgraded(self, connection, leftover):
        self.events.append(("upgraded", leftover))


def make(size=2, refuse=False):
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint(refuse)
    return UpstreamPool(endpoint, clock, size=size), endpoint, clock  # type: ignore[arg-type]


def send(pool, head=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", **kw):
    sink = Sink()
    exchange = Exchange(head, sink, **kw)
    pool.submit(exchange)
    return sink, exchange


def test_content_length_response_and_connection_reuse():
    pool, endpoint, _ = make()
    sink, _ = send(pool)
    assert endpoint.transports[0].value().startswith(b"GET / HTTP/1.1")
    endpoint.protocols[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhel")
    endpoint.protocols[0].dataReceived(b"lo")
    assert sink.body == b"hello"
    assert sink.events[0][:3] == ("head", 200, b"OK")
    assert sink.events[0][4] == 5
    assert sink.events[-1] == ("end",)
    sink2, _ = send(pool)
    assert len(endpoint.transports) == 1, "the idle connection is reused"
    endpoint.protocols[0].dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert sink2.events[-1] == ("end",)


def test_chunked_response_is_decoded_across_reads():
    pool, endpoint, _ = make()
    sink, _ = send(pool)
    proto = endpoint.protocols[0]
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    for i in range(len(raw)):
        proto.dataReceived(raw[i : i + 1])
    assert sink.body == b"hello world"
    assert sink.events[-1] == ("end",)
    assert pool._idle == [proto]


def test_close_delimited_body_ends_at_close_and_is_not_reused():
    pool, endpoint, _ = make()
    sink, _ = send(pool)
    proto = endpoint.protocols[0]
    proto.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nsome body")
    proto.connectionLost(Failure(ConnectionDone()))
    assert sink.body == b"some body"
    assert sink.events[-1] == ("end",)
    assert pool.open_connections == 0


def test_head_response_has_no_body_and_interim_responses_are_skipped():
    pool, endpoint, _ = make()
    sink, _ = send(pool, is_head=True)
    endpoint.protocols[0].dataReceived(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    )
    assert [e[0] for e in sink.events] == ["head", "end"]
    assert sink.events[0][1] == 200


def test_connection_close_is_honoured():
    pool, endpoint, _ = make()
    sink, _ = send(pool)
    endpoint.protocols[0].dataReceived(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    assert sink.events[-1] == ("end",)
    assert endpoint.transports[0].disconnecting
    send(pool)
    assert len(endpoint.transports) == 2


def test_pool_limit_queues_requests_until_a_connection_frees():
    pool, endpoint, _ = make(size=1)
    first, _ = send(pool)
    second, _ = send(pool)
    assert len(endpoint.transports) == 1
    endpoint.protocols[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    assert first.body == b"a"
    endpoint.protocols[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    assert second.body == b"b"


def test_response_timeout():
    pool, endpoint, clock = make()
    sink, _ = send(pool, response_timeout=5)
    clock.advance(4.9)
    assert sink.events == []
    clock.advance(0.2)
    assert sink.events == [("failed", FAIL_TIMEOUT)]


def test_connect_failure_is_reported():
    pool, _, _ = make(refuse=True)
    sink, _ = send(pool)
    assert sink.events == [("failed", FAIL_CONNECT)]


def test_malformed_status_line_is_a_protocol_failure():
    pool, endpoint, _ = make()
    sink, _ = send(pool)
    endpoint.protocols[0].dataReceived(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert sink.events == [("failed", FAIL_PROTOCOL)]


def test_conflicting_content_lengths_are_refused():
    pool, endpoint, _ = make()
    sink, _ = send(pool)
    endpoint.protocols[0].dataReceived(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
    )
    assert sink.events == [("failed", FAIL_PROTOCOL)]


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", id="obsolete-line-fold"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\nSet-Cookie: x=1\r\n\r\n", id="bare-LF"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\rSet-Cookie: x=1\r\n\r\n", id="bare-CR"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n", id="NUL"),
        pytest.param(b"HTTP/1.1 200 O\nK\r\nX-A: 1\r\n\r\n", id="LF-in-reason"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n", id="space-in-name"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n", id="space-before-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-(A): 1\r\n\r\n", id="name-not-a-token"),
    ],
)
def test_a_head_that_cannot_be_written_back_verbatim_is_refused(head: bytes) -> None:
    # The proxy writes the upstream's header lines back to the client as they
    # came: a line break or NUL inside one would split the client's response.
    pool, endpoint, _ = make()
    sink, _ = send(pool)
    endpoint.protocols[0].dataReceived(head)
    assert sink.events == [("failed", FAIL_PROTOCOL)]


def test_drop_mid_response_is_a_reset():
    pool, endpoint, _ = make()
    sink, _ = send(pool)
    proto = endpoint.protocols[0]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    proto.connectionLost(Failure(ConnectionDone()))
    assert sink.events[-1] == ("failed", FAIL_RESET)


def test_stale_reused_connection_is_retried_once_for_bodiless_requests():
    pool, endpoint, _ = make()
    send(pool)
    endpoint.protocols[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    sink, _ = send(pool)
    endpoint.protocols[0].connectionLost(Failure(ConnectionDone()))
    assert len(endpoint.transports) == 2
    endpoint.protocols[1].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert sink.body == b"ok"


def test_cancel_abandons_the_connection():
    pool, endpoint, _ = make()
    sink, exchange = send(pool)
    exchange.cancel()
    assert endpoint.transports[0].disconnecting or endpoint.transports[0].disconnected
    endpoint.protocols[0].connectionLost(Failure(ConnectionDone()))
    assert sink.events == []
    assert pool.open_connections == 0


def test_upgrade_hands_over_the_connection():
    pool, endpoint, _ = make()
    sink, _ = send(pool, upgrade=True)
    endpoint.protocols[0].dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nxx"
    )
    assert sink.events[-1] == ("upgraded", b"xx")
    assert pool.open_connections == 0


def test_connection_paused_by_a_full_client_is_resumed_before_reuse():
    pool, endpoint, _ = make()
    sink, _ = send(pool)
    proto, transport = endpoint.protocols[0], endpoint.transports[0]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    proto.pause_reading()  # the client's socket filled up
    assert transport.producerState == "paused"
    proto.dataReceived(b"cd")  # already in flight when the pause came
    assert sink.events[-1] == ("end",)
    assert transport.producerState == "producing"
    assert pool._idle == [proto]


def test_fresh_connection_lost_before_any_byte_is_a_connect_failure():
    # What a failed TLS handshake to an https upstream looks like from here.
    pool, endpoint, _ = make()
    sink, _ = send(pool)
    endpoint.protocols[0].connectionLost(Failure(ConnectionDone()))
    assert sink.events == [("failed", FAIL_CONNECT)]


def test_parse_response_head_reads_framing_and_connection_fate() -> None:
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 20\r\nX-A:  spaced \t"
    )
    assert head == ResponseHead(
        200,
        b"OK",
        ((b"Server", b"nginx"), (b"Content-Length", b"20"), (b"X-A", b"spaced")),
        20,
        False,
        False,
    )
    chunked = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked")
    assert isinstance(chunked, ResponseHead) and chunked.chunked and not chunked.closes
    # Any other transfer coding would reach the client undecoded (the header
    # is hop-by-hop): refused (tests/security/test_framing.py has the rest).
    for coding in (b"gzip, chunked", b"gzip", b"chunked, identity"):
        refused = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding)
        assert refused == "upstream sent a Transfer-Encoding other than chunked", coding
    closes = [
        b"HTTP/1.0 200 OK\r\nContent-Length: 1",
        b"HTTP/1.1 200 OK\r\nConnection: Close",
    ]
    for raw in closes:
        parsed = parse_response_head(raw)
        assert isinstance(parsed, ResponseHead) and parsed.closes, raw
    kept = parse_response_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1")
    assert isinstance(kept, ResponseHead) and not kept.closes
    assert parse_response_head(b"HTTP/1.1 2x OK") == "upstream sent a malformed status line"


def test_the_same_head_is_parsed_once_and_shared() -> None:
    pool, endpoint, _ = make(size=1)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: Mon, 23 Nov 2026 19:00:00 GMT\r\n\r\n"
    seen = []
    for date in (b"19:00:00", b"19:00:00", b"19:00:01"):
        sink, _ = send(pool)
        endpoint.protocols[0].dataReceived(head.replace(b"19:00:00", date) + b"ok")
        [(_, status, _, headers, length), _] = sink.events
        assert (status, length, sink.body) == (200, 2, b"ok")
        seen.append(headers)
    assert seen[0] is seen[1]  # one parse, shared (and immutable: a tuple)
    assert isinstance(seen[0], tuple)
    assert seen[2] is not seen[0] and (b"Date", b"Mon, 23 Nov 2026 19:00:01 GMT") in seen[2]


def test_a_refused_head_is_refused_every_time() -> None:
    bad = b"HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n"
    for _ in range(2):
        pool, endpoint, _ = make()
        sink, _ = send(pool)
        endpoint.protocols[0].dataReceived(bad)
        assert sink.events == [("failed", FAIL_PROTOCOL)]


class WrappingEndpoint(FakeEndpoint):
    """Connects as TCP endpoints do: the transport's protocol is a wrapper."""

    def connect(self, factory):
        from twisted.internet.defer import Deferred
        from twisted.internet.endpoints import _WrappingProtocol

        protocol = factory.buildProtocol(None)
        connected: Deferred[Any] = Deferred()
        wrapper = _WrappingProtocol(connected, protocol)
        transport = StringTransport()
        transport.protocol = wrapper  # type: ignore[attr-defined]
        wrapper.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return connected


def test_reads_reach_the_connection_without_the_endpoints_wrapper():
    clock = MemoryReactorClock()
    endpoint = WrappingEndpoint()
    pool = UpstreamPool(endpoint, clock, size=1)  # type: ignore[arg-type]
    sink, _ = send(pool)
    [transport] = endpoint.transports
    [connection] = endpoint.protocols
    assert transport.protocol is connection  # type: ignore[attr-defined]
    transport.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[attr-defined]
    assert sink.body == b"ok" and sink.events[-1] == ("end",)


@pytest.mark.parametrize(
    ("answer", "is_head", "in_hand"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", False, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True, True),  # HEAD
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", False, False),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            False,
            False,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil close", False, False),
    ],
)
def test_the_sink_is_told_when_the_whole_answer_came_with_its_head(
    answer: bytes, is_head: bool, in_hand: bool
) -> None:
    pool, endpoint, _ = make()
    seen: list[bool] = []
    sink, exchange = send(pool, is_head=is_head)
    sink.response_head = lambda *a: seen.append(exchange.body_in_hand)  # type: ignore[method-assign]
    endpoint.protocols[0].dataReceived(answer)
    assert seen == [in_hand]


@pytest.mark.parametrize(
    ("head", "is_head", "answer"),
    [
        pytest.param(
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
            True,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            id="head-with-length",
        ),
        pytest.param(
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
            True,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            id="head-chunked",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            False,
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n",
            id="304-with-length",
        ),
    ],
)
def test_an_answer_that_announces_a_body_it_cannot_have_is_not_reused(
    head: bytes, is_head: bool, answer: bytes
) -> None:
    # The announced body might still come, a moment later: on a reused
    # connection it would be read as the next client's response.
    pool, endpoint, _ = make(size=1)
    sink, _ = send(pool, head, is_head=is_head)
    queued, _ = send(pool)  # waits for the one connection
    endpoint.protocols[0].dataReceived(answer)
    assert [e[0] for e in sink.events] == ["head", "end"]
    assert endpoint.transports[0].disconnecting
    # A stray answer that comes before the close is not anyone's.
    endpoint.protocols[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
    endpoint.protocols[0].connectionLost(Failure(ConnectionDone()))
    assert len(endpoint.transports) == 2, "the queued request gets a fresh connection"
    assert queued.events == []
    endpoint.protocols[1].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine")
    assert queued.body == b"mine"


def test_a_head_answer_without_a_length_keeps_its_connection() -> None:
    pool, endpoint, _ = make()
    sink, _ = send(pool, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", is_head=True)
    endpoint.protocols[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert sink.events[-1] == ("end",)
    assert pool._idle == [endpoint.protocols[0]]


def _answer_then_close_on_reuse(method: bytes) -> tuple[Any, Any]:
    pool, endpoint, _ = make(size=1)
    first, _ = send(pool)
    endpoint.protocols[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert first.events[-1] == ("end",)
    sink, _ = send(pool, method + b" /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert len(endpoint.transports) == 1  # the reused connection...
    endpoint.protocols[0].connectionLost(Failure(ConnectionDone()))  # ...closes unanswered
    return sink, endpoint


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])
def test_an_idempotent_request_is_sent_again_when_a_reused_connection_closes(
    method: bytes,
) -> None:
    sink, endpoint = _answer_then_close_on_reuse(method)
    assert len(endpoint.transports) == 2
    assert endpoint.transports[1].value().startswith(method + b" /x ")
    assert sink.events == []


@pytest.mark.parametrize("method", [b"POST", b"PATCH", b"LOCK", b"PROPFIND"])
def test_a_request_that_is_not_idempotent_is_never_sent_twice(method: bytes) -> None:
    sink, endpoint = _answer_then_close_on_reuse(method)
    assert len(endpoint.transports) == 1
    assert [e[0] for e in sink.events] == ["failed"]


class _CancellingSink(Sink):
    """A client that goes away while the body is handed over."""

    exchange: Exchange | None = None

    def response_data(self, data):
        super().response_data(data)
        assert self.exchange is not None
        self.exchange.cancel()


@pytest.mark.parametrize(
    ("answer", "cancel_on_data"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", False, id="exact"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n"
            b"Content-Length: 4\r\n\r\nevil",
            False,
            id="a-second-response-smuggled-after-the-body",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, id="empty"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nx", False, id="empty-plus-bytes"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            False,
            id="upstream-closes",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", True, id="client-gone-mid-body"
        ),
    ],
)
def test_an_answer_in_one_read_ends_as_it_would_read_in_pieces(answer, cancel_on_data):
    """The whole answer with its head (completed at once) against the same
    bytes split after the head (the state machine's way): the same body, end,
    reuse and discard reason."""

    def run(pieces: list[bytes]) -> tuple[Any, ...]:
        discards: list[str] = []
        clock = MemoryReactorClock()
        endpoint = FakeEndpoint()
        pool = UpstreamPool(endpoint, clock, size=2, on_discard=discards.append)  # type: ignore[arg-type]
        sink = _CancellingSink() if cancel_on_data else Sink()
        exchange = Exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", sink)
        sink.exchange = exchange  # type: ignore[attr-defined]
        pool.submit(exchange)
        connection = endpoint.protocols[0]
        for piece in pieces:
            connection.dataReceived(piece)
        return (
            sink.body,
            [event[0] for event in sink.events],
            discards,
            len(pool._idle),
            connection.closed,
            connection.deadline,
        )

    end = answer.index(b"\r\n\r\n") + 4
    whole = run([answer])
    if b"Content-Length: 0" not in answer:
        # (After an empty body, a later read finds the connection idle: a
        # different reason for the same discard.)
        assert whole == run([answer[:end], answer[end:]])
    body, events, discards, idle, closed, deadline = whole
    assert deadline == 0.0, "no deadline left armed"
    if cancel_on_data:
        assert events == ["head"] and closed and not idle
    elif b"evil" in answer or answer.endswith(b"\r\n\r\nx"):
        assert b"evil" not in body and discards == ["bytes_after_content_length"]
        assert closed and not idle, "a connection with stray bytes is never reused"
    elif b"close" in answer:
        assert closed and not idle
    else:
        assert events == ["head", "end"] and idle == 1 and not closed


@pytest.mark.parametrize(
    ("body", "chunked_body", "is_head", "upgrade", "response_timeout", "idle_timeout"),
    [
        (None, False, False, False, 60.0, 300.0),
        (object(), True, False, False, 5.0, 7.0),
        (object(), False, True, False, 0.5, 1.0),
        (None, False, False, True, 60.0, 300.0),
    ],
)
def test_new_exchange_is_the_exchange_its_constructor_makes(
    body, chunked_body, is_head, upgrade, response_timeout, idle_timeout
):
    from idgateway.proxy.upstream import new_exchange

    sink = object()
    made = Exchange(
        b"GET / HTTP/1.1\r\n\r\n",
        sink,  # type: ignore[arg-type]
        body=body,
        chunked_body=chunked_body,
        is_head=is_head,
        upgrade=upgrade,
        response_timeout=response_timeout,
        idle_timeout=idle_timeout,
    )
    quick = new_exchange(
        b"GET / HTTP/1.1\r\n\r\n",
        sink,  # type: ignore[arg-type]
        body,
        chunked_body,
        is_head,
        upgrade,
        response_timeout,
        idle_timeout,
    )
    assert type(quick) is Exchange
    for name in Exchange.__slots__:
        assert getattr(quick, name) == getattr(made, name), name
