"""Reading Redis replies (idgateway.redis.resp) and the connection that uses it, in memory.

The reader must make of every reply what txredisapi's own reader makes of
it (the rest of txredisapi relies on that), whatever the reads' boundaries,
and give up on the connection when the server sends something that is not
RESP.
"""

from __future__ import annotations

from typing import Any

import pytest
import txredisapi
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from idgateway.redis.protocol import RedisProtocol, SubscriberProtocol
from idgateway.redis.resp import RespProtocolError, RespReader

# Replies of every shape the gateway's commands get, back to back.
STREAM = (
    b"+OK\r\n"
    b"$5\r\nhello\r\n"
    b"$-1\r\n"
    b"$0\r\n\r\n"
    b"$6\r\nA\r\nB\r\n\r\n"  # a bulk string holding CRLFs
    b":42\r\n"
    b":-7\r\n"
    b"-ERR unknown command 'NOPE'\r\n"
    b"-MOVED 3999 127.0.0.1:7002\r\n"
    b"*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$3\r\n\x00\xff\x01\r\n"
    b"*0\r\n"
    b"*-1\r\n"
    b"*2\r\n*3\r\n:0\r\n:5460\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n$1\r\nx\r\n"
    b"*2\r\n-ERR inside\r\n+QUEUED\r\n"
)


def plain(replies: list[Any]) -> list[Any]:
    """Errors compared by type and message."""
    out: list[Any] = []
    for reply in replies:
        if isinstance(reply, Exception):
            out.append((type(reply).__name__, str(reply)))
        elif isinstance(reply, list):
            out.append(plain(reply))
        else:
            out.append(reply)
    return out


EXPECTED = [
    "OK",
    b"hello",
    None,
    b"",
    b"A\r\nB\r\n",
    42,
    -7,
    ("ResponseError", "ERR unknown command 'NOPE'"),
    ("ResponseError", "MOVED 3999 127.0.0.1:7002"),
    [b"message", b"chan", b"\x00\xff\x01"],
    [],
    None,
    [[0, 5460, [b"127.0.0.1", 7000]], b"x"],
    [("ResponseError", "ERR inside"), "QUEUED"],
]


def test_every_reply_shape_in_one_read() -> None:
    assert plain(RespReader().feed(STREAM)) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_read_boundaries_give_the_same_replies(size: int) -> None:
    reader = RespReader()
    replies: list[Any] = []
    for start in range(0, len(STREAM), size):
        replies.extend(reader.feed(STREAM[start : start + size]))
    assert plain(replies) == EXPECTED


def test_a_split_at_every_byte_gives_the_same_replies() -> None:
    for cut in range(1, len(STREAM)):
        reader = RespReader()
        replies = reader.feed(STREAM[:cut]) + reader.feed(STREAM[cut:])
        assert plain(replies) == EXPECTED, cut


def test_the_same_replies_as_txredisapis_own_reader() -> None:
    """Differential: the stock protocol, fed the same bytes, hands over the same replies."""
    stock = txredisapi.BaseRedisProtocol(charset=None, convertNumbers=False)
    clock = Clock()
    stock.callLater = clock.callLater
    stock.makeConnection(StringTransport())
    received: list[Any] = []
    stock.replyReceived = received.append  # type: ignore[method-assign]
    stock.dataReceived(STREAM.replace(b"*2\r\n-ERR inside\r\n+QUEUED\r\n", b""))
    for _ in range(100):  # it hands over one bulk reply per reactor iteration
        clock.advance(0)
    assert plain(received) == EXPECTED[:-1]


def test_a_huge_announced_bulk_string_is_waited_for_not_allocated() -> None:
    reader = RespReader()
    assert reader.feed(b"$1000000000\r\n") == []
    assert reader.feed(b"abc") == []
    assert len(reader._unread) < 100


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"?what\r\n", id="unknown type"),
        pytest.param(b":12a\r\n", id="bad integer"),
        pytest.param(b"$x\r\n", id="bad bulk length"),
        pytest.param(b"$3\r\nabcde\r\n", id="bulk longer than announced"),
        pytest.param(b"*1x\r\n", id="bad array length"),
        pytest.param(b"*1\r\n" * 17 + b":1\r\n", id="nested too deep"),
        pytest.param(b"+OK\r\n\r\n", id="an empty line"),
        pytest.param(b"-ERR " + b"x" * 70000, id="an endless line"),
        pytest.param(b"$" + b"9" * 70000, id="an endless length"),
    ],
)
def test_what_is_not_resp_is_refused(data: bytes) -> None:
    with pytest.raises(RespProtocolError):
        RespReader().feed(data)


def connected(protocol: RedisProtocol) -> StringTransport:
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.connected = 1
    return transport


def test_pipelined_replies_in_one_read_answer_every_caller_at_once() -> None:
    clock = Clock()
    protocol = RedisProtocol(clock)
    transport = connected(protocol)
    calls = [protocol.execute_command("GET", f"k{n}") for n in range(3)]
    assert transport.value() == b"".join(b"*2\r\n$3\r\nGET\r\n$2\r\nk%d\r\n" % n for n in range(3))
    assert protocol.outstanding == 3
    protocol.dataReceived(b"$2\r\nv0\r\n$-1\r\n$2\r\nv2\r\n")
    results: list[Any] = []
    for d in calls:
        d.addBoth(results.append)
    assert results == [b"v0", None, b"v2"], "no reactor iteration needed"
    assert not clock.getDelayedCalls()
    assert protocol.outstanding == 0
    assert not transport.producerState == "paused"


def test_an_error_reply_fails_only_its_own_command() -> None:
    protocol = RedisProtocol(Clock())
    connected(protocol)
    bad, good = protocol.execute_command("NOPE"), protocol.execute_command("PING")
    protocol.dataReceived(b"-ERR unknown command 'NOPE'\r\n+PONG\r\n")
    failures: list[Any] = []
    bad.addErrback(failures.append)
    assert failures and failures[0].check(txredisapi.ResponseError)
    assert "unknown command" in str(failures[0].value)
    assert good.result == "PONG"  # type: ignore[attr-defined]


def test_garbage_from_the_server_drops_the_connection_and_fails_the_callers() -> None:
    protocol = RedisProtocol(Clock())
    transport = connected(protocol)
    lost: list[RedisProtocol] = []
    protocol.on_lost = lost.append
    waiting = protocol.execute_command("GET", "k")
    protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
    assert transport.disconnecting or getattr(transport, "aborted", False)
    from twisted.python.failure import Failure

    protocol.connectionLost(Failure(ConnectionError("aborted")))
    assert lost == [protocol]
    assert protocol.lost_reason is not None and protocol.lost_reason.check(RespProtocolError)
    failures: list[Any] = []
    waiting.addErrback(failures.append)
    assert failures and failures[0].check(txredisapi.ConnectionError)


def test_a_subscriber_gets_messages_and_replies_from_one_read() -> None:
    messages: list[tuple[bytes, bytes]] = []
    protocol = SubscriberProtocol(
        Clock(), lambda channel, payload: messages.append((channel, payload))
    )
    connected(protocol)
    subscribed = protocol.execute_command("SUBSCRIBE", "idgw:revoked")
    protocol.dataReceived(
        b"*3\r\n$9\r\nsubscribe\r\n$12\r\nidgw:revoked\r\n:1\r\n"
        b"*3\r\n$7\r\nmessage\r\n$12\r\nidgw:revoked\r\n$5\r\nsid-1\r\n"
        b"*3\r\n$7\r\nmessage\r\n$12\r\nidgw:revoked\r\n$5\r\nsid-2\r\n"
    )
    assert subscribed.result == [b"subscribe", b"idgw:revoked", 1]  # type: ignore[attr-defined]
    assert messages == [(b"idgw:revoked", b"sid-1"), (b"idgw:revoked", b"sid-2")]
