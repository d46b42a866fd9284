"""Pushed authorization requests (RFC 9126, issue 15 §2): oidc.par auto,
required and off; PAR endpoint down or answering garbage; an expired request_uri."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from idgateway.config.model import OIDCSettings, Route, RouteAuth, SessionSettings
from idgateway.gate import endpoints
from idgateway.gate.session_check import RouteLogin
from tests.route_gates import route_login
from tests.unit.test_userinfo_auto import KEY, METADATA, UPSTREAM, FakeProvider, FakeRequest

PAR_METADATA = attrs.evolve(METADATA, pushed_authorization_request_endpoint="https://op/oauth2/par")
REQUEST_URI = "urn:ietf:params:oauth:par:request_uri:3f1c9a"


class PAREndpoint(Resource):
    isLeaf = True

    def __init__(self, status: int = 201, body: bytes | None = None) -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.received: list[dict[str, list[str]]] = []
        self.authorization: list[bytes | None] = []

    def render_POST(self, request: Any) -> bytes:
        self.received.append(
            {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        )
        self.authorization.append(request.getHeader(b"authorization"))
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        if self.body is not None:
            return self.body
        return json.dumps({"request_uri": REQUEST_URI, "expires_in": 60}).encode()


class DownHTTP:
    """A provider client whose every connection fails."""

    def request(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return defer.fail(ConnectionRefusedError("connection refused"))


def make_login(par: str, metadata: Any = PAR_METADATA, http: Any = None) -> RouteLogin:
    auth = RouteAuth(
        oidc=OIDCSettings(provider="op", client_id="app1", client_secret="s" * 16, par=par),
        session=SessionSettings(keys=(KEY,)),
    )
    route = Route(name="app", hosts=("app.localhost",), upstream=UPSTREAM)
    return route_login(
        auth, Clock(), route=route, client=FakeProvider(metadata), issuer=METADATA.issuer, http=http
    )


def start(login: RouteLogin) -> FakeRequest:
    request = FakeRequest(b"/private")
    login.begin_login(request, b"app.localhost", False, return_to="/private")  # type: ignore[arg-type]
    return request


def location(request: FakeRequest) -> tuple[str, dict[str, list[str]]]:
    (value,) = request.responseHeaders.getRawHeaders(b"location")
    parts = urlsplit(value.decode())
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query)


def test_auto_pushes_the_request_and_sends_the_browser_with_its_uri_only():
    par = PAREndpoint()
    login = make_login("auto", http=StubTreq(par))
    request = start(login)
    assert request.code == 302
    where, query = location(request)
    assert where == "https://op/oauth2/authorize"
    assert query == {"client_id": ["app1"], "request_uri": [REQUEST_URI]}
    (pushed,) = par.received
    assert pushed["response_type"] == ["code"] and pushed["client_id"] == ["app1"]
    assert pushed["code_challenge_method"] == ["S256"]
    assert {"state", "nonce", "code_challenge", "redirect_uri", "scope"} <= set(pushed)
    assert par.authorization[0] is not None and par.authorization[0].startswith(b"Basic ")
    # The flow cookie goes with the redirect, as without PAR.
    assert request.responseHeaders.getRawHeaders(b"set-cookie")


def test_auto_without_a_par_endpoint_is_the_classic_redirect():
    login = make_login("auto", metadata=METADATA)
    request = start(login)
    where, query = location(request)
    assert request.code == 302 and "request_uri" not in query and query["state"]


def test_off_never_pushes():
    par = PAREndpoint()
    request = start(make_login("off", http=StubTreq(par)))
    _, query = location(request)
    assert par.received == [] and "code_challenge" in query


def test_required_refuses_to_start_without_par():
    request = start(make_login("required", metadata=METADATA))
    assert request.code == 503
    assert not request.responseHeaders.getRawHeaders(b"set-cookie")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, b"<html>maintenance</html>"),
        (400, json.dumps({"error": "invalid_request", "error_description": "bad"}).encode()),
        (401, json.dumps({"error": "invalid_client"}).encode()),
        (201, b"not json"),
        (201, b"[1, 2]"),
        (201, json.dumps({"expires_in": 60}).encode()),
        (201, json.dumps({"request_uri": 7}).encode()),
        (201, json.dumps({"request_uri": "urn:x y"}).encode()),
        (201, json.dumps({"request_uri": "u" * 5000}).encode()),
        (302, b""),
    ],
    ids=[
        "503",
        "400",
        "invalid_client",
        "not-json",
        "array",
        "no-request_uri",
        "number",
        "space",
        "huge",
        "redirect",
    ],
)
def test_a_failing_or_garbage_par_endpoint_gets_the_login_error_page(status, body):
    login = make_login("auto", http=StubTreq(PAREndpoint(status, body)))
    request = start(login)
    assert request.code == 502
    assert b"par_failed" in request.body or b"refused to start the sign-in" in request.body
    assert not request.responseHeaders.getRawHeaders(b"location")


def test_a_par_endpoint_that_is_down_gets_the_login_error_page():
    request = start(make_login("required", http=DownHTTP()))
    assert request.code == 502
    assert b"refused to start the sign-in" in request.body


def _callback_with_error(login: RouteLogin, age: float, with_state: bool = True) -> FakeRequest:
    """The provider sends the browser back with invalid_request_uri, ``age``
    seconds after the login started (with the state, or without: a provider
    that no longer knows the request cannot say it)."""
    first = start(login)
    cookies = []
    for value in first.responseHeaders.getRawHeaders(b"set-cookie", []):
        cookies.append(value.split(b";")[0])
    state = LAST_STATE[0]  # what the PAR endpoint was given (the browser never sees it)
    login.clock.advance(age)  # type: ignore[attr-defined]
    query = (
        f"error=invalid_request_uri&state={state}" if with_state else "error=invalid_request_uri"
    )
    request = FakeRequest(f"/oauth2/callback?{query}".encode())
    request.requestHeaders.setRawHeaders(b"cookie", [b"; ".join(cookies)])
    d = defer.ensureDeferred(endpoints.callback(login, request, b"app.localhost", False))  # type: ignore[arg-type]
    assert d.called
    return request


LAST_STATE: list[str] = []


@pytest.fixture
def recording_par() -> PAREndpoint:
    class Recording(PAREndpoint):
        def render_POST(self, request: Any) -> bytes:
            LAST_STATE[:] = [request.args[b"state"][0].decode()]
            return super().render_POST(request)

    return Recording()


@pytest.mark.parametrize("with_state", [True, False], ids=["with-state", "without-state"])
def test_an_expired_request_uri_starts_a_new_login(recording_par, with_state):
    login = make_login("auto", http=StubTreq(recording_par))
    request = _callback_with_error(login, age=61, with_state=with_state)
    assert request.code == 302
    where, query = location(request)
    assert where == "https://op/oauth2/authorize" and query["request_uri"] == [REQUEST_URI]
    assert len(recording_par.received) == 2, "a second request was pushed"
    assert recording_par.received[1]["state"] != recording_par.received[0]["state"]


@pytest.mark.parametrize("with_state", [True, False], ids=["with-state", "without-state"])
def test_a_quick_invalid_request_uri_is_an_error_not_a_loop(recording_par, with_state):
    login = make_login("auto", http=StubTreq(recording_par))
    request = _callback_with_error(login, age=1, with_state=with_state)
    assert request.code == 401
    assert len(recording_par.received) == 1


def test_a_provider_that_keeps_refusing_gets_one_restart_then_the_error_page(recording_par):
    """The restart's flow is the newest and young: the next refusal is an error."""
    login = make_login("auto", http=StubTreq(recording_par))
    restarted = _callback_with_error(login, age=61, with_state=False)
    assert restarted.code == 302
    cookies = [
        v.split(b";")[0]
        for v in restarted.responseHeaders.getRawHeaders(b"set-cookie", [])
        if b"Max-Age=0" not in v
    ]
    again = FakeRequest(b"/oauth2/callback?error=invalid_request_uri")
    again.requestHeaders.setRawHeaders(b"cookie", [b"; ".join(cookies)])
    d = defer.ensureDeferred(endpoints.callback(login, again, b"app.localhost", False))  # type: ignore[arg-type]
    assert d.called and again.code == 401
    assert len(recording_par.received) == 2


def test_invalid_request_uri_without_our_flow_is_an_error(recording_par):
    login = make_login("auto", http=StubTreq(recording_par))
    request = FakeRequest(b"/oauth2/callback?error=invalid_request_uri&state=forged")
    d = defer.ensureDeferred(endpoints.callback(login, request, b"app.localhost", False))  # type: ignore[arg-type]
    assert d.called and request.code in (400, 401)
    assert recording_par.received == []
