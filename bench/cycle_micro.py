"""Microbenchmark of a whole proxied request in one process: µs, bytecodes and calls.

One authenticated request goes around the gateway's HTTP/1.1 path on real
sockets (two socketpairs: the client's and the upstream's) with the real
channel, gate, upstream pool and coalescing TCP transports, the route and
session of ``bench/gate_micro.py``: the client's bytes are read by the
listener's transport, the gate admits the session, the upstream request head
is flushed to the upstream socket, a canned nginx answer is read back, the
response is flushed to the client and the access record is made. The reactor
is Twisted's ``MemoryReactorClock`` driven by hand (no epoll), so the per-turn
flush goes through ``callLater(0)`` here.

Timings (process CPU time, which includes the four socket calls made on the
peers' side) move with the machine's load; the bytecode and call counts per
request (``--count``, with ``sys.settrace``) do not, which makes them the
before/after figure for changes that remove frames.

    .venv/bin/python bench/cycle_micro.py            # µs per request
    .venv/bin/python bench/cycle_micro.py --count    # bytecodes and calls per request
    .venv/bin/python bench/cycle_micro.py --count --top 40   # ... by function
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for _path in (str(BENCH_DIR), str(REPO)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 11:50:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\n"
    b"hello from upstream\n"
)


class Cycle:
    """The gateway between a client socket and an upstream socket, in this process."""

    def __init__(self) -> None:
        import gate_micro
        from twisted.internet import tcp
        from twisted.internet.address import IPv4Address

        from idgateway.observe import access_log
        from idgateway.proxy.upstream import UpstreamConnection
        from idgateway.server.channel import GatewaySite

        self.records: list[str] = []
        # As a worker hands text access lines to its master (workers.log_relay).
        access_log.send_access_lines_to(
            lambda when, line: self.records.append(f"\x1f{when!r}\t{line}\n")
        )
        fx = gate_micro._Fixture()
        for pool in fx.state.pools.values():
            pool.__dict__.pop("submit", None)  # the real pool, not gate_micro's stub
        self.reactor = fx.clock
        site = GatewaySite(fx.resource, reactor=self.reactor)
        peer = IPv4Address("TCP", "127.0.0.1", 50000)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", gate_micro.PORT))
        ours, self.client = socket.socketpair()
        ours.setblocking(False)
        self.listener = tcp.Server(ours, channel, ("127.0.0.1", 50000), None, 1, self.reactor)
        self.listener.getPeer = lambda: peer  # type: ignore[method-assign]
        self.listener.getHost = lambda: IPv4Address("TCP", "127.0.0.1", gate_micro.PORT)  # type: ignore[method-assign]
        self.listener.setTcpNoDelay = lambda enabled: None  # type: ignore[method-assign]
        channel.makeConnection(self.listener)
        pool = fx.runtime.pool_for(fx.runtime.paths.read(b"/"))[0]
        connection = UpstreamConnection(pool)
        theirs, self.upstream = socket.socketpair()
        theirs.setblocking(False)
        self.to_upstream: Any = tcp.Client.__new__(tcp.Client)
        tcp.Connection.__init__(self.to_upstream, theirs, connection, self.reactor)
        self.to_upstream.connected = 1
        # (A socketpair has no Nagle to turn off: Twisted would log that it failed.)
        self.to_upstream.setTcpNoDelay = lambda enabled: None
        connection.makeConnection(self.to_upstream)
        pool._idle.append(connection)
        connection.pool_state = "idle"
        self.request = (
            b"GET / HTTP/1.1\r\nHost: "
            + gate_micro.HOST
            + b"\r\nCookie: "
            + fx.cookie_name
            + b"="
            + fx.cookie
            + b"\r\nAccept: application/json\r\n\r\n"
        )

    def one(self) -> tuple[bytes, bytes]:
        self.client.send(self.request)
        self.listener.doRead()
        self.reactor.advance(0)  # the turn's flush: the head goes upstream
        head = self.upstream.recv(65536)
        self.upstream.send(RESPONSE)
        self.to_upstream.doRead()
        self.reactor.advance(0)  # the answer goes to the client
        answer = self.client.recv(65536)
        if len(self.records) > 100:
            self.records.clear()
        return head, answer


def count(cycle: Cycle, requests: int, top: int) -> None:
    totals = {"opcodes": 0, "calls": 0}
    by_function: dict[str, list[int]] = {}

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        code = frame.f_code
        name = f"{code.co_filename.split('site-packages/')[-1]}:{code.co_name}"
        tally = by_function.setdefault(name, [0, 0])
        tally[1] += 1
        totals["calls"] += 1

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                totals["opcodes"] += 1
                tally[0] += 1
            return local

        return local

    sys.settrace(tracer)
    try:
        for _ in range(requests):
            cycle.one()
    finally:
        sys.settrace(None)
    print(
        f"bytecodes per request {totals['opcodes'] / requests:.1f}, "
        f"Python calls per request {totals['calls'] / requests:.1f}"
    )
    ranked = sorted(by_function.items(), key=lambda item: -item[1][0])[:top]
    for name, (opcodes, calls) in ranked:
        print(f"  {opcodes / requests:7.1f} bytecodes {calls / requests:5.1f} calls  {name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/cycle_micro.py", description=__doc__.split("\n")[0])
    p.add_argument("--count", action="store_true", help="bytecodes and calls, not µs")
    p.add_argument("--top", type=int, default=0, help="with --count: the top functions")
    p.add_argument("--requests", type=int, default=10_000, help="per batch (10000)")
    p.add_argument("--batches", type=int, default=7, help="batches; median and min (7)")
    a = p.parse_args(argv)
    cycle = Cycle()
    head, answer = cycle.one()
    if not head.startswith(b"GET / HTTP/1.1\r\n") or not answer.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"the request did not go round: {head[:60]!r} / {answer[:60]!r}")
    for _ in range(2000):
        cycle.one()
    if a.count:
        count(cycle, 500, a.top)
        return 0
    per = []
    for _ in range(a.batches):
        started = time.process_time()
        for _ in range(a.requests):
            cycle.one()
        per.append((time.process_time() - started) / a.requests * 1e6)
    print(f"{statistics.median(per):.2f} µs per request (min {min(per):.2f}, CPU time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
