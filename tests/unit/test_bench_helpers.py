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
