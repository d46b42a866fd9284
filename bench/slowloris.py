#!/usr/bin/env python3
"""Slowloris against the gateway: are the slow heads cut, and does a normal client notice?

    .venv/bin/python bench/slowloris.py                 # 5,000 connections, a byte every 5 s
    .venv/bin/python bench/slowloris.py --open          # an open route instead of a login
    .venv/bin/python bench/slowloris.py --connections 300 --interval 1 --deadline 2

It starts, on free 127.0.0.1 ports, the request-echo back end, the WSO2-shaped
provider (node; not with --open) and the gateway (``client_header_timeout``:
``--deadline``) in front of a route with cookie-session login; logs alice in
with a scripted login; measures her authenticated requests (p50/p99 over
``--requests`` requests on one keep-alive connection) first alone, then while
``--connections`` connections each send one byte of a request head every
``--interval`` seconds from another process. It prints the figures: how many
slow connections were cut with 408, when (seconds after they opened), and the
latencies. A measurement, not a test: it fails only if something could not run.
tests/security/test_slow_clients.py runs a reduced version as a test.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import multiprocessing
import os
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# What the slow clients trickle: a plausible head that never ends.
SLOW_HEAD = (
    b"GET /slow HTTP/1.1\r\nHost: app1.localhost\r\nUser-Agent: Mozilla/5.0 slowloris\r\n"
    b"Accept: text/html\r\n" + b"X-Padding: " + b"a" * 4000 + b"\r\n"
)


# ---- the slow clients (run in a process of their own) ------------------------------------


def trickle(
    port: int,
    count: int,
    interval: float,
    duration: float,
    results: Any,
    ready: Any,
) -> None:
    """Open ``count`` connections, send each one byte of SLOW_HEAD every ``interval`` s.

    For ``duration`` seconds after the last one opened. Puts on ``results`` a
    dict: opened, cut_408 (closed after a 408), cut_other (closed without
    one), open_at_end, cut_after (seconds from each one's open to its close),
    bytes_sent (per connection, of those cut).
    """
    resource.setrlimit(resource.RLIMIT_NOFILE, _raised_nofile(count + 64))
    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    opened_at: dict[int, float] = {}
    sent: dict[int, int] = {}
    received: dict[int, bytes] = {}
    for _ in range(count):
        sock = socket.socket()
        try:
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        fd = sock.fileno()
        opened_at[fd] = time.monotonic()
        sent[fd] = 0
        received[fd] = b""
        socks.append(sock)
        selector.register(sock, selectors.EVENT_READ)
    ready.set()
    by_fd = {sock.fileno(): sock for sock in socks}
    cut_after: list[float] = []
    bytes_at_cut: list[int] = []
    cut_408 = cut_other = 0
    live = set(by_fd)
    # Spread each round of single bytes over the interval, as independent
    # clients would be.
    step = interval / max(1, len(socks))
    order = list(by_fd)
    position = 0
    next_send = time.monotonic()
    end = time.monotonic() + duration
    while live and time.monotonic() < end:
        now = time.monotonic()
        while next_send <= now and order:
            fd = order[position % len(order)]
            position += 1
            next_send += step
            if fd not in live:
                continue
            offset = sent[fd] % len(SLOW_HEAD)
            try:
                by_fd[fd].send(SLOW_HEAD[offset : offset + 1])
                sent[fd] += 1
            except OSError:
                pass  # closed under us: the read side reports it
        timeout = max(0.0, min(next_send, end) - time.monotonic())
        for key, _ in selector.select(timeout):
            sock = key.fileobj
            fd = sock.fileno()  # type: ignore[union-attr]
            try:
                data = sock.recv(65536)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if data:
                received[fd] += data
                continue
            selector.unregister(sock)
            live.discard(fd)
            cut_after.append(time.monotonic() - opened_at[fd])
            bytes_at_cut.append(sent[fd])
            if received[fd].startswith(b"HTTP/1.1 408 "):
                cut_408 += 1
            else:
                cut_other += 1
    for sock in socks:
        sock.close()
    results.put(
        {
            "opened": len(socks),
            "cut_408": cut_408,
            "cut_other": cut_other,
            "open_at_end": len(live),
            "cut_after": cut_after,
            "bytes_sent": bytes_at_cut,
        }
    )


def _raised_nofile(wanted: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    return max(soft, wanted), hard


class SlowClients:
    """The trickling connections, in a child process (its work must not slow our timing)."""

    def __init__(self, port: int, count: int, interval: float, duration: float) -> None:
        context = multiprocessing.get_context("fork")
        self._results = context.Queue()
        self._ready = context.Event()
        self._process = context.Process(
            target=trickle,
            args=(port, count, interval, duration, self._results, self._ready),
            daemon=True,
        )

    def start(self, timeout: float = 120.0) -> SlowClients:
        self._process.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the slow clients did not open their connections in time")
        self.started = time.monotonic()
        return self

    def results(self, timeout: float) -> dict[str, Any]:
        found: dict[str, Any] = self._results.get(timeout=timeout)
        self._process.join(5)
        return found

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


# ---- the normal client ---------------------------------------------------------------------


def latencies_ms(
    port: int, host: str, path: str, count: int, cookie: str | None = None, pause: float = 0.02
) -> list[float]:
    """``count`` GETs on one keep-alive connection; each one's time in ms (all must be 200)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host, "Accept": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    times: list[float] = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            times.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"the normal client got {response.status}")
            time.sleep(pause)
    finally:
        conn.close()
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


# ---- the run -------------------------------------------------------------------------------


def gateway_config(
    port: int, backend_port: int, deadline: float, op: Any | None, session_key: str
) -> str:
    route = f"""
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend_port}
"""
    providers = ""
    if op is not None:
        providers = f"""
providers:
  wso2:
    discovery_url: {op.discovery_url()}
    ca_file: {op.ca_file}
"""
        route += f"""    oidc:
      provider: wso2
      client_id: app1-client
      client_secret: app1-client-secret
      user_claim: username
    session:
      store: cookie
      keys: [{session_key}]
"""
    return f"""
listeners:
  - address: 127.0.0.1:{port}
client_header_timeout: {deadline}s
logging: {{access_log: false}}
{providers}
routes:{route}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between bytes")
    parser.add_argument("--deadline", type=float, default=15.0, help="client_header_timeout")
    parser.add_argument("--requests", type=int, default=200, help="normal client's requests")
    parser.add_argument("--open", action="store_true", help="an open route, no login")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from tests.backends import BackendProcess
    from tests.processes import GatewayProcess, free_port

    # The gateway's max_connections default is a share of its descriptors.
    resource.setrlimit(resource.RLIMIT_NOFILE, _raised_nofile(2 * args.connections + 512))
    tmp = Path(tempfile.mkdtemp(prefix="slowloris-"))
    port = free_port()
    op_context: Any = None
    with BackendProcess(name="echo") as backend:
        try:
            op = None
            if not args.open:
                from tests.login_env import two_tenant_config
                from tests.provider_process import ProviderProcess

                op_context = ProviderProcess(tmp / "op", two_tenant_config(port))
                op = op_context.__enter__()
            key = base64.b64encode(os.urandom(32)).decode()
            config = tmp / "gateway.yaml"
            config.write_text(gateway_config(port, backend.port, args.deadline, op, key))
            gateway = GatewayProcess(config, tmp / "gateway.log").start([port])
            try:
                return _measure(args, port, op, gateway)
            finally:
                gateway.stop()
        finally:
            if op_context is not None:
                op_context.__exit__(None, None, None)


def login_cookie(port: int, op: Any) -> str:
    from tests.e2e.test_login import Client

    deadline = time.monotonic() + 30
    client = Client(port, "app1.localhost")
    while client.get("/")[0] != 302:
        if time.monotonic() > deadline:
            raise RuntimeError("no login redirect: provider discovery failed")
        time.sleep(0.2)
    status, _ = client.login(op, "/", "alice", "alice123")
    if status != 200:
        raise RuntimeError(f"login failed: {status}")
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


def _measure(args: argparse.Namespace, port: int, op: Any, gateway: Any) -> int:
    cookie = login_cookie(port, op) if op is not None else None
    host = f"app1.localhost:{port}"
    what = "cookie-session login (alice)" if cookie else "open route"
    print(f"gateway on 127.0.0.1:{port}, route app1: {what}", file=sys.stderr)
    alone = latencies_ms(port, host, "/echo", args.requests, cookie)
    duration = args.deadline + args.interval + 10
    slow = SlowClients(port, args.connections, args.interval, duration).start()
    try:
        # Measure while the slow connections trickle and through the moment
        # they are cut (the requests are spread over the deadline and 2 s more).
        pause = max(0.0, (args.deadline + 2) / args.requests - 0.002)
        loaded = latencies_ms(port, host, "/echo", args.requests, cookie, pause)
        measured_within = time.monotonic() - slow.started
        found = slow.results(timeout=duration + 60)
    finally:
        slow.stop()
    cut_after = found["cut_after"]
    print(f"route: {what}; client_header_timeout {args.deadline:g} s")
    print(
        f"slow connections: {found['opened']} opened, one header byte every "
        f"{args.interval:g} s each"
    )
    print(
        f"  cut with 408: {found['cut_408']}, closed otherwise: {found['cut_other']}, "
        f"still open at the end: {found['open_at_end']}"
    )
    if cut_after:
        print(
            f"  cut after (s from open): min {min(cut_after):.1f}, median "
            f"{statistics.median(cut_after):.1f}, max {max(cut_after):.1f}; bytes sent "
            f"before the cut: up to {max(found['bytes_sent'])}"
        )
    for label, times in (("alone", alone), ("during the slowloris", loaded)):
        print(
            f"normal client {label}: {len(times)} requests, p50 {percentile(times, 0.5):.2f} ms, "
            f"p99 {percentile(times, 0.99):.2f} ms, max {max(times):.2f} ms"
        )
    print(
        f"  (the loaded run spans the first {measured_within:.1f} s of the slowloris, "
        "the cut included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
