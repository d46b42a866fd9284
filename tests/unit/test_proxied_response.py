"""An upstream's response as the client gets it: ProxiedResponse writes the head itself."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from idgateway.proxy.response import ProxiedResponse, forwarded_header_lines
from tests.unit.held_requests import ResponseRuntime, held_request


def _proxied(
    raw: bytes, *, tls: bool = False, hsts: bytes | None = None, set_cookies: tuple[bytes, ...] = ()
) -> tuple[ProxiedResponse, StringTransport]:
    request, transport = held_request(raw)
    sink = ProxiedResponse(request, ResponseRuntime(hsts), tls=tls, set_cookies=list(set_cookies))  # type: ignore[arg-type]
    return sink, transport


GET = b"GET / HTTP/1.1\r\nHost: app1\r\n\r\n"


def test_the_upstream_head_goes_out_as_it_came_minus_hop_by_hop_headers() -> None:
    sink, transport = _proxied(GET)
    sink.response_head(
        200,
        b"OK",
        [
            (b"x-app", b"1"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"gone"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ],
        5,
    )
    sink.response_data(b"hello")
    sink.response_end()
    # No Content-Type is made up for the application (twisted.web's default
    # would have said text/html), and the connection stays open.
    assert transport.value() == (
        b"HTTP/1.1 200 OK\r\nx-app: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    assert not transport.disconnecting


def test_a_response_without_a_length_is_chunked_for_http_1_1() -> None:
    sink, transport = _proxied(GET)
    sink.response_head(200, b"", [(b"Content-Type", b"text/plain")], None)
    sink.response_data(b"hello")
    sink.response_data(b" world")
    sink.response_end()
    assert transport.value() == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert not transport.disconnecting


def test_an_http_1_0_client_gets_the_body_until_close() -> None:
    sink, transport = _proxied(b"GET / HTTP/1.0\r\nHost: app1\r\n\r\n")
    sink.response_head(200, b"OK", [], None)
    sink.response_data(b"hello")
    sink.response_end()
    assert transport.value() == b"HTTP/1.0 200 OK\r\n\r\nhello"
    assert transport.disconnecting


def test_over_tls_the_routes_hsts_replaces_the_applications_and_set_cookies_are_added() -> None:
    sink, transport = _proxied(
        GET, tls=True, hsts=b"max-age=63072000", set_cookies=(b"_idgw_app1=new; HttpOnly",)
    )
    sink.response_head(
        200, b"OK", [(b"strict-transport-security", b"max-age=0"), (b"Set-Cookie", b"app=1")], 0
    )
    sink.response_end()
    assert transport.value() == (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: app=1\r\nContent-Length: 0\r\n"
        b"Strict-Transport-Security: max-age=63072000\r\n"
        b"Set-Cookie: _idgw_app1=new; HttpOnly\r\n\r\n"
    )


def test_head_and_no_content_answers_have_no_body_and_keep_the_connection() -> None:
    sink, transport = _proxied(b"HEAD / HTTP/1.1\r\nHost: app1\r\n\r\n")
    sink.response_head(200, b"OK", [(b"ETag", b'"x"')], 10)
    sink.response_end()
    assert transport.value() == b'HTTP/1.1 200 OK\r\nETag: "x"\r\nContent-Length: 10\r\n\r\n'
    assert not transport.disconnecting

    sink, transport = _proxied(GET)
    sink.response_head(204, b"No Content", [], None)
    sink.response_end()
    assert transport.value() == b"HTTP/1.1 204 No Content\r\n\r\n"


def test_a_client_asking_to_close_hears_connection_close() -> None:
    sink, transport = _proxied(b"GET / HTTP/1.1\r\nHost: app1\r\nConnection: close\r\n\r\n")
    sink.response_head(404, b"", [], 2)
    sink.response_data(b"no")
    sink.response_end()
    assert transport.value() == (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
    )
    assert transport.disconnecting


def test_an_answer_before_the_request_body_ends_closes_the_connection() -> None:
    sink, transport = _proxied(b"POST / HTTP/1.1\r\nHost: app1\r\nContent-Length: 100\r\n\r\nabc")
    sink.response_head(413, b"", [], 0)
    sink.response_end()
    assert transport.value() == (
        b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert transport.disconnecting


def test_a_client_gone_before_the_head_gets_nothing() -> None:
    sink, transport = _proxied(GET)
    sink.request.channel.connectionLost(Failure(ConnectionDone()))
    sink.response_head(200, b"OK", [], 5)
    assert transport.value() == b""


def test_forwarded_lines_are_worked_out_once_per_shared_head() -> None:
    shared = ((b"X-App", b"1"), (b"Connection", b"close"), (b"Strict-Transport-Security", b"x"))
    first = forwarded_header_lines(shared, replace_hsts=False)
    assert first == b"X-App: 1\r\nStrict-Transport-Security: x\r\n"
    assert forwarded_header_lines(shared, replace_hsts=False) is first
    assert forwarded_header_lines(shared, replace_hsts=True) == b"X-App: 1\r\n"
    # A list may change between calls: it is never taken from the memo.
    changing = [(b"X-App", b"1")]
    assert forwarded_header_lines(changing, replace_hsts=False) == b"X-App: 1\r\n"
    changing[0] = (b"X-App", b"2")
    assert forwarded_header_lines(changing, replace_hsts=False) == b"X-App: 2\r\n"


def test_a_finished_response_leaves_no_cycle_for_the_garbage_collector() -> None:
    """Request, response and exchange point at each other while in flight; once
    the answer is out, reference counting alone must free them (the cyclic
    collector had been running every few requests to do it)."""
    import gc
    import weakref

    from idgateway.proxy.upstream import Exchange

    request, _ = held_request(GET)
    # Wired as GatewayResource.forward wires them.
    sink = ProxiedResponse(request, ResponseRuntime(), tls=False)  # type: ignore[arg-type]
    exchange = Exchange(b"GET / HTTP/1.1\r\n\r\n", sink)
    sink.exchange = exchange
    request.on_disconnect = exchange.cancel
    request.on_body_exceeded = sink.body_too_large
    sink.response_head(200, b"OK", [], 2)
    sink.response_data(b"hi")
    sink.response_end()
    assert request.finished
    alive = weakref.ref(request)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del request, sink, exchange
        assert alive() is None
    finally:
        if was_enabled:
            gc.enable()


def _exchange_for(sink: ProxiedResponse, *, in_hand: bool) -> Any:
    from idgateway.proxy.upstream import Exchange

    exchange = Exchange(b"GET / HTTP/1.1\r\n\r\n", sink)
    exchange.body_in_hand = in_hand
    sink.exchange = exchange
    return exchange


def test_an_answer_whole_in_hand_is_written_without_taking_part_in_flow_control() -> None:
    sink, transport = _proxied(GET)
    _exchange_for(sink, in_hand=True)
    sink.response_head(200, b"OK", (), 5)
    assert sink.request.producer is None
    sink.response_data(b"hello")
    sink.response_end()
    assert transport.value().endswith(b"\r\n\r\nhello")
    assert sink.request.finished and sink.request.sentLength == 5


def test_an_answer_still_arriving_paces_the_upstream_by_the_client() -> None:
    sink, transport = _proxied(GET)
    exchange = _exchange_for(sink, in_hand=False)
    paused: list[str] = []

    class _Connection:
        def pause_reading(self) -> None:
            paused.append("pause")

        def resume_reading(self) -> None:
            paused.append("resume")

    exchange.connection = _Connection()
    sink.response_head(200, b"OK", (), 10)
    assert sink.request.producer is sink
    transport.producer.pauseProducing()  # the client's socket is full
    transport.producer.resumeProducing()
    assert paused == ["pause", "resume"]
    sink.response_data(b"hello")
    sink.response_data(b"world")
    sink.response_end()
    assert sink.request.producer is None
    assert transport.value().endswith(b"\r\n\r\nhelloworld")
    assert sink.request.sentLength == 10


def test_body_data_after_the_client_left_is_dropped() -> None:
    sink, transport = _proxied(GET)
    _exchange_for(sink, in_hand=False)
    sink.response_head(200, b"OK", (), 10)
    written = transport.value()
    sink.request.connectionLost(Failure(ConnectionDone()))
    sink.response_data(b"hello")
    assert transport.value() == written


@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("set_cookies", [[], [b"a=1; Path=/"]])
def test_new_proxied_response_is_the_one_its_constructor_makes(tls, set_cookies):
    from idgateway.proxy.response import new_proxied_response

    request, runtime = object(), object()
    made = ProxiedResponse(request, runtime, tls=tls, set_cookies=set_cookies)  # type: ignore[arg-type]
    quick = new_proxied_response(request, runtime, tls, set_cookies)  # type: ignore[arg-type]
    assert type(quick) is ProxiedResponse
    assert vars(quick) == vars(made)
    assert list(vars(quick)) == list(vars(made)), "the same names, set in the same order"


# (request, status, length, body pieces, set-cookies, HSTS over TLS)
_IN_HAND_CASES = {
    "body": (GET, 200, 5, [b"hello"], (), None),
    "body-set-cookie-hsts": (GET, 200, 5, [b"hello"], (b"a=1",), b"max-age=60"),
    "client-asks-close": (
        b"GET / HTTP/1.1\r\nHost: app1\r\nConnection: close\r\n\r\n",
        200,
        2,
        [b"ok"],
        (),
        None,
    ),
    "http-1.0": (b"GET / HTTP/1.0\r\nHost: app1\r\n\r\n", 200, 2, [b"ok"], (), None),
    "empty-body": (GET, 200, 0, [], (), None),
    "head-with-length": (b"HEAD / HTTP/1.1\r\nHost: app1\r\n\r\n", 200, 5, [], (), None),
    "no-content": (GET, 204, None, [], (), None),
    "not-modified-with-length": (GET, 304, 5, [], (), None),
    "error-status": (GET, 503, 4, [b"busy"], (), None),
}


@pytest.mark.parametrize("case", list(_IN_HAND_CASES.values()), ids=list(_IN_HAND_CASES))
def test_a_head_sent_with_its_body_in_hand_is_the_head_sent_alone(case: Any) -> None:
    """An answer whole in hand goes out in one write (head and body): the
    client gets the bytes it gets when the body comes in a later read."""
    raw, status, length, pieces, set_cookies, hsts = case
    outcomes = []
    for in_hand in (True, False):
        sink, transport = _proxied(raw, tls=hsts is not None, hsts=hsts, set_cookies=set_cookies)
        exchange = _exchange_for(sink, in_hand=in_hand)
        exchange.is_head = raw.startswith(b"HEAD ")
        sink.response_head(status, b"", (), length)
        for piece in pieces:
            sink.response_data(piece)
        sink.response_end()
        request = sink.request
        assert sink._head_pending is None
        outcomes.append(
            (transport.value(), request.sentLength, request.finished, transport.disconnecting)
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0].startswith(b"HTTP/1.")


def test_a_body_in_hand_for_a_client_gone_writes_nothing_more() -> None:
    sink, transport = _proxied(GET)
    _exchange_for(sink, in_hand=True)
    sink.response_head(200, b"OK", (), 5)
    written = transport.value()
    sink.request.connectionLost(Failure(ConnectionDone()))
    sink.response_data(b"hello")
    sink.response_end()
    assert transport.value() == written
    assert sink._head_pending is None


def test_a_kept_head_goes_out_if_the_body_does_not_come_with_it() -> None:
    """(Not what the upstream does: a defence) response_end without the
    body sends the head kept for it; a failure instead cuts the client off."""
    sink, transport = _proxied(GET)
    _exchange_for(sink, in_hand=True)
    sink.response_head(200, b"OK", (), 5)
    assert sink._head_pending is not None and transport.value() == b""
    sink.response_end()
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert sink._head_pending is None
