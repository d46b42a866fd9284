"""The fault suite under load; started by ``bench/chaos`` (see bench/README.md).

Two gateway instances (``workers: 2`` each) share one Redis behind Sentinel;
steady authenticated load at a fixed rate (cookie and Redis sessions, an open
route in front of the echo back end), logins and sign-outs in the
background; then one fault after the other. Per fault it prints the requests
that failed (by status), the longest stall, the time to full recovery, the
sessions lost and whether a restart was needed, checks them against issue
16's expectation, and exits 1 when one is not met (2: set-up problem).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
for entry in (str(BENCH_DIR), str(BENCH_DIR.parent)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from chaos_rig import ChaosRig, LoadClient, Sample, Session, Target, http_get  # noqa: E402
from harness import info  # noqa: E402

FAULTS = (
    "worker_kill",
    "reloads",
    "redis_hung",
    "redis_restart_empty",
    "sentinel_failover",
    "provider_down",
    "upstream_down",
    "upstream_slow",
    "upstream_reset",
    "out_of_fds",
)
# Instance 1 runs as under `ulimit -n 512`: its default max_connections is then
# (512 - 128) // 2 = 192 (docs/operations.rst), the out_of_fds fault goes past it.
LOW_NOFILE = 512


@dataclass
class Options:
    rate: float = 500.0
    connections: int = 24
    sessions: int = 8  # per login route
    provider_down: float = 60.0
    fault_time: float = 10.0  # upstream down/slow/reset, Redis hung (capped below Sentinel's 5 s)
    settle: float = 3.0  # clean traffic needed after a fault to call it recovered
    before: float = 2.0  # load before each fault
    recovery_limit: float = 30.0
    reload_interval: float = 0.5
    command_timeout: float = 1.0
    upstream_timeout: float = 2.0
    faults: tuple[str, ...] = FAULTS
    # Access-token lifetime at the provider (s); None: the provider's hour. Shorter
    # than provider_down, every session's refresh falls due while it is down.
    token_ttl: int | None = None
    sentinel: bool = True  # Redis behind Sentinel (--no-sentinel: one Redis)


@dataclass
class Outcome:
    fault: str
    failed: Counter[str] = field(default_factory=Counter)  # "kind status" -> count
    requests: int = 0
    stall: float = 0.0
    recovery: float | None = 0.0  # None: not recovered
    sessions_lost: int = 0
    sessions_checked: int = 0
    restart: bool = False
    facts: dict[str, Any] = field(default_factory=dict)
    unmet: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def failed_of(self, *kinds: str) -> Counter[str]:
        return Counter({k: v for k, v in self.failed.items() if k.split()[0] in kinds})

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "requests": self.requests,
            "failed": dict(self.failed),
            "longest_stall_s": round(self.stall, 3),
            "recovery_s": None if self.recovery is None else round(self.recovery, 3),
            "sessions_lost": self.sessions_lost,
            "sessions_checked": self.sessions_checked,
            "restart_needed": self.restart,
            "facts": self.facts,
            "expectation_unmet": self.unmet,
        }


def label(sample: Sample) -> str:
    return f"{sample.kind} {sample.status or sample.error}"


class Chaos:
    """The rig, its load, its sessions, and one method per fault."""

    def __init__(
        self,
        rig: ChaosRig,
        options: Options,
        mix: Callable[[dict[str, list[Session]]], list[Target]] | None = None,
    ) -> None:
        self.rig = rig
        self.options = options
        self.mix = mix  # more targets for the main load (the soak's mix)
        self.sessions: dict[str, list[Session]] = {}
        self.load: LoadClient | None = None
        self.flaky_load: LoadClient | None = None
        self.flaky = Target("flaky", "flaky.localhost", "/echo")
        self.background: list[tuple[float, str]] = []  # (time, outcome) of login/sign-out cycles
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.allow_logins = threading.Event()
        self.allow_logins.set()
        self._retried = 0

    # ---- set-up

    def start(self) -> None:
        o = self.options
        for route in ("cookie", "redis"):
            self.sessions[route] = [
                self.rig.login(route, n % self.rig.instances) for n in range(o.sessions)
            ]
        targets = [
            Target("cookie", "cookie.localhost", "/", 1, self.sessions["cookie"]),
            Target("redis", "redis.localhost", "/", 1, self.sessions["redis"]),
            *(self.mix(self.sessions) if self.mix else []),
        ]
        self.load = LoadClient(self.rig, targets, o.rate * 0.9, o.connections)
        # The flaky route on connections of its own: a slow upstream there must not
        # hold up the other routes' requests in this client.
        self.flaky_load = LoadClient(self.rig, [self.flaky], o.rate * 0.1, 16)
        self.load.start()
        self.flaky_load.start()
        thread = threading.Thread(target=self._logins, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for load in (self.load, self.flaky_load):
            if load is not None:
                load.stop()
        for thread in self._threads:
            thread.join(30)

    def _logins(self) -> None:
        """Log in, use, sign out, check it is gone: one cycle a second, alternating."""
        n = 0
        while not self._stop.wait(1.0):
            if not self.allow_logins.is_set():
                continue
            route, instance = ("cookie", "redis")[n % 2], (n // 2) % self.rig.instances
            n += 1
            try:
                session = self.rig.login(route, instance)
                ok = self.rig.probe(session, 1 - instance if self.rig.instances > 1 else 0)
                self.rig.sign_out(session, instance)
                # Every process may reuse a session it loaded for up to a second
                # (docs/sessions.rst): the copy of the cookie is dead after that.
                time.sleep(1.2)
                after = self.rig.probe(session, 1 - instance if self.rig.instances > 1 else 0)
                outcome = (
                    "ok" if ok == 200 and after == 401 else f"used {ok}, after sign-out {after}"
                )
            except Exception as e:  # noqa: BLE001 (reported, never stops the run)
                outcome = f"{type(e).__name__}: {str(e)[:80]}"
            self.background.append((time.monotonic(), outcome))

    # ---- one fault

    def run(self, fault: str) -> Outcome:
        o = self.options
        info(f"fault: {fault}")
        self.relogin_lost()
        time.sleep(o.before)
        outcome = Outcome(fault)
        began = time.monotonic()
        getattr(self, f"fault_{fault}")(outcome)
        healed = time.monotonic()
        outcome.facts.setdefault("fault_seconds", round(healed - began, 2))
        lost = self.relogin_lost()
        outcome.sessions_lost = lost
        outcome.sessions_checked = sum(len(v) for v in self.sessions.values())
        ended = self.settle(healed)
        samples = self.samples(began, ended)
        outcome.samples = samples
        outcome.requests = len(samples)
        bad = [s for s in samples if s.status != 200]
        outcome.failed = Counter(label(s) for s in bad)
        outcome.stall = max((s.done - s.due for s in samples), default=0.0)
        # A request that was due before the heal and answers after it is the fault's.
        last_bad = max((s.due for s in bad), default=None)
        if ended - healed >= o.recovery_limit:
            outcome.recovery = None
        else:
            outcome.recovery = max(0.0, last_bad - healed) if last_bad else 0.0
        outcome.restart = self.restart_if_needed()
        logins = [what for t, what in self.background if began <= t <= ended]
        outcome.facts["background_logins"] = dict(
            Counter("ok" if w == "ok" else "failed" for w in logins)
        )
        failures = sorted({w for w in logins if w != "ok"})
        if failures:
            outcome.facts["background_login_failures"] = failures[:3]
        assert self.load is not None and self.flaky_load is not None
        outcome.facts["retried_on_closed_keepalive"] = (
            self.load.retried + self.flaky_load.retried - self._retried
        )
        self._retried = self.load.retried + self.flaky_load.retried
        outcome.unmet = EXPECTATIONS[fault](self, outcome)
        if outcome.recovery is None:
            outcome.unmet.append(f"not recovered within {o.recovery_limit:.0f} s")
        if outcome.restart:
            outcome.unmet.append("a gateway needed a restart")
        return outcome

    def samples(self, start: float, end: float) -> list[Sample]:
        assert self.load is not None and self.flaky_load is not None
        return self.load.between(start, end) + self.flaky_load.between(start, end)

    def settle(self, healed: float) -> float:
        """Wait until ``settle`` seconds of load answered 200 only (or the limit)."""
        o = self.options
        deadline = healed + o.recovery_limit
        while True:
            now = time.monotonic()
            window = self.samples(now - o.settle - 0.5, now - 0.5)
            if now - healed >= o.settle + 0.5 and window and all(s.status == 200 for s in window):
                return now
            if now >= deadline:
                return now
            time.sleep(0.25)

    def relogin_lost(self) -> int:
        """Probe every session of the load; log in again (in place) those that are gone."""
        lost = 0
        for route, sessions in self.sessions.items():
            for n, session in enumerate(sessions):
                status = 0
                # A 503 is a session waiting for something that is back now (a
                # refresh retried REFRESH_RETRY after the provider came back): wait
                # for it rather than call the session lost; a 401 is lost.
                deadline = time.monotonic() + 20
                for attempt in range(100):
                    with contextlib.suppress(OSError):
                        status = self.rig.probe(session, n % self.rig.instances)
                    if status in (200, 401):
                        break
                    if attempt >= 2 and (status != 503 or time.monotonic() > deadline):
                        break
                    time.sleep(0.5)
                if status != 200:
                    lost += 1
                    fresh = self.rig.login(route, n % self.rig.instances)
                    with session.lock:
                        session.cookies = fresh.cookies
        return lost

    def restart_if_needed(self) -> bool:
        needed = False
        for index in range(self.rig.instances):
            healthy = self.rig.gateway_alive(index)
            if healthy:
                try:
                    healthy = (
                        all(
                            self.rig.probe(s, index) == 200
                            for s in (self.sessions["cookie"][0], self.sessions["redis"][0])
                        )
                        and http_get(self.rig.gateway_ports[index], "flaky.localhost", "/echo")[0]
                        == 200
                    )
                except OSError:
                    healthy = False
            if not healthy:
                info(f"  gateway {index} is not healthy: restarting it")
                self.rig.restart_gateway(index)
                needed = True
        return needed

    # ---- the faults

    def fault_worker_kill(self, outcome: Outcome) -> None:
        workers = self.rig.worker_pids(0)
        victim = workers[0]
        os.kill(victim, 9)
        killed = time.monotonic()
        while time.monotonic() < killed + 15:
            now = self.rig.worker_pids(0)
            if victim not in now and len(now) == len(workers):
                outcome.facts["worker_back_after_s"] = round(time.monotonic() - killed, 2)
                break
            time.sleep(0.05)
        outcome.facts["workers_after"] = len(self.rig.worker_pids(0))
        outcome.facts["workers_before"] = len(workers)

    def fault_reloads(self, outcome: Outcome) -> None:
        for n in range(10):
            for index in range(self.rig.instances):
                self.rig.write_config(index, extra_routes=1 + n % 3)
                self.rig.reload(index)
            time.sleep(self.options.reload_interval)
        time.sleep(1.0)
        status = http_get(self.rig.gateway_ports[0], "extra0.localhost", "/")[0]
        outcome.facts["new_route_answers"] = status

    def fault_redis_hung(self, outcome: Outcome) -> None:
        seconds = min(self.options.fault_time, 3.0)  # below Sentinel's down-after (5 s)
        master = self.rig.redis.master
        from tests.redis_process import _encode, _read_reply

        with socket.create_connection(("127.0.0.1", master.port), timeout=seconds + 10) as sock:
            sock.sendall(_encode("DEBUG", "SLEEP", seconds))
            _read_reply(sock.makefile("rb"))
        outcome.facts["hung_s"] = seconds

    def fault_redis_restart_empty(self, outcome: Outcome) -> None:
        master = self.rig.redis.master
        before = self.rig.redis.keys()
        master.restart()
        for server in self.rig.redis.servers:
            if server is not master:
                with contextlib.suppress(Exception):
                    self.rig.redis.wait_replicated(server)
        outcome.facts["keys_before"] = before
        outcome.facts["keys_after_restart"] = self.rig.redis.keys()

    def fault_sentinel_failover(self, outcome: Outcome) -> None:
        redis = self.rig.redis
        if not redis.sentinel:
            outcome.facts["skipped"] = "no Sentinel (--no-sentinel)"
            return
        master = redis.master
        replica = next(s for s in redis.servers if s is not master)
        # What "written before the failover" means: acknowledged by the replica.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            offsets = [
                int(x.split(b":")[1])
                for s in (master, replica)
                for x in s.call("INFO", "replication").split(b"\r\n")
                if x.startswith((b"master_repl_offset:",))
            ]
            if offsets[0] == offsets[1]:
                break
            time.sleep(0.05)
        killed = time.monotonic()
        master.kill()
        while time.monotonic() < killed + 60 and redis.master_port() != replica.port:
            time.sleep(0.1)
        promoted = time.monotonic()
        outcome.facts["failover_s"] = round(promoted - killed, 2)
        # Writes resume: a new login on the Redis route (stores a session).
        session = None
        while time.monotonic() < promoted + 30:
            try:
                session = self.rig.login("redis", 0)
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.2)
        outcome.facts["writes_resumed_after_kill_s"] = (
            round(time.monotonic() - killed, 2) if session else None
        )
        master.start()  # the old primary comes back; Sentinel makes it a replica
        outcome.facts["old_primary_role"] = "restarted"

    def fault_provider_down(self, outcome: Outcome) -> None:
        from tests.login_env import Client

        provider = self.rig.provider
        # A login half done before the provider goes: its callback arrives while it is down.
        client = Client(self.rig.gateway_ports[0], "cookie.localhost")
        _, headers, _ = client.get("/")
        callback = provider.scripted_login(headers["Location"], "alice", "alice123")
        self.allow_logins.clear()
        provider.process.send_signal(19)  # SIGSTOP: frozen, as a provider that does not answer
        try:
            answers: list[tuple[int, bytes, float]] = []

            def finish_login() -> None:
                path = callback.split("cookie.localhost", 1)[1].split("/", 1)[1]
                t = time.monotonic()
                with contextlib.suppress(OSError):
                    status, _, body = client.get("/" + path, {"Accept": "text/html"})
                    answers.append((status, body, time.monotonic() - t))

            thread = threading.Thread(target=finish_login, daemon=True)
            thread.start()
            time.sleep(self.options.provider_down)
            thread.join(0)
            if answers:
                status, body, took = answers[0]
                outcome.facts["callback_while_down"] = {
                    "status": status,
                    "seconds": round(took, 2),
                    "clear_page": b"<html" in body.lower() and b"reference" in body.lower(),
                }
            else:
                outcome.facts["callback_while_down"] = "no answer while down"
        finally:
            provider.process.send_signal(18)  # SIGCONT
            self.allow_logins.set()
        # Logins work again.
        t = time.monotonic()
        ok = False
        while time.monotonic() < t + 30 and not ok:
            try:
                self.rig.login("cookie", 1 % self.rig.instances)
                ok = True
            except Exception:  # noqa: BLE001
                time.sleep(0.5)
        outcome.facts["login_after_s"] = round(time.monotonic() - t, 2) if ok else None

    def fault_upstream_down(self, outcome: Outcome) -> None:
        self.rig.backend.stop()
        time.sleep(min(self.options.fault_time, 10))
        self._restart_backend()

    def fault_upstream_slow(self, outcome: Outcome) -> None:
        # Every answer of the upstream takes 5 s (the route's response_timeout is shorter).
        self.flaky.path = "/slow-headers?delay=5"
        time.sleep(min(self.options.fault_time, 10))
        self.flaky.path = "/echo"

    def fault_upstream_reset(self, outcome: Outcome) -> None:
        self.rig.backend.stop()
        stop = threading.Event()
        resets = [0]
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.rig.backend_port))
        listener.listen(128)
        listener.settimeout(0.2)

        def reset_all() -> None:
            # Reads the request, then resets the connection (SO_LINGER 0: RST).
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                with contextlib.suppress(OSError):
                    conn.settimeout(1)
                    conn.recv(65536)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                conn.close()
                resets[0] += 1

        thread = threading.Thread(target=reset_all, daemon=True)
        thread.start()
        time.sleep(min(self.options.fault_time, 10))
        stop.set()
        thread.join(5)
        listener.close()
        outcome.facts["connections_reset"] = resets[0]
        self._restart_backend()

    def _restart_backend(self) -> None:
        from tests.backends import BackendProcess

        deadline = time.monotonic() + 10
        while True:
            try:
                self.rig.backend = BackendProcess(
                    listen=[f"127.0.0.1:{self.rig.backend_port}"]
                ).start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def fault_out_of_fds(self, outcome: Outcome) -> None:
        index = self.rig.instances - 1
        port = self.rig.gateway_ports[index]
        fds_before = self.rig.tree_fds(index)[0]
        held: list[socket.socket] = []
        for _ in range(600):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(1.0)
        closed = 0
        for sock in held:
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        # A new client while the gateway is full: refused cleanly (closed), not hung.
        t = time.monotonic()
        try:
            status: int | str = http_get(port, "flaky.localhost", "/echo")[0]
        except OSError as e:
            status = type(e).__name__
        outcome.facts.update(
            opened=len(held),
            closed_by_gateway=closed,
            new_client_while_full=status,
            new_client_answer_s=round(time.monotonic() - t, 2),
            gateway_fds_full=self.rig.tree_fds(index)[0],
            gateway_fds_before=fds_before,
        )
        time.sleep(min(self.options.fault_time, 3))
        for sock in held:
            sock.close()
        t = time.monotonic()
        while time.monotonic() < t + 20:
            with contextlib.suppress(OSError):
                if http_get(port, "flaky.localhost", "/echo")[0] == 200:
                    break
            time.sleep(0.1)
        outcome.facts["new_clients_served_again_s"] = round(time.monotonic() - t, 2)
        log = self.rig.gateways[index].log.read_text(errors="replace")
        outcome.facts["emfile_in_log"] = "Too many open files" in log


# --------------------------------------------------------------------------- expectations


def _only(outcome: Outcome, kinds: tuple[str, ...], allowed: set[str]) -> list[str]:
    """Failures of ``kinds`` may only be ``allowed`` statuses; other kinds none."""
    unmet = []
    for name, count in outcome.failed.items():
        kind, status = name.split()
        if kind not in kinds:
            unmet.append(f"{count} failed on the {kind} route ({status}), expected none")
        elif status not in allowed:
            unmet.append(f"{count} {status} on the {kind} route, expected only {sorted(allowed)}")
    return unmet


def expect_worker_kill(chaos: Chaos, o: Outcome) -> list[str]:
    unmet = []
    connections = chaos.options.connections // chaos.rig.instances + 16 // chaos.rig.instances
    failed = sum(o.failed.values())
    if any(name.split()[1].isdigit() for name in o.failed):
        unmet.append(f"HTTP errors after the kill: {dict(o.failed)}")
    if failed > connections:
        unmet.append(f"{failed} failed, more than the {connections} connections in flight")
    if o.sessions_lost:
        unmet.append(f"{o.sessions_lost} sessions lost")
    if o.facts.get("workers_after") != o.facts.get("workers_before"):
        unmet.append("the master did not restart the worker")
    return unmet


def expect_no_failures(chaos: Chaos, o: Outcome) -> list[str]:
    unmet = [f"{sum(o.failed.values())} failed: {dict(o.failed)}"] if o.failed else []
    if o.sessions_lost:
        unmet.append(f"{o.sessions_lost} sessions lost")
    return unmet


def expect_reloads(chaos: Chaos, o: Outcome) -> list[str]:
    unmet = expect_no_failures(chaos, o)
    if o.facts.get("new_route_answers") != 200:
        unmet.append(f"the reloaded route answered {o.facts.get('new_route_answers')}")
    return unmet


def expect_redis_hung(chaos: Chaos, o: Outcome) -> list[str]:
    unmet = _only(o, ("redis",), {"503"})
    if not o.failed_of("redis"):
        unmet.append("no 503 while Redis hung: the fault did not bite")
    limit = chaos.options.command_timeout + 1.0
    slow = [s for s in o.samples if s.status == 503 and s.done - s.sent > limit]
    if slow:
        unmet.append(f"{len(slow)} 503s took longer than command_timeout + 1 s")
    if o.sessions_lost:
        unmet.append(f"{o.sessions_lost} sessions lost")
    return unmet


def expect_redis_restart_empty(chaos: Chaos, o: Outcome) -> list[str]:
    # The Redis sessions are gone with the data (they log in again); 401, not a
    # redirect, for the JSON client; nothing else is touched.
    unmet = _only(o, ("redis",), {"503", "401"})
    if o.sessions_lost > len(chaos.sessions["redis"]):
        unmet.append(f"{o.sessions_lost} sessions lost: cookie sessions too")
    return unmet


def expect_sentinel_failover(chaos: Chaos, o: Outcome) -> list[str]:
    if "skipped" in o.facts:
        return []
    unmet = _only(o, ("redis",), {"503"})
    if o.sessions_lost:
        unmet.append(f"{o.sessions_lost} replicated sessions lost")
    resumed = o.facts.get("writes_resumed_after_kill_s")
    failover = o.facts.get("failover_s") or 0
    if resumed is None or resumed > failover + 5:
        unmet.append(f"writes resumed {resumed} s after the kill (failover took {failover} s)")
    return unmet


def expect_provider_down(chaos: Chaos, o: Outcome) -> list[str]:
    ttl = chaos.options.token_ttl
    if ttl is not None and ttl < chaos.options.provider_down:
        # Refreshes fall due while it is down: once a session's access token has
        # expired its requests get 503 (the provider cannot renew the sign-in),
        # never a login (401); nobody is signed out, and refresh resumes after.
        unmet = _only(o, ("cookie", "redis", "cookie_100k", "upload"), {"503"})
        if o.sessions_lost:
            unmet.append(f"{o.sessions_lost} sessions lost: a refresh failure signed them out")
        if o.recovery is None or o.recovery > chaos.options.recovery_limit:
            unmet.append(f"refreshes did not resume (recovery {o.recovery})")
    else:
        unmet = expect_no_failures(chaos, o)
    answer = o.facts.get("callback_while_down")
    if isinstance(answer, dict) and not (answer["status"] >= 500 and answer["clear_page"]):
        unmet.append(f"the callback while down answered {answer}, not the error page")
    if o.facts.get("login_after_s") is None:
        unmet.append("no login after the provider came back")
    return unmet


def expect_upstream(status: str) -> Callable[[Chaos, Outcome], list[str]]:
    def check(chaos: Chaos, o: Outcome) -> list[str]:
        unmet = _only(o, ("flaky",), {status})
        if not o.failed_of("flaky"):
            unmet.append(f"no {status} on the flaky route: the fault did not bite")
        return unmet

    return check


def expect_out_of_fds(chaos: Chaos, o: Outcome) -> list[str]:
    unmet = expect_no_failures(chaos, o)
    if not o.facts.get("closed_by_gateway"):
        unmet.append("no connection past the limit was closed by the gateway")
    if o.facts.get("new_clients_served_again_s", 99) > 5:
        unmet.append("new clients not served again within 5 s of the load dropping")
    return unmet


EXPECTATIONS: dict[str, Callable[[Chaos, Outcome], list[str]]] = {
    "worker_kill": expect_worker_kill,
    "reloads": expect_reloads,
    "redis_hung": expect_redis_hung,
    "redis_restart_empty": expect_redis_restart_empty,
    "sentinel_failover": expect_sentinel_failover,
    "provider_down": expect_provider_down,
    "upstream_down": expect_upstream("502"),
    "upstream_slow": expect_upstream("504"),
    "upstream_reset": expect_upstream("502"),
    "out_of_fds": expect_out_of_fds,
}

EXPECTATION_TEXT = {
    "worker_kill": "failures only on the killed worker's connections, zero sessions lost",
    "reloads": "zero failed requests across ten reloads",
    "redis_hung": "503 within command_timeout on Redis routes only, recovery without restart",
    "redis_restart_empty": "Redis sessions log in again (401, no redirect), others unaffected",
    "sentinel_failover": "writes resume after the failover, replicated sessions survive",
    "provider_down": "authenticated traffic unaffected, clear page for logins, logins resume",
    "upstream_down": "502 on that route only, pool recovers",
    "upstream_slow": "504 on that route only, pool recovers",
    "upstream_reset": "502 on that route only, pool recovers",
    "out_of_fds": "past the limit new connections closed, served ones unaffected, recovery",
}


def render(outcomes: list[Outcome], options: Options, achieved: float) -> str:
    lines = [
        f"load: {achieved:.0f} req/s achieved of {options.rate:.0f} asked, "
        f"{options.connections}+16 keep-alive connections, 2 instances x workers: 2, "
        f"{'Redis behind Sentinel' if options.sentinel else 'one Redis'}; "
        f"provider down {options.provider_down:.0f} s"
        + (f", access tokens live {options.token_ttl} s" if options.token_ttl else ""),
        "",
        f"{'fault':<20} {'requests':>8} {'failed (by route and status)':<34} {'stall':>7} "
        f"{'recovery':>8} {'lost':>6} restart  expectation",
    ]
    for o in outcomes:
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(o.failed.items())) or "0"
        recovery = "never" if o.recovery is None else f"{o.recovery:.1f} s"
        lines.append(
            f"{o.fault:<20} {o.requests:>8} {failed:<34} {o.stall:>6.2f}s {recovery:>8} "
            f"{o.sessions_lost:>2}/{o.sessions_checked:<3} {'yes' if o.restart else 'no':<8} "
            f"{'met' if not o.unmet else 'NOT met'}"
        )
    lines.append("")
    for o in outcomes:
        lines.append(f"{o.fault}: expected {EXPECTATION_TEXT[o.fault]}")
        facts = {k: v for k, v in o.facts.items()}
        lines.append(f"    {json.dumps(facts)}")
        for problem in o.unmet:
            lines.append(f"    NOT met: {problem}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/chaos", description=__doc__)
    parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="requests per second over both instances (default 500)",
    )
    parser.add_argument("--connections", type=int, default=24)
    parser.add_argument(
        "--provider-down",
        type=float,
        default=60.0,
        metavar="S",
        help="how long the provider is down (default 60)",
    )
    parser.add_argument(
        "--fault-time",
        type=float,
        default=10.0,
        metavar="S",
        help="how long the upstream faults last (default 10)",
    )
    parser.add_argument(
        "--token-ttl",
        type=int,
        metavar="S",
        help="the provider's access-token lifetime (default: an hour); shorter than "
        "--provider-down, every session's refresh falls due while the provider is down",
    )
    parser.add_argument("--only", default="", help="comma-separated faults: " + ",".join(FAULTS))
    parser.add_argument("--no-sentinel", action="store_true", help="one Redis, no failover fault")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--keep-tmp", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faults = tuple(f for f in args.only.split(",") if f) or FAULTS
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        print(
            f"bench/chaos: unknown fault {unknown}; choose from {','.join(FAULTS)}", file=sys.stderr
        )
        return 2
    options = Options(
        rate=args.rate,
        connections=args.connections,
        provider_down=args.provider_down,
        fault_time=args.fault_time,
        faults=faults,
        token_ttl=args.token_ttl,
        sentinel=not args.no_sentinel,
    )
    tmp = Path(tempfile.mkdtemp(prefix="idgateway-chaos-"))
    rig = ChaosRig(
        tmp,
        sentinel=options.sentinel,
        nofile={1: LOW_NOFILE},
        command_timeout=options.command_timeout,
        upstream_timeout=options.upstream_timeout,
        access_token_ttl=options.token_ttl,
    )
    chaos = Chaos(rig, options)
    outcomes: list[Outcome] = []
    try:
        try:
            rig.start()
            chaos.start()
        except Exception as e:  # noqa: BLE001 (a set-up problem: say it, exit 2)
            print(f"bench/chaos: set-up failed: {e}", file=sys.stderr)
            return 2
        started = time.monotonic()
        for fault in faults:
            outcomes.append(chaos.run(fault))
        assert chaos.load is not None and chaos.flaky_load is not None
        achieved = (len(chaos.load.samples) + len(chaos.flaky_load.samples)) / (
            time.monotonic() - started + options.before
        )
    except KeyboardInterrupt:
        return 130
    finally:
        chaos.stop()
        rig.stop()
        if not args.keep_tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print(render(outcomes, options, achieved))
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at the end"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "outcomes": [o.as_dict() for o in outcomes],
                    "achieved_rps": achieved,
                    "loadavg": load,
                },
                indent=2,
            )
        )
    return 1 if any(o.unmet for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
