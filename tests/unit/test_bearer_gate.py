"""The token gate in memory: reading Authorization, challenges, the hot path,
scopes per path and the identity headers a token gives."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from idgateway.config.model import (
    AuthorizeRules,
    BearerAuth,
    BearerSettings,
    HeaderSettings,
    PathRoute,
    ProviderSettings,
    PublicPath,
    Route,
    Upstream,
)
from idgateway.gate.bearer import (
    MAX_AUTHORIZATION,
    WELL_KNOWN_RESOURCE,
    BearerGate,
    Refusal,
    has_token,
    read_authorization,
)
from idgateway.gate.bearer_endpoints import serve
from idgateway.gate.session_check import ProviderHandle
from idgateway.oidc.access_tokens import access_token_from_claims, token_digest
from idgateway.oidc.provider import ProviderMetadata
from idgateway.proxy.headers import TrustedProxies
from idgateway.routing.state import path_judge

UPSTREAM = Upstream(url="http://127.0.0.1:1", kind="http", host="127.0.0.1", port=1)
ISSUER = "https://localhost:9443/oauth2/token"


class FakeProvider:
    name = "wso2"
    ready = True
    metadata = ProviderMetadata(
        issuer=ISSUER,
        authorization_endpoint="https://localhost:9443/oauth2/authorize",
        token_endpoint=ISSUER,
        jwks_uri="https://localhost:9443/oauth2/jwks",
    )


class FakeRequest:
    def __init__(self, path: bytes, headers: list[tuple[bytes, bytes]], method: bytes = b"GET"):
        self.method = method
        self.path = path
        self.uri = path
        self.requestHeaders = Headers()
        for name, value in headers:
            self.requestHeaders.addRawHeader(name, value)
        self.responseHeaders = Headers()
        self.code = 0
        self.body = b""
        self.finished = False
        self.client_gone = False
        self.request_id = b"req-1"
        self.client = SimpleNamespace(host="127.0.0.1")
        self.idgw_user: str | None = None

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def end_response_early(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> None:
        self.finished = True

    def challenges(self) -> list[str]:
        return [v.decode() for v in self.responseHeaders.getRawHeaders(b"www-authenticate", [])]


class FakeResource:
    tls = False

    def __init__(self) -> None:
        self.forwarded: list[dict[str, Any]] = []

    def forward(self, request: Any, state: Any, runtime: Any, host: bytes, **kw: Any) -> None:
        self.forwarded.append(kw)
        request.finished = True


def make_gate(dpop: str = "off", preset: str = "oauth2-proxy") -> tuple[BearerGate, Route]:
    settings = BearerSettings(provider="wso2", audiences=("orders",), dpop=dpop, realm="orders")
    route = Route(
        name="orders-api",
        hosts=("api.example.com",),
        upstream=UPSTREAM,
        paths=(PathRoute("/admin/", UPSTREAM, authorize=AuthorizeRules(scopes=("orders:admin",))),),
    )
    bearer = BearerAuth(
        settings=settings,
        headers=HeaderSettings(preset=preset, pass_access_token=True),
        public_paths=(PublicPath(method=None, prefix="/healthz"),),
        authorize=AuthorizeRules(scopes=("orders:read",)),
    )
    handle = ProviderHandle(
        settings=ProviderSettings(name="wso2", issuer=ISSUER),
        client=FakeProvider(),  # type: ignore[arg-type]
        http=None,
    )
    return BearerGate(route, bearer, handle, Clock()), route


def run(
    gate: BearerGate, route: Route, path: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[FakeRequest, FakeResource]:
    request = FakeRequest(path, headers)
    paths = path_judge(route)
    request.idgw_reading = paths.read(path)  # type: ignore[attr-defined]
    runtime = SimpleNamespace(own_cookie=None, paths=paths, login=None, has_login=False)
    state = SimpleNamespace(trusted=TrustedProxies(()))
    resource = FakeResource()
    # As the routing resource does: the token gate's endpoints, else the gate.
    serve(gate, resource, request, state, runtime, b"api.example.com")  # type: ignore[arg-type]
    return request, resource


def remember(gate: BearerGate, token: str, **claims: Any) -> None:
    base = {"sub": "billing", "client_id": "billing", "aut": "APPLICATION", "scope": "orders:read"}
    verified = access_token_from_claims("jwt", {**base, **claims}, user_claim="sub", expires_at=4e9)
    assert gate.jwt is not None
    gate.jwt.memo.put(token_digest(token), verified)


# ---------------------------------------------------------------------------
# Authorization header


def header(*values: bytes) -> FakeRequest:
    return FakeRequest(b"/", [(b"Authorization", v) for v in values])


def test_bearer_and_dpop_schemes_in_any_case() -> None:
    assert read_authorization(header(b"Bearer abc.def-_~+/==")) == ("bearer", "abc.def-_~+/==")
    assert read_authorization(header(b"bEaReR  tok")) == ("bearer", "tok")
    assert read_authorization(header(b"DPoP tok")) == ("dpop", "tok")
    assert read_authorization(header(b"Basic dXNlcjpwdw==")) is None
    assert read_authorization(FakeRequest(b"/", [])) is None


@pytest.mark.parametrize(
    ("values", "error"),
    [
        pytest.param((b"Bearer a", b"Bearer a"), "invalid_request", id="two-headers"),
        pytest.param((b"Bearer a", b"Basic b"), "invalid_request", id="two-schemes"),
        pytest.param((b"Bearer a b",), "invalid_token", id="a-space-inside"),
        pytest.param((b"Bearer a, Bearer b",), "invalid_token", id="a-list"),
        pytest.param((b"Bearer",), "invalid_token", id="no-token"),
        pytest.param((b"Bearer a\x00b",), "invalid_token", id="nul"),
        pytest.param((b"Bearer =abc",), "invalid_token", id="padding-first"),
        pytest.param((b"Bearer \xc3\xa9",), "invalid_token", id="non-ascii"),
        pytest.param((b"Bearer " + b"a" * MAX_AUTHORIZATION,), "invalid_token", id="over-16-kib"),
    ],
)
def test_unusable_credentials_are_refused(values: tuple[bytes, ...], error: str) -> None:
    with pytest.raises(Refusal) as caught:
        read_authorization(header(*values))
    assert caught.value.status == 401 and caught.value.error == error
    assert has_token(header(*values))


def test_an_oversized_header_is_refused_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    from idgateway.gate import bearer as module

    class Exploding:
        def fullmatch(self, _: bytes) -> None:
            raise AssertionError("parsed")

    monkeypatch.setattr(module, "_B64TOKEN", Exploding())
    with pytest.raises(Refusal) as caught:
        read_authorization(header(b"Bearer " + b"a" * MAX_AUTHORIZATION))
    assert caught.value.reason == "oversized"


# ---------------------------------------------------------------------------
# Requests through the gate


def refusals(reason: str) -> float:
    from idgateway.observe.metrics import METRICS

    labels = {"route": "orders-api", "reason": reason}
    return METRICS.registry.get_sample_value("idgateway_bearer_refusals_total", labels) or 0.0


def test_no_token_is_a_401_challenge_without_error() -> None:
    gate, route = make_gate()
    before = refusals("no_token")
    request, resource = run(gate, route, b"/orders", [])
    assert refusals("no_token") == before + 1
    assert request.code == 401 and not resource.forwarded
    (challenge,) = request.challenges()
    assert challenge == (
        'Bearer realm="orders", resource_metadata='
        '"http://api.example.com/.well-known/oauth-protected-resource"'
    )


def test_a_remembered_token_passes_synchronously_with_its_identity() -> None:
    gate, route = make_gate()
    remember(gate, "tok-1")
    request, resource = run(gate, route, b"/orders", [(b"Authorization", b"Bearer tok-1")])
    assert request.code == 0 and len(resource.forwarded) == 1
    identity = dict(resource.forwarded[0]["identity"])
    assert identity[b"X-Forwarded-User"] == b"client:billing"
    assert identity[b"X-Forwarded-Client-Id"] == b"billing"
    assert identity[b"X-Forwarded-Access-Token"] == b"tok-1"
    assert request.idgw_user == "client:billing"


def test_a_token_request_carries_the_routes_identity_assertion(tmp_path: Any) -> None:
    import jwt

    from idgateway.config.model import AssertionSettings
    from idgateway.config.signing_keys import generate_key_file
    from idgateway.gate.assertion import AssertionSigner

    key = generate_key_file(str(tmp_path / "k.pem"))
    gate, route = make_gate()
    gate.assertion = AssertionSigner(AssertionSettings(), key, audience=route.name)
    gate.clock.advance(time.time())  # type: ignore[attr-defined]  # (a test Clock)
    remember(gate, "tok-1")
    _, resource = run(gate, route, b"/orders", [(b"Authorization", b"Bearer tok-1")])
    identity = dict(resource.forwarded[0]["identity"])
    claims = jwt.decode(
        identity[b"X-Idgateway-Assertion"],
        jwt.PyJWK(key.public_jwk).key,
        algorithms=["ES256"],
        audience="orders-api",
        issuer="http://api.example.com",
    )
    assert claims["sub"] == "billing" and claims["client_id"] == "billing"
    assert "sid" not in claims  # a token has no gateway session


def test_the_mod_auth_openidc_preset_names_the_client_in_a_claim_header() -> None:
    gate, route = make_gate(preset="mod_auth_openidc")
    remember(gate, "tok-1", org_name="Super")
    _, resource = run(gate, route, b"/orders", [(b"Authorization", b"Bearer tok-1")])
    identity = dict(resource.forwarded[0]["identity"])
    assert identity[b"OIDC_CLAIM_client_id"] == b"billing"
    assert identity[b"X-Remote-User"] == b"client:billing"
    assert identity[b"OIDC_access_token"] == b"tok-1"
    assert b"X-Forwarded-Client-Id" not in identity


def test_scopes_per_path() -> None:
    gate, route = make_gate()
    remember(gate, "tok-1")
    request, resource = run(gate, route, b"/admin/x", [(b"Authorization", b"Bearer tok-1")])
    assert request.code == 403 and not resource.forwarded
    (challenge,) = request.challenges()
    assert 'error="insufficient_scope"' in challenge and 'scope="orders:admin"' in challenge
    # The canonical path decides: /x/../admin/ and %61dmin are /admin/ too.
    for path in (b"/x/../admin/y", b"/%61dmin/y"):
        request, resource = run(gate, route, path, [(b"Authorization", b"Bearer tok-1")])
        assert request.code == 403, path


def test_public_paths_pass_without_a_token_or_identity() -> None:
    gate, route = make_gate()
    request, resource = run(gate, route, b"/healthz", [])
    assert resource.forwarded and "identity" not in resource.forwarded[0]


def test_a_dpop_bound_token_sent_as_bearer_leaves_the_hot_path() -> None:
    gate, route = make_gate(dpop="optional")
    remember(gate, "h.p.s", cnf={"jkt": "abc"})
    request, resource = run(gate, route, b"/orders", [(b"Authorization", b"Bearer h.p.s")])
    assert request.code == 401 and not resource.forwarded
    bearer, dpop = request.challenges()
    assert bearer.startswith("Bearer ") and dpop.startswith("DPoP ")
    assert 'error="invalid_token"' in dpop and "algs=" in dpop


def test_dpop_required_offers_only_the_dpop_challenge() -> None:
    gate, route = make_gate(dpop="required")
    remember(gate, "tok-1")
    request, _ = run(gate, route, b"/orders", [(b"Authorization", b"Bearer tok-1")])
    assert request.code == 401
    assert [c.split(" ")[0] for c in request.challenges()] == ["DPoP"]


def test_the_metadata_document() -> None:
    gate, route = make_gate(dpop="required")
    request, _ = run(gate, route, WELL_KNOWN_RESOURCE.encode(), [])
    assert request.code == 200
    document = json.loads(request.body)
    assert document == {
        "resource": "http://api.example.com",
        "authorization_servers": [ISSUER],
        "scopes_supported": ["orders:admin", "orders:read"],
        "bearer_methods_supported": ["header"],
        "resource_name": "orders-api",
        "dpop_signing_alg_values_supported": document["dpop_signing_alg_values_supported"],
        "dpop_bound_access_tokens_required": True,
    }
    assert "none" not in document["dpop_signing_alg_values_supported"]
    assert not any(a.startswith("HS") for a in document["dpop_signing_alg_values_supported"])


def test_a_reload_keeps_what_was_verified_unless_the_bearer_settings_changed() -> None:
    import attrs

    before, route = make_gate()
    remember(before, "tok-1")
    same = BearerGate(route, before.bearer, before.provider, Clock())
    same.adopt(before)
    assert same.jwt is not None and same.jwt.remembered(token_digest("tok-1")) is not None
    changed_settings = attrs.evolve(before.settings, audiences=("billing",))
    changed = BearerGate(
        route, attrs.evolve(before.bearer, settings=changed_settings), before.provider, Clock()
    )
    changed.adopt(before)
    assert changed.jwt is not None and changed.jwt.remembered(token_digest("tok-1")) is None


def test_a_scopes_rule_refuses_sessions_and_checks_tokens() -> None:
    from idgateway.gate.rules import authorization_failure

    rules = AuthorizeRules(scopes=("orders:read", "orders:write"))
    assert authorization_failure(rules, {"scope": "orders:read orders:write"}) is not None
    assert authorization_failure(rules, {}, granted_scopes=frozenset({"orders:read"}))
    granted = frozenset({"orders:read", "orders:write", "x"})
    assert authorization_failure(rules, {}, granted_scopes=granted) is None
    assert authorization_failure(AuthorizeRules(), {}) is None


def test_a_token_only_route_is_ready_once_its_provider_is() -> None:
    from idgateway.server.admin import readiness
    from tests.unit.test_oidc_provider import resolve

    gate, _ = make_gate()
    runtime = SimpleNamespace(login=None, bearer=gate)
    holder = SimpleNamespace(
        current=SimpleNamespace(
            runtimes={"orders-api": runtime},
            providers={gate.provider.settings: gate.provider},
            redis_clients={},
        )
    )
    FakeProvider.last_error = None  # type: ignore[attr-defined]
    ready, detail = resolve(readiness(holder))  # type: ignore[arg-type]
    assert ready and detail["routes"]["orders-api"]["bearer"] is True
    gate.provider.client.ready = False  # type: ignore[misc]
    ready, detail = resolve(readiness(holder))  # type: ignore[arg-type]
    assert not ready and detail["routes"]["orders-api"]["provider_ready"] is False
