"""The soak; started by ``bench/soak --minutes N`` (see bench/README.md).

The rig of bench/chaos (two gateways with ``workers: 2``, one Redis, the
provider issuing 60 s access tokens) under mixed traffic for N minutes:
authenticated GETs (cookie and Redis sessions), 100 KB responses, uploads,
WebSockets opening and closing, logins and sign-outs, token refreshes (the
sessions' access tokens live 60 s), a SIGHUP reload every minute. Every
``--sample`` seconds: RSS and open descriptors of each gateway's process
tree, its sockets, Redis keys and memory. Pass (exit 0): RSS and descriptors
grow less than 5% over the last two thirds, Redis keys stay bounded by the
live sessions, and no unexpected status. Exit 1 otherwise, 2 set-up problem.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
for entry in (str(BENCH_DIR), str(BENCH_DIR.parent)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import harness  # noqa: E402
from chaos import Chaos, Options  # noqa: E402
from chaos_rig import ChaosRig, Session, Target, take_cookies  # noqa: E402

UPLOAD = os.urandom(16 * 1024)
GROWTH_LIMIT = 0.05
# Descriptors also count the connections open at the moment of a sample (client,
# upstream, Redis, WebSocket): a few more or fewer is traffic, not a leak.
FDS_IN_FLIGHT = 8
# Keys per live Redis session (the session, its sid and sub indexes) and room for
# the rest (refresh locks, used logout-token jtis, revocations) that expire.
KEYS_PER_SESSION = 3
KEYS_SLACK = 20


def soak_mix(sessions: dict[str, list[Session]]) -> list[Target]:
    return [
        Target("cookie_100k", "cookie.localhost", "/100k", 1, sessions["cookie"]),
        Target("upload", "cookie.localhost", "/be/upload", 1, sessions["cookie"], "POST", UPLOAD),
    ]


@dataclass
class Soak:
    chaos: Chaos
    sample_every: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    websockets: Counter[str] = field(default_factory=Counter)
    # Upgrades whose 101 re-issued the session cookie (a refresh done for them).
    websocket_cookie_reissues: int = 0
    reloads: int = 0
    reload_times: list[float] = field(default_factory=list)
    # Each WebSocket that did not end "ok": when, which session and instance, the
    # cookie it sent (a digest) and how long that cookie had been in the jar.
    websocket_failures: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    cookie_changes: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def rig(self) -> ChaosRig:
        return self.chaos.rig

    def websocket_cycles(self) -> None:
        """Open a tunnel through the cookie route, echo one message, close; twice a second.

        The tunnels share each session's cookie jar with the load, as a browser's
        tabs do. One of the four cookie sessions gets no plain requests (the load's
        request i goes to target i % 4 with session i % 4, and one target is the
        Redis route): its only traffic is WebSockets, so its token refreshes happen
        on upgrades and its refreshed cookie reaches it only on a 101."""
        sessions = self.chaos.sessions["cookie"]
        while not self.stop.wait(0.5):
            n = self.websockets.total()
            session = sessions[n % len(sessions)]
            instance = n % self.rig.instances
            with session.lock:
                cookie, age = session.header(), time.monotonic() - session.changed_at
            try:
                outcome, reissued = websocket_echo(
                    self.rig.gateway_ports[instance], session, cookie
                )
                self.websocket_cookie_reissues += reissued
            except OSError as e:
                outcome = type(e).__name__
            self.websockets[outcome] += 1
            if outcome != "ok":
                self.websocket_failures.append(
                    {
                        "t": round(time.monotonic() - self.started, 1),
                        "outcome": outcome,
                        "session": n % len(sessions),
                        "instance": instance,
                        "cookie": hashlib.sha256(cookie.encode()).hexdigest()[:12],
                        "cookie_age": round(age, 1),
                        "jar_now": hashlib.sha256(session.header().encode()).hexdigest()[:12],
                    }
                )

    def reload_every_minute(self) -> None:
        n = 0
        while not self.stop.wait(60.0):
            n += 1
            for index in range(self.rig.instances):
                self.rig.write_config(index, extra_routes=n % 2)
                self.rig.reload(index)
            self.reloads += 1
            self.reload_times.append(round(time.monotonic() - self.started, 1))

    def sample(self, started: float) -> None:
        row: dict[str, Any] = {"t": round(time.monotonic() - started, 1)}
        for index in range(self.rig.instances):
            memory = harness.tree_memory(self.rig.master_pid(index))
            fds, sockets = self.rig.tree_fds(index)
            row[f"gw{index}"] = {"rss_kib": memory["rss_kib"], "fds": fds, "sockets": sockets}
        row["redis_keys"] = self.rig.redis.keys()
        # Cookie sessions' sign-outs are remembered until max_duration would have
        # ended them (a copied cookie stays dead): bounded by sign-outs, counted apart.
        row["redis_revocations"] = len(self.rig.redis.master.call("KEYS", "idgw:revoked*"))
        row["redis_used_memory"] = self.rig.redis.used_memory()
        row["live_redis_sessions"] = len(self.chaos.sessions["redis"]) + 1  # + a login cycle
        # The machine is shared: what else ran is part of the figures.
        row["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        self.samples.append(row)
        harness.info(
            f"  t={row['t']:>6}s "
            + "  ".join(
                f"gw{i}: rss {row[f'gw{i}']['rss_kib'] / 1024:.1f} MiB, "
                f"fds {row[f'gw{i}']['fds']}, sockets {row[f'gw{i}']['sockets']}"
                for i in range(self.rig.instances)
            )
            + f"  redis keys {row['redis_keys']}, {row['redis_used_memory'] / 1024:.0f} KiB"
            + f"  load {row['loadavg'][0]:.2f}"
        )

    def run(self, seconds: float) -> None:
        threads = [
            threading.Thread(target=self.websocket_cycles, daemon=True),
            threading.Thread(target=self.reload_every_minute, daemon=True),
        ]
        for thread in threads:
            thread.start()
        started = self.started = time.monotonic()
        cookies = {id(s): s.header() for s in self.chaos.sessions["cookie"]}
        while time.monotonic() - started < seconds:
            self.sample(started)
            for s in self.chaos.sessions["cookie"]:
                if cookies[id(s)] != s.header():
                    self.cookie_changes += 1
                    cookies[id(s)] = s.header()
            time.sleep(
                max(0.0, self.sample_every - (time.monotonic() - started) % self.sample_every)
            )
        self.sample(started)
        self.stop.set()
        for thread in threads:
            thread.join(10)


def websocket_echo(port: int, session: Session, cookie: str) -> tuple[str, bool]:
    """One WebSocket through the gateway: upgrade, one text message and its echo, close.
    The outcome, and whether the 101 set a cookie.

    Like a browser, it keeps a cookie the handshake's answer sets (a refresh
    done for the upgrade re-issues the session cookie there)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /be/ws HTTP/1.1\r\nHost: cookie.localhost:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return "closed before the upgrade", False
            head += chunk
        head_text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        set_cookies = [
            line.split(":", 1)[1].strip()
            for line in head_text.split("\r\n")[1:]
            if line.lower().startswith("set-cookie:")
        ]
        take_cookies(session, set_cookies)
        status = head.split(b" ", 2)[1].decode()
        if status != "101":
            return f"upgrade answered {status}", False
        rest = head.split(b"\r\n\r\n", 1)[1]
        payload = b"soak"
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        while len(rest) < 2 + len(payload):
            chunk = sock.recv(4096)
            if not chunk:
                return "closed before the echo", bool(set_cookies)
            rest += chunk
        if rest[2 : 2 + len(payload)] != payload:
            return "wrong echo", bool(set_cookies)
        sock.sendall(
            bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8"))
        )
        with contextlib.suppress(OSError):
            sock.recv(64)
        return "ok", bool(set_cookies)


def growth(values: list[float]) -> float:
    """Growth over the last two thirds (after the warm-up third): the least-squares
    slope through those samples times their span, over the fitted start value.
    A trend shows; the ups and downs of connections opening and closing do not."""
    tail = values[len(values) // 3 :]
    if len(tail) < 2:
        return 0.0
    xs = range(len(tail))
    mean_x, mean_y = statistics.mean(xs), statistics.mean(tail)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, tail, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    start_value = mean_y - slope * mean_x
    return slope * (len(tail) - 1) / start_value if start_value else 0.0


def verdict(soak: Soak) -> tuple[list[str], dict[str, Any]]:
    chaos = soak.chaos
    problems = []
    figures: dict[str, Any] = {}
    assert chaos.load is not None and chaos.flaky_load is not None
    samples = chaos.load.samples + chaos.flaky_load.samples
    statuses = Counter(f"{s.kind} {s.status or s.error}" for s in samples)
    unexpected = {k: v for k, v in statuses.items() if not k.endswith(" 200")}
    figures["requests"] = len(samples)
    figures["statuses"] = dict(statuses)
    if unexpected:
        problems.append(f"unexpected statuses: {unexpected}")
    figures["websockets"] = dict(soak.websockets)
    if set(soak.websockets) - {"ok"}:
        problems.append(f"WebSockets that failed: {dict(soak.websockets)}")
    logins = Counter(what for _, what in chaos.background)
    figures["login_cycles"] = dict(logins)
    if set(logins) - {"ok"}:
        problems.append(f"login/sign-out cycles that failed: {dict(logins)}")
    figures["websocket_cookie_reissues"] = soak.websocket_cookie_reissues
    figures["reloads"] = soak.reloads
    figures["cookie_reissues"] = soak.cookie_changes
    if len(soak.samples) >= 6:
        for index in range(soak.rig.instances):
            for what in ("rss_kib", "fds"):
                g = growth([row[f"gw{index}"][what] for row in soak.samples])
                figures[f"gw{index}_{what}_growth"] = round(g, 4)
                series = [row[f"gw{index}"][what] for row in soak.samples]
                noise = what == "fds" and g * series[len(series) // 3] < FDS_IN_FLIGHT
                if g >= GROWTH_LIMIT and not noise:
                    problems.append(f"gateway {index} {what} grew {g:.1%} after the warm-up")
    else:
        problems.append("too few samples to judge growth (run longer or sample more often)")
    worst = max(
        row["redis_keys"] - row["redis_revocations"] - KEYS_PER_SESSION * row["live_redis_sessions"]
        for row in soak.samples
    )
    figures["redis_revocations_max"] = max(row["redis_revocations"] for row in soak.samples)
    figures["redis_keys_max"] = max(row["redis_keys"] for row in soak.samples)
    if worst > KEYS_SLACK:
        problems.append(f"Redis keys beyond the live sessions' by {worst}")
    return problems, figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument(
        "--sample",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between samples (default 10)",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--json", metavar="PATH", help="also write samples and figures as JSON")
    parser.add_argument("--keep-tmp", action="store_true")
    args = parser.parse_args(argv)
    report, code = soak(args.minutes * 60, args.sample, args.rate, args.keep_tmp)
    print(report["text"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return code


def soak(
    seconds: float, sample_every: float, rate: float, keep_tmp: bool = False
) -> tuple[dict[str, Any], int]:
    tmp = Path(tempfile.mkdtemp(prefix="idgateway-soak-"))
    if keep_tmp:
        harness.info(f"logs and configs kept in {tmp}")
    rig = ChaosRig(tmp, sentinel=False, access_token_ttl=60, refresh_leeway="20s")
    chaos = Chaos(rig, Options(rate=rate, connections=16, sessions=4), mix=soak_mix)
    runner = Soak(chaos, sample_every)
    try:
        try:
            rig.start()
            chaos.start()
        except Exception as e:  # noqa: BLE001 (set-up problem)
            return {"text": f"bench/soak: set-up failed: {e}"}, 2
        harness.info(f"soaking for {seconds / 60:.1f} min at {rate:.0f} req/s")
        runner.run(seconds)
    finally:
        chaos.stop()
        rig.stop()
        if not keep_tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    problems, figures = verdict(runner)
    load = os.getloadavg()
    first, last = runner.samples[0], runner.samples[-1]
    lines = [
        f"soak: {seconds / 60:.1f} min, {figures['requests']} requests "
        f"({figures['requests'] / seconds:.0f} req/s), {figures['reloads']} reloads, "
        f"{sum(runner.websockets.values())} WebSockets, "
        f"{sum(figures['login_cycles'].values())} login/sign-out cycles, "
        f"{figures['cookie_reissues']} cookie re-issues seen in the samples (refreshes of "
        f"60 s tokens), {figures['websocket_cookie_reissues']} on a WebSocket's 101"
    ]
    for index in range(rig.instances):
        g = f"gw{index}"
        lines.append(
            f"gateway {index}: RSS {first[g]['rss_kib'] / 1024:.1f} -> "
            f"{last[g]['rss_kib'] / 1024:.1f} MiB (growth after warm-up "
            f"{figures.get(g + '_rss_kib_growth', 0):+.1%}), fds {first[g]['fds']} -> "
            f"{last[g]['fds']} ({figures.get(g + '_fds_growth', 0):+.1%}), sockets "
            f"{last[g]['sockets']}"
        )
    lines.append(
        f"Redis: keys max {figures['redis_keys_max']} "
        f"(live Redis sessions {last['live_redis_sessions']}; "
        f"{figures['redis_revocations_max']} of them remembered cookie sign-outs), used_memory "
        f"{first['redis_used_memory'] / 1024:.0f} -> "
        f"{last['redis_used_memory'] / 1024:.0f} KiB"
    )
    lines.append(f"statuses: {figures['statuses']}")
    for failure in runner.websocket_failures[:3]:
        lines.append(f"WebSocket failure: {failure}")
    lines.append(
        f"machine: {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end"
    )
    lines.append("PASS" if not problems else "FAIL: " + "; ".join(problems))
    return {
        "text": "\n".join(lines),
        "samples": runner.samples,
        "figures": figures,
        "problems": problems,
        "loadavg": load,
        "reload_times": runner.reload_times,
        "websocket_failures": runner.websocket_failures,
    }, (1 if problems else 0)


if __name__ == "__main__":
    sys.exit(main())
