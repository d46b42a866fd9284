"""The end of a request (``idgateway._twisted.http_request.finish_request``).

A usual response ends in one frame instead of twisted.web's five; whatever
it ends, the client, the channel and the request must be left exactly as
the stock methods leave them: every case here runs both ways.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from idgateway._twisted import http_request
from idgateway.server.channel import GatewayRequest, GatewaySite
from tests.unit.test_request_head import CASES, _serve


@pytest.mark.parametrize("reads", list(CASES.values()), ids=list(CASES))
def test_each_framing_case_ends_as_the_stock_methods_end_it(
    reads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    one_go = _serve(reads, fast=True)
    monkeypatch.setattr(http_request, "FINISH_IN_ONE_GO", False)
    stock = _serve(reads, fast=True)
    assert one_go[:3] == stock[:3]
    assert stock[1].startswith(b"HTTP/1.")


class _Answer(Resource):
    """Answers each request as its path says, and keeps the requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[GatewayRequest] = []
        self.finished: list[Any] = []

    def render(self, request: GatewayRequest) -> Any:  # type: ignore[override]
        self.requests.append(request)
        request.notifyFinish().addBoth(self.finished.append)
        if request.path == b"/chunked":
            request.write(b"no length: chunked")  # (no Content-Length)
        elif request.path == b"/empty":
            request.responseHeaders.setRawHeaders(b"content-length", [b"0"])
        elif request.path == b"/producer":
            request.responseHeaders.setRawHeaders(b"content-length", [b"2"])
            request.registerProducer(_Producer(), True)
            request.write(b"ok")
            request.unregisterProducer()
        else:
            request.responseHeaders.setRawHeaders(b"content-length", [b"2"])
            request.write(b"ok")
        if request.path == b"/later":
            return NOT_DONE_YET
        request.finish()
        return NOT_DONE_YET


class _Producer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _run(reads: list[bytes], finish_later: bool = False) -> dict[str, Any]:
    """Serve ``reads`` on a channel with an idle timeout; what is left after."""
    reactor = MemoryReactorClock()
    resource = _Answer()
    site = GatewaySite(resource, reactor=reactor, timeout=30)
    logged: list[bytes] = []
    site.log = lambda request: logged.append(request.path)  # type: ignore[method-assign]
    channel: Any = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.9", 4000))
    channel.makeConnection(transport)
    for data in reads:
        channel.dataReceived(data)
    if finish_later:
        for request in resource.requests:
            if not request.finished:
                request.finish()
    request = resource.requests[0]
    return {
        "output": transport.value().replace(
            transport.value().partition(b"Date: ")[2].partition(b"\r\n")[0], b""
        ),
        "closing": transport.disconnecting,
        "logged": logged,
        "notified": resource.finished,
        "requests left": len(channel.requests),
        "handling": channel._handlingRequest,
        "line mode": channel.line_mode,
        "buffered": list(channel._dataBuffer),
        "idle period": channel._idle_period,
        "watched idle": channel in site.idle_channels,
        "request attributes": sorted(vars(request)),
        "request finished": request.finished,
        "request content": request.content,
    }


GET = b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n"
RUNS = {
    "plain": ([GET % b"a"], False),
    "empty-body": ([GET % b"empty"], False),
    "pipelined": ([GET % b"a" + GET % b"b" + GET % b"c"], False),
    "pipelined-finished-later": ([GET % b"later" + GET % b"b"], True),
    "finished-later-then-more": ([GET % b"later", GET % b"b"], True),
    "chunked-response": ([GET % b"chunked"], False),
    "connection-close": ([b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n"], False),
    "http-1.0": ([b"GET /a HTTP/1.0\r\n\r\n"], False),
    "producer-registered-and-gone": ([GET % b"producer"], False),
    "post-body": ([b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" + GET % b"b"], False),
}


@pytest.mark.parametrize(("reads", "later"), list(RUNS.values()), ids=list(RUNS))
def test_the_channel_and_request_are_left_as_the_stock_methods_leave_them(
    reads: list[bytes], later: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_go = _run(reads, later)
    monkeypatch.setattr(http_request, "FINISH_IN_ONE_GO", False)
    stock = _run(reads, later)
    assert one_go == stock
    assert stock["logged"] and stock["notified"] == [None] * len(stock["logged"])


def _functions_called(reads: list[bytes]) -> set[str]:
    called: set[str] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            called.add(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        _run(reads)
    finally:
        sys.setprofile(None)
    return called


STOCK_END = {"requestDone", "_cleanup", "setLineMode"}


def test_a_usual_response_ends_in_one_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _functions_called([GET % b"a"]) & STOCK_END
    monkeypatch.setattr(http_request, "FINISH_IN_ONE_GO", False)
    assert _functions_called([GET % b"a"]) >= STOCK_END


def test_the_one_go_finish_is_checked_against_the_stock_methods_code() -> None:
    assert http_request.FINISH_IN_ONE_GO
    for method, names in http_request._STOCK_FINISH.items():
        assert http_request._names(method) == names
    assert http_request._names(None) is None


def test_finishing_twice_or_after_the_connection_is_lost_answers_as_stock() -> None:
    reactor = MemoryReactorClock()
    resource = _Answer()
    site = GatewaySite(resource, reactor=reactor)
    site.log = lambda request: None  # type: ignore[method-assign]
    channel: Any = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(StringTransport())
    channel.dataReceived(GET % b"later")
    request = resource.requests[0]
    request.finish()
    with pytest.warns(UserWarning, match="finish called twice"):
        request.finish()
    channel.dataReceived(GET % b"later")
    second = resource.requests[1]
    second.connectionLost(Exception("gone"))
    with pytest.raises(RuntimeError, match="connection was lost"):
        second.finish()


def test_a_request_on_another_channel_class_takes_the_stock_path() -> None:
    class OtherChannel(http.HTTPChannel):
        def requestDone(self, request: Any) -> None:  # noqa: N802 - twisted.web's name
            super().requestDone(request)

    assert not http_request._plain_class(OtherChannel)
    assert http_request._plain_class(http.HTTPChannel)
    assert http_request._plain_class(GatewayRequest)


def test_a_channel_class_that_is_not_plain_is_learnt_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTP/2 stream's requests end the stock way: whether its class is
    plain is worked out once, not again on each request."""
    from tests.unit.test_h2_connection import Pair

    learnt: list[type] = []
    plain_class = http_request._plain_class

    def counting(kind: type) -> bool:
        learnt.append(kind)
        return plain_class(kind)

    monkeypatch.setattr(http_request, "_PLAIN_CLASSES", {})
    monkeypatch.setattr(http_request, "_plain_class", counting)
    pair = Pair()
    for _ in range(3):
        stream_id = pair.client.get_next_available_stream_id()
        pair.client.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")],
            end_stream=True,
        )
        pair.exchange()
    stream_classes = [kind for kind in learnt if not issubclass(kind, http.Request)]
    assert len(stream_classes) == 1, learnt
    assert http_request._PLAIN_CLASSES[stream_classes[0]] is False
