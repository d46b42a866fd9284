"""idgateway.systemd: sd_notify datagrams, sd_listen_fds, and adopting passed sockets."""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock

from idgateway import systemd
from idgateway.config import load_config
from idgateway.model import Listener
from idgateway.service import GatewayService
from idgateway.systemd import PassedSocket, PassedSockets
from idgateway.workers import MasterService

# ---- a fake service manager ----------------------------------------------------------------


class Manager:
    """The receiving end of $NOTIFY_SOCKET, as systemd binds it (with SO_PASSCRED)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(5)

    def receive(self) -> tuple[dict[str, str], int]:
        """The next datagram's assignments, and the sender's pid."""
        size = array.array("i").itemsize * 3
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(size))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = array.array("i", payload[:size])[0]
        assignments = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        return assignments, pid

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5)
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    found = Manager(str(tmp_path / "notify"))
    yield found
    found.close()


@pytest.fixture
def notify_socket(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> Manager:
    """$NOTIFY_SOCKET names the manager for the code that reads os.environ."""
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    return manager


# ---- sd_notify -------------------------------------------------------------------------------


def test_notify_sends_one_datagram_to_a_path_socket(manager: Manager) -> None:
    assert systemd.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": manager.address})
    assert manager.receive() == ({"READY": "1", "STATUS": "up"}, os.getpid())


def test_notify_abstract_namespace() -> None:
    address = f"@idgateway-test-{uuid.uuid4().hex}"
    manager = Manager(address)
    try:
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": address})
        assert manager.receive()[0] == {"READY": "1"}
    finally:
        manager.close()


@pytest.mark.parametrize(
    "environ",
    [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}, {"NOTIFY_SOCKET": "relative"}],
)
def test_notify_without_a_usable_socket_does_nothing(environ: dict[str, str]) -> None:
    assert systemd.notify("READY=1", environ) is False


def test_notify_to_a_socket_nobody_listens_on_fails_quietly(tmp_path: Path) -> None:
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": f"@gone-{uuid.uuid4().hex}"}) is False


def test_helpers(manager: Manager) -> None:
    environ = {"NOTIFY_SOCKET": manager.address}
    assert systemd.ready(environ=environ)
    assert manager.receive()[0] == {"READY": "1"}
    assert systemd.ready("serving\n2 routes", environ)
    assert manager.receive()[0] == {"READY": "1", "STATUS": "serving 2 routes"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading(environ)
    state, _ = manager.receive()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert state["RELOADING"] == "1"
    assert before <= int(state["MONOTONIC_USEC"]) <= after
    assert systemd.stopping(environ)
    assert manager.receive()[0] == {"STOPPING": "1"}
    assert systemd.status("a\r\nb", environ)
    assert manager.receive()[0] == {"STATUS": "a b"}


class Reloadable:
    def __init__(self, outcome: bool | Exception) -> None:
        self.outcome = outcome

    @systemd.notify_reload
    def reload(self) -> bool:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def test_notify_reload_brackets_a_reload(notify_socket: Manager) -> None:
    assert Reloadable(True).reload() is True
    first, second = notify_socket.receive()[0], notify_socket.receive()[0]
    assert first["RELOADING"] == "1" and "MONOTONIC_USEC" in first
    assert second["READY"] == "1"
    assert second["STATUS"].startswith("configuration reloaded at ")


def test_notify_reload_refused_or_failed_is_ready_again(notify_socket: Manager) -> None:
    assert Reloadable(False).reload() is False
    assert notify_socket.receive()[0]["RELOADING"] == "1"
    refused = notify_socket.receive()[0]
    assert refused["READY"] == "1" and "serving the previous configuration" in refused["STATUS"]
    with pytest.raises(RuntimeError):
        Reloadable(RuntimeError("boom")).reload()
    assert notify_socket.receive()[0]["RELOADING"] == "1"
    assert notify_socket.receive()[0]["READY"] == "1"


def test_child_environ_drops_what_systemd_meant_for_this_process() -> None:
    environ = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "LISTEN_PID": "1",
        "LISTEN_FDS": "2",
        "LISTEN_FDNAMES": "a:b",
        "WATCHDOG_USEC": "1",
        "CREDENTIALS_DIRECTORY": "/run/credentials/idgateway.service",
    }
    assert systemd.child_environ(environ) == {
        "PATH": "/usr/bin",
        "CREDENTIALS_DIRECTORY": "/run/credentials/idgateway.service",
    }


# ---- sd_listen_fds -----------------------------------------------------------------------------

LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"},  # another process's
        {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"},
        {"LISTEN_PID": "x", "LISTEN_FDS": "1"},
        {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"},
        {"LISTEN_PID": str(os.getpid())},
        {"LISTEN_FDS": "1"},
    ],
)
def test_listen_fds_finds_nothing_and_unsets(environ: dict[str, str]) -> None:
    environ = dict(environ, PATH="/usr/bin")
    assert systemd.listen_fds(environ) == {}
    assert environ == {"PATH": "/usr/bin"}


# Runs listen_fds() in a fresh process that holds the given sockets as descriptors 3, 4, ...
# (as systemd starts a service) and prints what it found.
CHILD = """
import fcntl, json, os, sys
count = int(sys.argv[1])
high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[2:]]  # clear of 3, 4, ...
for offset, fd in enumerate(high):
    os.dup2(fd, 3 + offset)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(count)
from idgateway import systemd
found = systemd.listen_fds()
inheritable = {str(key): os.get_inheritable(fd) for key, fd in found.items()}
passed = systemd.PassedSockets.from_environment(os.environ)  # already unset: nothing
left = [name for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if name in os.environ]
described = [
    [each.fd, each.name, each.host, each.port]
    for each in (systemd.describe(fd, key) for key, fd in found.items())
    if each is not None
]
print(json.dumps({
    "found": {str(key): fd for key, fd in found.items()},
    "keys": [type(key).__name__ for key in found],
    "inheritable": inheritable,
    "again": len(passed.sockets),
    "left": left,
    "described": described,
}))
"""


def run_child(sockets: list[socket.socket], names: str | None, count: int | None = None) -> dict:
    env = dict(os.environ)
    env.pop("LISTEN_FDNAMES", None)
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    fds = [sock.fileno() for sock in sockets]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(count or len(fds)), *map(str, fds)],
        pass_fds=fds,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def listening(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen()
    return sock


def test_listen_fds_with_names() -> None:
    first, second = listening(), listening()
    with first, second:
        found = run_child([first, second], "http:https")
        ports = [first.getsockname()[1], second.getsockname()[1]]
    assert found["found"] == {"http": 3, "https": 4}
    assert found["inheritable"] == {"http": False, "https": False}  # close-on-exec now
    assert found["left"] == [] and found["again"] == 0
    assert found["described"] == [
        [3, "http", "127.0.0.1", ports[0]],
        [4, "https", "127.0.0.1", ports[1]],
    ]


def test_listen_fds_repeated_missing_or_miscounted_names_give_positions() -> None:
    first, second = listening(), listening()
    with first, second:
        # One .socket unit names all its sockets alike.
        assert run_child([first, second], "idgateway:idgateway")["found"] == {"0": 3, "1": 4}
        same = run_child([first, second], "idgateway:idgateway")
        assert same["keys"] == ["int", "int"]
        assert run_child([first, second], None)["found"] == {"0": 3, "1": 4}
        assert run_child([first, second], "only-one")["found"] == {"0": 3, "1": 4}
        assert run_child([first, second], "a:")["found"] == {"a": 3, "1": 4}


# As twistd runs: Twisted's endpoints module, imported while twistd loads its plugins,
# takes LISTEN_PID and LISTEN_FDS out of os.environ before the gateway's code runs.
EXEC_AS_SYSTEMD = """
import fcntl, os, sys
high = fcntl.fcntl(int(sys.argv[1]), fcntl.F_DUPFD, 100)
os.dup2(high, 3)
os.close(high)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="http")
os.execv(sys.executable, [sys.executable, "-c", sys.argv[2]])  # the same pid
"""
AFTER_TWISTED = """
import json, os
import twisted.internet.endpoints
gone = [name for name in ("LISTEN_PID", "LISTEN_FDS") if name not in os.environ]
from idgateway import systemd
found = systemd.inherited()
print(json.dumps({
    "gone": gone,
    "found": [[each.fd, each.name, each.port] for each in found.sockets],
    "left": sorted(name for name in os.environ if name.startswith("LISTEN_")),
}))
"""


def test_passed_sockets_are_found_after_twisted_took_the_variables() -> None:
    with listening() as sock:
        result = subprocess.run(
            [sys.executable, "-c", EXEC_AS_SYSTEMD, str(sock.fileno()), AFTER_TWISTED],
            pass_fds=[sock.fileno()],
            capture_output=True,
            text=True,
            timeout=60,
        )
        port = sock.getsockname()[1]
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "gone": ["LISTEN_PID", "LISTEN_FDS"],  # what makes the fallback necessary
        "found": [[3, "http", port]],
        "left": [],
    }


# ---- which passed socket serves which listener -------------------------------------------------


def test_describe_takes_listening_tcp_sockets_only(tmp_path: Path) -> None:
    with listening() as tcp4:
        passed = systemd.describe(tcp4.fileno(), "http")
        assert passed == PassedSocket(
            tcp4.fileno(), "http", socket.AF_INET, "127.0.0.1", tcp4.getsockname()[1]
        )
        assert passed.address == f"127.0.0.1:{tcp4.getsockname()[1]}"
    with socket.socket() as bound_only:
        bound_only.bind(("127.0.0.1", 0))
        assert systemd.describe(bound_only.fileno()) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        assert systemd.describe(udp.fileno()) is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(str(tmp_path / "s"))
        unix.listen()
        assert systemd.describe(unix.fileno()) is None
    read, write = os.pipe()
    try:
        assert systemd.describe(read) is None
    finally:
        os.close(read)
        os.close(write)
    assert systemd.describe(read) is None  # closed
    count = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else None
    with listening() as again:
        systemd.describe(again.fileno())
        if count is not None:  # the duplicate it looked through is closed
            assert len(os.listdir("/proc/self/fd")) == count + 1


def test_describe_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = listening("::1")
    except OSError as error:
        pytest.skip(f"no IPv6 loopback: {error}")
    with sock:
        passed = systemd.describe(sock.fileno())
    assert passed is not None and passed.family == socket.AF_INET6
    assert passed.address == f"[::1]:{passed.port}"


@pytest.mark.parametrize(
    ("bound", "host", "port", "expected"),
    [
        (("0.0.0.0", 80), "0.0.0.0", 80, True),
        (("0.0.0.0", 80), "0.0.0.0", 81, False),
        (("0.0.0.0", 80), "127.0.0.1", 80, False),
        (("127.0.0.1", 8080), "127.0.0.1", 8080, True),
        (("::", 443), "::", 443, True),
        (("::", 443), "0:0:0:0:0:0:0:0", 443, True),
        (("::", 443), "0.0.0.0", 443, False),  # a different socket, even if dual-stack
        (("::1", 8443), "0:0::1", 8443, True),
        (("127.0.0.1", 8080), "localhost", 8080, True),
        (("127.0.0.1", 8080), "localhost", 8081, False),
        (("127.0.0.1", 8080), "nonexistent.invalid", 8080, False),
    ],
)
def test_matching_by_bound_address(
    bound: tuple[str, int], host: str, port: int, expected: bool
) -> None:
    family = socket.AF_INET6 if ":" in bound[0] else socket.AF_INET
    passed = PassedSocket(fd=3, name="idgateway", family=family, host=bound[0], port=bound[1])
    assert passed.matches(host, port) is expected
    assert (PassedSockets([passed]).find(host, port) is passed) is expected


def passed(*sockets: socket.socket) -> PassedSockets:
    """PassedSockets as systemd would give them, for sockets of this test."""
    described = [systemd.describe(sock.fileno(), index) for index, sock in enumerate(sockets)]
    assert all(each is not None for each in described)
    return PassedSockets([each for each in described if each is not None])


def test_adopt_hands_the_matching_descriptor_to_the_reactor() -> None:
    reactor = MemoryReactorClock()
    factory = Factory()
    with listening() as first, listening() as second:
        sockets = passed(first, second)
        port = second.getsockname()[1]
        assert sockets.adopt(reactor, "127.0.0.1", port, factory) is not None
        assert reactor.adoptedPorts == [(second.fileno(), socket.AF_INET, factory)]
        assert os.get_blocking(second.fileno()) is False  # Twisted's accept loop needs it
        assert sockets.adopt(reactor, "127.0.0.1", 1, factory) is None
        assert sockets.adopt(reactor, "0.0.0.0", port, factory) is None
        # Still there for a listener that a reload removes and brings back.
        assert sockets.find("127.0.0.1", port) is not None


def test_socket_for_gives_a_non_blocking_duplicate() -> None:
    with listening() as original:
        sockets = passed(original)
        host, port = original.getsockname()
        duplicate = sockets.socket_for(host, port)
        assert duplicate is not None
        with duplicate:
            assert duplicate.fileno() != original.fileno()
            assert duplicate.getsockname() == (host, port)
            assert duplicate.getblocking() is False
        assert systemd.describe(original.fileno()) is not None  # the original stays open
        assert sockets.socket_for(host, port + 1 if port < 65535 else 1) is None


# ---- the hooks in GatewayService and MasterService ------------------------------------------


def write_config(tmp_path: Path, port: int, extra: str = "") -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"{extra}listeners:\n  - address: 127.0.0.1:{port}\n  - address: 127.0.0.1:1\n"
        "routes:\n  - name: app\n    hosts: [app.localhost]\n    upstream: http://127.0.0.1:9\n"
    )
    return str(path)


@pytest.fixture
def passed_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A listening socket, installed as if systemd had passed it to this process."""
    with listening() as sock:
        monkeypatch.setattr(systemd, "_inherited", passed(sock))
        yield sock


def test_gateway_service_adopts_notifies_and_binds_the_rest(
    tmp_path: Path, notify_socket: Manager, passed_listener: socket.socket
) -> None:
    port = passed_listener.getsockname()[1]
    config = load_config(write_config(tmp_path, port))
    reactor = MemoryReactorClock()
    service = GatewayService(config, reactor, install_signal_handlers=False)
    service.startService()
    # The passed socket serves 127.0.0.1:<port>; the other listener is bound as usual.
    assert [(fd, family) for fd, family, _ in reactor.adoptedPorts] == [
        (passed_listener.fileno(), socket.AF_INET)
    ]
    assert [(each[0], each[3]) for each in reactor.tcpServers] == [(1, "127.0.0.1")]
    assert set(service._ports) == {("127.0.0.1", port), ("127.0.0.1", 1)}
    # READY=1 once the reactor runs, not before.
    assert notify_socket.nothing_pending()
    reactor.run()
    assert notify_socket.receive() == ({"READY": "1", "STATUS": "serving 1 route(s)"}, os.getpid())
    assert service.reload() is True
    assert notify_socket.receive()[0]["RELOADING"] == "1"
    assert notify_socket.receive()[0]["READY"] == "1"
    service.stopService()
    assert notify_socket.receive()[0] == {"STOPPING": "1"}


def test_gateway_service_outside_systemd_says_nothing(tmp_path: Path, manager: Manager) -> None:
    config = load_config(write_config(tmp_path, 2))
    reactor = MemoryReactorClock()
    service = GatewayService(config, reactor, install_signal_handlers=False)
    service.startService()
    reactor.run()
    service.reload()
    service.stopService()
    assert manager.nothing_pending()
    assert reactor.adoptedPorts == []


def test_master_ready_once_every_worker_serves(tmp_path: Path, notify_socket: Manager) -> None:
    config = load_config(write_config(tmp_path, 2))
    master = MasterService(config, MemoryReactorClock(), workers=2, install_signal_handlers=False)
    # A SIGHUP before READY=1 says nothing: there is no start-up to interrupt.
    master.reload()
    assert notify_socket.nothing_pending()
    master.worker_ready(master.workers[0])
    assert notify_socket.nothing_pending()
    master.worker_ready(master.workers[1])
    assert notify_socket.receive()[0] == {"READY": "1", "STATUS": "serving with 2 worker(s)"}
    # A worker restarted later does not announce the service again.
    master.workers[0].ready = False
    master.worker_ready(master.workers[0])
    assert notify_socket.nothing_pending()
    master.reload()
    assert notify_socket.receive()[0]["RELOADING"] == "1"
    assert notify_socket.receive()[0]["READY"] == "1"
    master.stopService()
    assert notify_socket.receive()[0] == {"STOPPING": "1"}


def test_master_uses_the_passed_socket(tmp_path: Path, passed_listener: socket.socket) -> None:
    port = passed_listener.getsockname()[1]
    with socket.socket() as probe:  # a free port for the listener systemd did not pass
        probe.bind(("127.0.0.1", 0))
        other = probe.getsockname()[1]
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"listeners:\n  - address: 127.0.0.1:{port}\n  - address: 127.0.0.1:{other}\n"
        "routes:\n  - name: app\n    hosts: [app.localhost]\n    upstream: http://127.0.0.1:9\n"
    )
    master = MasterService(
        load_config(str(path)), MemoryReactorClock(), workers=2, install_signal_handlers=False
    )
    master._bind()
    try:
        (first, adopted), (second, bound) = master._sockets
        assert (first.port, second.port) == (port, other)
        assert adopted.fileno() != passed_listener.fileno()  # a duplicate of it
        assert adopted.getsockname() == passed_listener.getsockname()
        assert bound.getsockname() == ("127.0.0.1", other)
    finally:
        for _, sock in master._sockets:
            sock.close()
    assert systemd.describe(passed_listener.fileno()) is not None


# ---- secrets from systemd credentials ----------------------------------------------------------


def test_credentials_directory_expands_in_secret_file_paths(tmp_path: Path) -> None:
    """``client_secret_file: ${CREDENTIALS_DIRECTORY}/...`` as etc/idgateway.service says."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "app1-client-secret").write_text("s3cret-${NOT_EXPANDED}\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listeners: [{address: 127.0.0.1:8080}]\n"
        "providers:\n  wso2: {issuer: https://localhost:9443/oauth2/token}\n"
        "routes:\n  - name: app1\n    hosts: [app1.example.com]\n"
        "    upstream: http://127.0.0.1:3000\n"
        "    oidc:\n      provider: wso2\n      client_id: app1\n"
        "      client_secret_file: ${CREDENTIALS_DIRECTORY}/app1-client-secret\n"
    )
    config = load_config(str(path), {"CREDENTIALS_DIRECTORY": str(credentials)})
    auth = config.routes[0].auth
    assert auth is not None
    # The path is expanded; the file's contents are taken literally.
    assert auth.oidc.client_secret == "s3cret-${NOT_EXPANDED}"


def test_listener_helper_matches_model() -> None:
    # The hooks look listeners up by (host, port) as the model spells them.
    listener = Listener(host="::", port=443)
    passed = PassedSocket(fd=3, name="idgateway", family=socket.AF_INET6, host="::", port=443)
    assert passed.matches(listener.host, listener.port)
    assert passed.address == listener.address == "[::]:443"
