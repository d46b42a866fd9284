"""idgateway.server.systemd: sd_notify datagrams, sd_listen_fds, and adopting passed sockets."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from idgateway.config.load import load_config
from idgateway.config.model import Listener
from idgateway.server import systemd
from idgateway.server.service import GatewayService
from idgateway.server.systemd import PassedSocket, PassedSockets
from idgateway.workers.master import MasterService
from tests.systemd_helpers import Manager, write_config

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


# As twistd runs: Twisted's endpoints module, imported while twistd loads its plugins,
# takes LISTEN_PID and LISTEN_FDS out of os.environ before the gateway's code runs.


# ---- which passed socket serves which listener -------------------------------------------------


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


# ---- the hooks in GatewayService and MasterService ------------------------------------------


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
