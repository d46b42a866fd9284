"""oidc.userinfo: auto (the default), true and false at the login callback,
and the hint naming the setting that brings a missing claim."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web.http_headers import Headers

from idgateway.config.model import (
    AuthorizeRules,
    ClaimRule,
    HeaderSettings,
    OIDCSettings,
    PathRoute,
    Route,
    RouteAuth,
    SessionSettings,
    Upstream,
)
from idgateway.gate import endpoints
from idgateway.gate.needed_claims import missing_claims, needed_claims
from idgateway.gate.session_check import RouteLogin
from idgateway.oidc.client import TokenResponse
from idgateway.oidc.provider import ProviderMetadata
from idgateway.sessions.flows import LoginFlow
from tests.route_gates import route_login

NO_RULES = AuthorizeRules()
KEY = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="
UPSTREAM = Upstream(url="http://127.0.0.1:1", kind="http", host="127.0.0.1", port=1)
METADATA = ProviderMetadata(
    issuer="https://op/oauth2/token",
    authorization_endpoint="https://op/oauth2/authorize",
    token_endpoint="https://op/oauth2/token",
    jwks_uri="https://op/oauth2/jwks",
    userinfo_endpoint="https://op/oauth2/userinfo",
)


class FakeProvider:
    def __init__(self, metadata: ProviderMetadata) -> None:
        self.metadata = metadata
        self.last_error = None


class FakeFlows:
    """Every state is a login this browser started (the callback's other checks
    are what these tests are about)."""

    def __init__(self, **step_up: Any) -> None:
        self.step_up = step_up

    def take(self, state: str, cookies: Any, now: float) -> tuple[LoginFlow, list[bytes]]:
        return LoginFlow("st", "n", "v" * 43, "/", now, **self.step_up), []


class FakeRequest:
    def __init__(self, uri: bytes) -> None:
        self.uri = uri
        self.method = b"GET"
        self.requestHeaders = Headers()
        self.responseHeaders = Headers()
        self.code = 0
        self.finished = False
        self.client_gone = False
        self.request_id = b"rid"
        self.body = b""

    def setResponseCode(self, code: int, reason: bytes | None = None) -> None:
        self.code = code

    def write(self, data: bytes) -> None:
        self.body += data

    def end_response_early(self) -> None:
        pass

    def finish(self) -> None:
        self.finished = True

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return values[0] if values else None


def make_login(
    userinfo: bool | str = "auto",
    metadata: ProviderMetadata = METADATA,
    authorize: AuthorizeRules = NO_RULES,
    **oidc: Any,
) -> RouteLogin:
    auth = RouteAuth(
        oidc=OIDCSettings(
            provider="op",
            client_id="c",
            client_secret="s" * 16,
            userinfo=userinfo,  # type: ignore[arg-type]
            **oidc,
        ),
        session=SessionSettings(keys=(KEY,)),
        authorize=authorize,
    )
    route = Route(name="app", hosts=("app.localhost",), upstream=UPSTREAM)
    login = route_login(
        auth, Clock(), route=route, client=FakeProvider(metadata), issuer=METADATA.issuer
    )
    login.flows = {False: FakeFlows(), True: FakeFlows()}  # type: ignore[dict-item]
    return login


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The token endpoint, ID token check and userinfo endpoint, scripted."""
    seen: dict[str, Any] = {
        "id_token_claims": {"sub": "u1", "sid": "p1"},
        "userinfo": {"sub": "u1", "groups": ["staff"], "username": "alice"},
        "userinfo_calls": 0,
    }

    async def exchange_code(*args: Any, **kwargs: Any) -> TokenResponse:
        return TokenResponse("at", "Bearer", 3600, "rt", "id.token.jwt", None)

    async def validate_id_token(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(seen["id_token_claims"])

    async def fetch_userinfo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen["userinfo_calls"] += 1
        return dict(seen["userinfo"])

    monkeypatch.setattr(endpoints, "exchange_code", exchange_code)
    monkeypatch.setattr(endpoints, "validate_id_token", validate_id_token)
    monkeypatch.setattr(endpoints, "fetch_userinfo", fetch_userinfo)
    return seen


def log_in(login: RouteLogin) -> tuple[FakeRequest, list[str]]:
    request = FakeRequest(b"/oauth2/callback?code=c&state=st")
    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn and "log_format" in event:
            from twisted.logger import formatEvent

            warnings.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        d = defer.ensureDeferred(endpoints.callback(login, request, b"app.localhost", False))  # type: ignore[arg-type]
        assert d.called
        d.result  # noqa: B018 - raises if the callback failed
    finally:
        globalLogPublisher.removeObserver(observe)
    return request, warnings


def session_claims(login: RouteLogin, request: FakeRequest) -> dict[str, Any]:
    cookies = {}
    for value in request.responseHeaders.getRawHeaders(b"set-cookie", []):
        name, _, rest = value.partition(b"=")
        cookies[name] = rest.split(b";")[0]
    session, _ = login.codecs[False].decode(cookies)
    assert session is not None
    return session.claims


def test_auto_asks_userinfo_when_the_id_token_lacks_a_needed_claim(provider):
    login = make_login(user_claim="username", authorize=AuthorizeRules(groups=("staff",)))
    request, warnings = log_in(login)
    assert request.code == 302
    assert provider["userinfo_calls"] == 1
    claims = session_claims(login, request)
    assert claims["groups"] == ["staff"] and claims["username"] == "alice"
    # Only email never came (a header of the oauth2-proxy preset): hinted once.
    assert len(warnings) == 1 and "'email' claim" in warnings[0]
    assert "the ID token and userinfo lack it" in warnings[0]


def test_auto_does_not_ask_when_the_id_token_has_every_needed_claim(provider):
    provider["id_token_claims"] = {
        "sub": "u1",
        "sid": "p1",
        "email": "a@example.com",
        "groups": ["staff"],
    }
    login = make_login()
    request, _ = log_in(login)
    assert request.code == 302
    assert provider["userinfo_calls"] == 0


def test_auto_without_a_userinfo_endpoint_logs_in_and_names_the_scope(provider):
    login = make_login(
        user_claim="username", metadata=attrs.evolve(METADATA, userinfo_endpoint=None)
    )
    request, warnings = log_in(login)
    assert request.code == 302 and provider["userinfo_calls"] == 0
    assert any("'username' claim (user_claim); using sub" in w for w in warnings)
    assert any("oidc.scopes" in w for w in warnings)
    assert not any("oidc.userinfo" in w for w in warnings)


def test_false_never_asks_and_the_hint_names_the_userinfo_setting(provider):
    login = make_login(userinfo=False, user_claim="username")
    request, warnings = log_in(login)
    assert request.code == 302 and provider["userinfo_calls"] == 0
    hint = [w for w in warnings if "'username' claim" in w]
    assert hint and "oidc.userinfo: auto" in hint[0]
    # groups (a header of the oauth2-proxy preset) is hinted once per claim.
    assert sum("'groups' claim" in w for w in warnings) == 1
    _, again = log_in(login)
    assert not any("'groups' claim" in w for w in again)


def test_true_always_asks(provider):
    provider["id_token_claims"] = {"sub": "u1", "email": "a@x", "groups": ["g"]}
    login = make_login(userinfo=True)
    request, _ = log_in(login)
    assert request.code == 302 and provider["userinfo_calls"] == 1


def test_userinfo_about_another_subject_fails_the_login(provider):
    provider["userinfo"] = {"sub": "someone-else", "groups": ["admins"]}
    login = make_login()
    request, _ = log_in(login)
    assert request.code == 401
    assert b"userinfo_sub_mismatch" in request.body or b"could not be verified" in request.body


def test_the_id_tokens_claims_win_over_userinfo(provider):
    provider["id_token_claims"] = {"sub": "u1", "groups": ["staff"]}
    provider["userinfo"] = {"sub": "u1", "groups": ["admins"], "email": "a@x"}
    login = make_login()
    request, _ = log_in(login)
    assert session_claims(login, request)["groups"] == ["staff"]


def test_needed_claims_cover_headers_rules_and_path_rules():
    auth = RouteAuth(
        oidc=OIDCSettings(provider="op", client_id="c", client_secret="s", user_claim="username"),
        session=SessionSettings(),
        headers=HeaderSettings(preset="custom", mapping=(("X-Dept", "department"),)),
        authorize=AuthorizeRules(roles=("r",)),
    )
    route = Route(
        name="app",
        hosts=("a",),
        upstream=UPSTREAM,
        paths=(
            PathRoute(
                prefix="/x/",
                upstream=UPSTREAM,
                authorize=AuthorizeRules(claims=(ClaimRule("org_id", "o1"),)),
            ),
        ),
        auth=auth,
    )
    assert needed_claims(route, auth) == {
        "username",
        "email",
        "groups",
        "department",
        "roles",
        "org_id",
    }
    assert missing_claims({"username": "a", "email": None}, {"username", "email"}) == ["email"]
