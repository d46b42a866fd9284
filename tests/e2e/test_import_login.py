"""End to end: WSO2's two guide configurations, imported, checked, and logging a user in.

For each fixture the test points the file at this test's WSO2-shaped provider
and echo back end (the same edits a user makes for their own hosts: the
provider and upstream addresses, and for OAuth2 Proxy the Redis URL, the TLS
files and the provider's CA), runs the real ``idgateway import`` command with
``--listen``, checks the output with ``twistd idgateway --check``, starts the
gateway on it and logs alice in with a scripted browser.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path

import pytest

from tests.backends import BackendProcess
from tests.certs import make_ca
from tests.http_helpers import header_values, request
from tests.login_env import Client, session_key
from tests.processes import REPO, TWISTD, GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary
from tests.redis_process import REDIS_SERVER, RedisProcess

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

FIXTURES = REPO / "tests" / "fixtures"
O2P_CLIENT_ID = "Xq7rZ0bNf3yWc2LkP9sTgH1vJ4ma"
O2P_CLIENT_SECRET = "o2p-guide-client-secret-8f3a91c7d2"
MOD_CLIENT_ID = "Hn4sQ2wLx8vRt0bKp6yMz1cJfa3e"
MOD_CLIENT_SECRET = "modauth-guide-client-secret-5c2e7b"


def provider_config(client_id: str, secret: str, redirect_uri: str) -> dict:
    return {
        "tenants": {
            "carbon.super": {
                "clients": [
                    {
                        "client_id": client_id,
                        "client_secret": secret,
                        "redirect_uris": [redirect_uri],
                        "token_endpoint_auth_method": "client_secret_basic",
                    }
                ]
            }
        }
    }


def import_config(kind: str, source: Path, listen: str, target: Path) -> str:
    """``idgateway import KIND SOURCE --listen LISTEN`` as a user runs it, into ``target``."""
    done = subprocess.run(
        [sys.executable, "-m", "idgateway.cli", "import", kind, str(source), "--listen", listen],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    target.write_text(done.stdout)
    return done.stdout


def twistd_check(config: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", TWISTD, "idgateway", "--config", str(config), "--check"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def wait_for_login_redirect(client: Client) -> None:
    """Discovery runs in the background: wait until the gateway offers a login."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, _, _ = client.get("/")
        if status == 302:
            client.cookies.clear()
            return
        time.sleep(0.2)
    raise AssertionError("the provider was not discovered in time")


class TLSClient(Client):
    """Client over TLS: connects to 127.0.0.1, sends SNI and Host as a browser would."""

    def __init__(self, port: int, host: str, context: ssl.SSLContext) -> None:
        super().__init__(port, host)
        self.context = context
        self.sni = host

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        all_headers = dict(headers or {})
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        status, response_headers, body = request(
            self.port,
            self.host,
            path,
            headers=all_headers,
            tls_context=self.context,
            server_hostname=self.sni,
            timeout=20,
        )
        for value in response_headers.get_all("Set-Cookie") or []:
            cookie = SimpleCookie()
            cookie.load(value)
            for name, morsel in cookie.items():
                if morsel["max-age"] == "0" or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return status, response_headers, body


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_oauth2_proxy_guide_imported_logs_a_user_in(tmp_path):
    port = free_port()
    ca = make_ca(tmp_path, "gateway test CA")
    leaf = ca.issue(tmp_path, ["localhost"])
    config = provider_config(
        O2P_CLIENT_ID, O2P_CLIENT_SECRET, f"https://localhost:{port}/oauth2/callback"
    )
    with (
        ProviderProcess(tmp_path / "op", config) as op,
        BackendProcess(name="echo") as backend,
        RedisProcess(tmp_path / "redis") as redis,
    ):
        text = (FIXTURES / "oauth2-proxy.cfg").read_text()
        for old, new in {
            "https://localhost:9443": op.base_url,
            "http://localhost:8080": f"http://127.0.0.1:{backend.port}",
            "redis://127.0.0.1:6379/1": redis.url,
            "/path/to/cert.pem": str(leaf.cert_path),
            "/path/to/cert.key": str(leaf.key_path),
        }.items():
            assert old in text
            text = text.replace(old, new)
        # WSO2's certificate is self-signed: oauth2-proxy needs it named too.
        text += f'provider_ca_files = ["{op.ca_file}"]\n'
        source = tmp_path / "oauth2-proxy.cfg"
        source.write_text(text)
        gateway_yaml = tmp_path / "gateway.yaml"
        output = import_config("oauth2-proxy", source, f"127.0.0.1:{port}", gateway_yaml)
        assert O2P_CLIENT_SECRET not in output
        assert "`idgateway check` reports" not in output  # nothing left to fix

        env = {
            "OAUTH2_PROXY_CLIENT_SECRET": O2P_CLIENT_SECRET,
            "OAUTH2_PROXY_SESSION_KEY": session_key(),
        }
        summary = twistd_check(gateway_yaml, env)
        assert f"127.0.0.1:{port}  TLS 1.3+" in summary
        assert f"localhost, (default) -> http://127.0.0.1:{backend.port}" in summary

        gateway = GatewayProcess(gateway_yaml, tmp_path / "gateway.log", env=env).start([port])
        try:
            context = ssl.create_default_context(cafile=str(ca.cert_path))
            client = TLSClient(port, "localhost", context)
            wait_for_login_redirect(client)
            status, body = client.login(op, "/echo?from=oauth2-proxy", "alice", "alice123")
            assert status == 200, body
            echo = json.loads(body)
            assert header_values(echo, "x-forwarded-user") == ["alice"]  # user_id_claim
            assert header_values(echo, "x-forwarded-email") == ["alice@example.com"]
            assert header_values(echo, "x-forwarded-access-token") != [""]
            assert len(header_values(echo, "x-forwarded-access-token")) == 1
            # pass_host_header (oauth2-proxy's default): the upstream sees the public host.
            assert header_values(echo, "host") == [f"localhost:{port}"]
            # session_store_type = "redis": the session lives in Redis.
            assert redis.call("DBSIZE") > 0
            assert any(name.startswith("__Host-") for name in client.cookies)
        finally:
            gateway.stop()


def test_mod_auth_openidc_guide_imported_logs_a_user_in(tmp_path):
    port = free_port()
    # The callback the imported configuration uses: the guide's OIDCRedirectURI path.
    config = provider_config(MOD_CLIENT_ID, MOD_CLIENT_SECRET, f"http://localhost:{port}/callback")
    with ProviderProcess(tmp_path / "op", config) as op, BackendProcess(name="echo") as backend:
        text = (FIXTURES / "mod_auth_openidc.conf").read_text()
        for old, new in {
            "https://localhost:9443": op.base_url,
            "http://localhost:8080/": f"http://127.0.0.1:{backend.port}/",
        }.items():
            assert old in text
            text = text.replace(old, new)
        source = tmp_path / "httpd-oidc.conf"
        source.write_text(text)
        gateway_yaml = tmp_path / "gateway.yaml"
        output = import_config("mod_auth_openidc", source, f"127.0.0.1:{port}", gateway_yaml)
        assert MOD_CLIENT_SECRET not in output and "a-random-secret-value" not in output

        env = {"LOCALHOST_CLIENT_SECRET": MOD_CLIENT_SECRET, "LOCALHOST_SESSION_KEY": session_key()}
        summary = twistd_check(gateway_yaml, env)
        assert f"127.0.0.1:{port}  plain HTTP" in summary
        assert "insecure_skip_verify is on" in summary  # OIDCSSLValidateServer Off, loudly

        gateway = GatewayProcess(gateway_yaml, tmp_path / "gateway.log", env=env).start([port])
        try:
            client = Client(port, "localhost")
            wait_for_login_redirect(client)
            status, body = client.login(op, "/echo?from=mod_auth_openidc", "alice", "alice123")
            assert status == 200, body
            echo = json.loads(body)
            sub = op.users()["alice"]
            assert header_values(echo, "oidc_claim_sub") == [sub]
            assert header_values(echo, "x-remote-user") == [sub]  # OIDCRemoteUserClaim sub
            assert len(header_values(echo, "oidc_access_token")) == 1
            assert header_values(echo, "host") == [f"127.0.0.1:{backend.port}"]
        finally:
            gateway.stop()
