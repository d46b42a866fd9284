"""A gateway that cannot start says why in one line, names the file line and the fix, exits 1."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.processes import GatewayProcess, free_port


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def _run_to_exit(tmp_path: Path, text: str) -> tuple[int | None, str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    log = tmp_path / "gateway.log"
    gateway = GatewayProcess(path, log, log_to_stdout=True).start()
    assert gateway.process is not None
    status = gateway.process.wait(timeout=30)
    return status, log.read_text()


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "#error]" in line]
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_listener_port_in_use(tmp_path: Path, workers: int) -> None:
    with _busy_port() as busy:
        taken = busy.getsockname()[1]
        status, output = _run_to_exit(
            tmp_path,
            f"workers: {workers}\n"
            "routes: [{name: app, default: true, upstream: 'http://127.0.0.1:9'}]\n"
            "listeners:\n"
            f"  - address: 127.0.0.1:{free_port()}\n"
            f"  - address: 127.0.0.1:{taken}\n",
        )
    assert status == 1
    line = _one_error_line(output)
    assert f"cannot listen on 127.0.0.1:{taken} ({tmp_path / 'gateway.yaml'}:5)" in line
    assert "already in use" in line and "choose another port" in line


def test_the_admin_port_in_use(tmp_path: Path) -> None:
    with _busy_port() as busy:
        taken = busy.getsockname()[1]
        status, output = _run_to_exit(
            tmp_path,
            f"listeners: [{{address: 127.0.0.1:{free_port()}}}]\n"
            f"admin: {{address: 127.0.0.1:{taken}}}\n"
            "routes: [{name: app, default: true, upstream: 'http://127.0.0.1:9'}]\n",
        )
    assert status == 1
    line = _one_error_line(output)
    assert f"cannot listen on 127.0.0.1:{taken} (the admin listener)" in line


def test_an_address_this_machine_does_not_have(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never a local address.
    status, output = _run_to_exit(
        tmp_path,
        "listeners: [{address: '192.0.2.1:8080'}]\n"
        "routes: [{name: app, default: true, upstream: 'http://127.0.0.1:9'}]\n",
    )
    assert status == 1
    line = _one_error_line(output)
    assert "cannot listen on 192.0.2.1:8080" in line and "no such address" in line
