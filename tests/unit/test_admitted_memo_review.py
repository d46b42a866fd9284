"""Review of the gate's memo of admitted Cookie headers (RouteLogin._admitted,
issue 17): more ways to try to get past it or to make it answer otherwise than
the full checks (decode, check, admit). Each case asks the memo, then the full
checks with the memo emptied, and wants the same answer; the cases here add to
tests/unit/test_gate_admitted_memo.py (same setup)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.web.test.requesthelper import DummyChannel

from idgateway.config.signing_keys import generate_key_file
from idgateway.gate.session_check import secure_origin
from idgateway.proxy.headers import TrustedProxies
from idgateway.server.channel import GatewayRequest
from idgateway.sessions.revocation import SID, _revocation_key, _sha256
from tests.unit.gate_decisions import GateUnderTest, app1_config

HOURS = 3600.0
# app1's paths: other rules.
PATHS = """\
    paths:
      - prefix: /admin/
        upstream: http://127.0.0.1:9
        authorize: {groups: [admins]}
"""


class Gate(GateUnderTest):
    """Route app1 (with PATHS, plus ``extra`` route keys)'s gate, with what
    it decided per request and how often a session cookie was decoded."""

    def __init__(self, extra: str = "", top: str = "") -> None:
        self.key = base64.b64encode(os.urandom(32)).decode("ascii")
        super().__init__(app1_config(self.key, paths=PATHS, extra=extra, top=top))

    def reload(
        self, extra: str = "", top: str = "", edit: Callable[[str], str] = lambda text: text
    ) -> None:
        """Build the state (again, as a reload does) with the same key."""
        self.build(edit(app1_config(self.key, paths=PATHS, extra=extra, top=top)))


def _kind(outcome: tuple[Any, ...]) -> tuple[Any, ...]:
    """An answer without the bytes of re-issued cookies (fresh nonces each time)."""
    if outcome[0] == "forward":
        return (*outcome[:3], bool(outcome[3]))
    return outcome


# -- the memo's answer against the full checks' answer ------------------------------
#
# A scenario: (session fields relative to now, then what happens between the
# first request, which fills the memo, and the second, and the second's lines).


def _advance(seconds: float) -> Callable[[Gate, bytes], list[bytes]]:
    def step(gate: Gate, line: bytes) -> list[bytes]:
        gate.clock.advance(seconds)
        return [line]

    return step


def _redis_revocation(gate: Gate, line: bytes) -> list[bytes]:
    # Another worker's back-channel logout, as its Redis message arrives here.
    revocation = gate.login.revocation
    assert revocation is not None
    key = _revocation_key("app1", _sha256("sid-1"), SID)
    revocation._on_message(b"v2 %r %s" % (gate.clock.seconds(), key.encode()))
    return [line]


def _ttl_raised(gate: Gate, line: bytes) -> list[bytes]:
    # A reload raises the route's max_duration: sessions that had outlived the
    # old one stay dead (RevocationList.dead_before), memo or not.
    revocation = gate.login.revocation
    assert revocation is not None
    revocation.set_ttl(9 * HOURS, {"app1": 9 * HOURS})
    return [line]


def _lines(make: Callable[[bytes], list[bytes]]) -> Callable[[Gate, bytes], list[bytes]]:
    return lambda gate, line: make(line)


SCENARIOS = [
    pytest.param({}, _advance(-120), "forward", id="clock-goes-back"),
    pytest.param({}, _advance(9 * HOURS), "login", id="clock-jumps-past-max-duration"),
    pytest.param(
        {"created_at": -(8 * HOURS) + 10, "last_seen": -1},
        _advance(11),
        "login",
        id="max-duration-within-slide",
    ),
    pytest.param(
        {"access_expires_at": 90, "tokens_at": None},
        _advance(31),
        "refresh",
        id="refresh-due-without-tokens-at",
    ),
    pytest.param(
        {"access_expires_at": 90, "tokens_at": None},
        _advance(29),
        "forward",
        id="refresh-not-yet-without-tokens-at",
    ),
    pytest.param(
        # Half the token's lifetime is less than refresh_leeway.
        {"access_expires_at": 50, "tokens_at": -50},
        _advance(1),
        "forward",
        id="short-token-within-slide",
    ),
    pytest.param(
        {"access_expires_at": 10, "refresh_token": None},
        _advance(30),
        "forward",
        id="expired-token-without-refresh-token",
    ),
    pytest.param({}, _redis_revocation, "login", id="other-workers-logout-via-redis"),
    pytest.param(
        {"created_at": -2 * HOURS},
        _ttl_raised,
        "login",
        id="reload-raises-max-duration",
    ),
    pytest.param(
        {}, _lines(lambda line: [b"_idgw_app1=forged; " + line]), "login", id="dup-name-first"
    ),
    pytest.param(
        {}, _lines(lambda line: [line + b"; _idgw_app1=forged"]), "forward", id="dup-name-last"
    ),
    pytest.param(
        {}, _lines(lambda line: [line, b"_idgw_app1=forged"]), "forward", id="dup-second-line"
    ),
    pytest.param({}, _lines(lambda line: [b"a=1", line]), "forward", id="cookie-on-a-second-line"),
]


@pytest.mark.parametrize(("fields", "step", "expected"), SCENARIOS)
def test_the_memo_answers_as_the_full_checks(fields, step, expected):
    gate = Gate()
    revocation = gate.login.revocation
    assert revocation is not None
    if "created_at" in fields and fields["created_at"] < -HOURS:
        revocation.set_ttl(HOURS, {"app1": HOURS})  # (lowered first: nobody dead yet)
    now = gate.clock.seconds()
    session = gate.session(
        **{name: (value if value is None else now + value) for name, value in fields.items()}
    )
    line = b"theme=dark; " + gate.cookie(session)
    first = gate.handle(gate.request([line]))
    assert first[0] == "forward" and first[3] == [], first
    assert len(gate.login._admitted) == 1, "the first admission is remembered"
    lines = step(gate, line)
    got = gate.handle(gate.request(lines, b"/projects/2"))
    gate.login._admitted.clear()
    full = gate.handle(gate.request(lines, b"/projects/2"))
    assert _kind(got) == _kind(full), (got, full)
    if expected == "forward":
        assert got[0] == "forward" and got[3] == [], got
        assert b"X-Forwarded-User: alice\r\n" in got[2]
        assert b"_idgw" not in (got[1] or b""), "the gateway's cookies never go upstream"
    else:
        assert got == (expected,), got


def test_a_finished_request_gets_nothing_forwarded():
    gate = Gate()
    line = gate.cookie(gate.session())
    assert gate.handle(gate.request([line]))[0] == "forward"
    request = gate.request([line])
    request.finished = True
    assert gate.handle(request) == ("nothing",)


def test_an_entry_for_another_header_object_is_not_taken():
    """An id() reused by another header (the first one gone): the entry names
    its own header object, and only that object is taken."""
    gate = Gate()
    alice = gate.cookie(gate.session())
    bob = gate.cookie(gate.session(id="s-2", user="bob", claims={"groups": ["staff"]}))
    assert gate.handle(gate.request([alice]))[0] == "forward"
    (entry,) = gate.login._admitted._current.values()
    bob_header = gate.login._cookie_headers.read([bob], gate.runtime.own_cookie)
    # Alice's admission filed under the id of Bob's header, as a reused id would.
    gate.login._admitted.put(id(bob_header), entry)
    got = gate.handle(gate.request([bob]))
    assert got[0] == "forward"
    assert b"X-Forwarded-User: bob\r\n" in got[2] and b"alice" not in got[2], got


def test_a_header_with_too_many_cookies_is_not_remembered():
    gate = Gate()
    line = b"; ".join(b"c%d=1" % n for n in range(70)) + b"; " + gate.cookie(gate.session())
    for _ in range(2):
        assert gate.handle(gate.request([line]))[0] == "forward"
    assert len(gate.login._admitted) == 0
    assert gate.decoded == 2, "each judged in full"


def test_the_request_fields_are_the_full_checks():
    """The access log, the WebSocket tunnel and back-channel logout read these."""
    gate = Gate()
    line = gate.cookie(gate.session())
    fields = []
    for _ in range(2):
        request = gate.request([line])
        gate.handle(request)
        fields.append(
            (
                request.idgw_user,
                request.idgw_login,
                request.idgw_session,
                request.idgw_session_id,
            )
        )
    assert gate.decoded == 1, "the second came from the memo"
    assert fields[0] == fields[1] == ("alice", gate.login, fields[0][2], None)


def test_a_websocket_upgrade_from_the_memo_is_the_same_head():
    """Through the real resource: an upgrade taken from the memo carries the
    identity headers and the upgrade as the full checks' does."""
    from idgateway.routing.resource import GatewayResource, StateHolder

    gate = Gate()
    submitted: list[Any] = []
    for pool in gate.state.pools.values():
        pool.submit = submitted.append  # type: ignore[method-assign]
    resource = GatewayResource(StateHolder(gate.state), tls=False, port=8443)
    line = b"a=1; " + gate.cookie(gate.session())

    def head() -> bytes:
        request = gate.request([line])
        headers = request.requestHeaders
        headers.setRawHeaders(b"X-Request-Id", [b"fixed-id"])
        headers.setRawHeaders(b"Connection", [b"Upgrade"])
        headers.setRawHeaders(b"Upgrade", [b"websocket"])
        headers.setRawHeaders(b"Sec-WebSocket-Key", [b"dGhlIHNhbXBsZSBub25jZQ=="])
        headers.setRawHeaders(b"Sec-WebSocket-Version", [b"13"])
        # A client's own identity header, which must not survive either way.
        headers.setRawHeaders(b"X-Forwarded-User", [b"mallory"])
        request.client = None
        resource.render(request)
        return bytes(submitted[-1].head)

    full = head()
    decoded = gate.decoded
    again = head()
    assert gate.decoded == decoded, "the second came from the memo"
    assert again == full
    assert b"X-Forwarded-User: alice\r\n" in again and b"mallory" not in again
    assert b"Upgrade: websocket\r\n" in again


def test_a_public_path_gets_no_identity_from_the_memo():
    gate = Gate(extra="    public_paths: [/healthz]\n")
    line = gate.cookie(gate.session())
    assert gate.handle(gate.request([line]))[0] == "forward"
    public = gate.handle(gate.request([line], b"/healthz"))
    assert public[0] == "forward" and public[2] == b"", "no identity on a public path"
    near = gate.handle(gate.request([line], b"/healthz-internal"))
    assert b"X-Forwarded-User: alice\r\n" in near[2]
    assert gate.handle(gate.request([], b"/healthz-internal")) == ("login",)


def _old_secure_origin(tls: bool, trusted: TrustedProxies, proto: list[bytes], peer: Any) -> bool:
    """secure_origin before 7841adf (the header read whatever the config)."""
    if tls:
        return True
    if not proto or proto[0].strip().lower() != b"https":
        return False
    return peer is not None and trusted.trusts(peer)


@pytest.mark.parametrize("cidrs", [[], ["10.0.0.0/8"], ["0.0.0.0/0"], ["::/0"]])
@pytest.mark.parametrize("peer", ["10.1.2.3", "192.0.2.7", "::1", "unix", None])
@pytest.mark.parametrize("proto", [[], [b"https"], [b" HTTPS "], [b"http", b"https"]])
@pytest.mark.parametrize("tls", [False, True])
def test_secure_origin_answers_as_before_7841adf(cidrs, peer, proto, tls):
    trusted = TrustedProxies(cidrs)
    state = attrs.make_class("State", ["trusted"])(trusted)
    resource = attrs.make_class("Resource", ["tls"])(tls)
    request = GatewayRequest(DummyChannel())
    if proto:
        request.requestHeaders.setRawHeaders(b"X-Forwarded-Proto", proto)
    request.client = attrs.make_class("Peer", ["host"])(peer) if peer is not None else None
    expected = _old_secure_origin(tls, trusted, proto, peer)
    assert secure_origin(resource, request, state) is expected  # type: ignore[arg-type]


def test_an_identity_assertion_from_the_memo_is_the_full_checks_one(tmp_path: Path):
    """The assertion is signed afresh per request (iat, exp) from the identity
    the full checks found: at the same instant, the same claims."""
    key = generate_key_file(str(tmp_path / "assertion.pem"), "ed25519")
    gate = Gate(
        extra="    assertion: {header: X-App1-Proof, audience: orders}\n",
        top=f"assertion_keys: [{key.path}]\n",
    )
    assert gate.login.assertion is not None
    line = gate.cookie(gate.session())
    first = gate.handle(gate.request([line]))
    decoded = gate.decoded
    got = gate.handle(gate.request([line]))
    assert gate.decoded == decoded, "the second came from the memo"
    gate.login._admitted.clear()
    full = gate.handle(gate.request([line]))

    def claims(outcome: tuple[Any, ...]) -> dict[str, Any]:
        import json

        (proof,) = [v for n, v in _pairs(outcome[2]) if n == b"X-App1-Proof"]
        payload = proof.split(b".")[1]
        payload += b"=" * (-len(payload) % 4)
        found = json.loads(base64.urlsafe_b64decode(payload))
        found.pop("jti", None)
        return found

    assert claims(got) == claims(full) == claims(first)
    assert claims(got)["sub"] == "sub-1" and claims(got)["aud"] == "orders"
    others = [p for p in _pairs(got[2]) if p[0] != b"X-App1-Proof"]
    assert others == [p for p in _pairs(full[2]) if p[0] != b"X-App1-Proof"]


def _pairs(lines: bytes) -> list[tuple[bytes, bytes]]:
    return [tuple(line.split(b": ", 1)) for line in lines.split(b"\r\n") if line]  # type: ignore[misc]


def _chunked(gate: Gate) -> list[bytes]:
    # Claims that do not compress: a session cookie in two chunks.
    session = gate.session(
        claims={
            "username": "alice",
            "groups": ["staff"],
            "blob": base64.b64encode(os.urandom(3000)).decode(),
        }
    )
    pairs = [value.split(b";", 1)[0] for value in gate.login.codecs[False].encode(session)]
    assert len(pairs) == 2, pairs
    return pairs


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(lambda pairs: [b"; ".join(pairs)], "forward", id="as-set"),
        pytest.param(lambda pairs: [b"; ".join(reversed(pairs))], "forward", id="chunks-reordered"),
        pytest.param(lambda pairs: list(pairs), "forward", id="one-line-per-chunk"),
        pytest.param(
            lambda pairs: [pairs[0] + b"; " + pairs[1][:-4] + b"AAAA"], "login", id="chunk-tampered"
        ),
        pytest.param(lambda pairs: [pairs[0]], "login", id="chunk-missing"),
    ],
)
def test_a_chunked_session_from_the_memo_is_the_full_checks_one(make, expected):
    gate = Gate()
    pairs = _chunked(gate)
    line = b"; ".join(pairs)
    assert gate.handle(gate.request([line]))[0] == "forward"
    assert len(gate.login._admitted) == 1
    lines = make(pairs)
    got = gate.handle(gate.request(lines))
    gate.login._admitted.clear()
    full = gate.handle(gate.request(lines))
    assert _kind(got) == _kind(full), (got, full)
    if expected == "forward":
        assert got[0] == "forward" and b"X-Forwarded-User: alice\r\n" in got[2]
        assert got[1] is None, "no chunk of the session goes upstream"
    else:
        assert got == (expected,)


def test_after_a_slide_the_old_header_is_judged_in_full_and_the_new_one_remembered():
    gate = Gate()
    old = gate.cookie(gate.session())
    assert gate.handle(gate.request([old]))[0] == "forward"
    gate.clock.advance(61)
    slid = gate.handle(gate.request([old]))
    assert slid[0] == "forward" and slid[3], "the slid session is re-issued"
    new = slid[3][0].split(b";", 1)[0]
    assert gate.handle(gate.request([new]))[0] == "forward"
    decoded = gate.decoded
    again_new = gate.handle(gate.request([new]))
    assert gate.decoded == decoded and again_new[3] == [], "the re-issued cookie is remembered"
    again_old = gate.handle(gate.request([old]))
    assert gate.decoded == decoded + 1, "the old cookie is not taken from the memo"
    assert again_old[0] == "forward" and again_old[3], "and is slid again, as in full"


def _edit(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new)

    return edit


@pytest.mark.parametrize(
    ("extra", "edit", "expected"),
    [
        pytest.param(
            "    headers: {preset: mod_auth_openidc}\n",
            _edit("", ""),
            b"X-Remote-User: alice\r\n",
            id="identity-header-names-changed",
        ),
        pytest.param(
            "",
            _edit("authorize: {groups: [staff]}", "authorize: {groups: [admins]}"),
            "403",
            id="rules-changed",
        ),
        pytest.param(
            "",
            _edit("inactivity_timeout: 1h", "inactivity_timeout: 10s"),
            "login",
            id="inactivity-timeout-lowered",
        ),
    ],
)
def test_a_reload_judges_a_remembered_header_afresh(extra, edit, expected):
    """A reload builds a new gate for the route: what the old one remembered
    is not what the new one's configuration says."""
    gate = Gate()
    line = gate.cookie(gate.session())
    assert gate.handle(gate.request([line]))[0] == "forward"
    assert gate.handle(gate.request([line]))[0] == "forward"
    before = gate.login
    gate.clock.advance(20)
    gate.reload(extra, edit=edit)
    assert gate.login is not before
    decoded = gate.decoded
    got = gate.handle(gate.request([line]))
    assert gate.decoded == decoded + 1, "judged in full by the new gate"
    if isinstance(expected, bytes):
        assert got[0] == "forward" and expected in got[2], got
        assert b"X-Forwarded-User" not in got[2]
    else:
        assert got == (expected,), got
