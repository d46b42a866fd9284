"""Issue 18, "Config and files": an operator's mistake with a file must be a
config error or a warning, never a frozen reactor, an outage or a leak."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idgateway.config.load import ConfigError, load_config
from idgateway.config.schema import SECRET_FILE_LIMIT, YAML_NODE_BUDGET, expanded_size

KEY = "a" * 43 + "="


def config_text(secret_line: str = "client_secret: s", ca_line: str = "") -> str:
    return f"""
listeners: [{{address: 127.0.0.1:8080}}]
providers:
  wso2:
    issuer: https://localhost:9443/oauth2/token
    {ca_line}
routes:
  - name: app1
    hosts: [app1.example.com]
    upstream: http://127.0.0.1:3000
    oidc:
      provider: wso2
      client_id: app1
      {secret_line}
    session: {{keys: [{KEY}]}}
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    path.chmod(0o640)
    return load_config(str(path), {})


def problem_text(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return str(caught.value)


def _fifo(tmp_path: Path) -> str:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return str(path)


def _huge(tmp_path: Path) -> str:
    path = tmp_path / "huge"
    path.write_bytes(b"x" * (SECRET_FILE_LIMIT + 1))
    return str(path)


def _directory(tmp_path: Path) -> str:
    (tmp_path / "dir").mkdir()
    return str(tmp_path / "dir")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_fifo, "is a named pipe (FIFO), not a regular file"),
        (lambda tmp: "/dev/zero", "/dev/zero is a character device, not a regular file"),
        (_directory, "is a directory, not a regular file"),
        (_huge, f"bytes; at most {SECRET_FILE_LIMIT} are read"),
        (lambda tmp: str(tmp / "missing"), "No such file or directory"),
    ],
    ids=["fifo", "dev-zero", "directory", "huge", "missing"],
)
def test_secret_files_must_be_small_regular_files(tmp_path: Path, make, message) -> None:
    path = make(tmp_path)
    started = time.monotonic()
    text = problem_text(tmp_path, config_text(f"client_secret_file: {path}"))
    assert message in text
    assert "oidc.client_secret_file" in text  # names the key
    assert time.monotonic() - started < 2  # a FIFO without a writer does not block


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/dev/urandom"])
def test_pem_files_must_be_regular_files(tmp_path: Path, target: str) -> None:
    path = _fifo(tmp_path) if target == "fifo" else target
    text = problem_text(tmp_path, config_text(ca_line=f"ca_file: {path}"))
    assert "not a regular file" in text and "ca_file" in text


def test_the_config_file_itself_may_not_be_a_fifo(tmp_path: Path) -> None:
    path = _fifo(tmp_path)
    # In a child process with a timeout: a blocking open would hang the test.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from idgateway.config.load import load_config; load_config({path!r})",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode != 0
    assert "not a regular file" in result.stderr


BILLION_LAUGHS = """
a: &a {x: 1, y: 2, z: 3, w: 4, v: 5, u: 6, t: 7, s: 8, r: 9, q: 10}
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
listeners: *g
routes: *g
"""

MERGE_BOMB = """
l0: &l0 {k0: 0, k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7}
l1: &l1 {<<: [*l0], m: [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]}
l2: &l2 {<<: [*l1], m: [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]}
l3: &l3 {<<: [*l2], m: [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2]}
l4: &l4 {<<: [*l3], m: [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3]}
l5: &l5 {<<: [*l4], m: [*l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4]}
l6: &l6 {<<: [*l5], m: [*l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5]}
listeners: [{address: 127.0.0.1:8080, <<: *l6}]
routes: [{name: a, hosts: [a.example], upstream: "http://127.0.0.1:1", <<: *l6}]
"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, MERGE_BOMB], ids=["aliases", "merge-keys"])
def test_alias_and_merge_bombs_are_refused_quickly(tmp_path: Path, text: str) -> None:
    assert len(text) < 1000
    started = time.monotonic()
    message = problem_text(tmp_path, text)
    assert f"expands to more than {YAML_NODE_BUDGET} values" in message
    assert time.monotonic() - started < 1.0


def test_ordinary_anchors_stay_well_under_the_budget(tmp_path: Path) -> None:
    import yaml

    from idgateway.config.schema import hide_references

    text = (Path(__file__).resolve().parents[2] / "etc" / "gateway.yaml").read_text()
    root = yaml.compose(hide_references(text), Loader=yaml.SafeLoader)
    assert expanded_size(root, YAML_NODE_BUDGET) < YAML_NODE_BUDGET // 50


def test_world_writable_config_and_readable_secrets_are_warned_about(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(f"client_secret_file: {secret}"))
    path.chmod(0o666)
    config = load_config(str(path), {})
    warnings = "\n".join(config.warnings)
    assert f"{path} is world-writable" in warnings
    assert f"{secret} is readable by its group or by everyone" in warnings
    assert "s3cret" not in warnings
    secret.chmod(0o600)
    path.chmod(0o640)
    quiet = "\n".join(load_config(str(path), {}).warnings)
    assert "world-writable" not in quiet and "readable by" not in quiet


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("cookie_domain: 'example.com; SameSite=None'", "is not a domain for a cookie"),
        ("cookie_domain: 'example.com:8443'", "is not a domain for a cookie"),
        ("cookie_domain: 'exa mple.com'", "is not a domain for a cookie"),
        ('cookie_domain: "example.com\\r\\nSet-Cookie: x=1"', "is not a domain for a cookie"),
        ("cookie_path: '/; Domain=evil.example'", "is not a cookie path"),
        ("cookie_path: '/a b'", "is not a cookie path"),
        ('cookie_path: "/\\u00e9"', "is not a cookie path"),
        ("cookie_path: 'app'", "must be a path on the route's host"),
    ],
)
def test_cookie_attributes_are_checked_at_check(tmp_path: Path, line: str, message: str) -> None:
    plain = f"session: {{keys: [{KEY}]}}"
    text = config_text().replace(plain, f"session: {{keys: [{KEY}], {line}}}")
    problems = problem_text(tmp_path, text)
    assert message in problems and "routes[0].session.cookie_" in problems


def test_a_cookie_domain_that_misses_a_host_is_warned_about(tmp_path: Path) -> None:
    text = config_text().replace(
        f"session: {{keys: [{KEY}]}}", f"session: {{keys: [{KEY}], cookie_domain: other.com}}"
    )
    warnings = "\n".join(load(tmp_path, text).warnings)
    assert "does not cover app1.example.com" in warnings
    fine = config_text().replace(
        f"session: {{keys: [{KEY}]}}", f"session: {{keys: [{KEY}], cookie_domain: .Example.com}}"
    )
    config = load(tmp_path, fine)
    assert config.routes[0].auth.session.cookie_domain == "example.com"  # type: ignore[union-attr]
    assert not any("cookie_domain" in warning for warning in config.warnings)


@pytest.mark.parametrize(
    ("address", "warned"),
    [
        ("127.0.0.1:9901", False),
        ("[::1]:9901", False),
        ("0.0.0.0:9901", True),
        ("10.1.2.3:9901", True),
    ],
)
def test_an_admin_listener_off_loopback_is_warned_about(tmp_path, address, warned) -> None:
    text = config_text() + f"admin: {{address: '{address}'}}\n"
    warnings = "\n".join(load(tmp_path, text).warnings)
    assert ("is not a loopback address" in warnings) is warned


def test_a_reload_whose_new_listener_cannot_bind_is_refused(tmp_path: Path) -> None:
    """The old listener keeps serving and the log says the reload was refused."""
    import signal
    import socket

    from tests.backends import BackendProcess
    from tests.processes import GatewayProcess, free_port

    port = free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    taken = busy.getsockname()[1]
    with BackendProcess(name="echo") as echo:
        text = (
            f"listeners: [{{address: 127.0.0.1:{port}}}]\n"
            f"routes: [{{name: app, default: true, upstream: 'http://127.0.0.1:{echo.port}'}}]\n"
        )
        path = tmp_path / "gateway.yaml"
        path.write_text(text)
        gateway = GatewayProcess(path, tmp_path / "gateway.log").start([port])
        try:
            path.write_text(text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{taken}"))
            gateway.signal(signal.SIGHUP)
            deadline = time.monotonic() + 15
            while "reload refused" not in gateway.log():
                assert time.monotonic() < deadline, gateway.log()[-2000:]
                time.sleep(0.1)
            log = gateway.log()
            assert f"cannot listen on 127.0.0.1:{taken}" in log
            assert "configuration reloaded" not in log
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                assert sock.recv(100).startswith(b"HTTP/1.1 200")
        finally:
            gateway.stop()
            busy.close()


def test_credentials_in_urls_are_masked_wherever_they_are_shown(tmp_path: Path) -> None:
    """/status, /readyz, the log and `idgateway check` show where, never the password."""
    import http.client
    import subprocess
    import sys

    from tests.processes import GatewayProcess, free_port

    port, admin, closed = free_port(), free_port(), free_port()
    discovery = (
        f"https://admin:hunter2@127.0.0.1:{closed}"
        "/oauth2/oidcdiscovery/.well-known/openid-configuration"
    )
    text = f"""
listeners: [{{address: 127.0.0.1:{port}}}]
admin: {{address: 127.0.0.1:{admin}}}
providers:
  wso2: {{discovery_url: "{discovery}"}}
routes:
  - name: app1
    hosts: [app1.example.com]
    upstream: http://127.0.0.1:9
    oidc: {{provider: wso2, client_id: app1, client_secret: s}}
    session: {{keys: [{KEY}]}}
"""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    path.chmod(0o640)
    check = subprocess.run(
        [sys.executable, "-m", "idgateway.cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "hunter2" not in check.stdout + check.stderr
    assert "admin:***@127.0.0.1" in check.stdout + check.stderr
    gateway = GatewayProcess(path, tmp_path / "gateway.log").start([port, admin])
    try:
        deadline = time.monotonic() + 10
        shown = ""
        while "last_error" not in shown or "null" in shown.split("last_error", 1)[1][:10]:
            assert time.monotonic() < deadline, shown
            time.sleep(0.3)
            bodies = []
            for target in ("/status?format=json", "/readyz"):
                conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
                conn.request("GET", target, headers={"Accept": "application/json"})
                bodies.append(conn.getresponse().read().decode())
                conn.close()
            shown = "\n".join(bodies)
        assert "hunter2" not in shown
        assert "admin:***@127.0.0.1" in shown
    finally:
        gateway.stop()
    assert "hunter2" not in gateway.log()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("redis://:Zm9vYmFy/c2VjcmV0+Xyz=@127.0.0.1:6379/0", "c2VjcmV0"),
        ("'redis://:a/b?c#d@h:1/0' names no host", "a/b?c#d"),
        ("http://admin:p@ss@host/x", "p@ss"),
        ("rediss://user:hunter2@h:6380 and https://u:s3cret@op/x", "s3cret"),
    ],
)
def test_masking_covers_passwords_with_slashes_and_at_signs(text: str, secret: str) -> None:
    from idgateway.config.values import mask_credentials

    masked = mask_credentials(text)
    assert secret not in masked and "hunter2" not in masked and ":***@" in masked


def test_check_never_shows_a_redis_password_from_the_environment(tmp_path: Path) -> None:
    text = config_text() + "redis: {url: 'redis://:${REDIS_PASSWORD}@'}\n"
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {"REDIS_PASSWORD": "Zm9vYmFy/c2VjcmV0+Xyz="})
    assert "c2VjcmV0" not in str(caught.value) and "Zm9vYmFy" not in str(caught.value)


@pytest.mark.parametrize("opener", ["[", "{a: "], ids=["lists", "mappings"])
def test_deep_nesting_is_a_config_error_not_a_traceback(tmp_path: Path, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    text = "listeners: " + opener * 1000 + closer * 1000 + "\n"
    message = problem_text(tmp_path, text)
    assert "nests lists or mappings too deeply" in message
