"""Message framing held against h11: where one message ends, both must agree.

A gateway and the server behind it that disagree where a message ends can be
made to read one response as two (response splitting) or one request as two
(request smuggling). The gateway has three framing parsers: the upstream
response parser with its chunked decoder (``idgateway.proxy.upstream``), and the
client request-head parser (``idgateway.server.request_head``, with twisted.web's
line parser as its fallback) with its chunked body decoder
(``idgateway._twisted.chunked``). Each is driven in memory on the same bytes as
h11 (the reference), and the outcomes compared:

- ``same``: both accept, with the same status or request line and the same
  body; and when h11 sees bytes after the message, the gateway does not reuse
  the connection for another response.
- ``both refuse``.
- ``stricter``: the gateway refuses what h11 accepts. Allowed only in this
  direction, and every hand-written case says why (``STRICTER_*`` below).

Never the reverse: the gateway accepting what h11 refuses, or accepting with
another framing. The Hypothesis property at the end checks exactly that on
generated messages built from the same tricky pieces.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from idgateway.http.numbers import parse_decimal, parse_hex
from idgateway.proxy.upstream import Exchange, UpstreamPool
from idgateway.server.channel import GatewaySite
from tests.processes import GatewayProcess, free_port

SAME = "same"
BOTH_REFUSE = "both refuse"
STRICTER = "stricter"

# Why the gateway refuses what h11 accepts, case by case.
STRICTER_BARE_LF = "a bare LF line end: h11 takes it, the gateway wants CRLF"
STRICTER_OBS_FOLD = "an obsolete line fold: h11 unfolds it, the gateway refuses"
STRICTER_CL_LIST = "a Content-Length list of equal values: h11 takes one, the gateway none"
STRICTER_DUP_CL = "two equal Content-Lengths: h11 takes them, twisted.web's request parser not"
STRICTER_CL_AND_TE = "Content-Length with chunked: h11 lets chunked win, the gateway refuses"
STRICTER_HEX_DIGITS = "a chunk size over 16 hex digits: h11 allows 20"
STRICTER_DEC_DIGITS = "a Content-Length of 20 digits: h11 allows 20, the gateway 19"
STRICTER_CHUNK_SPACE = "space after a chunk size: h11 allows it, the gateway not"
STRICTER_EXT_CHARS = "a chunk extension with control characters"
STRICTER_204_BODY = "a 204 announcing a body: h11 ignores it, the gateway refuses to guess"
STRICTER_STATUS = "a status code with a leading zero"
STRICTER_CTL = "a control character in a header value: h11 allows most, the gateway none"
STRICTER_TE_CASE = "a TE header twisted.web reads case-sensitively for requests"


# -- the gateway's upstream response parser ------------------------------------------


class _Endpoint:
    def __init__(self) -> None:
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)


class _Sink:
    def __init__(self) -> None:
        self.status: int | None = None
        self.body = b""
        self.ended = False
        self.failed: str | None = None

    def response_head(self, status: int, reason: bytes, headers: Any, length: Any) -> None:
        self.status = status

    def response_data(self, data: bytes) -> None:
        self.body += data

    def response_end(self) -> None:
        self.ended = True

    def response_failed(self, why: str, detail: str) -> None:
        self.failed = detail

    def upgraded(self, connection: Any, leftover: bytes) -> None:
        self.failed = "upgraded"


def gateway_response(data: bytes, method: bytes, split: bool = False) -> tuple[Any, ...]:
    """("ok", status, body, reused) | ("refuse", why) as the gateway reads it
    (``split``: one byte per read)."""
    discards: list[str] = []
    endpoint = _Endpoint()
    pool = UpstreamPool(endpoint, MemoryReactorClock(), on_discard=discards.append)  # type: ignore[arg-type]
    sink = _Sink()
    pool.submit(
        Exchange(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n", sink, is_head=method == b"HEAD")
    )
    connection = endpoint.protocols[0]
    for piece in [data[i : i + 1] for i in range(len(data))] if split else [data]:
        connection.dataReceived(piece)
    reused = connection.pool_state == "idle" and not connection.closed
    connection.connectionLost(Failure(ConnectionDone()))
    if sink.failed is not None:
        return ("refuse", sink.failed)
    if not sink.ended:
        return ("refuse", "never ended")
    return ("ok", sink.status, sink.body, reused)


def h11_response(data: bytes, method: bytes) -> tuple[Any, ...]:
    """("ok", status, body, trailing bytes) | ("refuse", why) as h11 reads it."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    status, body = None, b""
    try:
        conn.receive_data(data)
        conn.receive_data(b"")
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return ("ok", status, body, bytes(conn.trailing_data[0]))
            elif not isinstance(event, h11.InformationalResponse):
                return ("refuse", repr(event))
    except h11.RemoteProtocolError as error:
        return ("refuse", str(error))


def compare_response(data: bytes, method: bytes = b"GET") -> str:
    ours, reference = gateway_response(data, method), h11_response(data, method)
    if ours[0] == "refuse":
        return BOTH_REFUSE if reference[0] == "refuse" else STRICTER
    assert reference[0] == "ok", f"the gateway accepts what h11 refuses: {ours} vs {reference}"
    assert ours[1:3] == reference[1:3], f"different framing: {ours} vs {reference}"
    if reference[3]:
        assert not ours[3], f"reused after stray bytes {reference[3]!r}"
    return SAME


# -- the gateway's client request parser -----------------------------------------------


class _Recorder(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


def gateway_request(data: bytes, split: bool = False) -> tuple[Any, ...]:
    """("ok", method, target, body) | ("incomplete",) | ("waiting",) | ("refuse", why)
    (``split``: one byte per read, which also leaves the head to twisted.web's
    line reader instead of the one-pass one)."""
    recorder = _Recorder()
    site = GatewaySite(recorder, reactor=MemoryReactorClock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)  # type: ignore[union-attr]
    for piece in [data[i : i + 1] for i in range(len(data))] if split else [data]:
        if transport.disconnecting:
            break  # (a closing TCP transport stops reading)
        channel.dataReceived(piece)  # type: ignore[union-attr]
    written = transport.value()
    if written.startswith(b"HTTP/1.1 4") or transport.disconnecting:
        return ("refuse", written[:40])
    if not recorder.requests:
        return ("waiting",)
    request = recorder.requests[0]
    pipe = request.body
    if pipe is not None and not pipe.complete:
        return ("incomplete",)
    body = b"".join(pipe._pending) if pipe is not None else b""
    return ("ok", request.method, request.uri, body)


def h11_request(data: bytes) -> tuple[Any, ...]:
    conn = h11.Connection(h11.SERVER)
    method = target = None
    body = b""
    try:
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return ("incomplete",)
            if isinstance(event, h11.Request):
                method, target = event.method, event.target
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return ("ok", method, target, body)
            else:
                return ("refuse", repr(event))
    except h11.RemoteProtocolError as error:
        return ("refuse", str(error))


def compare_request(data: bytes) -> str:
    ours, reference = gateway_request(data), h11_request(data)
    if ours[0] == "waiting" and reference[0] == "ok":
        # twisted.web's line reader splits at CRLF only, so h11 (which also
        # ends lines at a bare LF) saw a whole head where the gateway still
        # waits for the line to end. Once it does, the gateway must refuse
        # the line with the LF in it (STRICTER_BARE_LF).
        ours = gateway_request(data + b"\r\n\r\n")
        assert ours[0] == "refuse", f"a bare LF head was accepted: {ours} vs {reference}"
    if ours[0] == "waiting":
        return SAME if reference[0] == "incomplete" else BOTH_REFUSE
    if ours[0] == "refuse":
        return BOTH_REFUSE if reference[0] == "refuse" else STRICTER
    if ours[0] == "incomplete":
        # Still waiting: nothing was framed yet. h11 must not have finished
        # a message the gateway is still reading (or it would frame the rest
        # as the next request while the gateway reads it as this body).
        assert reference[0] != "ok", f"the gateway still reads what h11 ended: {reference}"
        return SAME if reference[0] == "incomplete" else BOTH_REFUSE
    assert reference[0] == "ok", f"the gateway accepts what h11 refuses: {ours} vs {reference}"
    assert ours == reference, f"different framing: {ours} vs {reference}"
    return SAME


# -- hand-written desync vectors -----------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\n"
CHUNKED = OK + b"Transfer-Encoding: chunked\r\n\r\n"

RESPONSE_VECTORS: list[tuple[str, bytes, bytes, str]] = [
    ("plain", OK + b"Content-Length: 5\r\n\r\nhello", b"GET", SAME),
    ("chunked", CHUNKED + b"5\r\nhello\r\n0\r\n\r\n", b"GET", SAME),
    ("until-close", OK + b"\r\nbody to the end", b"GET", SAME),
    ("bytes-after-cl", OK + b"Content-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n\r\n", b"GET", SAME),
    ("bytes-after-last-chunk", CHUNKED + b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", b"GET", SAME),
    ("head-with-body", OK + b"Content-Length: 5\r\n\r\nhello", b"HEAD", SAME),
    ("204-with-body", b"HTTP/1.1 204 No Content\r\n\r\nhello", b"GET", SAME),
    ("304-with-body", b"HTTP/1.1 304 Not Modified\r\n\r\nhello", b"GET", SAME),
    ("204-announcing-body", b"HTTP/1.1 204 No\r\nContent-Length: 5\r\n\r\n", b"GET", SAME),
    (
        "interim-then-final",
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"Content-Length: 0\r\n\r\n",
        b"GET",
        SAME,
    ),
    (
        "cl-and-te",
        OK + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET",
        STRICTER,
    ),
    (
        "te-and-cl",
        OK + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"GET",
        STRICTER,
    ),
    (
        "cl-different-duplicates",
        OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"GET",
        BOTH_REFUSE,
    ),
    (
        "cl-equal-duplicates",
        OK + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"GET",
        SAME,
    ),
    (
        "cl-equal-values-different-text",
        OK + b"Content-Length: 5\r\nContent-Length: 05\r\n\r\nhello",
        b"GET",
        BOTH_REFUSE,
    ),
    ("cl-list", OK + b"Content-Length: 5, 5\r\n\r\nhello", b"GET", STRICTER),  # STRICTER_CL_LIST
    ("cl-list-different", OK + b"Content-Length: 5, 6\r\n\r\nhello!", b"GET", BOTH_REFUSE),
    (
        "te-chunked-identity",
        OK + b"Transfer-Encoding: chunked, identity\r\n\r\nhello",
        b"GET",
        BOTH_REFUSE,
    ),
    (
        "te-gzip-chunked",
        OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"GET",
        BOTH_REFUSE,
    ),
    (
        "te-twice",
        OK + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET",
        BOTH_REFUSE,
    ),
    ("te-identity", OK + b"Transfer-Encoding: identity\r\n\r\nhello", b"GET", BOTH_REFUSE),
    ("te-upper-case", OK + b"Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", b"GET", SAME),
    (
        "te-vertical-tab",
        OK + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
        b"GET",
        BOTH_REFUSE,
    ),
    (
        "obs-fold",
        OK + b"Content-Length: 5\r\nX-A: a\r\n b\r\n\r\nhello",
        b"GET",
        STRICTER,
    ),  # STRICTER_OBS_FOLD
    (
        "obs-fold-te",
        OK + b"X-A: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET",
        STRICTER,
    ),
    (
        "bare-lf-head",
        b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
        b"GET",
        STRICTER,
    ),  # STRICTER_BARE_LF
    ("bare-lf-in-header", OK + b"X-A: a\nContent-Length: 5\r\n\r\nhello", b"GET", STRICTER),
    ("bare-cr", OK + b"X-A: a\rContent-Length: 5\r\n\r\nhello", b"GET", BOTH_REFUSE),
    ("nul-in-value", OK + b"Content-Length: 5\r\nX-A: a\x00b\r\n\r\nhello", b"GET", BOTH_REFUSE),
    (
        "ctl-in-value",
        OK + b"Content-Length: 5\r\nX-A: a\x01b\r\n\r\nhello",
        b"GET",
        STRICTER,
    ),  # STRICTER_CTL
    ("space-before-colon", OK + b"Content-Length : 5\r\n\r\nhello", b"GET", BOTH_REFUSE),
    ("tab-before-colon", OK + b"Content-Length\t: 5\r\n\r\nhello", b"GET", BOTH_REFUSE),
    ("cl-negative", OK + b"Content-Length: -5\r\n\r\nhello", b"GET", BOTH_REFUSE),
    ("cl-plus", OK + b"Content-Length: +5\r\n\r\nhello", b"GET", BOTH_REFUSE),
    ("cl-hex", OK + b"Content-Length: 0x5\r\n\r\nhello", b"GET", BOTH_REFUSE),
    ("cl-underscore", OK + b"Content-Length: 1_0\r\n\r\nhellohello", b"GET", BOTH_REFUSE),
    ("cl-leading-zeros", OK + b"Content-Length: 0005\r\n\r\nhello", b"GET", SAME),
    ("cl-19-digits", OK + b"Content-Length: 0000000000000000005\r\n\r\nhello", b"GET", SAME),
    ("cl-20-digits", OK + b"Content-Length: 00000000000000000005\r\n\r\nhello", b"GET", STRICTER),
    ("cl-5000-digits", OK + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", b"GET", BOTH_REFUSE),
    ("cl-unicode-digit", OK + "Content-Length: \u0665\r\n\r\nhello".encode(), b"GET", BOTH_REFUSE),
    ("cl-empty", OK + b"Content-Length:\r\n\r\n", b"GET", BOTH_REFUSE),
    ("cl-short-body", OK + b"Content-Length: 10\r\n\r\nhello", b"GET", BOTH_REFUSE),
    ("chunk-extension", CHUNKED + b"5;name=value\r\nhello\r\n0\r\n\r\n", b"GET", SAME),
    (
        "chunk-extension-ctl",
        CHUNKED + b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
        b"GET",
        STRICTER,
    ),  # STRICTER_EXT_CHARS
    (
        "chunk-size-space",
        CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n",
        b"GET",
        STRICTER,
    ),  # STRICTER_CHUNK_SPACE
    ("chunk-size-leading-space", CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n", b"GET", BOTH_REFUSE),
    ("chunk-size-0x", CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", b"GET", BOTH_REFUSE),
    ("chunk-size-plus", CHUNKED + b"+5\r\nhello\r\n0\r\n\r\n", b"GET", BOTH_REFUSE),
    ("chunk-size-negative", CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", b"GET", BOTH_REFUSE),
    (
        "chunk-size-underscore",
        CHUNKED + b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
        b"GET",
        BOTH_REFUSE,
    ),
    ("chunk-size-16-digits", CHUNKED + b"0" * 15 + b"5\r\nhello\r\n0\r\n\r\n", b"GET", SAME),
    (
        "chunk-size-17-digits",
        CHUNKED + b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n",
        b"GET",
        STRICTER,
    ),  # STRICTER_HEX_DIGITS
    ("chunk-size-huge", CHUNKED + b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n", b"GET", BOTH_REFUSE),
    ("chunk-size-too-small", CHUNKED + b"3\r\nhello\r\n0\r\n\r\n", b"GET", BOTH_REFUSE),
    ("chunk-missing-crlf", CHUNKED + b"5\r\nhello0\r\n\r\n", b"GET", BOTH_REFUSE),
    ("chunk-bare-lf", CHUNKED + b"5\nhello\n0\n\n", b"GET", BOTH_REFUSE),
    ("chunk-no-last", CHUNKED + b"5\r\nhello\r\n", b"GET", BOTH_REFUSE),
    ("trailers", CHUNKED + b"0\r\nX-T: 1\r\n\r\n", b"GET", SAME),
    ("trailers-too-many", CHUNKED + b"0\r\n" + b"X-T: 1\r\n" * 10000 + b"\r\n", b"GET", STRICTER),
    ("trailer-malformed", CHUNKED + b"0\r\nnot a header\r\n\r\n", b"GET", BOTH_REFUSE),
    ("status-two-digits", b"HTTP/1.1 20 OK\r\n\r\n", b"GET", BOTH_REFUSE),
    ("status-plus", b"HTTP/1.1 +204 OK\r\n\r\nhello", b"GET", BOTH_REFUSE),
    ("status-leading-zero", b"HTTP/1.1 0204 OK\r\n\r\n", b"GET", BOTH_REFUSE),
    ("status-no-reason", b"HTTP/1.1 204\r\n\r\n", b"GET", SAME),
    ("version-junk", b"HTTP/1.1x 200 OK\r\nContent-Length: 0\r\n\r\n", b"GET", BOTH_REFUSE),
    ("version-2", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", b"GET", STRICTER),
    (
        "unasked-101",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        b"GET",
        BOTH_REFUSE,
    ),
    ("leading-crlf", b"\r\n" + OK + b"Content-Length: 0\r\n\r\n", b"GET", BOTH_REFUSE),
]


@pytest.mark.parametrize(
    ("data", "method", "expected"),
    [
        pytest.param(data, method, expected, id=name)
        for name, data, method, expected in RESPONSE_VECTORS
    ],
)
def test_upstream_response_framing_matches_h11(data: bytes, method: bytes, expected: str) -> None:
    assert compare_response(data, method) == expected


@pytest.mark.parametrize(
    ("data", "method"),
    [pytest.param(data, method, id=name) for name, data, method, _ in RESPONSE_VECTORS],
)
def test_upstream_response_framing_does_not_depend_on_reads(data: bytes, method: bytes) -> None:
    # One byte per read: a chunk size or a Content-Length split between
    # reads, stray bytes arriving once the connection is idle in the pool.
    whole, split = gateway_response(data, method), gateway_response(data, method, split=True)
    assert whole[0] == split[0] and whole[1:3] == split[1:3], (whole, split)
    if whole[0] == "ok":
        assert split[3] is whole[3] or not split[3], (whole, split)


def test_no_reuse_after_stray_bytes() -> None:
    # The property compare_response checks, spelled out: a response followed
    # by anything never leaves its connection in the pool.
    for data, method in [
        (OK + b"Content-Length: 5\r\n\r\nhelloX", b"GET"),
        (OK + b"Content-Length: 5\r\n\r\nhello", b"HEAD"),
        (b"HTTP/1.1 204 No Content\r\n\r\nX", b"GET"),
        (b"HTTP/1.1 304 Not Modified\r\n\r\nX", b"GET"),
        (CHUNKED + b"0\r\n\r\nX", b"GET"),
        (OK + b"Content-Length: 0\r\n\r\nX", b"GET"),
    ]:
        outcome = gateway_response(data, method)
        assert outcome[0] == "ok" and outcome[3] is False, (data, method)
    assert gateway_response(OK + b"Content-Length: 5\r\n\r\nhello", b"GET")[3] is True


REQUEST = b"POST / HTTP/1.1\r\nHost: x\r\n"
REQ_CHUNKED = REQUEST + b"Transfer-Encoding: chunked\r\n\r\n"

REQUEST_VECTORS: list[tuple[str, bytes, str]] = [
    ("get", b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n", SAME),
    ("post-cl", REQUEST + b"Content-Length: 5\r\n\r\nhello", SAME),
    ("post-chunked", REQ_CHUNKED + b"5\r\nhello\r\n0\r\n\r\n", SAME),
    (
        "cl-and-te",
        REQUEST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        STRICTER,
    ),
    (
        "te-and-cl",
        REQUEST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        STRICTER,
    ),
    (
        "cl-different-duplicates",
        REQUEST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        BOTH_REFUSE,
    ),
    (
        "cl-equal-duplicates",
        REQUEST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        STRICTER,
    ),
    ("cl-list", REQUEST + b"Content-Length: 5, 5\r\n\r\nhello", STRICTER),  # STRICTER_CL_LIST
    (
        "te-chunked-identity",
        REQUEST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        BOTH_REFUSE,
    ),
    (
        "te-identity-chunked",
        REQUEST + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        BOTH_REFUSE,
    ),
    ("te-identity", REQUEST + b"Transfer-Encoding: identity\r\n\r\n", BOTH_REFUSE),
    (
        "te-twice",
        REQUEST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        BOTH_REFUSE,
    ),
    # twisted.web unfolds like h11 (the one-pass reader leaves folds to it).
    ("obs-fold", REQUEST + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", SAME),
    ("obs-fold-cl", REQUEST + b"Content-Length: 5\r\n 0\r\n\r\nhello", BOTH_REFUSE),
    ("bare-lf", b"POST / HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello", STRICTER),
    ("nul-in-value", REQUEST + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n", BOTH_REFUSE),
    ("vt-in-value", REQUEST + b"X-A: a\x0bb\r\nContent-Length: 0\r\n\r\n", BOTH_REFUSE),
    ("ff-before-value", REQUEST + b"Content-Length: \x0c5\r\n\r\nhello", BOTH_REFUSE),
    ("vt-after-te", REQUEST + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n", BOTH_REFUSE),
    ("folded-vt", REQUEST + b"X-A: a\r\n b\x0b\r\nContent-Length: 0\r\n\r\n", BOTH_REFUSE),
    ("space-before-colon", REQUEST + b"Content-Length : 5\r\n\r\nhello", BOTH_REFUSE),
    ("cl-negative", REQUEST + b"Content-Length: -5\r\n\r\nhello", BOTH_REFUSE),
    ("cl-plus", REQUEST + b"Content-Length: +5\r\n\r\nhello", BOTH_REFUSE),
    ("cl-hex", REQUEST + b"Content-Length: 0x5\r\n\r\nhello", BOTH_REFUSE),
    ("cl-leading-zeros", REQUEST + b"Content-Length: 05\r\n\r\nhello", SAME),
    ("cl-20-digits", REQUEST + b"Content-Length: 00000000000000000005\r\n\r\nhello", STRICTER),
    ("cl-5000-digits", REQUEST + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", BOTH_REFUSE),
    ("chunk-extension", REQ_CHUNKED + b"5;name=value\r\nhello\r\n0\r\n\r\n", SAME),
    ("chunk-size-16-digits", REQ_CHUNKED + b"0" * 15 + b"5\r\nhello\r\n0\r\n\r\n", SAME),
    ("chunk-size-17-digits", REQ_CHUNKED + b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n", STRICTER),
    ("chunk-size-huge", REQ_CHUNKED + b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n", BOTH_REFUSE),
    ("chunk-size-0x", REQ_CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", BOTH_REFUSE),
    (
        "chunk-size-space",
        REQ_CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n",
        STRICTER,
    ),  # STRICTER_CHUNK_SPACE
    ("chunk-size-too-small", REQ_CHUNKED + b"3\r\nhello\r\n0\r\n\r\n", BOTH_REFUSE),
    ("target-with-space", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", BOTH_REFUSE),
    ("version-junk", b"GET / HTTP/1.1x\r\nHost: x\r\n\r\n", BOTH_REFUSE),
    (
        "pipelined",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        SAME,
    ),
    ("body-then-request", REQUEST + b"Content-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\n\r\n", SAME),
]


@pytest.mark.parametrize(
    ("data", "expected"),
    [pytest.param(data, expected, id=name) for name, data, expected in REQUEST_VECTORS],
)
def test_client_request_framing_matches_h11(data: bytes, expected: str) -> None:
    assert compare_request(data) == expected


@pytest.mark.parametrize("data", [pytest.param(data, id=name) for name, data, _ in REQUEST_VECTORS])
def test_client_request_framing_does_not_depend_on_reads(data: bytes) -> None:
    # The one-pass head reader and twisted.web's line reader (bounded by
    # GatewayChannel) must agree, and a chunk size split between reads is
    # bounded all the same.
    whole, split = gateway_request(data), gateway_request(data, split=True)
    assert whole[0] == split[0], (whole, split)
    if whole[0] == "ok":
        assert whole == split


@pytest.mark.parametrize(
    ("text", "decimal", "hexadecimal"),
    [
        (b"0", 0, 0),
        (b"5", 5, 5),
        (b"0005", 5, 5),
        (b"9" * 19, 10**19 - 1, None),
        (b"9" * 20, None, None),
        (b"f" * 16, None, 2**64 - 1),
        (b"0" * 17, 0, None),
        (b"9" * 5000, None, None),
        (b"", None, None),
        (b"+5", None, None),
        (b"-5", None, None),
        (b" 5", None, None),
        (b"5 ", None, None),
        (b"5\t", None, None),
        (b"1_0", None, None),
        (b"0x5", None, None),
        (b"5\x00", None, None),
        ("\u0665".encode(), None, None),  # an Arabic-Indic five
        (b"\xd9\xa5", None, None),
    ],
)
def test_framing_numbers_are_bounded_ascii_digits(
    text: bytes, decimal: int | None, hexadecimal: int | None
) -> None:
    assert parse_decimal(text) == decimal
    assert parse_hex(text) == hexadecimal


# -- generated inputs ----------------------------------------------------------------

_LINE_ENDS = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\n ", b"\n\r"])
_CL_VALUES = [
    b"0",
    b"5",
    b"05",
    b"10",
    b"+5",
    b"-5",
    b"0x5",
    b" 5",
    b"5 ",
    b"5, 5",
    b"5,6",
    b"1" * 20,
    b"",
    b"5\x0b",
]
_TE_VALUES = [
    b"chunked",
    b"Chunked",
    b"chunked, identity",
    b"identity",
    b"gzip, chunked",
    b"chunked ",
    b"chunked\x01",
]
_FRAMING_HEADERS = st.one_of(
    st.tuples(
        st.sampled_from([b"Content-Length", b"content-length", b"Content-Length "]),
        st.sampled_from(_CL_VALUES),
    ),
    st.tuples(
        st.sampled_from([b"Transfer-Encoding", b"transfer-encoding"]), st.sampled_from(_TE_VALUES)
    ),
    st.tuples(
        st.sampled_from([b"Connection", b"X-A"]),
        st.sampled_from([b"close", b"keep-alive", b"a\x00", b"x y"]),
    ),
)
_CHUNK_SIZES = st.sampled_from(
    [b"0", b"5", b"05", b"A", b"a", b"5;x=y", b"5 ", b"0x5", b"+5", b"", b"0" * 17 + b"5"]
)


@st.composite
def _chunked_body(draw: Any) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        size = draw(_CHUNK_SIZES)
        parts.append(size + draw(_LINE_ENDS) + draw(st.binary(max_size=12)) + draw(_LINE_ENDS))
    parts.append(b"0" + draw(_LINE_ENDS))
    if draw(st.booleans()):
        parts.append(b"X-T: 1" + draw(_LINE_ENDS))
    parts.append(draw(_LINE_ENDS))
    return b"".join(parts)


@st.composite
def _message(draw: Any, first_line: Any) -> bytes:
    lines = [draw(first_line)]
    for _ in range(draw(st.integers(0, 3))):
        name, value = draw(_FRAMING_HEADERS)
        lines.append(name + b": " + value)
    data = b"".join(line + draw(_LINE_ENDS) for line in lines) + draw(_LINE_ENDS)
    body = draw(st.one_of(_chunked_body(), st.binary(max_size=16)))
    return data + body + draw(st.sampled_from([b"", b"HTTP/1.1 200 OK\r\n\r\n", b"X"]))


_STATUS_LINES = st.sampled_from(
    [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 204 No Content",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.0 200 OK",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
        b"HTTP/1.1 101 Up",
        b"HTTP/1.1 +204 x",
        b"HTTP/1.1 200",
    ]
)
_REQUEST_LINES = st.sampled_from(
    [b"POST / HTTP/1.1\r\nHost: x", b"GET /a HTTP/1.1\r\nHost: x", b"POST / HTTP/1.0\r\nHost: x"]
)

_GENERATED = settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@_GENERATED
@given(data=_message(_STATUS_LINES), method=st.sampled_from([b"GET", b"HEAD"]))
def test_generated_responses_frame_as_h11_does_or_are_refused(data: bytes, method: bytes) -> None:
    compare_response(data, method)


@_GENERATED
@given(data=_message(_REQUEST_LINES))
def test_generated_requests_frame_as_h11_does_or_are_refused(data: bytes) -> None:
    compare_request(data)


# -- against the real gateway process -----------------------------------------------
#
# A raw-socket upstream misbehaves on purpose: after its answer it sends a
# whole second response ("smuggled") that a gateway reusing the connection
# would hand to the next client request. Every answer names the upstream
# connection it was sent on, so the test sees which connection served what.

_SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"


class RawUpstream:
    """A tiny HTTP/1.1 server on its own thread, answering by path."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        buffer = b""
        with sock:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                sock.sendall(self._answer(path, number))
                if path == b"/idle":
                    # Once the gateway has its answer and the connection is
                    # idle in its pool, junk arrives.
                    time.sleep(0.3)
                    sock.sendall(_SMUGGLED)

    @staticmethod
    def _answer(path: bytes, number: int) -> bytes:
        body = b"conn=%d path=%s" % (number, path)
        plain = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        if path == b"/head-with-body":
            return plain + _SMUGGLED  # (to a HEAD: the body, then more)
        if path == b"/no-content-with-body":
            return b"HTTP/1.1 204 No Content\r\n\r\n" + _SMUGGLED
        if path == b"/not-modified-with-body":
            return b"HTTP/1.1 304 Not Modified\r\n\r\n" + _SMUGGLED
        if path == b"/longer-than-content-length":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + b"12345" + _SMUGGLED
        if path == b"/content-length-20-digits":
            return b"HTTP/1.1 200 OK\r\nContent-Length: " + b"0" * 19 + b"5\r\n\r\nhello"
        if path == b"/content-length-5000-digits":
            return b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nhello"
        if path == b"/chunk-size-17-digits":
            return (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"0" * 16
                + b"5\r\nhello\r\n0\r\n\r\n"
            )
        return plain

    def close(self) -> None:
        self._stop = True
        self.listener.close()


@pytest.fixture
def gateway_and_upstream(tmp_path: Path) -> Iterator[tuple[GatewayProcess, RawUpstream, int, int]]:
    upstream = RawUpstream()
    port, admin = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
admin: {{address: 127.0.0.1:{admin}}}
listeners: [{{address: 127.0.0.1:{port}}}]
providers:
  down: {{issuer: https://127.0.0.1:{free_port()}/oauth2/token}}
routes:
  - name: app
    hosts: [app.localhost]
    upstream: http://127.0.0.1:{upstream.port}
    oidc: {{provider: down, client_id: c, client_secret: s}}
  - name: open
    default: true
    upstream: http://127.0.0.1:{upstream.port}
"""
    )
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        gateway.start([port, admin])
        yield gateway, upstream, port, admin
    finally:
        gateway.stop()
        upstream.close()


def _discards(admin: int, upstream: RawUpstream) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("idgateway_upstream_connections_discarded_total{"):
            labels, value = line.rsplit(" ", 1)
            if f'upstream="http://127.0.0.1:{upstream.port}"' in labels:
                found[labels.split('reason="')[1].split('"')[0]] = float(value)
    return found


def _assert_clean_log(gateway: GatewayProcess) -> None:
    log = gateway.log()
    for marker in ("Traceback", "Unhandled", "ValueError"):
        assert marker not in log, log


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("HEAD", "/head-with-body", 200, "body_after_no_body_response"),
        ("GET", "/no-content-with-body", 204, "body_after_no_body_response"),
        ("GET", "/not-modified-with-body", 304, "body_after_no_body_response"),
        ("GET", "/longer-than-content-length", 200, "bytes_after_content_length"),
        ("GET", "/idle", 200, "data_while_idle"),
    ],
)
def test_stray_upstream_bytes_never_answer_the_next_request(
    gateway_and_upstream: Any, method: str, path: str, status: int, reason: str
) -> None:
    gateway, upstream, port, admin = gateway_and_upstream
    before = _discards(admin, upstream)
    assert before == dict.fromkeys(
        ("body_after_no_body_response", "bytes_after_content_length", "data_while_idle"), 0.0
    )
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    client.request(method, path)
    response = client.getresponse()
    first = response.read()
    assert response.status == status
    assert b"smuggled" not in first
    if path == "/idle":
        time.sleep(0.8)  # the junk reaches the idle pooled connection
    attacked = upstream.connections
    client.request("GET", "/next")
    response = client.getresponse()
    # Its own answer, on a fresh upstream connection: never the stray bytes.
    assert (response.status, response.read()) == (200, b"conn=%d path=/next" % (attacked + 1))
    assert _discards(admin, upstream)[reason] == 1.0
    _assert_clean_log(gateway)


@pytest.mark.parametrize(
    "path", ["/content-length-20-digits", "/content-length-5000-digits", "/chunk-size-17-digits"]
)
def test_overlong_upstream_numbers_are_a_clean_502(gateway_and_upstream: Any, path: str) -> None:
    gateway, upstream, port, admin = gateway_and_upstream
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if answer.startswith(b"HTTP/1.1 502 ") and answer.endswith(b"\n"):
                    break
        except ConnectionResetError:
            pass
    if path == "/chunk-size-17-digits":
        # The 200 head may already be on its way when the chunk size comes:
        # then the client's response is cut off, as for any broken upstream
        # body (never a complete answer with that body).
        assert answer.startswith(b"HTTP/1.1 502 ") or b"hello" not in answer, answer
    else:
        assert answer.startswith(b"HTTP/1.1 502 "), answer
    _assert_clean_log(gateway)


_CLIENT_REQUESTS = {
    "content-length-20-digits": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: "
    + b"0" * 19
    + b"5\r\n\r\nhello",
    "content-length-5000-digits": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: "
    + b"9" * 5000
    + b"\r\n\r\nhello",
    # (split over two writes: twisted.web's line reader, not the one-pass one)
    "content-length-5000-digits-split": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Len|gth: "
    + b"9" * 5000
    + b"\r\n\r\nhello",
    "content-length-junk": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello",
    "chunk-size-17-digits": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"0" * 16
    + b"5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-5000-digits": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"f" * 5000
    + b"\r\nhello\r\n0\r\n\r\n",
    "chunk-size-junk": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"5x\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(_CLIENT_REQUESTS))
def test_overlong_client_numbers_are_a_clean_400(gateway_and_upstream: Any, name: str) -> None:
    gateway, upstream, port, admin = gateway_and_upstream
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for part in _CLIENT_REQUESTS[name].split(b"|"):
            sock.sendall(part)
            time.sleep(0.05)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    _assert_clean_log(gateway)


@pytest.mark.parametrize("count", [b"9" * 20, b"9" * 5000, b"2x", b"-2", b"+2", b"0x2"])
def test_overlong_cookie_chunk_count_is_no_session(gateway_and_upstream: Any, count: bytes) -> None:
    # The first session cookie chunk starts with "<count>.": a bad count is a
    # tampered cookie (no session: the login answer), never an exception.
    gateway, upstream, port, admin = gateway_and_upstream
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    client.putrequest("GET", "/private", skip_host=True)
    client.putheader("Host", "app.localhost")
    client.putheader("Accept", "application/json")
    client.putheader("Cookie", "_idgw_app=" + count.decode() + ".abc; _idgw_app_1=def")
    client.endheaders()
    response = client.getresponse()
    response.read()
    assert response.status in (401, 503), response.status
    _assert_clean_log(gateway)
