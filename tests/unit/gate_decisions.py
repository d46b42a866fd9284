"""A route's gate under test, reporting what it decided instead of acting on it.

Shared by the admitted-memo tests (tests/unit/test_gate_admitted_memo.py and
tests/unit/test_admitted_memo_review.py) and tests/security/test_revocation_gates.py:
``GateUnderTest`` builds a gateway state from a config text (route app1) with
``StubProviderBuilder``, and sends requests through app1's gate; login, step-up
and refresh become entries in ``holder.outcomes`` (``report_decisions``), as
does a forward, and each session cookie decode counts in ``holder.decoded``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.web.test.requesthelper import DummyChannel

from idgateway.config.load import load_config
from idgateway.config.model import Config
from idgateway.gate.session_check import ProviderHandle, RouteLogin
from idgateway.oidc.provider import ProviderMetadata
from idgateway.proxy.headers import header_lines
from idgateway.routing.state import GatewayState, StateBuilder
from idgateway.server.channel import GatewayRequest
from idgateway.sessions.model import Session

HOST = b"app1.localhost:8443"
# Route app1: a provider that never answers (StubProviderBuilder's stub stands in),
# users of the group staff, cookie sessions. Fill with app1_config.
_APP1_CONFIG = """\
{top}listeners:
  - address: 127.0.0.1:8443
providers:
  wso2:
    discovery_url: https://127.0.0.1:9443/oauth2/token/.well-known/openid-configuration
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:9
{paths}    oidc:
      provider: wso2
      client_id: c
      client_secret: a-long-enough-secret
      user_claim: username
    authorize: {{groups: [staff]}}
{extra}    session:
      store: cookie
      keys: [{key}]
      inactivity_timeout: 1h
      max_duration: 8h
      refresh_leeway: 60s
"""


class _Provider:
    """A provider whose discovery has answered (the gate never calls it here)."""

    metadata = ProviderMetadata(
        issuer="https://127.0.0.1:9443/oauth2/token",
        authorization_endpoint="https://127.0.0.1:9443/oauth2/authorize",
        token_endpoint="https://127.0.0.1:9443/oauth2/token",
        jwks_uri="https://127.0.0.1:9443/oauth2/jwks",
    )
    ready = True
    last_error = None

    def stop(self) -> None:
        pass


class StubProviderBuilder(StateBuilder):
    """The state builder, with every route's provider a ready stub."""

    def provider_handle(self, settings: Any) -> ProviderHandle:
        return ProviderHandle(settings=settings, client=_Provider(), http=None)  # type: ignore[arg-type]


def report_decisions(holder: Any, login: RouteLogin) -> None:
    login.unauthenticated = lambda visit: holder.outcomes.append(("login",))  # type: ignore[method-assign]
    login.step_up = lambda visit, session, step_up: holder.outcomes.append(("step_up",))  # type: ignore[method-assign]

    def refreshed(session: Session, session_id: str | None = None) -> defer.Deferred[Any]:
        holder.outcomes.append(("refresh",))
        return defer.Deferred()  # (never answers: the decision is what counts)

    login.refreshed = refreshed  # type: ignore[assignment,method-assign]
    for codec in login.codecs.values():
        decode = codec.decode_with_expiry

        def counted(cookies: Any, decode: Callable[..., Any] = decode) -> Any:
            holder.decoded += 1
            return decode(cookies)

        codec.decode_with_expiry = counted  # type: ignore[method-assign]


def app1_config(key: str, *, paths: str = "", extra: str = "", top: str = "") -> str:
    """A config text with route app1 and its session ``key``; ``paths``: its
    paths: block, ``extra``: more keys of the route (YAML lines indented by
    four), ``top``: more top-level keys."""
    return _APP1_CONFIG.format(key=key, paths=paths, extra=extra, top=top)


class _Forwarder:
    """What the gate hands on: ("forward", the Cookie header for the upstream,
    the identity headers as written upstream, the Set-Cookie values)."""

    tls = False

    def __init__(self, outcomes: list[tuple[Any, ...]]) -> None:
        self.outcomes = outcomes

    def forward(
        self,
        request: Any,
        state: Any,
        runtime: Any,
        host: Any,
        *,
        cookie: Any = True,
        identity: Any = (),
        **kw: Any,
    ) -> None:
        # The identity headers as they are written upstream, whether handed
        # over as pairs or already written.
        written = header_lines(identity) + kw.get("identity_lines", b"")
        self.outcomes.append(("forward", cookie, written, list(kw.get("set_cookies", []))))


class GateUnderTest:
    """Route app1's gate in a state built from a config text, with what it
    decided per request and how often a session cookie was decoded."""

    def __init__(self, config_text: str) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(time.time())
        self.builder = StubProviderBuilder(self.clock)
        self.outcomes: list[tuple[Any, ...]] = []
        self.decoded = 0
        self.resource = _Forwarder(self.outcomes)
        self.state: GatewayState | None = None
        self.build(config_text)

    def build(self, config_text: str) -> None:
        """Build the state (again, as a reload does) from a config text."""
        self.config_text = config_text
        with tempfile.TemporaryDirectory(prefix="idgateway-gate-") as tmp:
            path = Path(tmp) / "gateway.yaml"
            path.write_text(config_text)
            self.config: Config = load_config(str(path), {})
        self.state = state = self.builder.build(self.config, self.state)
        self.runtime = state.runtimes["app1"]
        login = self.runtime.login
        assert login is not None
        self.use(login)

    def use(self, login: RouteLogin) -> None:
        """Send the requests through ``login`` (app1's gate, or another of app1)."""
        self.login = login
        report_decisions(self, login)

    def session(self, **changes: Any) -> Session:
        now = self.clock.seconds()
        base = Session(
            id="s-1",
            route="app1",
            sub="sub-1",
            user="alice",
            claims={"username": "alice", "groups": ["staff"], "acr": "pwd"},
            created_at=now,
            last_seen=now,
            access_token="at-1",
            access_expires_at=now + 3600,
            refresh_token="rt-1",
            tokens_at=now,
            provider_sid="sid-1",
        )
        return attrs.evolve(base, **changes)

    def cookie(self, session: Session, *, tls: bool = False, max_age: int | None = None) -> bytes:
        set_cookie = self.login.codecs[tls].encode(session, max_age=max_age)[0]
        return set_cookie.split(b";", 1)[0]

    def request(
        self, cookie_lines: list[bytes], path: bytes = b"/projects/1", *, forwarded_https=False
    ) -> GatewayRequest:
        request = GatewayRequest(DummyChannel())
        request.method = b"GET"
        request.uri = request.path = path
        request.clientproto = b"HTTP/1.1"
        request.request_id = b"r-1"
        headers = request.requestHeaders
        headers.setRawHeaders(b"Host", [HOST])
        if cookie_lines:
            headers.setRawHeaders(b"Cookie", cookie_lines)
        if forwarded_https:
            headers.setRawHeaders(b"X-Forwarded-Proto", [b"https"])
        request.idgw_reading = self.runtime.paths.read(path)
        return request

    def handle(self, request: GatewayRequest) -> tuple[Any, ...]:
        """The gate's last decision on ``request``: ("forward", ...), ("login",),
        ("step_up",), ("refresh",), ("403",) or ("nothing",)."""
        before = len(self.outcomes)
        self.login.handle(self.resource, request, self.state, self.runtime, HOST)  # type: ignore[arg-type]
        if request.code == 403:
            return ("403",)
        taken = self.outcomes[before:]
        return taken[-1] if taken else ("nothing",)
