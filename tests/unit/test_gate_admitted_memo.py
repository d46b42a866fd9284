"""The gate's memo of admitted Cookie headers (RouteLogin._admitted): a request
with the Cookie header of one admitted before skips decode, check and admit,
and must meet exactly what they would have said. Each case below tries to get
past the memo: time running out on the session or its tokens, a logout, a
path with other rules or a step-up, another scheme, a changed Cookie header,
a client gone; each is checked against the full checks' answer."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from twisted.internet import defer

from idgateway.gate import session_check as gate_module
from tests.unit.gate_decisions import GateUnderTest, app1_config

# app1's paths: other rules, a step-up, no rules.
PATHS = """\
    paths:
      - prefix: /admin/
        upstream: http://127.0.0.1:9
        authorize: {groups: [admins]}
      - prefix: /reports/
        upstream: http://127.0.0.1:9
        login: {acr_values: [mfa]}
      - prefix: /open/
        upstream: http://127.0.0.1:9
        authorize: {}
"""
MAX_DURATION = 8 * 3600.0


class Gate(GateUnderTest):
    """Route app1 (with PATHS)'s gate, with what it decided per request."""

    def __init__(self) -> None:
        key = base64.b64encode(os.urandom(32)).decode("ascii")
        super().__init__(app1_config(key, paths=PATHS))


def _run(gate: Gate, scenario: Callable[[Gate, bytes], tuple[list[bytes], bytes]]) -> Any:
    """Admit once (the memo is filled), change something, ask again; then ask
    the same without the memo (the full checks): both answers."""
    session = gate.session()
    line = b"theme=dark; " + gate.cookie(session) + b"; _ga=GA1.1"
    first = gate.handle(gate.request([line]))
    assert first[0] == "forward" and first[3] == [], first
    lines, path = scenario(gate, line)
    got = gate.handle(gate.request(lines, path))
    gate.login._admitted.clear()
    full = gate.handle(gate.request(lines, path))
    return got, full


def _kind(outcome: tuple[Any, ...]) -> tuple[Any, ...]:
    """An answer without the bytes of re-issued cookies (fresh nonces each time)."""
    if outcome[0] == "forward":
        return (*outcome[:3], bool(outcome[3]))
    return outcome


def _same(gate: Gate, line: bytes) -> tuple[list[bytes], bytes]:
    gate.clock.advance(30)
    return [line], b"/projects/2"


def _past_slide(gate: Gate, line: bytes) -> tuple[list[bytes], bytes]:
    gate.clock.advance(gate_module.SLIDE_EVERY + 1)
    return [line], b"/projects/2"


def _logged_out(kind: str) -> Callable[[Gate, bytes], tuple[list[bytes], bytes]]:
    def scenario(gate: Gate, line: bytes) -> tuple[list[bytes], bytes]:
        revocation = gate.login.revocation
        assert revocation is not None
        now = gate.clock.seconds()
        if kind == "sid":  # back-channel logout
            coro = revocation.revoke("app1", "sid-1")
        elif kind == "id":  # sign-out elsewhere with a copy of the cookie
            coro = revocation.revoke_session("app1", "s-1", now)
        else:  # a logout token naming the subject only
            coro = revocation.revoke_sub("app1", "sub-1", now)
        defer.ensureDeferred(coro)
        return [line], b"/projects/2"

    return scenario


def _path(path: bytes) -> Callable[[Gate, bytes], tuple[list[bytes], bytes]]:
    return lambda gate, line: ([line], path)


def _lines(
    make: Callable[[bytes], list[bytes]],
) -> Callable[[Gate, bytes], tuple[list[bytes], bytes]]:
    return lambda gate, line: (make(line), b"/projects/2")


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        pytest.param(_same, "forward", id="same-header-nothing-due"),
        pytest.param(_past_slide, "reissue", id="slide-due-reissues-the-cookie"),
        pytest.param(_logged_out("sid"), "login", id="back-channel-logout-sid"),
        pytest.param(_logged_out("id"), "login", id="session-id-revoked"),
        pytest.param(_logged_out("sub"), "login", id="subject-logged-out"),
        pytest.param(_path(b"/admin/users"), "403", id="path-with-other-rules"),
        pytest.param(_path(b"/reports/q1"), "step_up", id="path-with-step-up"),
        pytest.param(
            _lines(lambda line: [line + b"; _idgw_app1_1=forged"]), "forward", id="own-chunk-added"
        ),
        pytest.param(_lines(lambda line: [line, b"extra=1"]), "forward", id="two-cookie-lines"),
        pytest.param(_lines(lambda line: [b"x=1; " + line]), "forward", id="reordered-header"),
    ],
)
def test_a_remembered_admission_meets_the_full_checks(scenario, expected):
    gate = Gate()
    got, full = _run(gate, scenario)
    assert _kind(got) == _kind(full), (got, full)
    if expected == "forward":
        assert got[0] == "forward" and got[3] == [], got
        assert b"_idgw" not in (got[1] or b""), "the gateway's cookies never go upstream"
    elif expected == "reissue":
        assert got[0] == "forward" and got[3], "the slid session is re-issued"
    else:
        assert got == (expected,), got


@pytest.mark.parametrize("tls_how", ["tls-listener", "trusted-x-forwarded-proto"])
def test_another_scheme_is_judged_with_its_own_cookie(tls_how):
    gate = Gate()
    session = gate.session()
    line = gate.cookie(session)  # the plain-HTTP cookie
    assert gate.handle(gate.request([line]))[0] == "forward"
    gate.resource.tls = True  # the same header on a TLS listener
    decoded = gate.decoded
    got = gate.handle(gate.request([line]))
    assert gate.decoded == decoded + 1, "judged afresh, not from the memo"
    assert got == ("login",), "the plain-HTTP cookie is not the TLS one"


def test_the_memo_is_taken_and_strips_the_gateways_cookies():
    gate = Gate()
    line = b"a=1; " + gate.cookie(gate.session()) + b"; b=2"
    first = gate.handle(gate.request([line]))
    decoded = gate.decoded
    for n in range(5):
        gate.clock.advance(5)
        again = gate.handle(gate.request([line], b"/projects/%d" % n))
        assert again == first
    assert gate.decoded == decoded, "decode, check and admit skipped"
    assert first[1] == b"a=1; b=2", "the session cookie never goes upstream"
    assert b"X-Forwarded-User: alice\r\n" in first[2], first


def test_the_upstream_head_is_the_same_byte_for_byte():
    """Through the real resource (the pool only takes the exchange): the head
    from the memo is the head the full checks build, identity headers, Cookie
    and all (a fixed X-Request-Id: ids are minted per request)."""
    from idgateway.routing.resource import GatewayResource, StateHolder

    gate = Gate()
    submitted: list[Any] = []
    for pool in gate.state.pools.values():
        pool.submit = submitted.append  # type: ignore[method-assign]
    resource = GatewayResource(StateHolder(gate.state), tls=False, port=8443)
    line = b"a=1; " + gate.cookie(gate.session()) + b"; b=2"

    def head() -> bytes:
        request = gate.request([line])
        request.requestHeaders.setRawHeaders(b"X-Request-Id", [b"fixed-id"])
        request.client = None  # (DummyChannel's peer is an address; keep it plain)
        resource.render(request)
        return bytes(submitted[-1].head)

    decoded = gate.decoded
    full = head()
    assert gate.decoded == decoded + 1
    again = head()
    assert gate.decoded == decoded + 1, "the second came from the memo"
    assert again == full
    assert b"X-Forwarded-User: alice\r\n" in full and b"Cookie: a=1; b=2\r\n" in full
    assert b"_idgw" not in full


@pytest.mark.parametrize(
    ("changes", "advance", "expected"),
    [
        pytest.param({"created_at_ago": MAX_DURATION - 30}, 31, ("login",), id="max-duration"),
        pytest.param(
            {"created_at_ago": MAX_DURATION - 30}, 29, "forward", id="max-duration-not-yet"
        ),
        pytest.param({"expires_in": 90, "tokens_ago": 3000}, 31, ("refresh",), id="refresh-due"),
        pytest.param({"expires_in": 90, "tokens_ago": 3000}, 29, "forward", id="refresh-not-yet"),
    ],
)
def test_deadlines_end_the_memo_on_time(changes, advance, expected):
    gate = Gate()
    now = gate.clock.seconds()
    fields: dict[str, Any] = {}
    if "created_at_ago" in changes:
        fields["created_at"] = now - changes["created_at_ago"]
    if "expires_in" in changes:
        fields["access_expires_at"] = now + changes["expires_in"]
        fields["tokens_at"] = now - changes["tokens_ago"]
    line = gate.cookie(gate.session(**fields))
    assert gate.handle(gate.request([line]))[0] == "forward"
    gate.clock.advance(advance)
    got = gate.handle(gate.request([line]))
    if expected == "forward":
        assert got[0] == "forward" and got[3] == []
    else:
        assert got == expected


def test_a_cookie_past_its_sealed_expiry_is_not_taken_from_the_memo():
    gate = Gate()
    line = gate.cookie(gate.session(), max_age=600)
    assert gate.handle(gate.request([line]))[0] == "forward"
    codec = gate.login.codecs[False]
    later = time.time() + 601
    codec._clock = lambda: later  # type: ignore[method-assign]
    assert gate.handle(gate.request([line])) == ("login",)


def test_a_client_gone_gets_nothing_forwarded():
    gate = Gate()
    line = gate.cookie(gate.session())
    assert gate.handle(gate.request([line]))[0] == "forward"
    request = gate.request([line])
    request.client_gone = True
    assert gate.handle(request) == ("nothing",)


def test_the_memo_starts_again_with_the_cookie_reader():
    """It holds only headers the reader holds: when the reader lets its go,
    the next admission empties the memo (no header kept alive by it)."""
    gate = Gate()
    line = gate.cookie(gate.session())
    gate.handle(gate.request([line]))
    assert len(gate.login._admitted) == 1
    gate.login._cookie_headers._forget()
    other = gate.cookie(gate.session(id="s-2"))
    assert gate.handle(gate.request([other]))[0] == "forward"
    assert len(gate.login._admitted) == 1, "the old header's admission is gone"
    big = b"pad=" + b"x" * 9000 + b"; " + line  # more than the reader keeps
    assert gate.handle(gate.request([big]))[0] == "forward"
    assert gate.handle(gate.request([big]))[0] == "forward"
    assert len(gate.login._admitted) == 1, "a header the reader does not keep is not kept"


def test_an_admission_under_a_paths_rules_is_not_one_under_the_routes():
    """Admitted on a path whose own rules let anyone in: the route's rules,
    which this session does not meet, still apply everywhere else."""
    gate = Gate()
    line = gate.cookie(gate.session(claims={"username": "bob", "groups": []}))
    assert gate.handle(gate.request([line], b"/open/x"))[0] == "forward"
    assert gate.handle(gate.request([line], b"/open/y"))[0] == "forward"
    assert gate.handle(gate.request([line], b"/projects/1")) == ("403",)


def test_a_route_without_public_paths_has_no_public_path():
    """(Even a reading with no texts to match, which every_reading_is_public
    would call public: the gate asks it only when public paths are set.)"""
    gate = Gate()
    assert gate.login.public == ()
    request = gate.request([b"theme=dark"])
    request.idgw_reading = attrs.evolve(request.idgw_reading, matched=())
    assert gate.handle(request) == ("login",)
