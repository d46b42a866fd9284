"""idgateway.server.systemd with real sockets and child processes: sd_listen_fds in a child, and
adopting passed listening sockets (the in-memory half is tests/unit/test_systemd.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock

from idgateway.config.load import load_config
from idgateway.server import systemd
from idgateway.server.service import GatewayService
from idgateway.server.systemd import PassedSocket, PassedSockets
from idgateway.workers.master import MasterService
from tests.systemd_helpers import Manager, write_config


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


CHILD = """
import fcntl, json, os, sys
count = int(sys.argv[1])
high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[2:]]  # clear of 3, 4, ...
for offset, fd in enumerate(high):
    os.dup2(fd, 3 + offset)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(count)
from idgateway.server import systemd
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
from idgateway.server import systemd
found = systemd.inherited()
print(json.dumps({
    "gone": gone,
    "found": [[each.fd, each.name, each.port] for each in found.sockets],
    "left": sorted(name for name in os.environ if name.startswith("LISTEN_")),
}))
"""
