"""The one-pass request head parser, and the channel that uses it.

The channel's fast path must be indistinguishable from twisted.web's
line-by-line parser: every input below goes through both, and the requests the
resource sees and the bytes the client gets back must be the same.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from idgateway.server.channel import GatewayChannel, GatewayRequest, GatewaySite
from idgateway.server.request_head import RequestHead, read_request_head

BROWSER_GET = (
    b"GET /app/page?x=1 HTTP/1.1\r\n"
    b"Host: app1.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    b"Accept: text/html\r\n"
    b"Accept:  application/json \t\r\n"
    b"cOOKIE: _idgw_app1=abc; theme=dark\r\n"
    b"X-Empty:\r\n"
    b"\r\n"
)


# -- the parser ---------------------------------------------------------------


def test_a_browser_head_is_parsed_as_twisted_would_store_it() -> None:
    found = read_request_head(BROWSER_GET + b"GET /next", 500, 16384)
    assert found is not None
    head, consumed = found
    assert type(head) is RequestHead and head.target == b"/app/page?x=1"
    assert consumed == len(BROWSER_GET)  # up to the next request
    assert head == RequestHead(
        method=b"GET",
        target=b"/app/page?x=1",
        version=b"HTTP/1.1",
        headers={
            b"Host": [b"app1.example.com"],
            b"User-Agent": [b"Mozilla/5.0 (X11; Linux x86_64)"],
            b"Accept": [b"text/html", b"application/json"],
            b"Cookie": [b"_idgw_app1=abc; theme=dark"],
            b"X-Empty": [b""],
        },
        length=0,
    )


def test_the_content_length_is_read() -> None:
    found = read_request_head(
        b"POST /f HTTP/1.0\r\nHost: a\r\nContent-Length: 12\r\n\r\nbody", 500, 100
    )
    assert found is not None
    head, consumed = found
    assert head.length == 12 and head.version == b"HTTP/1.0" and consumed == 49


def test_cr_and_nul_in_the_body_after_the_head_are_the_bodys_business() -> None:
    found = read_request_head(
        b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n\r\x00\r\x00", 500, 100
    )
    assert found is not None
    assert found[0].length == 4 and found[1] == 48


def test_a_head_not_all_there_or_too_big_is_left_to_twisted() -> None:
    assert read_request_head(BROWSER_GET[:-2], 500, 16384) is None
    assert read_request_head(BROWSER_GET[:20], 500, 16384) is None
    assert read_request_head(BROWSER_GET, 500, 100) is None
    assert read_request_head(b"\r\n" + BROWSER_GET, 500, 16384) is None


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET / HTTP/1.1\r\nX-A: 1\r\n  folded", id="obsolete-line-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nX-A: 1\nX-B: 2", id="bare-LF"),
        pytest.param(b"GET / HTTP/1.1\r\nX-A: 1\rX-B: 2", id="bare-CR"),
        pytest.param(b"GET / HTTP/1.1\r\nX-A: a\x00b", id="NUL"),
        pytest.param(b"GET / HTTP/1.1\r\nX-A: 1\r", id="CR-before-CRLF"),
        pytest.param(b"GET /\x00 HTTP/1.1\r\nHost: a", id="NUL-in-target"),
        pytest.param(b"GET / HTTP/1.1\r\nX-A 1", id="no-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : a", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\n: a", id="empty-name"),
        pytest.param(b"GET / HTTP/2.0\r\nHost: a", id="HTTP/2.0"),
        pytest.param(b"GET  / HTTP/1.1\r\nHost: a", id="two-spaces"),
        pytest.param(b"G(T / HTTP/1.1\r\nHost: a", id="method-not-a-token"),
        pytest.param(b"GET /a\x01b HTTP/1.1\r\nHost: a", id="control-byte-in-target"),
        pytest.param(b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a", id="target-byte-over-176"),
        pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 1x", id="content-length-not-digits"),
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1", id="two-content-lengths"
        ),
        pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked", id="chunked"),
        pytest.param(b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 4 + b"X-A: 1", id="too-many-headers"),
    ],
)
def test_anything_unusual_is_left_to_twisted(head: bytes) -> None:
    assert read_request_head(head + b"\r\n\r\n", 4, 16384) is None


def test_as_many_headers_as_allowed_are_read_and_one_more_is_left_to_twisted() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 4 + b"\r\n"
    found = read_request_head(head, 4, 16384)
    assert found is not None and found[0].headers == {b"X-A": [b"1"] * 4}
    assert read_request_head(head, 3, 16384) is None
    assert read_request_head(b"GET / HTTP/1.1\r\n\r\n", 0, 16384) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"\n",
        b"\r\n",
        b"\r\n\r\n",
        b"\nGET / HTTP/1.1\r\n\r\n",
        b"X\nGET / HTTP/1.1\r\n\r\n",
        b"\rX\r\n\r\n",
    ],
    ids=["LF", "CRLF", "two-CRLF", "LF-first", "bare-LF-first-line", "CR-first"],
)
def test_a_first_line_that_is_blank_or_broken_is_left_to_twisted(data: bytes) -> None:
    assert read_request_head(data, 4, 16384) is None


def test_a_head_past_max_size_is_left_to_twisted_wherever_its_line_ends() -> None:
    head = b"GET / HTTP/1.1\r\nX-A: " + b"a" * 50 + b"\r\n\r\n"
    assert read_request_head(head, 4, len(head) - 1) is not None  # (the last LF's index)
    assert read_request_head(head, 4, len(head) - 2) is None
    assert read_request_head(head, 4, 20) is None  # (inside a header line)
    assert read_request_head(head, 4, 10) is None  # (inside the request line)


BIG_BODY = b"\r\n\r\n".join([b"b" * 3000] * 4)  # (over 8 KiB, CRLFCRLF inside)


@pytest.mark.parametrize(
    "head",
    [
        BROWSER_GET,
        b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 12006\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: 1\nX-B: 2\r\n\r\n",  # a bare LF
        b"GET / HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n",  # a bare CR
        b"GET / HTTP/1.1\r\nX-A: 1\n\r\n",  # its blank line after a bare LF
        b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: 1\r\n",  # not all there: CRLFCRLF only in the body
    ],
    ids=["browser-get", "post", "bare-LF", "bare-CR", "blank-after-bare-LF", "NUL", "unfinished"],
)
def test_a_big_read_is_read_as_its_head_alone(head: bytes) -> None:
    # Past 8 KiB the head is cut at its end before its lines are read.
    alone = read_request_head(head, 500, 16384)
    assert read_request_head(head + BIG_BODY, 500, 16384) == (
        alone if head.endswith(b"\r\n\r\n") else None
    )


def test_a_big_read_whose_head_is_over_max_size_is_left_to_twisted() -> None:
    head = b"GET / HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n"
    assert read_request_head(head + BIG_BODY, 500, len(head) - 1) is not None
    assert read_request_head(head + BIG_BODY, 500, len(head) - 2) is None
    assert read_request_head(head + BIG_BODY, 500, 100) is None


def test_the_methods_read_without_a_token_check_are_tokens() -> None:
    from idgateway.http.syntax import is_token
    from idgateway.server import request_head

    assert request_head._USUAL_METHODS and all(map(is_token, request_head._USUAL_METHODS))


@pytest.mark.parametrize(
    "method",
    [b"GET", b"POST", b"PROPFIND", b"M-SEARCH", b"X_Y", b"~!#$%&'*+-.^_`|"],
)
def test_any_method_that_is_a_token_is_read(method: bytes) -> None:
    found = read_request_head(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n", 4, 16384)
    assert found is not None and found[0].method == method


@pytest.mark.parametrize(
    "method",
    [b"", b"GE\x7fT", b"G\xc3\xa9T", b"GET,", b"G@T", b"G\tT", b"(GET)", b'"GET"', b"G[T", b"G/T"],
)
def test_a_method_that_is_no_token_is_left_to_twisted(method: bytes) -> None:
    assert read_request_head(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n", 4, 16384) is None


# -- the channel: fast path vs twisted.web's parser ----------------------------


class _Record(Resource):
    """Records what it was asked and answers with the body's size."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[Any]] = []

    def render(self, request: GatewayRequest) -> Any:  # type: ignore[override]
        record: list[Any] = [
            request.method,
            request.uri,
            request.path,
            request.clientproto,
            sorted(
                (name, list(values)) for name, values in request.requestHeaders.getAllRawHeaders()
            ),
        ]
        self.seen.append(record)

        def answer(body: bytes) -> None:
            record.append(body)
            text = b"%d bytes" % len(body)
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(text)])
            request.write(text)
            request.finish()

        if request.body is None:
            answer(b"")
        else:
            request.body.collect(1 << 20).addCallback(answer)
        return NOT_DONE_YET


class _LineByLineChannel(GatewayChannel):
    def dataReceived(self, data: bytes) -> None:
        http.HTTPChannel.dataReceived(self, data)


def _serve(reads: list[bytes], *, fast: bool) -> tuple[list[list[Any]], bytes, bool, int]:
    resource = _Record()
    site = GatewaySite(resource)
    if not fast:
        site.protocol = _LineByLineChannel  # type: ignore[assignment]
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.9", 4000))
    channel.makeConnection(transport)
    lines_parsed = 0
    line_received = channel.lineReceived

    def count_lines(line: bytes) -> Any:
        nonlocal lines_parsed
        lines_parsed += 1
        return line_received(line)

    channel.lineReceived = count_lines  # type: ignore[method-assign]
    for data in reads:
        channel.dataReceived(data)
    output = re.sub(rb"Date: [^\r]*\r\n", b"", transport.value())
    closed = transport.disconnecting
    channel.connectionLost(Failure(ConnectionDone()))
    return resource.seen, output, closed, lines_parsed


POST = b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n"
CASES = {
    "browser-get": [BROWSER_GET],
    "http-1.0": [b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"],
    "connection-close": [b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"],
    # (twisted.web splits the Connection header at spaces only, and reads its first line)
    "connection-close-among-tokens": [
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, CLOSE\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
    ],
    "connection-close-after-comma": [
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive,close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
    ],
    "connection-close-second-line": [
        b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        b"GET /2 HTTP/1.1\r\n\r\n"
    ],
    "connection-empty": [b"GET / HTTP/1.1\r\nConnection:\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"],
    "http-1.0-keep-alive": [
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n"
    ],
    "expect-continue-without-body": [
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
    ],
    "content-length-zero": [
        b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    ],
    "post-in-one-read": [POST + b"hello world"],
    "post-body-later": [POST, b"hello", b" world"],
    "post-then-get": [POST + b"hello worldGET /next HTTP/1.1\r\nHost: a\r\n\r\n"],
    "pipelined": [BROWSER_GET + BROWSER_GET + b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"],
    "pipelined-then-close": [
        b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    ],
    "head-split-over-reads": [BROWSER_GET[:40], BROWSER_GET[40:]],
    "expect-continue": [
        b"PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        b"abc",
    ],
    "chunked": [
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ],
    "leading-empty-line": [b"\r\n" + BROWSER_GET],
    "obsolete-fold": [b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n"],
    "bare-LF": [b"GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n"],
    "NUL": [b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n"],
    "no-colon": [b"GET / HTTP/1.1\r\nHost a\r\n\r\n"],
    "space-before-colon": [b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"],
    "bad-method": [b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n"],
    "bad-target": [b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n"],
    "HTTP/2.0": [b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"],
    "two-content-lengths": [b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"],
    "content-length-not-digits": [b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"],
    "head-over-16-KiB": [
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"X-Big: "
        + b"b" * 9000
        + b"\r\nX-Big2: "
        + b"c" * 9000
        + b"\r\n\r\n"
    ],
}


@pytest.mark.parametrize("reads", list(CASES.values()), ids=list(CASES))
def test_the_fast_path_answers_exactly_as_twisted_web(reads: list[bytes]) -> None:
    fast = _serve(reads, fast=True)
    slow = _serve(reads, fast=False)
    assert fast[:3] == slow[:3]
    # Each case is meaningful: something was answered (a 400 counts).
    assert fast[1].startswith(b"HTTP/1.")


@pytest.mark.parametrize("case", ["browser-get", "http-1.0", "post-in-one-read", "pipelined"])
def test_whole_heads_in_one_read_skip_the_line_parser(case: str) -> None:
    seen, output, _, lines_parsed = _serve(CASES[case], fast=True)
    assert lines_parsed == 0
    assert seen and output.count(b" 200 OK\r\n") == len(seen)


def test_a_head_split_over_reads_still_uses_the_line_parser() -> None:
    seen, _, _, lines_parsed = _serve(CASES["head-split-over-reads"], fast=True)
    assert lines_parsed == BROWSER_GET.count(b"\r\n")
    assert len(seen) == 1
