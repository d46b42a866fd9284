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

    .venv/bin/python bench/redis_cluster.py [--sessions 20000] [--seconds 5] [--json PATH]

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
        total += int(next(line for line in info.splitlines() if line.startswith("used_memory:"))
                     .split(":")[1])
    return total


def measure(settings: RedisSettings, primaries: Any, sessions: int, seconds: float,
            concurrency: int) -> dict[str, float]:
    async def main(reactor: Any) -> dict[str, float]:
        client = redis_client_for(reactor, settings)
        store = RedisSessionStore(
            client, route="app1", keyring=KeyRing([os.urandom(32)]),
            inactivity_timeout=3600, max_duration=86400, clock=reactor,
        )
        try:
            before = used_memory(primaries())
            ids = [RedisSessionStore.new_session_id() for _ in range(sessions)]
            for start in range(0, sessions, 200):
                await defer.gatherResults([
                    defer.ensureDeferred(store.save(
                        session_id,
                        make_session(sub=f"user-{n}", provider_sid=f"sid-{n}",
                                     created_at=reactor.seconds(),
                                     last_seen=reactor.seconds(), **TYPICAL),
                    ))
                    for n, session_id in enumerate(ids[start:start + 200], start)
                ])
            grown = used_memory(primaries()) - before
            loads = 0
            deadline = time.monotonic() + seconds

            async def reader() -> None:
                nonlocal loads
                while time.monotonic() < deadline:
                    assert await store.load(random.choice(ids)) is not None
                    loads += 1

            started = time.monotonic()
            await defer.gatherResults(
                [defer.ensureDeferred(reader()) for _ in range(concurrency)]
            )
            took = time.monotonic() - started
            return {
                "bytes_per_session": grown / sessions,
                "sessions_per_gb": sessions * 1e9 / grown if grown > 0 else float("inf"),
                "loads_per_second": loads / took,
            }
        finally:
            await client.close()

    return run_in_reactor(main, timeout=seconds + 120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    work = short_tempdir("rbench")
    with RedisProcess(work / "single") as single:
        settings = RedisSettings(url=single.url, pool_size=10)
        results["one Redis"] = measure(settings, lambda: [single], options.sessions,
                                       options.seconds, options.concurrency)
    with RedisCluster(work / "cluster", password=None) as cluster:
        settings = RedisSettings(cluster=tuple(cluster.seeds), pool_size=10)
        results["Redis Cluster (3 primaries)"] = measure(
            settings, cluster.primaries, options.sessions, options.seconds, options.concurrency
        )
    print(f"{'':30} {'bytes/session':>14} {'sessions/GB':>12} {'loads/s, 1 process':>19}")
    for name, row in results.items():
        print(f"{name:30} {row['bytes_per_session']:14.0f} {row['sessions_per_gb']:12,.0f} "
              f"{row['loads_per_second']:19,.0f}")
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
