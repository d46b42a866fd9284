"""The workers' master is lean, its workers are not (issue 17).

With ``workers: 2`` the master (twistd) keeps none of the TLS stack and none
of what reads a config: the real processes' memory maps show which shared
objects each has loaded. The workers, its children, still serve a TLS
listener and verify an https upstream against its CA file; bad key and
certificate files still stop the start with their clear error and status 1.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.backends import BackendProcess
from tests.certs import make_ca
from tests.e2e.test_tls import client_context
from tests.http_helpers import echo_json, header_values
from tests.processes import REPO, TWISTD, free_port

# Shared objects only TLS and key handling load: cryptography's Rust binding,
# cffi (pyOpenSSL's binding) and pyOpenSSL's own.
TLS_OBJECTS = ("_rust.abi3.so", "_cffi_backend", "/OpenSSL/", "/cryptography/")


def mapped_files(pid: int) -> set[str]:
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1] for line in lines if len(line.split()) >= 6}


def tls_objects(pid: int) -> list[str]:
    return sorted(path for path in mapped_files(pid) if any(part in path for part in TLS_OBJECTS))


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(each) for each in text)
    return found


def wait_until(condition, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture
def tls_workers(start_gateway, backend, tmp_path):  # type: ignore[no-untyped-def]
    ca = make_ca(tmp_path / "pki")
    site = ca.issue(tmp_path / "pki", ["app1.localhost"], name="app1")
    upstream_cert = ca.issue(tmp_path / "pki", ["127.0.0.1"], name="upstream")
    with BackendProcess(
        listen=[f"tls:127.0.0.1:0:{upstream_cert.cert_path}:{upstream_cert.key_path}"],
        name="tls-backend",
    ) as tls_backend:
        plain, secure = free_port(), free_port()
        text = f"""
workers: 2
listeners:
  - address: 127.0.0.1:{plain}
  - address: 127.0.0.1:{secure}
    tls:
      certificates:
        - {{cert: {site.cert_path}, key: {site.key_path}}}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend.port}
  - name: secure-upstream
    hosts: [up.localhost]
    upstream: https://127.0.0.1:{tls_backend.port}
    upstream_ca_file: {ca.cert_path}
"""
        gateway = start_gateway(text, [plain, secure])
        assert wait_until(lambda: len(children(gateway.pid)) == 2)
        yield gateway, plain, secure, ca, text


def test_the_master_has_no_tls_stack_and_its_workers_serve_tls(tls_workers) -> None:  # type: ignore[no-untyped-def]
    gateway, plain, secure, ca, _ = tls_workers
    # The workers serve: a TLS listener, and an https upstream checked
    # against its CA file (the master's import block never reaches them).
    echo = echo_json(secure, "app1.localhost", tls_context=client_context(ca.cert_path))
    assert header_values(echo, "x-forwarded-proto") == ["https"]
    echo = echo_json(plain, "up.localhost")
    assert header_values(echo, "x-forwarded-host") == ["up.localhost"]
    workers = children(gateway.pid)
    assert len(workers) == 2
    for worker in workers:
        assert any("_rust" in path for path in tls_objects(worker)), "the scan sees nothing"
    assert tls_objects(gateway.pid) == []


def test_a_reload_read_by_a_child_still_warns_of_a_listener_change(tls_workers) -> None:  # type: ignore[no-untyped-def]
    gateway, plain, _, _, text = tls_workers
    moved = free_port()
    gateway.config_path.write_text(text.replace(f"127.0.0.1:{plain}", f"127.0.0.1:{moved}"))
    gateway.signal(signal.SIGHUP)
    assert wait_until(lambda: "the listeners changed in" in gateway.log()), gateway.log()
    # Reading the file in a child left the master as lean as it was.
    assert tls_objects(gateway.pid) == []


def _start(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "idgateway", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("bad", ["key of another certificate", "not PEM", "missing"])
def test_a_bad_certificate_or_key_stops_the_start_with_workers(tmp_path: Path, bad: str) -> None:
    ca = make_ca(tmp_path / "pki")
    site = ca.issue(tmp_path / "pki", ["app1.localhost"], name="app1")
    other = ca.issue(tmp_path / "pki", ["other.localhost"], name="other")
    key = {
        "key of another certificate": other.key_path,
        "not PEM": tmp_path / "junk.pem",
        "missing": tmp_path / "absent.pem",
    }[bad]
    (tmp_path / "junk.pem").write_text("not a key\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""workers: 2
listeners:
  - address: 127.0.0.1:{free_port()}
    tls:
      certificates:
        - {{cert: {site.cert_path}, key: {key}}}
routes:
  - name: open
    default: true
    upstream: http://127.0.0.1:9
"""
    )
    done = _start(config)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{config}: configuration is not valid:" in done.stderr
    assert f"{config}:6: listeners[0].tls.certificates[0].key: " in done.stderr
    assert str(key) in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    # Nothing started: no worker, no log of one.
    assert "worker 0 started" not in done.stdout
