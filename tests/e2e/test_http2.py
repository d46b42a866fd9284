"""HTTP/2 end to end (issue 14): curl, a Python h2 client and Chromium against
the real gateway, the WSO2-shaped provider and the echo back end.

One gateway serves a TLS listener (http2 by default: ALPN offers h2) and a
plain listener with ``http2: prior_knowledge`` (h2c for a load balancer).
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h2.errors
import pytest

from tests.certs import make_ca
from tests.h2_client import H2Client, H2Response
from tests.http_helpers import header_values
from tests.login_env import (
    APP1_SECRET,
    APP2_SECRET,
    session_key,
    two_tenant_config,
    two_tenant_gateway_yaml,
)
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

CURL = shutil.which("curl")


@dataclass
class H2Environment:
    op: ProviderProcess
    gateway: GatewayProcess
    tls: int
    h2c: int
    ca: Path
    leaf: Path
    config: Path


def _also_for(client: dict[str, Any], origins: list[str]) -> None:
    client["redirect_uris"] = [f"{o}/oauth2/callback" for o in origins]
    client["post_logout_redirect_uris"] = [f"{o}/" for o in origins]


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[H2Environment]:
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp("http2")
    ca = make_ca(tmp / "pki")
    leaf = ca.issue(tmp / "pki", ["app1.localhost", "app2.localhost", "open.localhost"])
    tls, h2c = free_port(), free_port()
    config = two_tenant_config(tls)
    _also_for(
        config["tenants"]["carbon.super"]["clients"][0],
        [f"https://app1.localhost:{tls}", f"http://app1.localhost:{h2c}"],
    )
    with ProviderProcess(tmp / "op", config) as op, BackendProcess(name="echo") as backend:
        (tmp / "app2-secret").write_text(APP2_SECRET + "\n")
        text = two_tenant_gateway_yaml(
            tls, op, backend.port, tmp / "app2-secret", session_key(), app1_headers="oauth2-proxy"
        )
        text = text.replace(
            f"listeners:\n  - address: 127.0.0.1:{tls}\n",
            f"""listeners:
  - address: 127.0.0.1:{tls}
    tls:
      certificates:
        - {{cert: {leaf.cert_path}, key: {leaf.key_path}}}
  - address: 127.0.0.1:{h2c}
    http2: prior_knowledge
""",
        )
        text += f"""  - name: open
    hosts: [open.localhost]
    upstream: http://127.0.0.1:{backend.port}
"""
        gateway_config = tmp / "gateway.yaml"
        gateway_config.write_text(text)
        env = {"APP1_CLIENT_SECRET": APP1_SECRET, "APP1_SESSION_KEY": session_key()}
        gateway = GatewayProcess(gateway_config, tmp / "gateway.log", env=env).start([tls, h2c])
        environment = H2Environment(
            op, gateway, tls, h2c, ca.cert_path, leaf.cert_path, gateway_config
        )
        try:
            _wait_for_discovery(environment)
            yield environment
        finally:
            gateway.stop()
        assert "Traceback" not in gateway.log(), gateway.log()[-3000:]


def _wait_for_discovery(env: H2Environment) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with H2Client(env.tls, ca=env.ca) as client:
            if client.get("/", authority=f"app1.localhost:{env.tls}").status == 302:
                return
        time.sleep(0.2)
    raise AssertionError("the provider was not discovered in time")


class H2Session:
    """A cookie-keeping HTTP/2 client for app1 (one connection for everything)."""

    def __init__(self, client: H2Client, authority: str) -> None:
        self.client = client
        self.authority = authority
        self.cookies: dict[str, str] = {}

    def get(self, path: str, headers: list[tuple[str, str]] = ()) -> H2Response:  # type: ignore[assignment]
        sent = list(headers)
        if self.cookies:
            sent.append(("cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        response = self.client.get(path, authority=self.authority, headers=sent)
        for name, value in response.headers:
            if name == b"set-cookie":
                pair = value.decode().split(";", 1)[0]
                key, _, cookie = pair.partition("=")
                if cookie:
                    self.cookies[key] = cookie
                else:
                    self.cookies.pop(key, None)
        return response

    def login(self, op: ProviderProcess, path: str, user: str, password: str) -> H2Response:
        response = self.get(path)
        assert response.status == 302, response.status
        authorize = response.header(b"location").decode()  # type: ignore[union-attr]
        callback = op.scripted_login(authorize, user, password)
        parts = urlsplit(callback)
        assert parts.netloc == self.authority
        response = self.get(f"{parts.path}?{parts.query}")
        assert response.status == 302, (response.status, bytes(response.body)[:300])
        assert response.header(b"location") == path.encode()
        return self.get(path, [("accept", "application/json")])


def test_curl_negotiates_h2_by_alpn_and_reaches_the_upstream(environment: H2Environment) -> None:
    if CURL is None:
        pytest.skip("curl is not installed")
    env = environment
    done = subprocess.run(
        [
            CURL,
            "-s",
            "--http2",
            "--cacert",
            str(env.ca),
            "--resolve",
            f"open.localhost:{env.tls}:127.0.0.1",
            "-w",
            "\\n%{http_version}",
            f"https://open.localhost:{env.tls}/echo?q=1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, version = done.stdout.rpartition("\n")
    assert version == "2"
    echo = json.loads(body)
    # The upstream side stays HTTP/1.1, with the same forwarded headers.
    assert echo["version"] == "HTTP/1.1" and echo["query"] == "q=1"
    assert header_values(echo, "x-forwarded-proto") == ["https"]
    assert header_values(echo, "host") and not header_values(echo, ":authority")
    # The access line names the protocol.
    lines = env.gateway.log().splitlines()
    assert any(
        "GET /echo 200" in line and "route=open" in line and line.endswith(" h2") for line in lines
    ), lines[-5:]


def test_curl_h2c_with_prior_knowledge(environment: H2Environment) -> None:
    if CURL is None:
        pytest.skip("curl is not installed")
    env = environment
    done = subprocess.run(
        [
            CURL,
            "-s",
            "--http2-prior-knowledge",
            "-H",
            "host: open.localhost",
            "-w",
            "\\n%{http_version}",
            f"http://127.0.0.1:{env.h2c}/echo",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, version = done.stdout.rpartition("\n")
    assert version == "2"
    assert header_values(json.loads(body), "x-forwarded-proto") == ["http"]


def test_login_and_cookie_session_over_h2(environment: H2Environment) -> None:
    env = environment
    with H2Client(env.tls, ca=env.ca) as client:
        assert client.alpn == "h2"
        session = H2Session(client, f"app1.localhost:{env.tls}")
        response = session.login(env.op, "/echo?from=h2", "alice", "alice123")
        assert response.status == 200
        echo = json.loads(bytes(response.body))
        assert header_values(echo, "x-forwarded-user") == ["alice"]
        assert not any(name.startswith(("_idgw", "__Host-_idgw")) for name in echo["cookies"])
        # Forged identity headers are replaced, on h2 as on HTTP/1.1.
        forged = session.get("/echo", [("x-forwarded-user", "mallory")])
        assert header_values(json.loads(bytes(forged.body)), "x-forwarded-user") == ["alice"]
        # API clients without a session get 401 JSON, not a redirect.
        anonymous = H2Session(client, f"app1.localhost:{env.tls}")
        refused = anonymous.get("/echo", [("accept", "application/json")])
        assert refused.status == 401


def test_login_over_h2c_behind_a_prior_knowledge_client(environment: H2Environment) -> None:
    env = environment
    with H2Client(env.h2c) as client:
        session = H2Session(client, f"app1.localhost:{env.h2c}")
        response = session.login(env.op, "/echo", "alice", "alice123")
        assert response.status == 200
        assert header_values(json.loads(bytes(response.body)), "x-forwarded-user") == ["alice"]


def test_sni_and_authority_naming_different_sites_is_421(environment: H2Environment) -> None:
    env = environment
    with H2Client(env.tls, ca=env.ca, server_name="open.localhost") as client:
        assert client.get("/echo", authority=f"app1.localhost:{env.tls}").status == 421


def test_websockets_still_upgrade_over_http11_on_the_tls_listener(
    environment: H2Environment,
) -> None:
    env = environment
    context = ssl.create_default_context(cafile=str(env.ca))
    # (A WebSocket client offers http/1.1 only, as browsers do for WebSockets.)
    context.set_alpn_protocols(["http/1.1"])
    with _ws(env, context) as socket:
        socket.send("over http/1.1")
        assert socket.recv(timeout=10) == "over http/1.1"


def _ws(env: H2Environment, context: ssl.SSLContext) -> Any:
    import socket as socket_module

    from websockets.sync.client import connect

    raw = socket_module.create_connection(("127.0.0.1", env.tls), timeout=10)
    return connect(
        f"wss://open.localhost:{env.tls}/ws",
        sock=raw,
        ssl=context,
        server_hostname="open.localhost",
        open_timeout=10,
    )


def test_sigterm_sends_goaway_and_lets_open_streams_finish(tmp_path: Path) -> None:
    """A gateway of its own, drained with one stream in flight and one connection idle."""
    if CURL is None:
        pytest.skip("curl is not installed")
    from tests.backends import BackendProcess

    port = free_port()
    with BackendProcess(name="drain") as backend:
        config = tmp_path / "drain.yaml"
        config.write_text(
            f"""
listeners:
  - address: 127.0.0.1:{port}
    http2: prior_knowledge
routes:
  - name: open
    default: true
    upstream: http://127.0.0.1:{backend.port}
"""
        )
        gateway = GatewayProcess(config, tmp_path / "drain.log").start([port])
        try:
            # (curl for the stream in flight: the h2 library, as a client, takes
            # no frame after a GOAWAY, not even the answers it promises.)
            busy = subprocess.Popen(
                [
                    CURL or "curl",
                    "-s",
                    "--http2-prior-knowledge",
                    "-H",
                    "host: open.localhost",
                    "-w",
                    "\\n%{http_version} %{http_code}",
                    f"http://127.0.0.1:{port}/slow-headers?delay=2",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            with H2Client(port) as idle:
                assert idle.get("/echo", authority="open.localhost").status == 200
                time.sleep(0.7)
                gateway.signal(signal.SIGTERM)
                # The idle connection gets GOAWAY (NO_ERROR) and is closed.
                idle.read_until_closed(timeout=5)
                assert idle.goaway is not None
                assert idle.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
            # The stream in flight finishes with its answer.
            out, _ = busy.communicate(timeout=10)
            assert out.rpartition("\n")[2] == "2 200", out
        finally:
            gateway.stop()
        assert "Traceback" not in gateway.log(), gateway.log()[-3000:]


def test_reload_keeps_open_h2_connections_serving(environment: H2Environment) -> None:
    env = environment
    with H2Client(env.tls, ca=env.ca, server_name="open.localhost") as client:
        assert client.get("/echo", authority="open.localhost").status == 200
        env.gateway.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded" not in env.gateway.log():
            assert time.monotonic() < deadline, env.gateway.log()[-2000:]
            time.sleep(0.1)
        assert client.get("/echo", authority="open.localhost").status == 200


def test_chromium_uses_h2_through_the_whole_login(environment: H2Environment) -> None:
    from tests.browser import launch_chromium, new_context, require_chromium

    require_chromium()
    from playwright.sync_api import sync_playwright

    env = environment
    assert env.op.leaf is not None
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, trusted_certs=[env.op.leaf.cert_path, env.leaf])
        try:
            context = new_context(browser)
            context.set_default_timeout(15_000)
            page = context.new_page()
            url = f"https://app1.localhost:{env.tls}/hello"
            page.goto(url)
            assert page.evaluate(
                "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            ) in ("h2", "http/1.1")  # the provider's login page (the provider's protocol)
            page.wait_for_selector("input[name=username]")
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", "alice123")
            page.click("#login-submit")
            page.wait_for_url(url)
            page.wait_for_load_state("load")
            protocol = page.evaluate(
                "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            )
            assert protocol == "h2", protocol
            echo = json.loads(page.locator("body").inner_text())
            assert echo["path"] == "/hello"
            assert header_values(echo, "x-forwarded-user") == ["alice"]
            # The login's own steps (redirect, callback) went over h2 too.
            lines = [line for line in env.gateway.log().splitlines() if "route=app1" in line]
            assert any("/oauth2/callback" in line and line.endswith(" h2") for line in lines)
            context.close()
        finally:
            browser.close()
