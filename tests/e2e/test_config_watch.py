"""``reload: {watch: true}``: a real gateway follows its file without a signal."""

from __future__ import annotations

import time

from tests.http_helpers import echo_json
from tests.processes import free_port


def config(port: int, backend_port: int, workers: int = 1) -> str:
    return f"""
workers: {workers}
reload: {{watch: true, interval: 200ms}}
listeners:
  - address: 127.0.0.1:{port}
routes:
  - name: app
    hosts: [app.localhost]
    upstream: http://127.0.0.1:{backend_port}
"""


def wait_for_backend(port: int, name: str, timeout: float = 10) -> None:
    """Until 10 requests in a row (new connections: any worker) reach ``name``."""
    deadline, in_a_row = time.monotonic() + timeout, 0
    while in_a_row < 10:
        in_a_row = in_a_row + 1 if echo_json(port, "app.localhost")["backend"] == name else 0
        assert time.monotonic() < deadline, f"still not {name} after {timeout} s"
        if not in_a_row:
            time.sleep(0.1)


def wait_for_log(gateway, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in gateway.log():
        assert time.monotonic() < deadline, gateway.log()
        time.sleep(0.05)


def _follow(start_gateway, backend, backend_b, workers: int) -> None:
    port = free_port()
    gateway = start_gateway(config(port, backend.port, workers), [port])
    assert echo_json(port, "app.localhost")["backend"] == "backend-a"
    # Every worker must have read the first file: one still starting when the
    # file changes reads the new one itself, and could answer from backend-b
    # before the master's next poll notices the change.
    for index in range(workers if workers > 1 else 0):
        wait_for_log(gateway, f"[worker {index}] worker {index} serving")
    gateway.config_path.write_text(config(port, backend_b.port, workers))
    wait_for_backend(port, "backend-b")
    wait_for_log(gateway, "changed: reloading (reload: watch)")
    # A broken file is refused and the gateway keeps serving what it had.
    gateway.config_path.write_text(config(port, backend.port, workers) + "  - oops\n")
    wait_for_log(gateway, "reload refused")
    assert echo_json(port, "app.localhost")["backend"] == "backend-b"
    # And a good one after it is taken.
    gateway.config_path.write_text(config(port, backend.port, workers))
    wait_for_backend(port, "backend-a")


def test_single_process_follows_its_file(start_gateway, backend, backend_b):
    _follow(start_gateway, backend, backend_b, 1)


def test_workers_follow_the_file_through_the_master(start_gateway, backend, backend_b):
    _follow(start_gateway, backend, backend_b, 2)
