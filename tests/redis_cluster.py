"""A real Redis Cluster on loopback for tests: six ``redis-server --cluster-enabled yes``.

    with RedisCluster(tmp_path, password="s3cret") as cluster:
        cluster.seeds               # [redis://:s3cret@127.0.0.1:<port>/0, ...] (three)
        cluster.primary_for(key)    # the ClusterNode serving key's slot now
        cluster.call(key, "GET", key)
        cluster.kill(node)          # SIGKILL
        cluster.wait_for_failover(node)   # until a replica took over its slots

Three primaries and three replicas (``redis-cli --cluster create ...
--cluster-replicas 1``), ``cluster-node-timeout`` 1000 ms so a failover takes
a second or two, nothing on disk. Each node's cluster bus listens on its port
+ 10000, so ports are picked with both free.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from idgateway.redis.slots import key_slot
from tests.redis_process import RedisProcess, _encode, _read_reply, free_port

REDIS_CLI = shutil.which("redis-cli")
NODE_TIMEOUT_MS = 1000


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int] | None = None) -> int:
    """A free port whose cluster bus port (+10000) is free too, neither in ``taken``
    (which gets both: the nodes of one cluster pick theirs before any listens)."""
    taken = set() if taken is None else taken
    for _ in range(100):
        port = free_port()
        pair = {port, port + 10000}
        if port + 10000 < 65536 and not pair & taken and _bindable(port + 10000):
            taken.update(pair)
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class ClusterNode(RedisProcess):
    """One node of the cluster; restarting it is not supported (its data dir is its identity).

    With ``tls`` (cert, key, CA paths) the node, the cluster bus and replication
    speak TLS only; ``call`` then speaks TLS too.
    """

    def __init__(
        self,
        workdir: Path,
        password: str | None,
        tls: tuple[Path, Path, Path] | None = None,
        taken: set[int] | None = None,
    ) -> None:
        super().__init__(workdir / "node", password, port=cluster_port(taken), tls=tls)
        self.workdir = workdir / f"node-{self.port}"
        self.log_path = self.workdir / f"{self.name}.log"

    def _arguments(self) -> list[str]:
        arguments = super()._arguments() + [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.workdir / "nodes.conf"),
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
        ]
        if self.password is not None:
            arguments += ["--masterauth", self.password]
        if self.tls is not None:
            arguments += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        return arguments

    def call(self, *args: str | bytes | int, db: int = 0) -> Any:
        """One command over a fresh connection (TLS when the node has it)."""
        if self.tls is None:
            return super().call(*args, db=db)
        context = ssl.create_default_context(cafile=str(self.tls[2]))
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            reader = sock.makefile("rb")
            if self.password is not None:
                sock.sendall(_encode("AUTH", self.password))
                _read_reply(reader)
            sock.sendall(_encode(*args))
            return _read_reply(reader)

    def role(self) -> str:
        return str(self.call("ROLE")[0].decode())


class RedisCluster:
    """Six nodes, three primaries with one replica each, on 127.0.0.1."""

    def __init__(
        self,
        workdir: Path,
        password: str | None = "s3cret",
        nodes: int = 6,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.workdir = workdir
        self.password = password
        self.tls = tls
        taken: set[int] = set()
        self.nodes = [ClusterNode(workdir, password, tls, taken) for _ in range(nodes)]

    @property
    def seeds(self) -> list[str]:
        """URLs of three nodes, as a config's ``cluster:`` lists them."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return [f"{scheme}://{auth}127.0.0.1:{node.port}" for node in self.nodes[:3]]

    def start(self, timeout: float = 30.0) -> None:
        if REDIS_CLI is None:
            pytest.skip("redis-cli is not installed (apt-get install redis-server)")
        try:
            for node in self.nodes:
                node.start()
            command = [REDIS_CLI, "--cluster", "create"]
            command += [f"127.0.0.1:{node.port}" for node in self.nodes]
            command += ["--cluster-replicas", "1", "--cluster-yes"]
            if self.password is not None:
                command += ["-a", self.password, "--no-auth-warning"]
            if self.tls is not None:
                command += ["--tls", "--cacert", str(self.tls[2])]
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}"
                )
            self.wait_until_ok(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says cluster_state:ok and knows all slots."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ok(node) for node in self.nodes if node.running):
                return
            time.sleep(0.05)
        raise TimeoutError("the cluster did not become ok:\n" + self.nodes[0].log_tail())

    @staticmethod
    def _ok(node: ClusterNode) -> bool:
        try:
            info = node.call("CLUSTER", "INFO").decode()
        except (OSError, RuntimeError):
            return False
        return "cluster_state:ok" in info and "cluster_slots_ok:16384" in info

    def stop(self) -> None:
        # SIGKILL: there is nothing to save, and a primary told to stop waits
        # (shutdown-timeout, 10 s) for replicas that may be gone already.
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _node_at(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def slot_owner(self, slot: int) -> ClusterNode:
        """The node serving ``slot``, asked of a running node."""
        asked = next(node for node in self.nodes if node.running)
        for entry in asked.call("CLUSTER", "SLOTS"):
            if int(entry[0]) <= slot <= int(entry[1]):
                return self._node_at(int(entry[2][1]))
        raise LookupError(f"no node serves slot {slot}")

    def primary_for(self, key: str | bytes) -> ClusterNode:
        return self.slot_owner(key_slot(key))

    def primaries(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running and node.role() == "master"]

    def call(self, key: str | bytes, *args: Any) -> Any:
        """A command on the primary of ``key``'s slot (test inspection)."""
        return self.primary_for(key).call(*args)

    def keys(self, pattern: str = "*") -> list[bytes]:
        """Every key on every primary."""
        found: list[bytes] = []
        for node in self.primaries():
            found.extend(node.call("KEYS", pattern))
        return found

    def replicate(self) -> None:
        """Wait until every primary's writes reached its replica (``WAIT 1``)."""
        for node in self.primaries():
            node.call("WAIT", 1, 5000)

    def kill(self, node: ClusterNode) -> None:
        node.kill()

    def wait_for_failover(self, killed: ClusterNode, timeout: float = 15.0) -> None:
        """Until a replica has taken over every slot ``killed`` served (three primaries again)."""
        assert not killed.running, "kill the node first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if len(self.primaries()) >= 3:
                    self.wait_until_ok(max(0.1, deadline - time.monotonic()))
                    return
            except (OSError, RuntimeError):
                pass
            time.sleep(0.05)
        raise TimeoutError("no replica took over:\n" + "\n".join(n.log_tail(5) for n in self.nodes))


requires_redis_cluster = pytest.mark.skipif(
    REDIS_CLI is None or shutil.which("redis-server") is None,
    reason="redis-server and redis-cli are not installed (apt-get install redis-server)",
)

__all__ = ["ClusterNode", "RedisCluster", "cluster_port", "requires_redis_cluster"]
