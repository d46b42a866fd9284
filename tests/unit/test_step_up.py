"""Step-up per path (issue 15 §3) in memory: the configuration, the check of a
session's acr and auth_time, the login parameters, RFC 9470's challenge, and
the flow cookie that remembers what the new login must show."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from idgateway.config.model import StepUp
from idgateway.gate.step_up import (
    claims_satisfy,
    insufficient_authentication_challenge,
    step_up_parameters,
)
from idgateway.sessions.flows import LoginFlow
from tests.unit.test_config_providers import SECRET, load, login_file, only_problem
from tests.unit.test_login_flow_cookies import KEY_A, NOW, apply, flows
from tests.unit.test_userinfo_auto import provider  # noqa: F401 - a fixture

MFA = StepUp(acr_values=("mfa", "urn:example:loa:3"))
RECENT = StepUp(max_age=600)
BOTH = StepUp(acr_values=("mfa",), max_age=600)


@pytest.mark.parametrize(
    ("claims", "step_up", "ok"),
    [
        ({"acr": "mfa"}, MFA, True),
        ({"acr": "urn:example:loa:3"}, MFA, True),
        ({"acr": "pwd"}, MFA, False),
        ({}, MFA, False),
        ({"acr": ["mfa"]}, MFA, False),  # a list is not an acr
        ({"acr": "MFA"}, MFA, False),  # values compare exactly
        ({"auth_time": NOW - 599}, RECENT, True),
        ({"auth_time": NOW - 601}, RECENT, False),
        ({}, RECENT, False),  # unknown: as old
        ({"auth_time": "1700000000"}, RECENT, False),
        ({"auth_time": True}, RECENT, False),
        ({"auth_time": NOW + 3600}, RECENT, False),  # from the future
        ({"acr": "mfa", "auth_time": NOW - 10}, BOTH, True),
        ({"acr": "mfa", "auth_time": NOW - 601}, BOTH, False),
        ({"acr": "pwd", "auth_time": NOW}, BOTH, False),
    ],
)
def test_claims_satisfy(claims: dict, step_up: StepUp, ok: bool) -> None:
    assert claims_satisfy(claims, step_up.acr_values, step_up.max_age, NOW) is ok


def test_login_parameters_and_challenge() -> None:
    assert step_up_parameters(BOTH) == {"acr_values": "mfa", "max_age": "600"}
    assert step_up_parameters(MFA) == {"acr_values": "mfa urn:example:loa:3"}
    assert step_up_parameters(RECENT) == {"max_age": "600"}
    assert insufficient_authentication_challenge(BOTH) == (
        b'Bearer error="insufficient_user_authentication", '
        b'error_description="A stronger or more recent sign-in is required", '
        b'acr_values="mfa", max_age="600"'
    )


def test_the_flow_cookie_keeps_the_step_up() -> None:
    fc = flows()
    flow = fc.new_flow("/admin/", NOW, acr_values=("mfa",), max_age=600.0)
    jar = apply({}, fc.set_cookie(flow, {}, NOW))
    taken, _ = fc.take(flow.state, jar, NOW + 1)
    assert taken == flow and taken is not None and taken.step_up
    plain = fc.new_flow("/", NOW)
    jar = apply({}, fc.set_cookie(plain, {}, NOW))
    taken, _ = fc.take(plain.state, jar, NOW + 1)
    assert taken is not None and not taken.step_up


def test_a_flow_cookie_cannot_lose_its_step_up() -> None:
    """The requirement is sealed with the rest: another key or a swapped value
    opens nothing (the browser cannot turn a step-up login into a plain one)."""
    fc = flows()
    flow = fc.new_flow("/admin/", NOW, acr_values=("mfa",))
    jar = apply({}, fc.set_cookie(flow, {}, NOW))
    plain = fc.new_flow("/admin/", NOW)
    other = apply({}, fc.set_cookie(attrs.evolve(plain, state=flow.state), {}, NOW))
    (name,) = jar
    assert jar[name] != other[name]
    tampered = {name: jar[name][:-4] + b"AAAA"}
    assert fc.take(flow.state, tampered, NOW)[0] is None
    assert flows(keys=(bytes(32),)).take(flow.state, jar, NOW)[0] is None
    assert KEY_A  # the key the flows above use


def test_loginflow_defaults() -> None:
    assert not LoginFlow("s", "n", "v", "/", NOW).step_up


# ---- configuration ---------------------------------------------------------------------


def route_with_paths(*path_lines: str, oidc: bool = True) -> str:
    text = login_file(f"client_secret: {SECRET}") if oidc else login_file().split("    oidc:")[0]
    return (
        text
        + "    paths:\n      - prefix: /admin/\n        upstream: http://127.0.0.1:3001\n"
        + "".join(f"        {line}\n" for line in path_lines)
    )


def test_step_up_configuration_loads(tmp_path: Path) -> None:
    config = load(tmp_path, route_with_paths("login: {acr_values: [mfa, loa3], max_age: 10m}"))
    (path,) = config.routes[0].paths
    assert path.login == StepUp(acr_values=("mfa", "loa3"), max_age=600.0)


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ("login: {}", "routes[0].paths[0].login", "give acr_values, max_age or both"),
        ("login: {acr_values: []}", "routes[0].paths[0].login.acr_values", "must not be empty"),
        ('login: {acr_values: ["m fa"]}', "routes[0].paths[0].login.acr_values[0]", "acr value"),
        ("login: {acr_values: ['a\"b']}", "routes[0].paths[0].login.acr_values[0]", "acr value"),
        ("login: {max_age: 0s}", "routes[0].paths[0].login.max_age", "longer than zero"),
        ("login: {max_age: soon}", "routes[0].paths[0].login.max_age", "duration"),
        ("login: {acr: [mfa], max_age: 1m}", "routes[0].paths[0].login.acr", "unknown key"),
        ("login: mfa", "routes[0].paths[0].login", "expected a mapping"),
    ],
)
def test_bad_step_up_values(tmp_path: Path, line: str, key: str, message: str) -> None:
    problem = only_problem(tmp_path, route_with_paths(line))
    assert problem.key == key, problem
    assert message in problem.message, problem


def test_step_up_needs_a_route_with_oidc(tmp_path: Path) -> None:
    text = (
        "listeners:\n  - address: 127.0.0.1:8080\nroutes:\n  - name: app1\n"
        "    hosts: [a.example.com]\n    upstream: http://127.0.0.1:3000\n"
        "    paths:\n      - prefix: /admin/\n        upstream: http://127.0.0.1:3001\n"
        "        login: {acr_values: [mfa]}\n"
    )
    problem = only_problem(tmp_path, text)
    assert problem.key == "routes[0].paths[0].login"
    assert "only applies on a route with an 'oidc' block" in problem.message


# ---- the callback of a step-up login -----------------------------------------------------


def _with_session(login, request, session) -> None:  # noqa: ANN001 - test helpers
    values = login.session_cookies(session, False, 0)
    request.requestHeaders.setRawHeaders(b"cookie", [b"; ".join(v.split(b";")[0] for v in values)])


def _step_up_callback(scripted, claims, current_sub):  # noqa: ANN001, ANN202
    from twisted.internet import defer

    from idgateway.gate import endpoints
    from idgateway.sessions.model import Session
    from tests.unit.test_userinfo_auto import FakeFlows, FakeRequest, make_login, session_claims

    scripted["id_token_claims"] = claims
    login = make_login()
    login.clock.advance(NOW)  # type: ignore[attr-defined]
    login.flows = {False: FakeFlows(acr_values=("mfa",)), True: FakeFlows(acr_values=("mfa",))}  # type: ignore[dict-item]
    request = FakeRequest(b"/oauth2/callback?code=c&state=st")
    old = Session(
        id="the-old-session",
        route="app",
        sub=current_sub,
        user="alice",
        claims={"sub": current_sub, "acr": "pwd"},
        created_at=NOW - 100,
        last_seen=NOW - 10,
    )
    _with_session(login, request, old)
    d = defer.ensureDeferred(endpoints.callback(login, request, b"app.localhost", False))
    assert d.called
    return login, request, session_claims


MFA_CLAIMS = {"sub": "u1", "sid": "p", "acr": "mfa", "email": "a@x", "groups": ["g"]}


def test_a_step_up_upgrades_the_same_session(provider) -> None:  # noqa: F811, ANN001
    login, request, _ = _step_up_callback(provider, MFA_CLAIMS, current_sub="u1")
    assert request.code == 302
    session = _session_of(login, request)
    assert (session.id, session.created_at) == ("the-old-session", NOW - 100)
    assert session.claims["acr"] == "mfa"


def test_a_step_up_by_another_user_is_a_new_session(provider) -> None:  # noqa: F811, ANN001
    login, request, _ = _step_up_callback(provider, MFA_CLAIMS, current_sub="someone-else")
    assert request.code == 302
    session = _session_of(login, request)
    assert session.id != "the-old-session" and session.sub == "u1"


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "u1", "acr": "pwd", "email": "a@x", "groups": ["g"]},
        {"sub": "u1", "email": "a@x", "groups": ["g"]},
        {"sub": "u1", "acr": ["mfa"], "email": "a@x", "groups": ["g"]},
    ],
    ids=["lower-acr", "no-acr", "acr-list"],
)
def test_a_weaker_answer_is_403_and_the_old_session_stays(provider, claims) -> None:  # noqa: F811, ANN001
    login, request, _ = _step_up_callback(provider, claims, current_sub="u1")
    assert request.code == 403
    assert b"step_up_failed" in request.body or b"stronger or more recent" in request.body
    # No new session cookie, and no redirect to the provider: no loop.
    set_cookies = request.responseHeaders.getRawHeaders(b"set-cookie", [])
    assert not any(v.startswith(b"_idgw_app=") for v in set_cookies)
    assert not request.responseHeaders.getRawHeaders(b"location")


def _session_of(login, request):  # noqa: ANN001, ANN202
    cookies = {}
    for value in request.responseHeaders.getRawHeaders(b"set-cookie", []):
        name, _, rest = value.partition(b"=")
        cookies[name] = rest.split(b";")[0]
    session, _ = login.codecs[False].decode(cookies)
    assert session is not None
    return session
