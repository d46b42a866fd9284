"""Microbenchmark of a whole proxied HTTP/2 request in one process: bytecodes and calls.

As ``bench/cycle_micro.py`` (the same route, session, gate, upstream pool and
upstream socketpair), but the client speaks HTTP/2 to a
``GatewayH2Connection``: each request is one HEADERS frame (HPACK, the
client's dynamic table warm, as a browser's after its first request) and a
connection WINDOW_UPDATE, all made before the run so that only the
gateway's work is counted. The client's side of the connection is an
in-memory transport (what the gateway writes to it is dropped); the
upstream's is a real socket, as in cycle_micro.

    .venv/bin/python bench/h2_cycle_micro.py --count            # bytecodes and calls per request
    .venv/bin/python bench/h2_cycle_micro.py --count --top 40   # ... by function
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for _path in (str(BENCH_DIR), str(REPO)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import cycle_micro  # noqa: E402


class _ClientSide:
    """The client's end of the connection, in memory (bytes written are dropped)."""

    disconnecting = False

    def __init__(self, peer: Any, host: Any) -> None:
        self.peer, self.host = peer, host
        self.written = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.last = data

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802 - Twisted's name
        for piece in data:
            self.write(piece)

    def getPeer(self) -> Any:  # noqa: N802 - Twisted's name
        return self.peer

    def getHost(self) -> Any:  # noqa: N802 - Twisted's name
        return self.host

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        pass

    def unregisterProducer(self) -> None:  # noqa: N802 - Twisted's name
        pass

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        raise SystemExit("the gateway closed the HTTP/2 connection")

    abortConnection = loseConnection  # noqa: N815 - Twisted's name


class H2Cycle:
    def __init__(self, requests: int) -> None:
        import gate_micro
        import hpack
        from hyperframe.frame import HeadersFrame, SettingsFrame, WindowUpdateFrame
        from twisted.internet import tcp
        from twisted.internet.address import IPv4Address

        from idgateway.config.model import HTTP2Limits
        from idgateway.observe import access_log
        from idgateway.proxy.upstream import UpstreamConnection
        from idgateway.server.channel import GatewaySite
        from idgateway.server.h2_connection import GatewayH2Connection

        self.records: list[str] = []
        access_log.send_access_lines_to(
            lambda when, line: self.records.append(f"\x1f{when!r}\t{line}\n")
        )
        fx = gate_micro._Fixture()
        for pool in fx.state.pools.values():
            pool.__dict__.pop("submit", None)  # the real pool, not gate_micro's stub
        self.reactor = fx.clock
        site = GatewaySite(fx.resource, reactor=self.reactor)
        self.connection = GatewayH2Connection(site, HTTP2Limits(), self.reactor)
        self.client = _ClientSide(
            IPv4Address("TCP", "127.0.0.1", 50000),
            IPv4Address("TCP", "127.0.0.1", gate_micro.PORT),
        )
        self.connection.makeConnection(self.client)  # type: ignore[arg-type]
        # The preface, the client's SETTINGS and its ACK of the gateway's.
        self.connection.dataReceived(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + SettingsFrame(0).serialize()
            + SettingsFrame(0, flags=["ACK"]).serialize()
        )
        pool = fx.runtime.pool_for(fx.runtime.paths.read(b"/"))[0]
        upstream_connection = UpstreamConnection(pool)
        theirs, self.upstream = socket.socketpair()
        theirs.setblocking(False)
        self.to_upstream: Any = tcp.Client.__new__(tcp.Client)
        tcp.Connection.__init__(self.to_upstream, theirs, upstream_connection, self.reactor)
        self.to_upstream.connected = 1
        self.to_upstream.setTcpNoDelay = lambda enabled: None
        upstream_connection.makeConnection(self.to_upstream)
        pool._idle.append(upstream_connection)
        upstream_connection.pool_state = "idle"
        encoder = hpack.Encoder()
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", gate_micro.HOST),
            (b":path", b"/"),
            (b"accept", b"application/json"),
            (b"cookie", fx.cookie_name + b"=" + fx.cookie),
        ]
        self.frames = [
            HeadersFrame(
                2 * n + 1, data=encoder.encode(fields), flags=["END_HEADERS", "END_STREAM"]
            ).serialize()
            + WindowUpdateFrame(0, window_increment=1024).serialize()
            for n in range(requests)
        ]
        self.next = 0

    def one(self) -> tuple[bytes, int]:
        self.connection.dataReceived(self.frames[self.next])
        self.next += 1
        self.reactor.advance(0)  # the turn's flush: the head goes upstream
        head = self.upstream.recv(65536)
        self.upstream.send(cycle_micro.RESPONSE)
        before = self.client.written
        self.to_upstream.doRead()
        self.reactor.advance(0)
        if len(self.records) > 100:
            self.records.clear()
        return head, self.client.written - before


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/h2_cycle_micro.py", description=__doc__.split("\n")[0])
    p.add_argument("--count", action="store_true", help="bytecodes and calls (the only mode)")
    p.add_argument("--top", type=int, default=0, help="the top functions")
    p.add_argument("--requests", type=int, default=500, help="counted requests (500)")
    a = p.parse_args(argv)
    warm = 1000
    cycle = H2Cycle(warm + a.requests + 1)
    head, answered = cycle.one()
    if not head.startswith(b"GET / HTTP/1.1\r\n") or not answered:
        raise SystemExit(f"the request did not go round: {head[:60]!r} / {answered} bytes")
    if " 200 20B " not in cycle.records[-1]:
        raise SystemExit(f"not a 200 with the upstream's body: {cycle.records[-1]!r}")
    for _ in range(warm):
        cycle.one()
    cycle_micro.count(cycle, a.requests, a.top)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
