"""bench/harness.py's small helpers: raw HTTP reading, process figures, rendering."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_harness", BENCH / "harness.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_harness"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_harness", None)
        sys.path.remove(str(BENCH))


def test_read_response_keeps_what_follows(harness):
    a, b = socket.socketpair()
    with a, b:
        b.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}"
        )
        buf = bytearray()
        assert harness.read_response(a, buf) == 200
        assert harness.read_response(a, buf) == 401
        assert buf == b""


def test_process_figures_cover_this_process(harness):
    pid = os.getpid()
    assert pid in harness.process_tree(pid)
    memory = harness.tree_memory(pid)
    assert memory["rss_kib"] > 0
    assert harness.tree_cpu_seconds(pid) > 0


def test_step_errors_and_lines(harness):
    extras = {
        "idle_conns": {"gateway_cookie": {"error": "idgateway: did not start"}},
        "gate_micro": {"error": "failed"},
    }
    assert harness.step_errors(extras) == [
        "idle_conns: idgateway: did not start",
        "gate_micro: failed",
    ]
    lines = harness.render_extras(extras)
    assert any("not run (idgateway: did not start)" in line for line in lines)
    assert any(line.startswith("gate microbenchmark: not run") for line in lines)


def test_cpu_per_request_and_its_column(harness):
    assert harness.cpu_per_request_us(1.5, 10_000) == pytest.approx(150.0)
    # Nothing answered, or no CPU time seen (clock ticks): no figure, not 0.
    assert harness.cpu_per_request_us(1.5, 0) is None
    assert harness.cpu_per_request_us(0.0, 10_000) is None

    def case(key, server, rps, cpu):
        c = harness.Case(key, server, "/", key)
        for r in rps:
            c.runs.append(
                {
                    "rps": r,
                    "p50_ms": 1.0,
                    "p99_ms": 2.0,
                    "transfer_bytes_per_s": 1.0,
                    "errors": 0,
                    "requests": int(r * 10),
                    "cpu_us_per_request": cpu,
                }
            )
        return c

    cases = {
        "login_cookie": case("login_cookie", "gateway_cookie", [3000, 3300, 3200], 180.0),
        "apache_shm": case("apache_shm", "apache_shm", [2000, 2100, 2050], 300.0),
    }
    ratios = harness.compute_ratios(cases)
    ratio = ratios["cookie session / mod_auth_openidc shm"]
    assert ratio["cpu"] == pytest.approx(0.6)
    meta = {
        "date": "now",
        "machine": {
            "nproc": 2,
            "cpu_model": "x",
            "kernel": "k",
            "python": "3",
            "twisted": "t",
            "nginx": "n",
            "wrk": "w",
        },
        "config": {
            "threads": 2,
            "connections": 32,
            "duration_s": 10,
            "rounds": 3,
            "warmup_s": 2,
            "stock_proxy_logging": True,
        },
    }
    text = harness.render(meta, cases, ratios, [], None)
    assert "CPU/req" in text.splitlines()[5]
    assert " 180us " in text and " 300us " in text
    assert "CPU per request 0.6x" in text


def test_steal_share_between_two_readings(harness):
    assert harness.steal_percent((100, 10_000), (150, 11_000)) == pytest.approx(5.0)
    assert harness.steal_percent(None, (150, 11_000)) is None
    assert harness.steal_percent((100, 10_000), (100, 10_000)) is None
    ticks = harness.machine_cpu_ticks()
    assert ticks is not None and ticks[1] > 0 and 0 <= ticks[0] <= ticks[1]


def test_the_gate_microbenchmark_still_measures_the_authenticated_path():
    """bench/gate_micro.py drives the gate as render does (a few calls: a smoke test)."""
    spec = importlib.util.spec_from_file_location("bench_gate_micro", BENCH / "gate_micro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.run(iterations=50, batches=1)
    assert figures
