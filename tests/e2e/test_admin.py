"""The admin listener: /healthz and /readyz with per-route detail."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.processes import free_port
from tests.provider_process import ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def test_readiness_reports_providers_and_redis(start_gateway, backend, tmp_path):
    from tests.redis_process import RedisProcess

    port, admin = free_port(), free_port()
    with ProviderProcess(tmp_path / "op") as op, RedisProcess(tmp_path / "redis") as redis:
        start_gateway(
            f"""
admin: {{address: 127.0.0.1:{admin}}}
listeners: [{{address: 127.0.0.1:{port}}}]
providers:
  wso2: {{discovery_url: {op.discovery_url()}, ca_file: {op.ca_file}}}
  down: {{issuer: https://127.0.0.1:{free_port()}/oauth2/token}}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend.port}
    oidc: {{provider: wso2, client_id: c, client_secret: s}}
    session: {{store: redis, url: '{redis.url}', command_timeout: 500ms}}
  - name: open
    default: true
    upstream: http://127.0.0.1:{backend.port}
""",
            [port, admin],
        )
        assert get(admin, "/healthz") == (200, b"ok\n")
        deadline = time.monotonic() + 15
        while True:
            status, body = get(admin, "/readyz")
            detail = json.loads(body)
            if status == 200:
                break
            assert time.monotonic() < deadline, detail
            time.sleep(0.2)
        assert detail["routes"]["app1"]["provider_ready"] is True
        assert detail["routes"]["app1"]["redis_ready"] is True
        assert detail["providers"]["down"]["ready"] is False
        redis.pause()
        try:
            status, body = get(admin, "/readyz")
            assert status == 503
            assert json.loads(body)["routes"]["app1"]["redis_ready"] is False
        finally:
            redis.resume()
        deadline = time.monotonic() + 10
        while get(admin, "/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # The admin paths are not on the public listener.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/readyz", headers={"Host": "elsewhere"})
        assert b'"routes"' not in conn.getresponse().read()


def test_metrics_and_status_page(start_gateway, backend, tmp_path):
    import re

    port, admin = free_port(), free_port()
    with ProviderProcess(tmp_path / "op") as op:
        start_gateway(
            f"""
admin: {{address: 127.0.0.1:{admin}}}
listeners: [{{address: 127.0.0.1:{port}}}]
providers:
  wso2: {{discovery_url: {op.discovery_url()}, ca_file: {op.ca_file}}}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend.port}
    oidc: {{provider: wso2, client_id: c, client_secret: s}}
  - name: open
    default: true
    upstream: http://127.0.0.1:{backend.port}
""",
            [port, admin],
        )
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/hello", headers={"Host": "open.localhost"})
            assert conn.getresponse().status == 200
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "GET",
            "/oauth2/callback?error=access_denied&state=x",
            headers={"Host": "app1.localhost"},
        )
        assert conn.getresponse().status == 403

        status, body = get(admin, "/metrics")
        assert status == 200
        text = body.decode()
        found = re.search(
            r'^idgateway_requests_total\{route="open",status_class="2xx"\} (\S+)$', text, re.M
        )
        assert found and float(found.group(1)) >= 3, text
        logins = r"^idgateway_logins_total\{([^}]*)\} (\S+)$"
        failed = [
            float(value)
            for labels, value in re.findall(logins, text, re.M)
            if 'route="app1"' in labels
            and 'result="failed"' in labels
            # The provider's ?error= code is not a label (anyone can forge one).
            and 'reason="provider_error"' in labels
        ]
        assert failed == [1.0], text
        assert "idgateway_request_seconds_bucket" in text
        # Secrets never reach the metrics.
        assert "client_secret" not in text and "code=" not in text

        deadline = time.monotonic() + 15
        while get(admin, "/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # Ready: the provider's discovery and JWKS calls were timed. No tunnel is open.
        text = get(admin, "/metrics")[1].decode()
        for call in ("discovery", "jwks"):
            count = (
                rf'^idgateway_provider_request_seconds_count\{{call="{call}",provider="wso2"\}} '
            )
            assert re.search(count + r"[1-9]", text, re.M), text
        assert 'idgateway_websockets_open{route="app1"} 0.0' in text
        assert 'idgateway_websockets_open{route="open"} 0.0' in text
        status, body = get(admin, "/status?format=json")
        assert status == 200
        detail = json.loads(body)
        assert [r["name"] for r in detail["routes"]] == ["app1", "open"]
        assert detail["routes"][0]["provider"] == "wso2"
        assert detail["routes"][0]["session_store"] == "cookie"
        assert [p["name"] for p in detail["providers"]] == ["wso2"]
        assert detail["providers"][0]["ready"] is True
        assert detail["config_file"]
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        conn.request("GET", "/status", headers={"Accept": "application/json"})
        assert json.loads(conn.getresponse().read())["routes"][1]["name"] == "open"
        status, body = get(admin, "/status")
        assert status == 200
        page = body.decode()
        assert page.startswith("<!doctype html>")
        assert "app1" in page and "open" in page and "wso2" in page
        assert "s</td>" not in page  # the client secret is not shown
