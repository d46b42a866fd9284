"""No secret ever reaches the gateway's log, across a full end-to-end run.

Real provider, real gateway (``logging: {format: json}``), real echo back end:
logins of two users, a token refresh, a sign-out, a back-channel logout and
failed logins; then every secret the run used (client secret, session key,
every cookie value, authorization codes and states, access and ID tokens) is
looked for in the gateway's log file. The access and audit logs are checked
for what they must contain.
"""

from __future__ import annotations

import json
import time
import uuid
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.http_helpers import header_values
from tests.login_env import (
    Client,
    app1_provider_config,
    session_key,
    wait_until_login_offered,
)
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

CLIENT_SECRET = "app1-client-secret-5f1e9a"
ACCESS_TTL = 4


class RecordingClient(Client):
    """Tags each request with its own X-Request-Id; keeps every cookie value received."""

    def __init__(self, port: int, host: str, secrets: set[str], sent: dict[str, int]) -> None:
        super().__init__(port, host)
        self.secrets = secrets
        self.sent = sent

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        request_id = "t-" + uuid.uuid4().hex
        status, response_headers, body = super().get(
            path, {**(headers or {}), "X-Request-Id": request_id}
        )
        self.sent[request_id] = status
        for value in response_headers.get_all("Set-Cookie") or []:
            cookie = SimpleCookie()
            cookie.load(value)
            self.secrets.update(m.value for m in cookie.values() if m.value)
        return status, response_headers, body


def login(client: RecordingClient, op: ProviderProcess, user: str, password: str) -> dict[str, Any]:
    """Log in through /echo; keep the code, the state and the tokens the back end saw."""
    status, headers, _ = client.get("/echo")
    assert status == 302
    callback = op.scripted_login(headers["Location"], user, password)
    query = parse_qs(urlsplit(callback).query)
    client.secrets.update(query["code"] + query["state"])
    parts = urlsplit(callback)
    status, _, _ = client.get(f"{parts.path}?{parts.query}")
    assert status == 302
    echo = see_tokens(client)
    # The same callback again: the flow was single use (a failed login, bad_state).
    assert client.get(f"{parts.path}?{parts.query}")[0] == 400
    return echo


def see_tokens(client: RecordingClient) -> dict[str, Any]:
    status, _, body = client.get("/echo", {"Accept": "application/json"})
    assert status == 200, body
    echo = json.loads(body)
    for header in ("oidc_access_token", "oidc_id_token"):
        for token in header_values(echo, header):
            client.secrets.add(token)
            # A JWT's signature alone would still be a leak.
            client.secrets.add(token.rsplit(".", 1)[-1])
    return echo


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp("nosecrets")
    port = free_port()
    config = app1_provider_config(port, CLIENT_SECRET, access_ttl=ACCESS_TTL, logout=True)
    key = session_key()
    with ProviderProcess(tmp / "op", config) as op, BackendProcess(name="echo") as backend:
        gateway_config = tmp / "gateway.yaml"
        gateway_config.write_text(
            f"""
listeners:
  - address: 127.0.0.1:{port}
logging: {{format: json}}
providers:
  wso2: {{discovery_url: {op.discovery_url()}, ca_file: {op.ca_file}}}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend.port}
    oidc:
      provider: wso2
      client_id: app1-client
      client_secret: {CLIENT_SECRET}
      user_claim: username
      post_logout_redirect: /
    session: {{keys: [{key}], refresh_leeway: 1s}}
    headers: {{preset: mod_auth_openidc, pass_access_token: true, pass_id_token: true}}
"""
        )
        gateway = GatewayProcess(gateway_config, tmp / "gateway.log").start([port])
        secrets = {CLIENT_SECRET, key}
        sent: dict[str, int] = {}
        try:
            wait_until_login_offered(port, ("app1.localhost",), gateway.log)

            alice = RecordingClient(port, "app1.localhost", secrets, sent)
            first = login(alice, op, "alice", "alice123")
            bob = RecordingClient(port, "app1.localhost", secrets, sent)
            login(bob, op, "bob", "bob123")

            # A refresh: the access token expires; the gateway gets new tokens
            # (tokens shorter than a minute are refreshed once they expire).
            time.sleep(ACCESS_TTL + 0.5)
            refreshed = see_tokens(alice)
            assert header_values(refreshed, "oidc_access_token") != header_values(
                first, "oidc_access_token"
            )

            # Sign-out (the redirect to the provider carries the ID token).
            status, headers, _ = alice.get("/oauth2/sign_out")
            assert status == 302 and "id_token_hint=" in headers["Location"]

            # A back-channel logout ends bob's session.
            op.admin_logout("carbon.super", "bob")
            deadline = time.monotonic() + 5
            while bob.get("/echo", {"Accept": "application/json"})[0] == 200:
                assert time.monotonic() < deadline, gateway.log()[-2000:]
                time.sleep(0.1)

            # Failed logins: a forged callback, and an error from the provider.
            stranger = RecordingClient(port, "app1.localhost", secrets, sent)
            forged = "/oauth2/callback?code=forged-code-77a1c3&state=forged-state-19bd0e"
            secrets.update({"forged-code-77a1c3", "forged-state-19bd0e"})
            assert stranger.get(forged)[0] == 400
            assert stranger.get("/oauth2/callback?error=access_denied&state=x")[0] == 403
            # A query string with a token in it, on a proxied path.
            secrets.add("query-token-3c2e0f")
            assert stranger.get("/public?access_token=query-token-3c2e0f")[0] in (302, 401)
        finally:
            gateway.stop()
        yield gateway.log(), secrets, sent


def _events(log: str, namespace: str) -> list[dict[str, Any]]:
    marker = f"[{namespace}#info] "
    return [json.loads(line.split(marker, 1)[1]) for line in log.splitlines() if marker in line]


def test_no_secret_appears_in_the_log(run):
    log, secrets, _ = run
    assert len(secrets) > 10
    leaked = sorted(secret for secret in secrets if len(secret) >= 8 and secret in log)
    assert leaked == [], f"secrets in the gateway log: {leaked}"


def test_every_request_has_one_access_line(run):
    log, _, sent = run
    access = _events(log, "idgateway.access")
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in access:
        by_id.setdefault(event["request_id"], []).append(event)
        assert "?" not in event["path"]
        assert isinstance(event["gateway_ms"], float) and isinstance(event["bytes"], int)
    for request_id, status in sent.items():
        [event] = by_id[request_id]
        assert event["status"] == status and event["route"] == "app1"
    proxied = [e for e in access if e["path"] == "/echo" and e["status"] == 200]
    assert proxied and all(e["upstream_ms"] is not None for e in proxied)
    assert {e.get("user") for e in proxied} == {"alice", "bob"}
    assert any(e["path"] == "/oauth2/backchannel_logout" for e in access)


def test_the_audit_log_has_logins_failures_and_logouts(run):
    log, _, _ = run
    audit = _events(log, "idgateway.audit")
    kinds = [event["event"] for event in audit]
    succeeded = [e for e in audit if e["event"] == "login_succeeded"]
    assert sorted(e["user"] for e in succeeded) == ["alice", "bob"]
    reasons = {e["reason"] for e in audit if e["event"] == "login_failed"}
    assert {"bad_state", "access_denied"} <= reasons
    assert "signed_out" in kinds
    [logout] = [e for e in audit if e["event"] == "backchannel_logout"]
    assert logout["route"] == "app1" and logout["sid"] and logout["ended"]
