"""GatewayRequest's own fields live in slots (idgateway.server.channel).

Each starts with the default it had as a class attribute, and a proxied
request's ``__dict__`` stays within the 30 names CPython shares among a
class's instances (past that, every request builds a dict of its own and
every attribute access takes the slow way).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from twisted.web import http
from twisted.web.test.requesthelper import DummyChannel

from idgateway.observe import access_log
from idgateway.server.channel import GatewayRequest

BENCH = Path(__file__).resolve().parents[2] / "bench"
# CPython 3.11's SHARED_KEYS_MAX_SIZE.
SHARED_KEYS_MAX = 30

DEFAULTS: dict[str, Any] = {
    "on_disconnect": None,
    "on_body_exceeded": None,
    "request_id": b"",
    "head_size": 0,
    "idgw_logging": None,
    "idgw_started": None,
    "idgw_route": None,
    "idgw_user": None,
    "idgw_upstream_started": None,
    "idgw_upstream_ms": None,
    "idgw_login": None,
    "idgw_session": None,
    "idgw_session_id": None,
    "idgw_cut_off": False,
    "idgw_websocket_slot": None,
    "client_gone": False,
    "body": None,
    # twisted.web's, as http.Request's class attributes have them
    "finished": 0,
    "startedWriting": 0,
    "chunked": 0,
    "sentLength": 0,
    "producer": None,
}


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_a_new_request_has_each_fields_default(name: str) -> None:
    request = GatewayRequest(DummyChannel())
    assert getattr(request, name) == DEFAULTS[name]
    assert type(getattr(request, name)) is type(DEFAULTS[name])
    stock = getattr(http.Request, name, None)
    if stock is not None:
        assert getattr(request, name) == stock, "as twisted.web's default"


def test_every_slot_has_a_default() -> None:
    request = GatewayRequest(DummyChannel())
    unset = [name for name in GatewayRequest.__slots__ if not hasattr(request, name)]
    assert unset == ["idgw_reading"]


def test_the_reading_has_no_default_as_before() -> None:
    request = GatewayRequest(DummyChannel())
    with pytest.raises(AttributeError):
        request.idgw_reading  # noqa: B018 - set by render before anything reads it


def test_each_request_starts_afresh() -> None:
    channel = DummyChannel()
    first = GatewayRequest(channel)
    first.idgw_user = "alice"
    first.request_id = b"r-1"
    second = GatewayRequest(channel)
    assert second.idgw_user is None and second.request_id == b""


def test_a_proxied_requests_dict_stays_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """One whole authenticated request (bench/cycle_micro.py), every security
    default on: what the pipeline set is in the slots, and the rest of the
    request's attributes fit CPython's shared table of names."""
    spec = importlib.util.spec_from_file_location("bench_cycle_micro", BENCH / "cycle_micro.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    finished: list[GatewayRequest] = []
    stock_finish = GatewayRequest.finish

    def finish(self: GatewayRequest) -> None:
        stock_finish(self)
        finished.append(self)

    monkeypatch.setattr(GatewayRequest, "finish", finish)
    try:
        cycle = module.Cycle()
        heads = []
        for _ in range(3):
            head, answer = cycle.one()
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            heads.append(head)
    finally:
        access_log.send_access_lines_to(None)
    assert len(finished) == 3
    for request, head in zip(finished, heads, strict=True):
        assert len(vars(request)) <= SHARED_KEYS_MAX, sorted(vars(request))
        assert not any(name in vars(request) for name in GatewayRequest.__slots__)
        assert request.idgw_route == "app1" and request.idgw_user == "user00000"
        assert request.request_id and b"X-Request-Id: " + request.request_id in head
        assert request.idgw_upstream_ms is not None and request.head_size > 0
