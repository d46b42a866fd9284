"""Redis sessions on a Redis Cluster: two gateways, a scripted login, a back-channel logout.

Two twistd processes with ``store: redis`` and ``cluster:`` seeds share a real
six-node cluster (tests/redis_cluster.py): log in through one, use the session
through the other, then the provider POSTs a logout token to the second one
and both refuse the cookie.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import BackendProcess
from tests.e2e.test_redis_sessions import echo, gateway_yaml
from tests.http_helpers import header_values
from tests.login_env import Client, session_key, two_gateways_config
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary
from tests.redis_cluster import RedisCluster, requires_redis_cluster
from tests.redis_process import short_tempdir

pytestmark = [
    pytest.mark.skipif(node_binary() is None, reason="node is not installed"),
    requires_redis_cluster,
]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("cluster-sessions")
    # The cluster first: its twelve ports (nodes and buses) are taken before the
    # gateways' are chosen, so they cannot pick one of them.
    with RedisCluster(short_tempdir("rce")) as cluster:
        yield from _gateways(tmp, cluster)


def _gateways(tmp: Path, cluster: RedisCluster) -> Iterator[Any]:
    port_a, port_b = free_port(), free_port()
    config = two_gateways_config(port_a, port_b)
    key = session_key()
    with (
        ProviderProcess(tmp / "op", config) as op,
        BackendProcess(name="echo") as backend,
    ):
        seeds = ", ".join(cluster.seeds)
        started = []
        for name, port in (("a", port_a), ("b", port_b)):
            text = gateway_yaml(port, op, backend.port, "SEEDS", key)
            text = text.replace("      url: SEEDS", f"      cluster: [{seeds}]")
            assert "cluster: [redis://" in text
            path = tmp / f"gateway-{name}.yaml"
            path.write_text(text)
            started.append(GatewayProcess(path, tmp / f"gateway-{name}.log").start([port]))
        try:
            for port, gateway in zip((port_a, port_b), started, strict=True):
                deadline = time.monotonic() + 20
                while True:
                    try:
                        if Client(port, "app1.localhost").get("/")[0] == 302:
                            break
                    except OSError as error:
                        raise AssertionError(f"{error}:\n{gateway.log()[-4000:]}") from None
                    assert time.monotonic() < deadline, gateway.log()[-4000:]
                    time.sleep(0.2)
            yield op, cluster, started, (port_a, port_b)
        finally:
            for gateway in started:
                gateway.stop()


def test_login_on_one_gateway_works_on_the_other_and_logout_ends_both(gateways: Any) -> None:
    op, cluster, processes, (port_a, port_b) = gateways
    a = Client(port_a, "app1.localhost")
    status, _ = a.login(op, "/echo", "alice", "alice123")
    assert status == 200
    b = Client(port_b, "app1.localhost")
    b.cookies = dict(a.cookies)
    status, body = echo(b)
    assert status == 200
    assert header_values(body, "x-forwarded-user") == ["alice"]
    # The session lives in the cluster under a hash-tagged key, ciphertext only.
    keys = cluster.keys("idgw:app1:s:*")
    assert len(keys) == 1 and keys[0].startswith(b"idgw:app1:s:{") and keys[0].endswith(b"}")
    stored = cluster.call(keys[0], "GET", keys[0])
    assert b"alice" not in stored
    cookie_value = next(v for n, v in a.cookies.items() if "_idgw_app1" in n)
    assert cookie_value.encode() not in stored and cookie_value.encode() not in keys[0]

    # The provider ends alice's session and POSTs a logout token to gateway B;
    # its sid index and the session may sit on different primaries.
    op.admin_logout("carbon.super", "alice")
    deadline = time.monotonic() + 5
    while echo(a)[0] == 200:
        assert time.monotonic() < deadline, processes[1].log()[-3000:]
        time.sleep(0.1)
    assert echo(a)[0] == 401 and echo(b)[0] == 401
    assert "back-channel logout" in processes[1].log()
    assert cluster.keys("idgw:app1:s:*") == []
    assert "Redis Cluster via redis://127.0.0.1:" in processes[0].log()
