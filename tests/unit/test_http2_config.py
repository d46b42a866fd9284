"""listeners[].http2 and the top-level http2: limits (issue 14): defaults, and a
clear error (file:line:key and the fix) for each bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from idgateway.config.model import HTTP2Limits
from tests.unit.test_config import MINIMAL, load, make_certificate, only_problem

TLS_LISTENER = """\
listeners:
  - address: 127.0.0.1:8443
    tls:
      certificates:
        - {{cert: {cert}, key: {key}}}
{extra}routes:
  - name: app1
    hosts: [app1.example.com]
    upstream: http://127.0.0.1:3000
"""


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    directory.mkdir()
    make_certificate(directory, "app1", ("app1.example.com",))
    return directory


def tls_file(certs: Path, extra: str = "") -> str:
    return TLS_LISTENER.format(cert=certs / "app1.pem", key=certs / "app1.key", extra=extra)


def test_defaults_h2_on_tls_listeners_and_off_on_plain_ones(tmp_path: Path, certs: Path) -> None:
    config = load(
        tmp_path, tls_file(certs).replace("routes:", "  - address: 127.0.0.1:8080\nroutes:")
    )
    tls, plain = config.listeners
    assert (tls.http2, tls.http2_mode) == (None, "alpn")
    assert (plain.http2, plain.http2_mode) == (None, "off")
    assert config.http2 == HTTP2Limits()
    assert config.http2.max_concurrent_streams == 128
    assert config.http2.initial_window_size == 256 * 1024
    assert config.http2.max_header_list_size == 64 * 1024
    assert config.http2.max_resets_per_minute == 200


def test_switches_and_limits_as_written(tmp_path: Path, certs: Path) -> None:
    text = tls_file(certs, "    http2: false\n").replace(
        "routes:",
        "  - address: 127.0.0.1:8080\n    http2: prior_knowledge\n"
        "http2:\n  max_concurrent_streams: 50\n  initial_window_size: 1MB\n"
        "  max_header_list_size: 32KB\n  max_resets_per_minute: 10\nroutes:",
    )
    config = load(tmp_path, text)
    assert [each.http2_mode for each in config.listeners] == ["off", "prior_knowledge"]
    assert config.http2 == HTTP2Limits(50, 1024 * 1024, 32 * 1024, 10)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yes please", "expected true, false or prior_knowledge; got the string 'yes please'"),
        ("1", "expected true, false or prior_knowledge"),
        ("h2c", "expected true, false or prior_knowledge"),
        ("[true]", "expected true, false or prior_knowledge"),
        ("true", "a plain listener speaks HTTP/2 only to clients that know it in advance"),
    ],
)
def test_bad_http2_switch_on_a_plain_listener(tmp_path: Path, value: str, message: str) -> None:
    text = MINIMAL.replace("127.0.0.1:8080\n", f"127.0.0.1:8080\n    http2: {value}\n")
    problem = only_problem(tmp_path, text)
    assert (problem.line, problem.key) == (3, "listeners[0].http2")
    assert message in problem.message
    assert "gateway.yaml" in str(problem)


def test_prior_knowledge_on_a_tls_listener_is_refused(tmp_path: Path, certs: Path) -> None:
    problem = only_problem(tmp_path, tls_file(certs, "    http2: prior_knowledge\n"))
    assert (problem.line, problem.key) == (6, "listeners[0].http2")
    assert "write http2: true" in problem.message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_concurrent_streams: 0", "must be from 1 to 1000, e.g. 128; got 0"),
        ("max_concurrent_streams: 5000", "must be from 1 to 1000"),
        ("max_concurrent_streams: ten", "expected a whole number"),
        ("max_concurrent_streams: 1.5", "expected a whole number"),
        ("initial_window_size: 1KB", "must be from 16KB to 16MB, e.g. 256KB"),
        ("initial_window_size: 1GB", "must be from 16KB to 16MB"),
        ("initial_window_size: lots", "size"),
        ("max_header_list_size: 100", "must be from 4KB to 1MB, e.g. 64KB"),
        ("max_header_list_size: 2MB", "must be from 4KB to 1MB"),
        ("max_resets_per_minute: 0", "must be from 1 to 100000, e.g. 200"),
        ("max_resets_per_minute: -5", "must be from 1 to 100000"),
        ("max_resets_per_minute: true", "expected a whole number"),
        ("max_stream: 3", "unknown key 'max_stream'"),
    ],
)
def test_bad_http2_limits(tmp_path: Path, line: str, message: str) -> None:
    text = MINIMAL.replace("routes:", f"http2:\n  {line}\nroutes:")
    problem = only_problem(tmp_path, text)
    assert problem.line == 4
    assert problem.key == "http2." + line.split(":")[0]
    assert message in problem.message


def test_http2_must_be_a_mapping(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL.replace("routes:", "http2: true\nroutes:"))
    assert (problem.line, problem.key) == (3, "http2")
    assert "max_concurrent_streams" in problem.message
