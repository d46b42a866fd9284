"""The red-team pass on issue 17's rewrites, in memory: each of the gateway's own
parsers against the stock one it replaced, on generated hostile input.

- The one-pass request head reader against twisted.web's line parser: heads
  built from tricky pieces (header names with odd case, underscores, spaces
  and controls; values with whitespace, controls and obs-text; CR, LF and bare
  line ends; folds; pipelined requests) give the resource the same requests
  with the same headers, and the client the same bytes.
- ``RequestHeaderDecoder`` against hpack's ``Decoder``: sequences of header
  blocks built representation by representation (static and dynamic indexes,
  literals of every kind with pseudo-header names, Huffman strings with good
  and bad padding, table size updates anywhere) decode to the same fields and
  leave the same dynamic table, or are both refused.
- ``read_request_block`` against h2's own inbound validation: whatever h2
  refuses, the gateway refuses; what both accept gives the same fields, the
  ``cookie`` crumbs joined as h2 joins them.
- The Cookie header memo and the stripping of the gateway's cookies: the memo
  answers as a fresh reading does, and no cookie the gate reads as its own
  reaches the upstream in a form that another cookie parser reads as it.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Any

import h2.exceptions
import h2.utilities
import pytest
from hpack import Decoder, Encoder
from hpack.exceptions import HPACKError
from hpack.hpack import encode_integer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idgateway.server.h2_headers import MalformedHeaders, read_request_block
from idgateway.server.h2_hpack import RequestHeaderDecoder
from idgateway.sessions.cookie import CookieHeaderReader, parse_cookie_header, strip_cookies
from tests.unit.test_request_head import _serve

_SETTINGS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the one-pass head reader against twisted.web's line parser ------------------------------


_NAMES = st.sampled_from(
    [
        b"Host",
        b"X-Forwarded-User",
        b"x-forwarded-user",
        b"X_Forwarded_User",
        b"X-Forwarded-User ",
        b" X-Forwarded-User",
        b"X-Forwarded-User\t",
        b"X-Forwarded\x00User",
        b"X-Forwarded\x7fUser",
        b"X-\xc3\xa9",
        b"Cookie",
        b"cookie",
        b"Content-Length",
        b"content-length",
        b"Content_Length",
        b"Transfer-Encoding",
        b"Connection",
        b"Expect",
        b"",
        b"X-A:B",
    ]
)
_VALUES = st.sampled_from(
    [
        b"alice",
        b" admin",
        b"admin \t",
        b"\tadmin",
        b"ad\x0bmin",
        b"ad\x0cmin",
        b"ad\x00min",
        b"ad\rmin",
        b"caf\xc3\xa9",
        b"\x80\xff",
        b"",
        b"0",
        b"3",
        b"chunked",
        b"close",
        b"X-Forwarded-User",
        b"100-continue",
        b"_idgw_app=x; a=1",
    ]
)
_ENDS = st.sampled_from([b"\r\n"] * 20 + [b"\n", b"\r", b"\r\r\n", b"\n\r"])
_GOOD_NAMES = st.sampled_from(
    [b"Host", b"X-Forwarded-User", b"x-forwarded-user", b"X_Forwarded_User", b"Cookie", b"Accept"]
)
_GOOD_VALUES = st.sampled_from([b"alice", b"admin", b"a=1; _idgw_app=x", b"", b"text/html"])
_REQUEST_LINES = st.sampled_from(
    [
        b"GET / HTTP/1.1",
        b"POST /p HTTP/1.1",
        b"GET /a?b HTTP/1.0",
        b"GET  / HTTP/1.1",
        b"GET\t/\tHTTP/1.1",
        b"GET / HTTP/1.1 ",
        b"GET http://app.localhost/ HTTP/1.1",
        b"get / http/1.1",
        b"GET /\xc3\xa9 HTTP/1.1",
    ]
)


@st.composite
def _heads(draw: Any) -> bytes:
    first = draw(_REQUEST_LINES) if draw(st.integers(0, 4)) == 0 else b"GET /echo HTTP/1.1"
    lines = [first, b"Host: a"]
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(b" folded " + draw(_VALUES))  # an obsolete line fold
        else:
            separator = draw(st.sampled_from([b": "] * 6 + [b":", b":\t", b" : "]))
            hostile = draw(st.integers(0, 3)) == 0
            name = draw(_NAMES if hostile and draw(st.booleans()) else _GOOD_NAMES)
            value = draw(_VALUES if hostile else _GOOD_VALUES)
            lines.append(name + separator + value)
    head = b"".join(line + draw(_ENDS) for line in lines) + b"\r\n"
    return head + draw(st.sampled_from([b"", b"abc", b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"]))


@_SETTINGS
@given(data=_heads())
def test_generated_heads_read_the_same_in_one_pass_and_line_by_line(data: bytes) -> None:
    """The requests the resource sees (method, target, headers in order) and
    every byte answered: identical whether the head came in one read (the
    one-pass reader, or its fallback) or through the line parser."""
    fast = _serve([data], fast=True)
    slow = _serve([data], fast=False)
    assert fast[:3] == slow[:3]


# -- RequestHeaderDecoder against hpack's Decoder -----------------------------------------


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1, by hpack (the reference these tests compare with)."""
    out = encode_integer(value, prefix_bits)
    out[0] |= first
    return bytes(out)


_huffman = Encoder().huffman_coder


@st.composite
def _strings(draw: Any) -> bytes:
    text = draw(
        st.sampled_from(
            [b"", b"/", b"/smuggled", b"GET", b"admin", b"x-forwarded-user", b":path", b"a=1"]
        )
    )
    how = draw(
        st.sampled_from(["raw"] * 4 + ["huffman"] * 4 + ["huffman+ff", "huffman-zeros", "eos"])
    )
    if how == "raw":
        return _integer(len(text), 7, 0x00) + text
    coded = bytearray(_huffman.encode(text))
    if how == "huffman+ff":
        coded += b"\xff"  # padding longer than 7 bits
    elif how == "huffman-zeros" and coded:
        coded[-1] &= 0xF0  # padding (or the last code) turned to zeros
    elif how == "eos":
        coded += b"\xff\xff\xff\xfc"  # the EOS symbol inside the string
    return _integer(len(coded), 7, 0x80) + bytes(coded)


@st.composite
def _representation(draw: Any) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:  # indexed field: static, dynamic, past both, 0
        index = st.sampled_from([0, 1, 2, 4, 5, 7, 32, 61, 62, 63, 64, 70] + [2, 4, 62] * 3)
        return _integer(draw(index), 7, 0x80)
    if kind == 1:  # dynamic table size update
        return _integer(draw(st.sampled_from([0, 32, 100, 4096, 4097, 4096])), 5, 0x20)
    first, prefix = draw(st.sampled_from([(0x40, 6), (0x00, 4), (0x10, 4)]))
    if draw(st.booleans()):  # the name by index (pseudo-headers among them)
        head = _integer(draw(st.sampled_from([1, 2, 4, 5, 7, 32, 58, 62, 63, 80])), prefix, first)
    else:
        head = bytes((first,)) + draw(_strings())
    return head + draw(_strings())


@st.composite
def _block_sequences(draw: Any) -> list[bytes]:
    return [
        b"".join(draw(st.lists(_representation(), min_size=1, max_size=6)))
        for _ in range(draw(st.integers(1, 3)))
    ]


def _decode(decoder: Any, block: bytes) -> Any:
    try:
        return [(bytes(name), bytes(value)) for name, value in decoder.decode(block, raw=True)]
    except HPACKError:
        return "refused"


@_SETTINGS
@given(blocks=_block_sequences(), limit=st.sampled_from([100, 4096]))
def test_generated_hpack_blocks_decode_as_hpack_decodes_them(
    blocks: list[bytes], limit: int
) -> None:
    stock, lean = Decoder(), RequestHeaderDecoder()
    stock.max_header_list_size = lean.max_header_list_size = limit
    for block in blocks:
        expected = _decode(stock, block)
        assert _decode(lean, block) == expected, block
        if expected == "refused":
            return  # (a connection error: nothing is decoded after it)
        assert list(lean.header_table.dynamic_entries) == list(stock.header_table.dynamic_entries)
        assert lean.header_table_size == stock.header_table_size


HPACK_SEQUENCES = {
    # A pseudo-header put into the dynamic table, then read back by index.
    "dynamic-path": [b"\x44\x09/smuggled", b"\xbe"],
    # The table shrunk to nothing: the entry is gone for both.
    "evicted-by-size-update": [b"\x44\x09/smuggled", b"\x20\xbe"],
    # Two size updates at the start (allowed), the second above the first.
    "two-size-updates": [b"\x44\x09/smuggled", b"\x20\x3f\xe1\x1f\xbe"],
    # A forged identity field indexed by one block, referenced by the next.
    "dynamic-identity": [b"\x40\x10x-forwarded-user\x05admin", b"\xbe\xbe"],
    # A name by index pointing at a dynamic pseudo-header entry.
    "name-from-dynamic-pseudo": [b"\x44\x01/", b"\x0f\x2f\x05/evil"],
}


@pytest.mark.parametrize("case", list(HPACK_SEQUENCES))
def test_hand_made_hpack_sequences_decode_as_hpack_decodes_them(case: str) -> None:
    stock, lean = Decoder(), RequestHeaderDecoder()
    for block in HPACK_SEQUENCES[case]:
        expected = _decode(stock, block)
        assert _decode(lean, block) == expected
        if expected == "refused":
            break
        assert list(lean.header_table.dynamic_entries) == list(stock.header_table.dynamic_entries)


def test_a_pseudo_header_from_the_dynamic_table_after_a_regular_field_is_malformed() -> None:
    """The decoder hands back ``:path`` wherever the block references it; the
    block check refuses it after a regular field (and a second ``:path``)."""
    decoder = RequestHeaderDecoder()
    decoder.decode(b"\x44\x09/smuggled", raw=True)  # :path /smuggled -> dynamic index 62
    fields = decoder.decode(b"\x82\x86\x01\x0eopen.localhost\x84\x00\x03x-a\x011\xbe", raw=True)
    assert fields[-1] == (b":path", b"/smuggled")
    with pytest.raises(MalformedHeaders):
        read_request_block(fields)


# -- read_request_block against h2's own validation -----------------------------------------


_H2_NAMES = st.sampled_from(
    [
        b":method",
        b":path",
        b":scheme",
        b":authority",
        b":status",
        b":protocol",
        b":evil",
        b"host",
        b"cookie",
        b"x-forwarded-user",
        b"X-Forwarded-User",
        b"x_forwarded_user",
        b"content-length",
        b"te",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"x a",
        b"x\x00a",
        b"",
    ]
)
_H2_VALUES = st.sampled_from(
    [
        b"GET",
        b"CONNECT",
        b"/",
        b"",
        b"https",
        b"app.localhost",
        b"other.localhost",
        b"trailers",
        b"gzip",
        b"5",
        b"a=1",
        b"_idgw_app=x",
        b" admin",
        b"admin\t",
        b"ad\x00min",
        b"ad\rmin",
        b"ad\nmin",
        b"ad\x0bmin",
        b"\x80",
    ]
)
_BASE = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"app.localhost"),
    (b":path", b"/"),
]


_H2_GOOD_NAMES = st.sampled_from(
    [b"cookie", b"x-forwarded-user", b"x_forwarded_user", b"accept", b"cookie"]
)
_H2_GOOD_VALUES = st.sampled_from([b"a=1", b"_idgw_app=x", b"admin", b"trailers", b"app.localhost"])


@st.composite
def _h2_blocks(draw: Any) -> list[tuple[bytes, bytes]]:
    block = list(_BASE) if draw(st.integers(0, 9)) else []
    for _ in range(draw(st.integers(0, 5))):
        hostile = draw(st.integers(0, 3)) == 0
        name = draw(_H2_NAMES if hostile and draw(st.booleans()) else _H2_GOOD_NAMES)
        value = draw(_H2_VALUES if hostile else _H2_GOOD_VALUES)
        # Regular fields after the pseudo-headers, mostly.
        where = len(block) if draw(st.integers(0, 4)) else draw(st.integers(0, len(block)))
        block.insert(where, (name, value))
    return block


_SERVER = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)


def _h2_reading(block: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]] | str:
    try:
        checked = list(h2.utilities.validate_headers(block, _SERVER))
        return list(h2.utilities.normalize_inbound_headers(checked, _SERVER))
    except (h2.exceptions.ProtocolError, ValueError, TypeError):
        return "refused"


@_SETTINGS
@given(block=_h2_blocks())
def test_generated_h2_blocks_are_refused_where_h2_refuses_them(
    block: list[tuple[bytes, bytes]],
) -> None:
    stock = _h2_reading(block)
    try:
        ours = read_request_block(block)
    except MalformedHeaders:
        return  # (refusing more than h2 is allowed: a stream error)
    assert stock != "refused", block
    assert isinstance(stock, list)
    regular = [(name, value) for name, value in stock if not name.startswith(b":")]
    cookies = [value for name, value in regular if name == b"cookie"]
    expected = [(name, value) for name, value in regular if name != b"cookie"]
    if cookies:
        expected.append((b"cookie", b"; ".join(cookies)))
    assert ours.fields == expected


# -- the Cookie header memo and the gateway's cookies ----------------------------------------


_OWN = (b"_idgw_app", b"_idgw_app_1", b"_idgw_flow_abc")


def _is_own(name: bytes) -> bool:
    return name in _OWN[:2] or name.startswith(b"_idgw_flow_")


# Each value names its pair, so a test can tell which pair reached the upstream.
_PAIRS = st.sampled_from(
    [
        b"_idgw_app=S1",
        b" _idgw_app = S2 ",
        b"\t_idgw_app\t=S3",
        b"_idgw_app_1=S4",
        b"_idgw_flow_abc=S5",
        b'_idgw_app="S6"',
        b"_idgw_app",
        b"=_idgw_app=N1",
        b"a=N2",
        b"_IDGW_APP=N3",
        b"b=_idgw_app=N4",
        b"",
        b" ",
    ]
)


@st.composite
def _cookie_headers(draw: Any) -> list[bytes]:
    return [
        draw(st.sampled_from([b";", b"; ", b" ;"])).join(draw(st.lists(_PAIRS, max_size=4)))
        for _ in range(draw(st.integers(1, 3)))
    ]


def _upstream_readings(header: bytes) -> set[str]:
    """The cookie names two common upstream parsers read in ``header``."""
    names = {name.decode("latin-1") for name in parse_cookie_header([header])}
    try:
        jar: SimpleCookie = SimpleCookie()
        jar.load(header.decode("latin-1"))
        names.update(jar.keys())
    except CookieError:
        pass
    return names


@_SETTINGS
@given(headers=_cookie_headers())
def test_what_the_gate_reads_as_its_cookie_never_reaches_the_upstream(
    headers: list[bytes],
) -> None:
    upstream = strip_cookies(headers, _is_own)
    if upstream is None:
        return
    assert not any(_is_own(name.encode("latin-1")) for name in _upstream_readings(upstream))
    # No value of a pair the gate reads as its own (S1...) goes upstream.
    for header in headers:
        for pair in header.split(b";"):
            name, sep, value = pair.partition(b"=")
            if sep and _is_own(name.strip(b" \t")):
                assert value.strip(b' \t"') not in upstream, (headers, upstream)


@_SETTINGS
@given(sequence=st.lists(_cookie_headers(), min_size=1, max_size=6))
def test_the_cookie_memo_answers_as_a_fresh_reading(sequence: list[list[bytes]]) -> None:
    reader = CookieHeaderReader(limit=3)
    for headers in sequence:
        assert reader.read(headers, _is_own) == (
            strip_cookies(headers, _is_own),
            parse_cookie_header(headers),
        )


# -- the admission memo and the opened-cookie memo ------------------------------------------


class _Forwarded:
    """The resource's forward(): what the gate let through, with which identity."""

    def __init__(self) -> None:
        self.identities: list[list[tuple[bytes, bytes]]] = []

    def forward(self, request: Any, state: Any, runtime: Any, host: bytes, **kwargs: Any) -> None:
        self.identities.append(list(kwargs.get("identity") or []))


def _staff_login(clock: Any) -> Any:
    import attrs

    from idgateway.config.model import AuthorizeRules
    from tests.unit.test_gate import make_login

    login = make_login(clock)
    auth = attrs.evolve(login.auth, authorize=AuthorizeRules(groups=("staff",)))
    login.auth = auth
    return login


def _visit(resource: _Forwarded) -> tuple[Any, Any]:
    from twisted.web.test.requesthelper import DummyRequest

    from idgateway.gate.session_check import Visit
    from idgateway.http.paths import PathReading

    request: Any = DummyRequest([b"echo"])
    request.request_id = b"r"
    request.idgw_reading = PathReading.__new__(PathReading)
    object.__setattr__(request.idgw_reading, "rules_route", None)
    visit = Visit(resource, request, None, None, b"app1.localhost", "/echo", None)  # type: ignore[arg-type]
    return visit, request


def _person(clock: Any, user: str, groups: list[str]) -> Any:
    from tests.unit.test_gate import session

    return session(clock.seconds(), user=user, claims={"groups": groups})


def test_a_stale_admission_memo_entry_under_a_reused_id_is_not_believed() -> None:
    """The memo is keyed by id(session): once a session is freed, another may
    get its id. An entry left under that id (Alice's verdict and headers) must
    not answer for Bob."""
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(1000)
    login = _staff_login(clock)
    alice, bob = _person(clock, "alice", ["staff"]), _person(clock, "bob", [])
    resource = _Forwarded()
    visit, _ = _visit(resource)
    login.admit(visit, alice, reissue=False)
    [(_, rules, failure, identity)] = [login._admission.get(id(alice))]
    assert failure is None
    # Alice's entry, as if left behind under the id Bob now has.
    login._admission.put(id(bob), (alice, rules, failure, identity))
    visit, request = _visit(resource)
    login.admit(visit, bob, reissue=False)
    assert request.responseCode == 403  # Bob is not staff: refused, not Alice's verdict
    assert len(resource.identities) == 1


def test_a_refreshed_session_is_judged_again_not_from_the_memo() -> None:
    """A session replaced between two requests (a refresh that changed its
    groups, a re-sealed cookie): a new object, a new verdict and new headers."""
    import attrs
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(1000)
    login = _staff_login(clock)
    before = _person(clock, "alice", ["staff"])
    resource = _Forwarded()
    login.admit(_visit(resource)[0], before, reissue=False)
    after = attrs.evolve(before, claims={"groups": []})
    visit, request = _visit(resource)
    login.admit(visit, after, reissue=False)
    assert request.responseCode == 403
    renamed = attrs.evolve(before, user="mallory")
    login.admit(_visit(resource)[0], renamed, reissue=False)
    users = [dict(identity)[b"X-Forwarded-User"] for identity in resource.identities]
    assert users == [b"alice", b"mallory"]


def test_an_opened_cookie_from_the_memo_still_expires() -> None:
    """The opened-cookie memo keeps the session and its expiry: a cookie past
    its Max-Age is refused although it was opened a moment ago."""
    from twisted.internet.task import Clock

    from idgateway.sessions.cookie import CookieSessionCodec, CookieSettings
    from idgateway.sessions.keys import KeyRing
    from tests.unit.test_gate import KEY

    clock = Clock()
    clock.advance(1000)
    codec = CookieSessionCodec(
        "app1",
        KeyRing.from_strings([KEY]),
        CookieSettings(name="_idgw_app1", secure=False),
        clock=clock.seconds,
    )
    alice = _person(clock, "alice", ["staff"])
    [set_cookie] = codec.encode(alice, max_age=60)
    name, _, value = set_cookie.split(b";")[0].partition(b"=")
    assert codec.decode({name: value})[0] == alice
    assert codec.decode({name: value})[0] == alice  # (from the memo)
    clock.advance(61)
    assert codec.decode({name: value})[0] is None
