"""One Redis against a Redis Cluster: sessions per GB, and session reads per second.

Starts a redis-server and a six-node cluster (three primaries, three replicas)
on free loopback ports (tests/redis_process.py, tests/redis_cluster.py), then
for each:

* writes ``--sessions`` sessions through ``RedisSessionStore`` (a typical
  WSO2 session: opaque access and refresh tokens, a dozen claims, each
  filed under its ``sid`` and ``sub`` for back-channel logout) and reports
  the Redis memory they take (``used_memory`` after minus before, summed
  over the primaries; replicas hold a second copy) as bytes per session and
  sessions per GB;
* reads random sessions back with ``--concurrency`` calls in flight from one
  process for ``--seconds``, and reports loads per second (what one gateway
  process can ask of its session store: the hot path is one GET).

* with ``--gateway``: also runs one gateway process (``workers: 1``) per
  store in front of an echo back end, logs in once through the WSO2-shaped
  provider, and measures authenticated requests per second with ``wrk``
  (``-t2 -c32``, ``--seconds`` each). Each process reuses a session it
  loaded for a second, so this is mostly the gateway's own cost.

    .venv/bin/python bench/redis_cluster.py [--sessions 20000] [--seconds 5] [--gateway]
                                            [--json PATH]

A measurement, not a test: nothing fails when numbers are low.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer  # noqa: E402

from idgateway.config.model import RedisSettings  # noqa: E402
from idgateway.redis.cluster import redis_client_for  # noqa: E402
from idgateway.sessions.keys import KeyRing  # noqa: E402
from idgateway.sessions.redis_store import RedisSessionStore  # noqa: E402
from tests.redis_cluster import RedisCluster  # noqa: E402
from tests.redis_process import RedisProcess, run_in_reactor, short_tempdir  # noqa: E402
from tests.session_factories import make_session  # noqa: E402

# WSO2's opaque tokens are UUIDs; a dozen claims of the usual lengths.
TYPICAL: dict[str, Any] = {
    "access_token": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "refresh_token": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "claims": {
        "email": "alice.wonderland@example.com",
        "groups": ["Internal/everyone", "admins", "app1-users"],
        "given_name": "Alice",
        "family_name": "Wonderland",
        "preferred_username": "alice.wonderland",
        "org_name": "example.com",
        "locale": "en-GB",
        "phone_number": "+44 20 7946 0958",
        "country": "United Kingdom",
        "department": "Engineering",
        "employee_id": "E-004217",
        "updated_at": 1765100000,
    },
}


def used_memory(nodes: list[Any]) -> int:
    total = 0
    for node in nodes:
        info = node.call("INFO", "memory").decode()
        total += int(
            next(line for line in info.splitlines() if line.startswith("used_memory:")).split(":")[
                1
            ]
        )
    return total


def measure(
    settings: RedisSettings, primaries: Any, sessions: int, seconds: float, concurrency: int
) -> dict[str, float]:
    async def main(reactor: Any) -> dict[str, float]:
        client = redis_client_for(reactor, settings)
        store = RedisSessionStore(
            client,
            route="app1",
            keyring=KeyRing([os.urandom(32)]),
            inactivity_timeout=3600,
            max_duration=86400,
            clock=reactor,
        )
        try:
            before = used_memory(primaries())
            ids = [RedisSessionStore.new_session_id() for _ in range(sessions)]
            for start in range(0, sessions, 200):
                await defer.gatherResults(
                    [
                        defer.ensureDeferred(
                            store.save(
                                session_id,
                                make_session(
                                    sub=f"user-{n}",
                                    provider_sid=f"sid-{n}",
                                    created_at=reactor.seconds(),
                                    last_seen=reactor.seconds(),
                                    **TYPICAL,
                                ),
                            )
                        )
                        for n, session_id in enumerate(ids[start : start + 200], start)
                    ]
                )
            grown = used_memory(primaries()) - before
            loads = 0
            deadline = time.monotonic() + seconds

            async def reader() -> None:
                nonlocal loads
                while time.monotonic() < deadline:
                    assert await store.load(random.choice(ids)) is not None
                    loads += 1

            started = time.monotonic()
            await defer.gatherResults([defer.ensureDeferred(reader()) for _ in range(concurrency)])
            took = time.monotonic() - started
            return {
                "bytes_per_session": grown / sessions,
                "sessions_per_gb": sessions * 1e9 / grown if grown > 0 else float("inf"),
                "loads_per_second": loads / took,
            }
        finally:
            await client.close()

    return run_in_reactor(main, timeout=seconds + 120)


def gateway_rates(work: Path, seconds: float, single_url: str, seeds: list[str]) -> dict[str, Any]:
    """Authenticated req/s of one gateway process with each store, by wrk."""
    import re
    import shutil
    import subprocess

    from tests.backends import BackendProcess
    from tests.e2e.test_redis_sessions import gateway_yaml
    from tests.login_env import Client, session_key
    from tests.processes import GatewayProcess, free_port
    from tests.provider_process import ProviderProcess

    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("--gateway needs wrk (apt-get install wrk)")
    ports = {"one Redis": free_port(), "Redis Cluster (3 primaries)": free_port()}
    config = {
        "tenants": {
            "carbon.super": {
                "clients": [
                    {
                        "client_id": "app1-client",
                        "client_secret": "s3cret",
                        "redirect_uris": [
                            f"http://app1.localhost:{port}/oauth2/callback"
                            for port in ports.values()
                        ],
                        "token_endpoint_auth_method": "client_secret_basic",
                    }
                ]
            }
        }
    }
    rates: dict[str, Any] = {}
    key = session_key()
    with ProviderProcess(work / "op", config) as op, BackendProcess(name="echo") as backend:
        for name, port in ports.items():
            text = gateway_yaml(port, op, backend.port, "URL", key)
            if name == "one Redis":
                text = text.replace("      url: URL", f"      url: {single_url}")
            else:
                text = text.replace("      url: URL", f"      cluster: [{', '.join(seeds)}]")
            path = work / f"gateway-{port}.yaml"
            path.write_text(text)
            gateway = GatewayProcess(path, work / f"gateway-{port}.log").start([port])
            try:
                client = Client(port, "app1.localhost")
                deadline = time.monotonic() + 20
                while client.get("/")[0] != 302:
                    assert time.monotonic() < deadline, "no login offered"
                    time.sleep(0.2)
                status, _ = client.login(op, "/", "alice", "alice123")
                assert status == 200, status
                cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
                done = subprocess.run(
                    [
                        wrk,
                        "-t2",
                        "-c32",
                        f"-d{max(1, int(seconds))}s",
                        "-H",
                        f"Host: app1.localhost:{port}",
                        "-H",
                        f"Cookie: {cookie}",
                        "-H",
                        "Accept: application/json",
                        f"http://127.0.0.1:{port}/",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                found = re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)
                bad = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
                rates[name] = {
                    "requests_per_second": float(found.group(1)) if found else 0.0,
                    "non_2xx": int(bad.group(1)) if bad else 0,
                }
            finally:
                gateway.stop()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--gateway", action="store_true", help="also measure req/s with wrk")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    work = short_tempdir("rbench")
    with (
        RedisProcess(work / "single") as single,
        RedisCluster(work / "cluster", password=None) as cluster,
    ):
        settings = RedisSettings(url=single.url, pool_size=10)
        results["one Redis"] = measure(
            settings, lambda: [single], options.sessions, options.seconds, options.concurrency
        )
        settings = RedisSettings(cluster=tuple(cluster.seeds), pool_size=10)
        results["Redis Cluster (3 primaries)"] = measure(
            settings, cluster.primaries, options.sessions, options.seconds, options.concurrency
        )
        if options.gateway:
            rates = gateway_rates(work, options.seconds, single.url, cluster.seeds)
            for name, row in rates.items():
                results[name].update(row)
    print(
        f"{'':30} {'bytes/session':>14} {'sessions/GB':>12} {'loads/s, 1 process':>19}"
        f"{'  gateway req/s' if options.gateway else ''}"
    )
    for name, row in results.items():
        rate = f"{row['requests_per_second']:15,.0f}" if "requests_per_second" in row else ""
        print(
            f"{name:30} {row['bytes_per_session']:14.0f} {row['sessions_per_gb']:12,.0f} "
            f"{row['loads_per_second']:19,.0f}{rate}"
        )
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
