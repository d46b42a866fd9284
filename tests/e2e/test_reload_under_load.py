"""Reload without downtime, and SIGTERM's drain, under real traffic.

- A steady load through the gateway while valid and invalid configurations
  are reloaded (SIGHUP) every half second: not one request may fail.
- SIGTERM in a single process: stop accepting, let the request in flight
  finish, exit 0.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.http_helpers import request
from tests.processes import GatewayProcess, free_port

LOAD_THREADS = 4
RELOADS = 10
RELOAD_INTERVAL = 0.5


def config_text(port: int, upstream: int, *, workers: int = 1, extra_route: bool = False) -> str:
    extra = (
        f"""
  - name: extra
    hosts: [extra.localhost]
    upstream: http://127.0.0.1:{upstream}
"""
        if extra_route
        else ""
    )
    return f"""
workers: {workers}
listeners:
  - address: 127.0.0.1:{port}
routes:
  - name: app
    hosts: [app.localhost]
    upstream: http://127.0.0.1:{upstream}
{extra}"""


def invalid_config_text(port: int, upstream: int, *, workers: int = 1) -> str:
    # A typo'd key: the whole file is refused and the running config stays.
    return config_text(port, upstream, workers=workers).replace("upstream:", "upstreem:", 1)


def write_atomically(path: Path, text: str) -> None:
    """So that a reload never reads a half-written file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def wait_for(condition: Callable[[], bool], timeout: float, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


class Load:
    """Client threads on keep-alive connections, each request checked."""

    def __init__(self, port: int, threads: int = LOAD_THREADS) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.backends: Counter[str] = Counter()
        self.failures: list[str] = []
        self.requests = 0
        self.threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True)
            for index in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        number = 0
        try:
            while not self.stopping.is_set():
                number += 1
                path = f"/echo?client={index}&n={number}"
                try:
                    conn.request("GET", path, headers={"Host": "app.localhost"})
                    response = conn.getresponse()
                    body = response.read()
                    problem = self._check(response.status, body, path)
                except Exception as error:  # every kind counts as a failed request
                    problem = f"{path}: {type(error).__name__}: {error}"
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    backend = None
                else:
                    backend = json.loads(body)["backend"] if problem is None else None
                with self.lock:
                    self.requests += 1
                    if problem is not None:
                        self.failures.append(problem)
                    elif backend is not None:
                        self.backends[backend] += 1
                # Sampled, not a flood: a few hundred requests a second in all.
                time.sleep(0.005)
        finally:
            conn.close()

    @staticmethod
    def _check(status: int, body: bytes, path: str) -> str | None:
        if status != 200:
            return f"{path}: status {status}: {body[:200]!r}"
        try:
            echo = json.loads(body)
        except ValueError:
            return f"{path}: not JSON: {body[:200]!r}"
        if echo.get("path") != "/echo" or echo.get("backend") not in ("backend-a", "backend-b"):
            return f"{path}: unexpected echo {echo!r}"
        return None


def run_reloads_under_load(
    gateway: GatewayProcess, port: int, backend_a: int, backend_b: int, workers: int
) -> Load:
    with Load(port) as load:
        wait_for(lambda: load.requests >= 20, 10, "the load to start")
        for step in range(RELOADS):
            # Valid: switch the upstream and add or drop a route; then a typo.
            if step % 2 == 0:
                upstream = backend_b if step % 4 == 0 else backend_a
                text = config_text(port, upstream, workers=workers, extra_route=step % 4 == 0)
            else:
                text = invalid_config_text(port, backend_a, workers=workers)
            write_atomically(gateway.config_path, text)
            gateway.signal(signal.SIGHUP)
            time.sleep(RELOAD_INTERVAL)
        # Let the last reload settle under load.
        time.sleep(RELOAD_INTERVAL)
    return load


def check_load(load: Load, gateway: GatewayProcess) -> None:
    assert load.failures == [], f"{len(load.failures)} failed of {load.requests}\n" + "\n".join(
        load.failures[:20]
    )
    assert load.requests > 200, load.requests
    assert set(load.backends) == {"backend-a", "backend-b"}, load.backends
    assert gateway.process is not None and gateway.process.poll() is None
    log = gateway.log()
    assert "configuration reloaded" in log
    assert "reload refused" in log
    assert "unknown key 'upstreem'" in log


def test_reloads_under_load_fail_no_request(start_gateway, backend, backend_b):
    port = free_port()
    gateway = start_gateway(config_text(port, backend.port), [port])
    load = run_reloads_under_load(gateway, port, backend.port, backend_b.port, workers=1)
    check_load(load, gateway)
    log = gateway.log()
    assert log.count("configuration reloaded") == RELOADS // 2, log
    assert log.count("unknown key 'upstreem'") == RELOADS // 2, log


def test_reloads_under_load_fail_no_request_with_two_workers(start_gateway, backend, backend_b):
    port = free_port()
    gateway = start_gateway(config_text(port, backend.port, workers=2), [port])
    # Both workers serving (and so taking SIGHUP) before the load starts.
    wait_for(
        lambda: (
            "[worker 0] worker 0 serving" in gateway.log()
            and "[worker 1] worker 1 serving" in gateway.log()
        ),
        15,
        "both workers serving",
    )
    load = run_reloads_under_load(gateway, port, backend.port, backend_b.port, workers=2)
    check_load(load, gateway)
    log = gateway.log()
    for index in (0, 1):
        assert f"[worker {index}] configuration reloaded" in log
        assert f"[worker {index}] reload refused" in log


# -- SIGTERM in a single process -------------------------------------------------


def _established_to(port: int) -> int:
    """ESTABLISHED TCP connections to 127.0.0.1:port (from /proc)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
            count += 1
    return count


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from /proc")
def test_sigterm_drains_in_flight_request_then_exits_zero(start_gateway, backend):
    port = free_port()
    gateway = start_gateway(config_text(port, backend.port), [port])
    # An idle keep-alive connection, closed at once by the drain. (An unknown
    # host: no pooled upstream connection, which the slow request would reuse.)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/", headers={"Host": "nope.localhost"})
    response = idle.getresponse()
    assert response.status == 421
    response.read()
    assert not response.will_close
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            status, headers, body = request(port, "app.localhost", "/slow-headers?delay=2")
            result["status"] = status
            result["body"] = json.loads(body)
        except Exception as error:  # reported by the assertion below
            result["error"] = error

    before = _established_to(backend.port)
    client = threading.Thread(target=slow)
    client.start()
    wait_for(lambda: _established_to(backend.port) > before, 5, "the slow request upstream")
    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    # No longer accepting, while the slow request is still in flight.
    wait_for(lambda: not _accepts(port), 1.5, "the listener to close")
    assert client.is_alive()
    client.join(15)
    assert result == {"status": 200, "body": {"delay": 2.0}}
    assert gateway.process is not None
    assert gateway.process.wait(15) == 0
    assert time.monotonic() - started < 10
    assert not _accepts(port)
    # The idle connection was closed by the gateway, not left to time out.
    idle.sock.settimeout(1)  # type: ignore[union-attr]
    assert idle.sock.recv(1) == b""  # type: ignore[union-attr]
    idle.close()
    log = gateway.log()
    assert "received SIGTERM: draining" in log
    assert "drain timeout" not in log


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
