"""Property: the gate never judges a path public or allowed that another server
reads as protected (issue 11, section 1).

Hypothesis generates request targets from the characters path tricks are made
of. For each, the gate's verdict (the real PathJudge and RouteLogin of a
loaded configuration) is compared with three readings of the target the
gateway forwards, each written here independently of the gateway's code:

- nginx: decode once, merge slashes, resolve exact dot segments;
- servlet: also drop ``;params`` (before or after decoding) and read ``\\`` as ``/``;
- IIS-style: also ignore case and a segment's trailing dots and spaces.

No target may be judged public while a reading lands outside every public
path, nor allowed to a user outside ``admins`` while a reading lands under the
``/admin/`` rules. (IIS-style readings are checked against a route with
``case_insensitive_paths: true``; a case-sensitive route is nginx's contract.)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from idgateway.config.load import load_config
from idgateway.config.model import Route
from idgateway.gate.session_check import RouteLogin
from idgateway.http.paths import AmbiguousPath, PathJudge
from idgateway.routing.state import path_judge
from tests.route_gates import route_login
from tests.security.path_upstreams import resolve as _resolve

CONFIG = """
listeners: [{address: 127.0.0.1:8080}]
providers:
  wso2: {issuer: https://op.example/oauth2/token}
routes:
  - name: plain
    hosts: [plain.example]
    upstream: http://127.0.0.1:9001
    oidc: {provider: wso2, client_id: c1, client_secret: s1}
    session: {keys: [%(key)s]}
    public_paths: [/public/, /healthz]
    paths:
      - {prefix: /admin/, upstream: http://127.0.0.1:9002, authorize: {groups: [admins]}}
      - {prefix: /api/, upstream: http://127.0.0.1:9003}
  - name: iis
    hosts: [iis.example]
    upstream: http://127.0.0.1:9001
    case_insensitive_paths: true
    oidc: {provider: wso2, client_id: c2, client_secret: s2}
    session: {keys: [%(key)s]}
    public_paths: [/public/, /healthz]
    paths:
      - {prefix: /admin/, upstream: http://127.0.0.1:9002, authorize: {groups: [admins]}}
"""
KEY = "a" * 43 + "="
PUBLIC = ("/public/", "/healthz")
ADMIN = "/admin/"


class _Provider:
    metadata = None
    last_error = None

    def __init__(self) -> None:
        self.when_ready: list[object] = []


def _gate(route: Route) -> tuple[PathJudge, RouteLogin]:
    assert route.auth is not None
    login = route_login(
        route.auth,
        Clock(),
        route=route,
        client=_Provider(),
        issuer="https://op.example/oauth2/token",
    )
    return path_judge(route), login


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[PathJudge, RouteLogin]]:
    path = Path(tmp_path_factory.mktemp("paths")) / "gateway.yaml"
    path.write_text(CONFIG % {"key": KEY})
    config = load_config(str(path), {})
    return {route.name: _gate(route) for route in config.routes}


# -- three readings of a forwarded target, independent of idgateway.http.paths --------
# (_resolve, shared with the test upstreams: merge slashes, then RFC 3986
# dot-segment removal.)


def _decode(path: str) -> str:
    return unquote_to_bytes(path).decode("latin-1")


def _strip_params(path: str) -> str:
    return "/".join(part.split(";", 1)[0] for part in path.split("/"))


def nginx_reading(target: str) -> str:
    return _resolve(_decode(target))


def servlet_readings(target: str) -> list[str]:
    decoded_first = _strip_params(_decode(target).replace("\\", "/"))
    stripped_first = _decode(_strip_params(target)).replace("\\", "/")
    return [_resolve(decoded_first), _resolve(stripped_first)]


def iis_readings(target: str) -> list[str]:
    readings = []
    for servlet in servlet_readings(target):
        trimmed = "/".join(part.rstrip(". ") for part in servlet.lower().split("/"))
        readings.append(_resolve(trimmed))
    return readings


def _public(path: str, fold: bool) -> bool:
    path = path.lower() if fold else path
    for prefix in PUBLIC:
        if prefix.endswith("/"):
            if path.startswith(prefix) or path == prefix[:-1]:
                return True
        elif path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def _admin(path: str, fold: bool) -> bool:
    # A servlet mapping "/admin/*" serves "/admin" itself too.
    path = path.lower() if fold else path
    return path.startswith(ADMIN) or path == ADMIN[:-1]


# -- the property -----------------------------------------------------------------

PIECES = st.sampled_from(
    [
        "/",
        ".",
        ";",
        "%",
        "\\",
        "2",
        "5",
        "e",
        "f",
        "c",
        "a",
        "E",
        "F",
        "C",
        "A",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%5c",
        "%25",
        "%3b",
        "%3B",
        "%00",
        "%c0%af",
        "admin",
        "ADMIN",
        "Admin",
        "public",
        "Public",
        "healthz",
        "api",
        "x",
        "=",
        "~",
        "admin/",
        "public/",
        "/..",
        "/.",
        ";x",
        ";jsessionid=1",
        "%20",
        "//",
    ]
)
TARGETS = st.lists(PIECES, min_size=1, max_size=14).map(lambda pieces: "/" + "".join(pieces))


def verdict(gate: tuple[PathJudge, RouteLogin], target: str) -> tuple[bool, bool, str] | None:
    """(public, admin rules, forwarded path) as the gate decides; None: refused (400)."""
    judge, login = gate
    try:
        reading = judge.read(target.encode("latin-1"))
    except AmbiguousPath:
        return None
    rules = login.rules_for(reading)
    return (
        login.is_public(b"GET", reading),
        rules is not login.auth.authorize,
        reading.canonical.decode("latin-1"),
    )


def _check(gate: tuple[PathJudge, RouteLogin], target: str, readers: list, fold: bool) -> None:
    judged = verdict(gate, target)
    if judged is None:
        return  # refused before any rule: nothing reaches the upstream
    public, admin_rules, forwarded = judged
    for reader in readers:
        for reading in reader(forwarded):
            if public:
                assert _public(reading, fold), (target, forwarded, reading)
            if not admin_rules:
                assert not _admin(reading, fold), (target, forwarded, reading)


@settings(
    max_examples=4000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(target=TARGETS)
def test_no_reading_lands_on_a_protected_path_the_gate_let_through(gates, target: str) -> None:
    nginx = [lambda path: [nginx_reading(path)], servlet_readings]
    _check(gates["plain"], target, nginx, fold=False)
    _check(gates["iis"], target, [*nginx, iis_readings], fold=True)


@pytest.mark.parametrize(
    "target",
    [
        "/secret/..;/healthz",
        "/public/..;/admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%252e%252e/admin/x",
        "/public/%25%32%65%25%32%65/admin/x",
        "/x\\..\\..\\healthz",
        "/public\\..\\admin\\x",
        "/public%2F..%2Fadmin/x",
        "/public/..%c0%af../admin",
        "/admin;x/y",
        "/admin%3bx/y",
        "//admin/x",
        "/public/%2e%2e;/admin/x",
        "/healthz;/../admin/",
    ],
)
def test_known_bypasses_are_refused_or_judged_as_every_server_reads_them(gates, target) -> None:
    for name, readers, fold in (
        ("plain", [lambda p: [nginx_reading(p)], servlet_readings], False),
        ("iis", [lambda p: [nginx_reading(p)], servlet_readings, iis_readings], True),
    ):
        _check(gates[name], target, readers, fold)
        judged = verdict(gates[name], target)
        assert judged is None or not judged[0], (name, target, judged)


def test_iis_route_applies_admin_rules_whatever_the_case(gates) -> None:
    assert verdict(gates["iis"], "/ADMIN/x") == (False, True, "/ADMIN/x")
    assert verdict(gates["iis"], "/PUBLIC/x")[0] is True  # type: ignore[index]
    # A case-sensitive route keeps nginx's reading: /ADMIN/ is another path.
    assert verdict(gates["plain"], "/PUBLIC/x")[0] is False  # type: ignore[index]
