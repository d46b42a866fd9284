"""``workers: 2``: one master, two worker processes on the same sockets.

Which worker serves a connection is read from /proc (the process that holds
the accepted socket), so the responses stay exactly what a single process
sends.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.http_helpers import echo_json, request
from tests.processes import GatewayProcess, free_port

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="reads worker sockets from Linux /proc"
)


def workers_config(port: int, backend_port: int, workers: int = 2) -> str:
    return f"""
workers: {workers}
listeners:
  - address: 127.0.0.1:{port}
routes:
  - name: app
    hosts: [app.localhost]
    upstream: http://127.0.0.1:{backend_port}
"""


# -- /proc ----------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def established_inodes(local_port: int) -> set[str]:
    """Socket inodes of ESTABLISHED TCP connections accepted on 127.0.0.1:local_port."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "01" and int(local.split(":")[1], 16) == local_port:
            inodes.add(inode)
    return inodes


def listening_inodes(local_port: int) -> set[str]:
    """Socket inodes of TCP sockets listening on 127.0.0.1:local_port."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == local_port:
            inodes.add(inode)
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def wait_for(condition: Callable[[], object], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {what or condition}")
        time.sleep(0.05)


def serving_count(gateway: GatewayProcess, index: int) -> int:
    return gateway.log().count(f"[worker {index}] worker {index} serving")


def start_with_workers(
    start_gateway, backend_port: int, log_to_stdout: bool = False
) -> tuple[int, GatewayProcess]:
    port = free_port()
    gateway = start_gateway(workers_config(port, backend_port), [port], log_to_stdout=log_to_stdout)
    wait_for(
        lambda: serving_count(gateway, 0) and serving_count(gateway, 1),
        15,
        "both workers serving\n" + gateway.log(),
    )
    return port, gateway


def access_lines(gateway: GatewayProcess) -> list[str]:
    marker = "[idgateway.access#info] [worker "
    return [line for line in gateway.log().splitlines() if marker in line]


def served_alone(
    gateway: GatewayProcess, port: int, worker: int, workers: list[int]
) -> tuple[int | None, str]:
    """Stop every worker but ``worker`` (SIGSTOP), send one request on a new
    connection, and say which process accepted it (from /proc) and which worker
    number its access line names."""
    others = [pid for pid in workers if pid != worker]
    logged = len(access_lines(gateway))
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/echo?alone", headers={"Host": "app.localhost"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        accepted = established_inodes(port)
        owners = [pid for pid in workers if socket_inodes(pid) & accepted]
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)
        conn.close()
    wait_for(lambda: len(access_lines(gateway)) > logged, 10, "the access line of the request")
    line = access_lines(gateway)[logged]
    assert " GET /echo 200 " in line
    number = line.split("[worker ", 1)[1].split("]", 1)[0]
    return (owners[0] if len(owners) == 1 else None), number


# -- tests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "log_to_stdout",
    [False, True],
    ids=["log-file: access lines through the log observer", "stdout: written by the master"],
)
def test_two_workers_share_the_listener(start_gateway, backend, log_to_stdout):
    port, gateway = start_with_workers(start_gateway, backend.port, log_to_stdout)
    workers = children(gateway.pid)
    assert len(workers) == 2
    for pid in workers:
        assert "idgateway.workers.process" in cmdline(pid)
    # 200 requests from 10 concurrent keep-alive clients; each keeps its
    # connection open until /proc has shown which process accepted it.
    connections: list[http.client.HTTPConnection] = []
    statuses: list[int] = []
    done = threading.Barrier(11, timeout=30)

    def client(delay: float) -> None:
        time.sleep(delay)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connections.append(conn)
        try:
            for i in range(20):
                conn.request("GET", f"/echo?i={i}", headers={"Host": "app.localhost"})
                response = conn.getresponse()
                body = json.loads(response.read())
                statuses.append(response.status if body["query"] == f"i={i}" else 0)
        finally:
            done.wait()

    threads = [threading.Thread(target=client, args=(n * 0.02,)) for n in range(10)]
    for thread in threads:
        thread.start()
    try:
        done.wait()
        accepted = established_inodes(port)
        owners = {pid: len(socket_inodes(pid) & accepted) for pid in workers}
        in_master = socket_inodes(gateway.pid) & accepted
    finally:
        for thread in threads:
            thread.join(10)
        for conn in connections:
            conn.close()
    assert statuses == [200] * 200
    assert sum(owners.values()) == 10
    # Which worker the kernel wakes for each connection is its business (on a
    # loaded 2-core machine one worker may take all ten): what the gateway
    # guarantees is that every worker accepts from the one shared listening
    # socket. Each worker holds it, and with the other worker stopped, each
    # alone accepts and serves a new connection.
    listening = listening_inodes(port)
    assert len(listening) == 1
    assert all(socket_inodes(pid) & listening for pid in workers)
    # The master only binds: it never accepts a connection itself.
    assert not in_master
    # One access line per request, relayed by the master with the worker's
    # number (the query string left out, as in a single process).
    deadline = time.monotonic() + 10
    while True:
        lines = [
            line
            for line in gateway.log().splitlines()
            if "[idgateway.access#info] [worker " in line and " GET /echo 200 " in line
        ]
        if len(lines) >= 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == 200
    assert not any("i=" in line for line in lines)
    assert all(" route=app " in line for line in lines)
    # Each worker alone (the other stopped) accepts a connection and serves it,
    # its access line naming its own worker number: both serve.
    alone = {pid: served_alone(gateway, port, pid, workers) for pid in workers}
    assert all(owner == pid for pid, (owner, _) in alone.items()), alone
    served_by = {number for _, number in alone.values()}
    assert served_by == {"0", "1"}


def test_a_killed_worker_is_replaced_and_requests_keep_flowing(start_gateway, backend):
    port, gateway = start_with_workers(start_gateway, backend.port)
    victim, survivor = children(gateway.pid)
    os.kill(victim, signal.SIGKILL)
    # The other worker keeps serving while the master starts a new one.
    for _ in range(10):
        assert echo_json(port, "app.localhost")["backend"] == "backend-a"
    wait_for(
        lambda: len(children(gateway.pid)) == 2 and victim not in children(gateway.pid),
        8,
        "a second worker again",
    )
    assert survivor in children(gateway.pid)
    assert "ended (killed by SIGKILL)" in gateway.log()
    wait_for(lambda: serving_count(gateway, 0) + serving_count(gateway, 1) == 3, 10)
    for _ in range(10):
        assert echo_json(port, "app.localhost")["backend"] == "backend-a"


def test_sighup_reloads_every_worker(start_gateway, backend, backend_b):
    port, gateway = start_with_workers(start_gateway, backend.port)
    assert echo_json(port, "app.localhost")["backend"] == "backend-a"
    gateway.config_path.write_text(workers_config(port, backend_b.port))
    gateway.signal(signal.SIGHUP)
    wait_for(
        lambda: (
            "[worker 0] configuration reloaded" in gateway.log()
            and "[worker 1] configuration reloaded" in gateway.log()
        ),
        10,
        "both workers reloaded\n" + gateway.log(),
    )
    # Each request on a new connection: whichever worker takes it has reloaded.
    for _ in range(20):
        assert echo_json(port, "app.localhost")["backend"] == "backend-b"
    # A listener change cannot be applied by the workers: the master says so.
    gateway.config_path.write_text(workers_config(free_port(), backend_b.port))
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: "the listeners changed" in gateway.log(), 10)
    assert echo_json(port, "app.localhost")["backend"] == "backend-b"


def test_sigterm_drains_in_flight_requests_then_exits_zero(start_gateway, backend):
    port, gateway = start_with_workers(start_gateway, backend.port)
    workers = children(gateway.pid)
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            status, _, body = request(port, "app.localhost", "/slow-headers?delay=2")
            result["status"] = status
        except Exception as error:  # reported by the assertion below
            result["error"] = error

    before = _established_to(backend.port)
    client = threading.Thread(target=slow)
    client.start()
    # Wait until the request is at the back end, i.e. in flight in a worker.
    wait_for(lambda: _established_to(backend.port) > before, 5, "the slow request upstream")
    gateway.signal(signal.SIGTERM)
    client.join(15)
    assert result == {"status": 200}
    assert gateway.process is not None
    assert gateway.process.wait(15) == 0
    wait_for(lambda: not any(alive(pid) for pid in workers), 5, "no worker left")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_workers_exit_when_the_master_is_killed(start_gateway, backend):
    _, gateway = start_with_workers(start_gateway, backend.port)
    workers = children(gateway.pid)
    gateway.signal(signal.SIGKILL)
    assert gateway.process is not None
    gateway.process.wait(5)
    wait_for(lambda: not any(alive(pid) for pid in workers), 10, "orphaned workers exit")


def _established_to(port: int) -> int:
    """ESTABLISHED TCP connections whose remote end is 127.0.0.1:port."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


def test_admin_metrics_show_every_worker(start_gateway, backend):
    import re

    port, admin = free_port(), free_port()
    config = workers_config(port, backend.port) + f"admin: {{address: 127.0.0.1:{admin}}}\n"
    gateway = start_gateway(config, [port, admin])
    wait_for(
        lambda: serving_count(gateway, 0) and serving_count(gateway, 1),
        15,
        "both workers serving\n" + gateway.log(),
    )
    metrics_dirs = {
        cmdline(pid)[cmdline(pid).index("--metrics-dir") + 1] for pid in children(gateway.pid)
    }
    assert len(metrics_dirs) == 1
    metrics_dir = metrics_dirs.pop()
    assert os.stat(metrics_dir).st_mode & 0o077 == 0  # private to the gateway's user
    # A new connection per request: the kernel spreads them over both workers.
    for i in range(40):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "GET", f"/echo?i={i}", headers={"Host": "app.localhost", "Connection": "close"}
        )
        assert conn.getresponse().status == 200
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200
    text = response.read().decode()
    assert re.findall(r'^idgateway_worker_up\{worker="(\d)"\} 1\.0$', text, re.M) == ["0", "1"]
    counted = {
        worker: float(value)
        for worker, value in re.findall(
            r'^idgateway_requests_total\{route="app",status_class="2xx",worker="(\d)"\} (\S+)$',
            text,
            re.M,
        )
    }
    assert sum(counted.values()) == 40, text
    # Every sample says which worker it is from.
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert 'worker="' in line, line
    assert 'idgateway_open_connections{worker="1"}' in text
    assert gateway.stop() == 0
    assert not os.path.exists(metrics_dir)


def test_a_single_process_logging_to_stdout_writes_its_access_lines_there(start_gateway, backend):
    port = free_port()
    gateway = start_gateway(
        workers_config(port, backend.port, workers=1), [port], log_to_stdout=True
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for i in range(5):
            conn.request("GET", f"/echo?i={i}", headers={"Host": "app.localhost"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()
    wait_for(
        lambda: gateway.log().count(" GET /echo 200 ") >= 5, 10, "access lines\n" + gateway.log()
    )
    lines = [line for line in gateway.log().splitlines() if " GET /echo 200 " in line]
    assert len(lines) == 5
    # twistd's own text format: "<time> [idgateway.access#info] GET /echo 200 ...".
    assert all(" [idgateway.access#info] GET /echo 200 " in line for line in lines)
    assert not any("i=" in line or "[worker" in line for line in lines)


# A line of twistd's text log: its timestamp, then [namespace#level].
TWISTD_LINE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]*\] "


@pytest.mark.parametrize(
    "log_to_stdout", [False, True], ids=["log-file: per-line records", "stdout: framed batches"]
)
def test_access_lines_survive_a_worker_killed_under_load_whole_and_in_local_time(
    start_gateway, backend, monkeypatch, log_to_stdout
):
    """Workers send finished lines only when the master logs text on stdout;
    either way, a worker SIGKILLed in the middle of its traffic leaves no torn
    line in the log, and the times are the master's local time (TZ)."""
    import re

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +0530 all year: no DST to race
    port, gateway = start_with_workers(start_gateway, backend.port, log_to_stdout)
    workers = children(gateway.pid)
    assert all(("--access-text" in cmdline(pid)) is log_to_stdout for pid in workers)
    stop = threading.Event()
    answered: list[int] = []

    def client() -> None:
        while not stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                for i in range(20):
                    conn.request("GET", f"/echo?i={i}", headers={"Host": "app.localhost"})
                    response = conn.getresponse()
                    response.read()
                    answered.append(response.status)
                conn.close()
            except (OSError, http.client.HTTPException):
                pass  # the killed worker's connections

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(answered) > 300, 20, "requests answered")
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: len(children(gateway.pid)) == 2, 10, "the worker replaced")
        before = len(answered)
        wait_for(lambda: len(answered) > before + 300, 20, "requests after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    # The survivors' last batches (the killed worker's last 50 ms of lines
    # went with it): wait until the log stops growing.
    seen: list[int] = [-1]

    def settled() -> bool:
        count = len(access_lines(gateway))
        if count == seen[0]:
            return True
        seen[0] = count
        time.sleep(0.3)
        return False

    wait_for(settled, 10, "the access lines")
    assert len(access_lines(gateway)) > 300
    lines = gateway.log().split("\n")[:-1]
    access = re.compile(
        TWISTD_LINE.replace(r"\[[^\]]*\]", r"\[idgateway\.access#info\]")
        + r"\[worker [01]\] GET /echo 200 \d+B route=app user=- gw=[\d.]+ms up=[\d.]+ms "
        r"id=\S+ ip=127\.0\.0\.1$"
    )
    torn = [line for line in lines if not re.match(TWISTD_LINE, line)]
    assert not torn, torn[:5]
    relayed = [line for line in lines if "[idgateway.access#info]" in line]
    assert relayed and all(access.match(line) for line in relayed), [
        line for line in relayed if not access.match(line)
    ][:5]
    assert all(line[19:24] == "+0530" for line in lines)


@pytest.mark.parametrize(
    "log_to_stdout", [False, True], ids=["log-file: per-line records", "stdout: framed batches"]
)
def test_the_access_line_of_a_request_drained_at_sigterm_is_logged(
    start_gateway, backend, log_to_stdout
):
    """The last batch of access lines goes out before a draining worker exits."""
    port, gateway = start_with_workers(start_gateway, backend.port, log_to_stdout)
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            status, _, body = request(port, "app.localhost", "/slow-headers?delay=1")
            result["status"] = status
        except Exception as error:  # reported by the assertion below
            result["error"] = error

    before = _established_to(backend.port)
    client = threading.Thread(target=slow)
    client.start()
    wait_for(lambda: _established_to(backend.port) > before, 5, "the slow request upstream")
    gateway.signal(signal.SIGTERM)
    client.join(15)
    assert result == {"status": 200}
    assert gateway.process is not None
    assert gateway.process.wait(15) == 0
    [line] = [line for line in access_lines(gateway) if " GET /slow-headers 200 " in line]
    assert line.index("[idgateway.access#info] [worker ") < line.index(" GET /slow-headers")
