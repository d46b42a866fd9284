"""Issue 11, section 1 against the real gateway process: tricky targets through
the gateway to an nginx that routes by prefix, a servlet-style upstream and an
IIS-style one. Unauthenticated, nothing but a public area answers; signed in
as a user outside ``admins``, the admin area never answers; the upstream gets
exactly the canonical path; /oauth2/auth judges forwarded URIs the same way.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import BackendProcess
from tests.http_helpers import send_raw
from tests.login_env import Client, registered_client
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary
from tests.security.path_upstreams import NginxUpstream, ReadingUpstream

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

ROUTES = ("ngx", "servlet", "iis")


def raw_request(port: int, target: bytes, host: bytes, headers: bytes = b"") -> tuple[int, bytes]:
    """Exactly these bytes on the wire (http.client refuses some of them)."""
    head = b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + headers
    head += b"Accept: text/plain\r\nConnection: close\r\n\r\n"
    data = send_raw(port, head)
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = Path(tmp_path_factory.mktemp("paths"))
    port = free_port()
    clients = [
        registered_client(
            f"{name}-client", f"{name}-secret", f"{name}.localhost", port, "client_secret_basic"
        )
        for name in ROUTES
    ]
    config = {"tenants": {"carbon.super": {"clients": clients}}}
    key = base64.b64encode(os.urandom(32)).decode()
    with (
        ProviderProcess(tmp / "op", config) as op,
        NginxUpstream(tmp / "nginx") as nginx,
        ReadingUpstream() as servlet,
        ReadingUpstream(iis=True) as iis,
        BackendProcess(name="echo") as echo,
    ):
        upstreams = {"ngx": nginx.port, "servlet": servlet.port, "iis": iis.port}
        routes = ""
        for name in ROUTES:
            routes += f"""
  - name: {name}
    hosts: [{name}.localhost]
    upstream: http://127.0.0.1:{upstreams[name]}
    case_insensitive_paths: {"true" if name == "iis" else "false"}
    oidc:
      provider: wso2
      client_id: {name}-client
      client_secret: {name}-secret
      scopes: [openid, email, profile, groups]
      user_claim: username
    session: {{keys: [{key}]}}
    public_paths: [/public/, /healthz, "GET /items"]
    paths:
      - {{prefix: /admin/, upstream: "http://127.0.0.1:{upstreams[name]}",
          authorize: {{groups: [admins]}}}}
"""
        text = f"""
listeners: [{{address: 127.0.0.1:{port}}}]
trusted_proxies: [127.0.0.1]
providers:
  wso2: {{discovery_url: "{op.discovery_url()}", ca_file: "{op.ca_file}"}}
routes:{routes}
  - name: echo
    hosts: [echo.localhost]
    upstream: http://127.0.0.1:{echo.port}
  - name: passing
    hosts: [pass.localhost]
    upstream: http://127.0.0.1:{echo.port}
    path_rules: {{encoded_slashes: pass, backslashes: pass}}
"""
        (tmp / "gateway.yaml").write_text(text)
        gateway = GatewayProcess(tmp / "gateway.yaml", tmp / "gateway.log").start([port])
        try:
            deadline = time.monotonic() + 20
            while Client(port, "ngx.localhost").get("/")[0] != 302:
                assert time.monotonic() < deadline, "the provider was not discovered in time"
                time.sleep(0.2)
            signed_in = {}
            for name in ROUTES:
                client = Client(port, f"{name}.localhost")
                status, _ = client.login(op, "/", "alice", "alice123")
                assert status == 200
                signed_in[name] = client
            yield {"port": port, "signed_in": signed_in, "log": tmp / "gateway.log"}
        finally:
            gateway.stop()


VECTORS = [
    # path parameters on dot segments
    b"/public/..;/admin/x",
    b"/public/..;x/admin/x",
    b"/healthz/..;/admin/x",
    b"/public/.;/../admin/x",
    b"/secret/..;/healthz",
    # encoded and multiply encoded dots
    b"/public/%2e%2e/admin/x",
    b"/public/%2E%2E/admin/x",
    b"/public/.%2e/admin/x",
    b"/public/%252e%252e/admin/x",
    b"/public/%25252e%25252e/admin/x",
    b"/public/%25%32%65%25%32%65/admin/x",
    b"/public/%2e%2e;/admin/x",
    # slashes and backslashes
    b"/public/..%2fadmin/x",
    b"/public%2F..%2Fadmin/x",
    b"/public/..%5cadmin/x",
    b"/public\\..\\admin\\x",
    b"/public/..\\admin/x",
    b"/x\\..\\..\\healthz",
    # overlong UTF-8, IIS %u, NUL and controls
    b"/public/..%c0%af../admin/x",
    b"/public/%c0%ae%c0%ae/admin/x",
    b"/public/%u002e%u002e/admin/x",
    b"/public/%00/../admin/x",
    b"/public/..%00/admin/x",
    # parameters and case on the protected prefix itself
    b"/admin;x/y",
    b"/admin%3bx/y",
    b"/;x/admin/y",
    b"//admin/x",
    b"/ADMIN/x",
    b"/Admin./x",
    b"/admin%20/x",
    b"/admin",
    b"/admin;jsessionid=1",
    b"/admin.",
    # Unicode case mappings and Windows best fit on the IIS-style route
    b"/adm%C4%B1n/x",
    b"/%EF%BD%81dmin/x",
    b"/public/..%20/admin/x",
    b"/public/.../admin/x",
    b"/public/%25u002e%25u002e/admin/x",
    b"/public/..%F8%80%80%80%AF../admin",
    # invalid escapes
    b"/public/%zz/../admin/x",
    b"/public/%/admin",
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("target", VECTORS, ids=lambda v: v.decode("latin-1"))
def test_unauthenticated_tricks_reach_nothing_but_public_areas(env, route, target) -> None:
    status, body = raw_request(env["port"], target, f"{route}.localhost:{env['port']}".encode())
    if status == 200:
        assert body.startswith(b"area=public"), (status, body)
    else:
        assert status in (302, 400, 401), (status, body)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "target", [*VECTORS, b"/admin/x", b"/public/../admin/x"], ids=lambda v: v.decode("latin-1")
)
def test_a_user_outside_admins_never_reaches_the_admin_area(env, route, target) -> None:
    client = env["signed_in"][route]
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items()).encode()
    status, body = raw_request(
        env["port"], target, client.host.encode(), b"Cookie: " + cookie + b"\r\n"
    )
    assert b"area=admin" not in body, (status, body)
    assert status in (200, 400, 403), (status, body)


def test_an_ambiguous_path_gets_400_with_a_clear_page(env) -> None:
    status, body = raw_request(env["port"], b"/public/..;/admin/x", b"ngx.localhost")
    assert status == 400
    assert b"dot segment carries ;parameters" in body


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        (b"/a/./b/../c?q=%2e%2e&x=../y", "/a/c?q=%2e%2e&x=../y"),
        (b"/%7euser/%41%62c", "/~user/Abc"),
        (b"/a%3bb/%c3%a9?x", "/a%3Bb/%C3%A9?x"),
        (b"/../../etc/passwd", "/etc/passwd"),
    ],
)
def test_the_upstream_receives_exactly_the_canonical_path(env, target, forwarded) -> None:
    status, body = raw_request(env["port"], target, b"echo.localhost", b"Accept: */*\r\n")
    assert status == 200, body
    echo = json.loads(body)
    assert echo["path"] + ("?" + echo["query"] if echo["query"] else "") == forwarded


@pytest.mark.parametrize(
    "target",
    [b"/caf\xa9", b"/caf\xc3\xa9", b"/a?q=\x85", b"/a?q=\x7f", b"/a?q=\xb0", b"/a?q=\xff"],
)
def test_a_target_with_a_byte_that_is_not_visible_ascii_is_refused(env, target) -> None:
    # (twisted.web's own parser, the HTTP/1.1 fallback, takes DEL and
    # 0x80-0xB0 bare; the route refuses them as the one-pass reader does.)
    status, _ = raw_request(env["port"], target, b"echo.localhost", b"Accept: */*\r\n")
    assert status == 400


def test_a_route_that_passes_slashes_keeps_them_encoded_and_opaque(env) -> None:
    status, body = raw_request(env["port"], b"/files/a%2fb%5Cc/d\\e", b"pass.localhost")
    assert status == 200, body
    assert json.loads(body)["path"] == "/files/a%2Fb%5Cc/d\\e"
    # ...but never as a way to form a dot segment upstream.
    status, body = raw_request(env["port"], b"/files/..%2f..%2fetc", b"pass.localhost")
    assert status == 400
    status, body = raw_request(env["port"], b"/files/..\\etc", b"pass.localhost")
    assert status == 400


def _auth(
    env, forwarded_uri: bytes, method: bytes | None = b"GET", cookie: bool = True, extra=b""
) -> int:
    client = env["signed_in"]["ngx"]
    headers = b"X-Forwarded-Uri: " + forwarded_uri + b"\r\n" + extra
    if method is not None:
        headers += b"X-Forwarded-Method: " + method + b"\r\n"
    if cookie:
        cookies = "; ".join(f"{k}={v}" for k, v in client.cookies.items()).encode()
        headers += b"Cookie: " + cookies + b"\r\n"
    return raw_request(env["port"], b"/oauth2/auth", client.host.encode(), headers)[0]


@pytest.mark.parametrize(
    ("forwarded_uri", "cookie", "status"),
    [
        (b"/app/page", True, 202),
        (b"/admin/x", True, 403),
        (b"/public/../admin/x", True, 403),
        (b"/ADMIN/../admin/x?q=1", True, 403),
        (b"/public/..;/admin/x", True, 400),
        (b"/public/%2e%2e/admin/x", True, 400),
        (b"/public/%252e%252e/admin/x", True, 400),
        (b"/public\\..\\admin", True, 400),
        (b"//admin/x", True, 400),
        (b"/admin;x/y", True, 400),
        (b"/public/x", False, 202),
        (b"/public/..;/x", False, 400),
        (b"/admin/x", False, 401),
    ],
)
def test_forward_auth_judges_the_forwarded_uri_as_the_gate_does(
    env, forwarded_uri, cookie, status
) -> None:
    assert _auth(env, forwarded_uri, cookie=cookie) == status


@pytest.mark.parametrize(
    ("method", "extra", "status"),
    [
        (b"GET", b"", 202),  # "GET /items" is public
        (b"HEAD", b"", 202),
        (b"POST", b"", 401),
        (None, b"", 401),  # no method said: only paths public to every method
        (b"GET", b"X-Forwarded-Method: POST\r\n", 400),  # the method twice
        (b"GET", b"X-Original-URI: /admin/x\r\n", 400),  # two headers, two paths
        (b"GET", b"X-Forwarded-Uri: /admin/x\r\n", 400),  # the header twice
        (b"GET", b"X-Original-URI: /items?x=1\r\n", 202),  # two headers, one path
    ],
)
def test_forward_auth_needs_one_forwarded_request(env, method, extra, status) -> None:
    assert _auth(env, b"/items", method=method, cookie=False, extra=extra) == status
