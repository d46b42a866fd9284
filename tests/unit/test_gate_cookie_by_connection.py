"""The gate's memo of each connection's last Cookie header
(RouteLogin._last_cookie_header): a request whose Cookie header equals the
one its connection sent last takes the cookie reader's answer without
hashing the header again. It must be the reader's answer every time: each
case below changes something between two requests on one connection (a
byte of the header, its lines, the reader's memo, the route's own-cookie
test, who the connection is) and compares with the reader asked directly
and with the full checks (both memos emptied)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.address import IPv4Address

from idgateway.gate import session_check as gate_module
from idgateway.server.channel import GatewayRequest
from tests.unit.test_gate_admitted_memo import Gate, _kind


def _peer(port: int = 50000) -> IPv4Address:
    return IPv4Address("TCP", "10.0.0.7", port)


def _on(
    gate: Gate, client: Any, lines: list[bytes], path: bytes = b"/projects/1"
) -> GatewayRequest:
    request = gate.request(lines, path)
    request.client = client  # as the channel sets it: one address object per connection
    return request


def _read_directly(gate: Gate, lines: list[bytes]) -> Any:
    login = gate.login
    own = gate.runtime.own_cookie or login._is_own_cookie
    return login._cookie_headers.read(lines, own)


def _full(gate: Gate, client: Any, lines: list[bytes], path: bytes) -> tuple[Any, ...]:
    gate.login._last_cookie_header.clear()
    gate.login._admitted.clear()
    return gate.handle(_on(gate, client, lines, path))


def _tampered(line: bytes) -> bytes:
    # One byte of the session cookie changed, the length kept.
    at = line.index(b"_idgw") + 40
    return line[:at] + (b"A" if line[at : at + 1] != b"A" else b"B") + line[at + 1 :]


Change = Callable[[Gate, bytes, Any], tuple[Any, list[bytes]]]


def _same(gate: Gate, line: bytes, client: Any) -> tuple[Any, list[bytes]]:
    return client, [line]


def _one_byte(gate: Gate, line: bytes, client: Any) -> tuple[Any, list[bytes]]:
    return client, [_tampered(line)]


def _split(gate: Gate, line: bytes, client: Any) -> tuple[Any, list[bytes]]:
    first, _, rest = line.partition(b"; ")
    return client, [first, rest]


def _added_pair(gate: Gate, line: bytes, client: Any) -> tuple[Any, list[bytes]]:
    return client, [line + b"; _idgw_app1_1=forged"]


def _reader_forgot(gate: Gate, line: bytes, client: Any) -> tuple[Any, list[bytes]]:
    gate.login._cookie_headers._forget()
    return client, [line]


def _other_connection(gate: Gate, line: bytes, client: Any) -> tuple[Any, list[bytes]]:
    return _peer(50001), [_tampered(line)]


def _id_reused(gate: Gate, line: bytes, client: Any) -> tuple[Any, list[bytes]]:
    # Another connection whose address object has the first one's id (the
    # first was freed): the id is the same, the header is not.
    return client, [b"theme=light"]


def _own_test_changed(gate: Gate, line: bytes, client: Any) -> tuple[Any, list[bytes]]:
    # A reload, say, with another own-cookie test: read with it afresh.
    before = gate.runtime.own_cookie or gate.login._is_own_cookie
    object.__setattr__(gate.runtime, "own_cookie", lambda name: before(name) or name == b"theme")
    return client, [line]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(_same, "forward", id="same-header"),
        pytest.param(_one_byte, "login", id="one-byte-changed-same-length"),
        pytest.param(_split, "forward", id="split-over-two-lines"),
        pytest.param(_added_pair, "forward", id="own-chunk-added"),
        pytest.param(_reader_forgot, "forward", id="reader-memo-started-again"),
        pytest.param(_other_connection, "login", id="other-connection-tampered"),
        pytest.param(_id_reused, "login", id="id-reused-other-header"),
        pytest.param(_own_test_changed, "forward", id="own-cookie-test-changed"),
    ],
)
def test_a_connections_last_header_gives_the_readers_answer(change: Change, expected: str) -> None:
    gate = Gate()
    client = _peer()
    line = b"theme=dark; " + gate.cookie(gate.session()) + b"; _ga=GA1.1"
    assert gate.handle(_on(gate, client, [line]))[0] == "forward"
    assert len(gate.login._last_cookie_header) == 1, "the connection's header is kept"
    client, lines = change(gate, line, client)
    request = _on(gate, client, lines, b"/projects/2")
    got = gate.handle(request)
    full = _full(gate, client, lines, b"/projects/2")
    assert _kind(got) == _kind(full), (got, full)
    if expected == "login":
        assert got == ("login",), got
    else:
        assert got[0] == "forward", got
        # What goes upstream is the reader's answer, asked directly.
        assert got[1] == _read_directly(gate, lines)[0]
        assert b"_idgw" not in (got[1] or b""), "the gateway's cookies never go upstream"
        if change is _own_test_changed:
            assert got[1] == b"_ga=GA1.1", "the new own-cookie test strips theme= too"


def test_the_same_header_is_the_readers_own_object() -> None:
    """Taken from the memo, the answer is the very object the reader holds
    (the admitted memo recognises a header by it)."""
    gate = Gate()
    client = _peer()
    line = gate.cookie(gate.session())
    gate.handle(_on(gate, client, [line]))
    held = gate.login._last_cookie_header[id(client)][3]
    assert held is _read_directly(gate, [line])
    decoded = gate.decoded
    again = gate.handle(_on(gate, client, [bytes(bytearray(line))]))  # equal, not identical
    assert again[0] == "forward" and gate.decoded == decoded


def test_headers_the_reader_does_not_keep_are_not_kept() -> None:
    gate = Gate()
    client = _peer()
    big = b"pad=" + b"x" * 9000 + b"; " + gate.cookie(gate.session())
    assert gate.handle(_on(gate, client, [big]))[0] == "forward"
    assert gate.login._last_cookie_header == {}, "more than the reader keeps"
    assert gate.handle(_on(gate, client, [b"a=1", b"b=2"]))[0] == "login"
    assert gate.login._last_cookie_header == {}, "two Cookie lines are read afresh"


def test_the_memo_is_bounded() -> None:
    gate = Gate()
    line = gate.cookie(gate.session())
    clients = [_peer(40000 + n) for n in range(gate_module.LAST_COOKIE_HEADERS_MAX + 10)]
    for client in clients:
        assert gate.handle(_on(gate, client, [line]))[0] == "forward"
        assert len(gate.login._last_cookie_header) <= gate_module.LAST_COOKIE_HEADERS_MAX
