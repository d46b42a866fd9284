"""Native TLS: SNI certificate choice, SNI/Host agreement, https upstreams, reload."""

from __future__ import annotations

import signal
import socket
import ssl
import time

import pytest

from tests.certs import make_ca
from tests.http_helpers import echo_json, header_values, request
from tests.processes import free_port


def client_context(ca_path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_path))
    context.check_hostname = True
    return context


def peer_certificate_names(port: int, sni: str, ca_path) -> list[str]:
    context = client_context(ca_path)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            cert = tls.getpeercert()
            assert tls.selected_alpn_protocol() in (None, "http/1.1")
            return [value for kind, value in cert["subjectAltName"] if kind == "DNS"]


@pytest.fixture
def tls_gateway(start_gateway, backend, backend_b, tmp_path):
    ca = make_ca(tmp_path / "pki")
    app1 = ca.issue(tmp_path / "pki", ["app1.localhost"], name="app1")
    app2 = ca.issue(tmp_path / "pki", ["app2.localhost"], name="app2")
    plain, secure = free_port(), free_port()
    config = f"""
listeners:
  - address: 127.0.0.1:{plain}
  - address: 127.0.0.1:{secure}
    tls:
      certificates:
        - {{cert: {app1.cert_path}, key: {app1.key_path}}}
        - {{cert: {app2.cert_path}, key: {app2.key_path}}}
      min_version: "1.2"
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend.port}
    https_redirect: true
    hsts: {{max_age: 1h, include_subdomains: true}}
  - name: app2
    hosts: [app2.localhost]
    upstream: http://127.0.0.1:{backend_b.port}
"""
    gateway = start_gateway(config, [plain, secure])
    return gateway, plain, secure, ca, tmp_path


def test_sni_picks_each_hosts_certificate(tls_gateway):
    _, _, secure, ca, _ = tls_gateway
    assert peer_certificate_names(secure, "app1.localhost", ca.cert_path) == ["app1.localhost"]
    assert peer_certificate_names(secure, "app2.localhost", ca.cert_path) == ["app2.localhost"]


def test_https_requests_reach_their_upstream_with_proto_and_hsts(tls_gateway):
    _, _, secure, ca, _ = tls_gateway
    context = client_context(ca.cert_path)
    echo = echo_json(secure, "app1.localhost", tls_context=context)
    assert header_values(echo, "x-forwarded-proto") == ["https"]
    status, headers, _ = request(secure, "app1.localhost", "/echo", tls_context=context)
    assert status == 200
    assert headers["Strict-Transport-Security"] == "max-age=3600; includeSubDomains"
    echo2 = echo_json(secure, "app2.localhost", tls_context=context)
    assert header_values(echo2, "x-forwarded-host") == ["app2.localhost"]


def test_sni_and_host_naming_different_routes_is_421(tls_gateway):
    _, _, secure, ca, _ = tls_gateway
    context = client_context(ca.cert_path)
    status, _, body = request(
        secure, "app2.localhost", "/", tls_context=context, server_hostname="app1.localhost"
    )
    assert status == 421
    assert b"TLS server name" in body


def test_plain_http_redirects_to_https_when_asked(tls_gateway):
    _, plain, secure, _, _ = tls_gateway
    status, headers, _ = request(plain, "app1.localhost", "/a/b?c=d")
    assert status == 308
    assert headers["Location"] == f"https://app1.localhost:{secure}/a/b?c=d"
    status, _, _ = request(plain, "app2.localhost", "/echo")
    assert status == 200


def test_tls_below_minimum_version_is_refused(start_gateway, backend, tmp_path):
    ca = make_ca(tmp_path / "pki13")
    leaf = ca.issue(tmp_path / "pki13", ["app1.localhost"], name="app1")
    port = free_port()
    start_gateway(
        f"""
listeners:
  - address: 127.0.0.1:{port}
    tls:
      certificates: [{{cert: {leaf.cert_path}, key: {leaf.key_path}}}]
      min_version: "1.3"
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend.port}
""",
        [port],
        name="tls13",
    )
    old_client = client_context(ca.cert_path)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            old_client.wrap_socket(raw, server_hostname="app1.localhost")
    status, _, _ = request(
        port, "app1.localhost", "/echo", tls_context=client_context(ca.cert_path)
    )
    assert status == 200


def test_certificates_reload_on_sighup(tls_gateway):
    gateway, _, secure, ca, tmp_path = tls_gateway
    context = client_context(ca.cert_path)
    with socket.create_connection(("127.0.0.1", secure), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="app1.localhost") as tls:
            first_serial = tls.getpeercert()["serialNumber"]
            # A connection open across the reload keeps working.
            renewed = ca.issue(tmp_path / "pki", ["app1.localhost"], name="app1")
            gateway.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "configuration reloaded" not in gateway.log():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            tls.sendall(b"GET /echo HTTP/1.1\r\nHost: app1.localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.1 200")
    with socket.create_connection(("127.0.0.1", secure), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="app1.localhost") as tls:
            assert int(tls.getpeercert()["serialNumber"], 16) == renewed.serial
            assert tls.getpeercert()["serialNumber"] != first_serial


def test_https_upstream_verified_against_its_ca_file(start_gateway, tmp_path):
    """The gateway talks TLS to an upstream, trusting only the configured CA."""
    from tests.backends import BackendProcess

    ca = make_ca(tmp_path / "pki")
    upstream_cert = ca.issue(tmp_path / "pki", ["127.0.0.1"], name="upstream")
    other_ca = make_ca(tmp_path / "other", name="someone else")
    with BackendProcess(
        listen=[f"tls:127.0.0.1:0:{upstream_cert.cert_path}:{upstream_cert.key_path}"],
        name="tls-backend",
    ) as tls_backend:
        port = free_port()
        start_gateway(
            f"""
listeners:
  - address: 127.0.0.1:{port}
routes:
  - name: good
    hosts: [good.localhost]
    upstream: https://127.0.0.1:{tls_backend.port}
    upstream_ca_file: {ca.cert_path}
  - name: wrongca
    hosts: [wrongca.localhost]
    upstream: https://127.0.0.1:{tls_backend.port}
    upstream_ca_file: {other_ca.cert_path}
""",
            [port],
        )
        echo = echo_json(port, "good.localhost")
        assert header_values(echo, "x-forwarded-host") == ["good.localhost"]
        status, _, _ = request(port, "wrongca.localhost", "/")
        assert status == 502
