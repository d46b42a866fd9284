"""The access and audit logs: fields, formats, user hashing, nothing secret."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from idgateway import observe
from idgateway.config import ConfigError, load_config
from idgateway.model import LoggingSettings
from idgateway.request import GatewayRequest, GatewaySite

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
    # The line's documented shape, spelled out from the fields.
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
