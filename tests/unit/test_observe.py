"""The access and audit logs: fields, formats, user hashing, nothing secret."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from idgateway.config.load import ConfigError, load_config
from idgateway.config.model import LoggingSettings
from idgateway.observe import access_log as observe
from idgateway.server.channel import GatewayRequest, GatewaySite

TEXT = LoggingSettings()
JSON = LoggingSettings(format="json")


def fake_request(settings: LoggingSettings | None = TEXT, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "idgw_logging": settings,
        "idgw_started": 100.0,
        "idgw_route": "app1",
        "idgw_user": "alice",
        "idgw_upstream_ms": 12.5,
        "method": b"GET",
        "path": b"/echo",
        "uri": b"/echo?code=SECRETCODE&access_token=SECRETTOKEN",
        "code": 200,
        "sentLength": 1234,
        "request_id": b"req-1",
        "client": IPv4Address("TCP", "192.0.2.7", 5555),
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def access_events(events: list[LogEvent] | Any) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == "idgateway.access"]


def emit(request: Any, now: float = 100.25) -> list[LogEvent]:
    with capturedLogs() as events:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(observe, "monotonic", lambda: now)
            observe.log_access(request)
    return access_events(events)


def test_text_access_line_has_every_field_and_no_query() -> None:
    [event] = emit(fake_request())
    line = formatEvent(event)
    assert line == (
        "GET /echo 200 1234B route=app1 user=alice gw=250.0ms up=12.5ms id=req-1 ip=192.0.2.7"
    )
    assert event["route"] == "app1" and event["status"] == 200 and event["bytes"] == 1234
    assert event["gateway_ms"] == 250.0 and event["upstream_ms"] == 12.5
    assert event["request_id"] == "req-1" and event["client"] == "192.0.2.7"
    assert "SECRET" not in line and "?" not in line


def test_path_never_carries_a_query_string() -> None:
    [event] = emit(fake_request(path=b"/cb?code=SECRETCODE"))
    assert event["path"] == "/cb"
    assert "SECRETCODE" not in formatEvent(event)


def test_requests_that_were_not_proxied_have_no_upstream_time() -> None:
    [event] = emit(fake_request(idgw_upstream_ms=None, idgw_user=None, idgw_route=None))
    assert formatEvent(event) == (
        "GET /echo 200 1234B route=- user=- gw=250.0ms id=req-1 ip=192.0.2.7"
    )


def test_json_format_is_one_json_object_of_the_fields() -> None:
    [event] = emit(fake_request(JSON))
    record = json.loads(formatEvent(event))
    assert record == {
        "event": "access",
        "route": "app1",
        "method": "GET",
        "path": "/echo",
        "status": 200,
        "bytes": 1234,
        "gateway_ms": 250.0,
        "upstream_ms": 12.5,
        "request_id": "req-1",
        "client": "192.0.2.7",
        "user": "alice",
    }


def test_user_can_be_hashed_or_left_out() -> None:
    digest = hashlib.sha256(b"alice").hexdigest()[:16]
    [hashed] = emit(fake_request(LoggingSettings(user_id="hash")))
    assert hashed["user"] == digest and "alice" not in formatEvent(hashed)
    [hidden] = emit(fake_request(LoggingSettings(user_id="none", format="json")))
    assert "user" not in hidden and "alice" not in formatEvent(hidden)
    [hidden_text] = emit(fake_request(LoggingSettings(user_id="none")))
    assert "user=" not in formatEvent(hidden_text)
    assert observe.user_hash("alice") == digest


def test_access_log_can_be_turned_off() -> None:
    assert emit(fake_request(LoggingSettings(access_log=False))) == []
    # A request the gateway never rendered has no settings: nothing to report.
    assert emit(fake_request(None)) == []


def test_audit_events() -> None:
    request = fake_request(LoggingSettings(user_id="hash"))
    with capturedLogs() as events:
        observe.login_succeeded(request, route="app1", user="alice")
        observe.login_failed(request, route="app1", reason="bad_state")
        observe.signed_out(request, route="app1", user="alice")
        observe.backchannel_logout(request, route="app1", sid="SID123", sub="alice", ended="x")
    audit = [e for e in events if e.get("log_namespace") == "idgateway.audit"]
    assert [e["event"] for e in audit] == [
        "login_succeeded",
        "login_failed",
        "signed_out",
        "backchannel_logout",
    ]
    lines = [formatEvent(e) for e in audit]
    assert lines[1] == "route app1: login failed (bad_state) [req-1]"
    assert all("alice" not in line and "SID123" not in line for line in lines)
    assert audit[3]["sid"] == observe.user_hash("SID123")
    json_request = fake_request(JSON)
    with capturedLogs() as events:
        observe.login_succeeded(json_request, route="app1", user="alice")
    [event] = [e for e in events if e.get("log_namespace") == "idgateway.audit"]
    assert json.loads(formatEvent(event)) == {
        "event": "login_succeeded",
        "route": "app1",
        "user": "alice",
        "request_id": "req-1",
    }


class _Answer(Resource):
    """Stands in for GatewayResource: sets the observe hooks and answers."""

    isLeaf = True

    def render(self, request: GatewayRequest) -> Any:  # type: ignore[override]
        request.idgw_logging = TEXT
        request.idgw_started = observe.now()
        request.idgw_route = "app1"
        request.request_id = b"rid-7"
        request.setResponseCode(201)
        request.responseHeaders.setRawHeaders(b"set-cookie", [b"_idgw=SECRETCOOKIE"])
        request.responseHeaders.setRawHeaders(b"content-length", [b"5"])
        request.write(b"hello")
        request.finish()
        return NOT_DONE_YET


def test_the_site_logs_every_finished_request() -> None:
    site = GatewaySite(_Answer())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel is not None
    channel.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.9", 4000)))
    raw = (
        b"GET /cb?code=SECRETCODE HTTP/1.1\r\nHost: app1\r\n"
        b"Cookie: _idgw=SECRETCOOKIE\r\nAuthorization: Bearer SECRETTOKEN\r\n\r\n"
    )
    with capturedLogs() as events:
        channel.dataReceived(raw)
    channel.connectionLost(Failure(ConnectionDone()))
    [event] = access_events(events)
    line = formatEvent(event)
    assert line.startswith("GET /cb 201 5B route=app1 user=- gw=")
    assert line.endswith(" id=rid-7 ip=198.51.100.9")
    assert "SECRET" not in line and "SECRET" not in json.dumps(event, default=str)


def test_logging_config(tmp_path: Path) -> None:
    def load(block: str) -> Any:
        path = tmp_path / "gateway.yaml"
        path.write_text(
            "listeners: [{address: 127.0.0.1:8080}]\n"
            "routes: [{name: a, default: true, upstream: http://127.0.0.1:3000}]\n" + block
        )
        return load_config(str(path))

    assert load("").logging == LoggingSettings()
    settings = load("logging: {access_log: false, format: json, user_id: hash}\n").logging
    assert settings == LoggingSettings(access_log=False, format="json", user_id="hash")
    with pytest.raises(ConfigError) as error:
        load("logging: {format: xml, user_id: sha}\n")
    assert "logging.format" in str(error.value) and "text, json" in str(error.value)
    assert "logging.user_id" in str(error.value)


class _Pending(Resource):
    """Stands in for GatewayResource: takes the request and never answers."""

    isLeaf = True

    def __init__(self, write_head: bool = False) -> None:
        super().__init__()
        self.write_head = write_head

    def render(self, request: GatewayRequest) -> Any:  # type: ignore[override]
        request.idgw_logging = TEXT
        request.idgw_started = observe.now()
        request.idgw_route = "app1"
        request.request_id = b"rid-8"
        if self.write_head:
            request.setResponseCode(200)
            request.write(b"part of it")
        return NOT_DONE_YET


@pytest.mark.parametrize(
    ("write_head", "status"), [(False, "499 0B"), (True, "200 10B")], ids=["nothing", "half"]
)
def test_a_request_cut_off_before_its_response_ended_is_logged_once(
    write_head: bool, status: str
) -> None:
    site = GatewaySite(_Pending(write_head))
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel is not None
    channel.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.9", 4000)))
    with capturedLogs() as events:
        channel.dataReceived(b"GET /slow?token=SECRET HTTP/1.1\r\nHost: app1\r\n\r\n")
        assert access_events(events) == []
        channel.connectionLost(Failure(ConnectionDone()))
    [event] = access_events(events)
    line = formatEvent(event)
    assert line.startswith(f"GET /slow {status} route=app1 user=- gw=")
    assert line.endswith(" id=rid-8 ip=198.51.100.9 cut-off")
    assert event["cut_off"] is True and "SECRET" not in line


def test_with_twistds_text_log_on_stdout_access_lines_are_written_there_as_it_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from twisted.logger import textFileLogObserver

    monkeypatch.setattr(observe, "time", lambda: 1700000000.5)
    monkeypatch.setattr(observe, "monotonic", lambda: 100.25)
    # What twistd's observer writes for the event...
    via_observer = io.StringIO()
    with capturedLogs() as events:
        observe.log_access(fake_request())
    textFileLogObserver(via_observer)(access_events(events)[0])
    # ... is what the gateway writes itself when twistd logs text on stdout.
    direct = io.StringIO()
    observe.write_access_text_to(direct)
    try:
        with capturedLogs() as events:
            observe.log_access(fake_request())
    finally:
        observe.write_access_text_to(None)
    assert access_events(events) == []
    assert direct.getvalue() == via_observer.getvalue()
    assert direct.getvalue().endswith(
        "] GET /echo 200 1234B route=app1 user=alice gw=250.0ms up=12.5ms id=req-1 ip=192.0.2.7\n"
    )
    # JSON lines stay log events.
    observe.write_access_text_to(direct)
    try:
        with capturedLogs() as events:
            observe.log_access(fake_request(JSON))
    finally:
        observe.write_access_text_to(None)
    assert len(access_events(events)) == 1


def test_the_gateway_leaves_cookie_parsing_to_the_gate() -> None:
    seen: list[GatewayRequest] = []

    class _Take(_Answer):
        def render(self, request: GatewayRequest) -> Any:  # type: ignore[override]
            seen.append(request)
            return super().render(request)

    site = GatewaySite(_Take())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel is not None
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: app1\r\nCookie: a=1; _idgw=x\r\n\r\n")
    [request] = seen
    assert request.received_cookies == {}
    assert request.requestHeaders.getRawHeaders(b"cookie") == [b"a=1; _idgw=x"]


@pytest.mark.parametrize(
    "user_id, user, route, upstream_ms, cut_off, client",
    [
        ("full", "alice", "app", 1.5, False, IPv4Address("TCP", "10.0.0.7", 5555)),
        ("hash", "alice", "app", None, False, IPv4Address("TCP", "10.0.0.7", 5555)),
        ("full", None, "app", 0.3, True, None),  # signed out: "-"; a UNIX socket
        ("none", "alice", None, None, False, IPv4Address("TCP", "10.0.0.7", 5555)),
        # The upstream time as proxy.response leaves it, unrounded: the line
        # shows what str(round(ms, 1)) shows (ties to even, carries, 0.0).
        ("full", "alice", "app", 12.349999999, False, None),
        ("full", "alice", "app", 0.25, False, None),
        ("full", "alice", "app", 0.35, False, None),
        ("full", "alice", "app", 9.96, False, None),
        ("full", "alice", "app", 0.0401, False, None),
        ("full", "alice", "app", 123456.789, False, None),
    ],
)
def test_the_direct_text_line_is_the_logged_events_line(
    user_id, user, route, upstream_ms, cut_off, client
):
    """Workers and twistd -n write text lines without an event; they must not differ."""
    settings = LoggingSettings(user_id=user_id)
    request = SimpleNamespace(
        idgw_logging=settings,
        idgw_started=100.0,
        idgw_route=route,
        idgw_user=user,
        idgw_upstream_ms=upstream_ms,
        idgw_cut_off=cut_off,
        method=b"GET",
        path=b"/caf\xc3\xa9",
        code=200,
        sentLength=1234,
        request_id=b"r-1",
        client=client,
    )
    fields = observe.access_fields(request, 100.0123)
    shown = observe.user_field(settings, user)
    if shown is not None:
        fields["user"] = shown
    elif user_id != "none":
        fields["user"] = observe.ANONYMOUS
    # The line's documented shape, spelled out from the fields (the path's
    # UTF-8 bytes escaped as \xHH).
    assert fields["path"] == "/caf\xc3\xa9"
    fields["path"] = "/caf\\xC3\\xA9"
    expected = (
        f"{fields['method']} {fields['path']} {fields['status']} {fields['bytes']}B"
        f" route={fields['route']}"
        + (f" user={fields['user']}" if "user" in fields else "")
        + f" gw={fields['gateway_ms']}ms"
        + ("" if fields["upstream_ms"] is None else f" up={fields['upstream_ms']}ms")
        + f" id={fields['request_id']} ip={fields['client']}"
        + (" cut-off" if cut_off else "")
    )
    assert observe.access_line(request, settings, 100.0123) == expected
    # The twisted.logger event carries the same line.
    with capturedLogs() as events:
        observe.log_access(request)
    [event] = [e for e in events if "access_line" in e]
    assert event["access_line"].split(" gw=")[0] == expected.split(" gw=")[0]
    assert event["access_line"].split("ms", 1)[1] == expected.split("ms", 1)[1]
    taken: list[tuple[float, str]] = []
    observe.send_access_lines_to(lambda when, line: taken.append((when, line)))
    try:
        observe.log_access(request)
    finally:
        observe.send_access_lines_to(None)
    assert len(taken) == 1
    assert taken[0][1].split(" gw=")[0] == expected.split(" gw=")[0]
    assert taken[0][1].split("ms", 1)[1] == expected.split("ms", 1)[1]


# (what a client puts in the target, how the text line shows it)
HOSTILE_TARGETS = [
    pytest.param(b"/a\x85b", r"/a\x85b", id="nel-byte-0x85"),
    pytest.param("/a\u0085b".encode(), r"/a\xC2\x85b", id="nel-u0085-utf8"),
    pytest.param("/a\u2028b".encode(), r"/a\xE2\x80\xA8b", id="line-separator-u2028"),
    pytest.param("/a\u2029b".encode(), r"/a\xE2\x80\xA9b", id="paragraph-separator-u2029"),
    pytest.param(b"/a\rb", r"/a\x0Db", id="cr"),
    pytest.param(b"/a\nb", r"/a\x0Ab", id="lf"),
    pytest.param(
        b"/a\n2026-01-01T00:00:00+0000 [idgateway.access#info] GET /admin 200 1B route=app1",
        r"/a\x0A2026-01-01T00:00:00+0000\x20[idgateway.access#info]\x20GET\x20/admin"
        r"\x20200\x201B\x20route=app1",
        id="forged-line",
    ),
    pytest.param(b"/a\x1b[2J\x1b]0;pwned\x07", r"/a\x1B[2J\x1B]0;pwned\x07", id="terminal-escape"),
    pytest.param(b"/a\x00b", r"/a\x00b", id="nul"),
    pytest.param(b"/a\x7fb", r"/a\x7Fb", id="del"),
    pytest.param(b"/a\tb", r"/a\x09b", id="tab"),
    pytest.param(b"/a b route=admin user=root", r"/a\x20b\x20route=admin\x20user=root", id="space"),
    pytest.param(b'/a"b', r"/a\x22b", id="quote"),
    pytest.param(b"/a\\x0Ab", r"/a\x5Cx0Ab", id="backslash-looks-escaped"),
    pytest.param(b"/caf\xc3\xa9", r"/caf\xC3\xA9", id="utf8"),
    pytest.param(b"/%0A%85", "/%0A%85", id="percent-encoded-stays"),
]


def only_printable_ascii(text: str) -> bool:
    return all(" " <= char <= "~" for char in text)


@pytest.mark.parametrize("target, shown", HOSTILE_TARGETS)
def test_text_line_escapes_the_target(target: bytes, shown: str) -> None:
    line = observe.access_line(fake_request(path=target), TEXT, 100.25)
    assert line.startswith(f"GET {shown} 200 1234B route=app1 user=alice ")
    assert only_printable_ascii(line), line
    assert len(line.splitlines()) == 1
    # The escape is reversible: \xHH and nothing else stands for a byte.
    assert target.decode("latin-1") == re.sub(
        r"\\x([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), line.split(" ")[1]
    )


@pytest.mark.parametrize("target, shown", HOSTILE_TARGETS)
def test_every_text_path_writes_one_escaped_line(target: bytes, shown: str) -> None:
    """The event, twistd's stdout and the worker record carry the same single line."""
    request = fake_request(path=target, method=b"G\x85T")
    [event] = emit(request)
    via_event = io.StringIO()
    from twisted.logger import textFileLogObserver

    textFileLogObserver(via_event)(event)
    direct = io.StringIO()
    observe.write_access_text_to(direct)
    try:
        observe.log_access(request)
    finally:
        observe.write_access_text_to(None)
    taken: list[tuple[float, str]] = []
    observe.send_access_lines_to(lambda when, line: taken.append((when, line)))
    try:
        observe.log_access(request)
    finally:
        observe.send_access_lines_to(None)
    [(_, record)] = taken
    for written in (via_event.getvalue(), direct.getvalue(), record + "\n"):
        assert written.count("\n") == 1 and written.endswith("\n")
        assert len(written.splitlines()) == 1, "no reader sees a second line"
        assert only_printable_ascii(written.rstrip("\n")), written
        assert f"] G\\x85T {shown} 200 " in written or written.startswith(f"G\\x85T {shown} ")


@pytest.mark.parametrize(
    "user, shown",
    [
        pytest.param("bob\n2026 GET /admin", r"bob\x0A2026\x20GET\x20/admin", id="lf"),
        pytest.param("bob\u2028x", r"bob\xE2\x80\xA8x", id="u2028"),
        pytest.param("bob\u0085x", r"bob\xC2\x85x", id="u0085"),
        pytest.param("bob\x1b[31m", r"bob\x1B[31m", id="esc"),
        pytest.param("bob\ud800", r"bob\xED\xA0\x80", id="lone-surrogate"),
        pytest.param("bob route=admin", r"bob\x20route=admin", id="space"),
        pytest.param("josé", r"jos\xC3\xA9", id="utf8"),
    ],
)
def test_text_line_escapes_the_user(user: str, shown: str) -> None:
    line = observe.access_line(fake_request(idgw_user=user), TEXT, 100.25)
    assert f" user={shown} gw=" in line
    assert only_printable_ascii(line) and len(line.splitlines()) == 1


@pytest.mark.parametrize("target, shown", HOSTILE_TARGETS)
def test_json_line_is_one_line_of_valid_json_with_the_exact_target(
    target: bytes, shown: str
) -> None:
    [event] = emit(fake_request(JSON, path=target, idgw_user="bob\u2028\n\x85"))
    text = formatEvent(event)
    assert only_printable_ascii(text) and len(text.splitlines()) == 1
    record = json.loads(text)
    assert record["path"] == target.decode("latin-1")
    assert record["user"] == "bob\u2028\n\x85"


def test_a_plain_target_is_logged_as_it_is() -> None:
    path = b"/plain/path-1.css"
    assert observe.log_text(path) == "/plain/path-1.css"


@pytest.mark.parametrize(
    "user, shown",
    [
        pytest.param("bob\n2026 route app1: root signed in", r"bob\x0A2026\x20route", id="lf"),
        pytest.param("bob\u2028root", r"bob\xE2\x80\xA8root", id="u2028"),
        pytest.param("bob\x1b[2J", r"bob\x1B[2J", id="esc"),
    ],
)
def test_text_audit_lines_escape_the_user(user: str, shown: str) -> None:
    request = fake_request(TEXT)
    with capturedLogs() as events:
        observe.login_succeeded(request, route="app1", user=user)
        observe.signed_out(request, route="app1", user=user)
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "idgateway.audit"]
    assert len(lines) == 2
    for line in lines:
        assert line.startswith(f"route app1: {shown}")
        assert only_printable_ascii(line) and len(line.splitlines()) == 1
    with capturedLogs() as events:
        observe.login_succeeded(fake_request(JSON), route="app1", user=user)
    [event] = [e for e in events if e.get("log_namespace") == "idgateway.audit"]
    assert json.loads(formatEvent(event))["user"] == user


def test_http2_requests_are_named_in_text_and_json_lines() -> None:
    [text] = emit(fake_request(clientproto=b"HTTP/2"))
    assert formatEvent(text).endswith("ip=192.0.2.7 h2")
    [plain] = emit(fake_request(clientproto=b"HTTP/1.1"))
    assert formatEvent(plain).endswith("ip=192.0.2.7")
    [record] = emit(fake_request(JSON, clientproto=b"HTTP/2"))
    assert json.loads(formatEvent(record))["protocol"] == "h2"


@pytest.mark.parametrize(
    "elapsed",
    [0.0, 0.00004, 0.00005, 0.00015, 0.00025, 0.0012345, 0.25, 1.04999, 1.05, 2.675, 86400.123456],
)
def test_the_gateway_time_is_written_as_str_of_round_wrote_it(elapsed: float) -> None:
    """(The line's text is a contract: gw= is what str(round(ms, 1)) gave.)"""
    started = 1000.0
    request = fake_request(idgw_started=started)
    line = observe.access_line(request, TEXT, started + elapsed)
    assert f" gw={round((started + elapsed - started) * 1000, 1)}ms " in line
    assert " gw=Nonems " in observe.access_line(fake_request(idgw_started=None), TEXT, 1.0)


def test_the_gateway_time_is_written_as_str_of_round_wrote_it_for_many_values() -> None:
    import random

    chance = random.Random(17)
    for _ in range(20_000):
        started = chance.uniform(0, 1e6)
        now = started + chance.choice([1e-5, 1e-3, 1.0, 60.0]) * chance.random()
        line = observe.access_line(fake_request(idgw_started=started), TEXT, now)
        assert f" gw={round((now - started) * 1000, 1)}ms " in line, (started, now)


@given(st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_the_lines_upstream_ms_is_the_rounded_fields(ms: float) -> None:
    """proxy.response keeps the upstream time unrounded; the line's ":.1f"
    and the JSON field's round(ms, 1) must write the same digits."""
    request = SimpleNamespace(
        idgw_logging=LoggingSettings(),
        idgw_started=None,
        idgw_route="app",
        idgw_user=None,
        idgw_upstream_ms=ms,
        method=b"GET",
        path=b"/",
        code=200,
        sentLength=0,
        request_id=b"r-1",
        client=None,
    )
    rounded = observe.access_fields(request, 0.0)["upstream_ms"]
    assert f" up={rounded}ms " in observe.access_line(request, LoggingSettings(), 0.0)
