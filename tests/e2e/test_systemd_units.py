"""etc/idgateway.service and etc/idgateway.socket.

- ``systemd-analyze verify`` (Debian package systemd) on both units. verify also checks
  that every Exec*= binary exists, and /opt/idgateway/venv/bin/twistd does not here. So
  the units are verified twice: a copy whose ExecStart names this checkout's twistd and a
  test config (the unit as it would be installed from this checkout), and the shipped
  files byte for byte, under ``--root`` of a scratch tree that holds the system's own
  units plus stand-ins for the install paths (verify resolves every path inside the
  root). ``--man=no``: no man pages are looked up. verify exits 0 even on unknown keys
  and unparsable values, only warning, so every line it prints about our units fails.
- The unit's exact ExecStart, with only the install paths (twistd, gateway.yaml)
  replaced, run as systemd runs it: a fake $NOTIFY_SOCKET (a datagram socket this test
  binds, with SO_PASSCRED to see which process sends), READY=1 once it serves,
  RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM.
- Socket activation: this test binds the listening socket and the command runs with it
  as descriptor 3 (LISTEN_FDS=1, LISTEN_PID its own pid, through a small exec wrapper,
  as systemd passes it). As root, the socket is on a port below 1024 and the gateway runs
  without CAP_NET_BIND_SERVICE (gone from its capability bounding set): it serves there
  all the same, while the control test shows it could not bind such a port itself.
"""

from __future__ import annotations

import array
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from idgateway.config.values import parse_listen_address
from idgateway.workers.master import KILL_GRACE
from idgateway.workers.worker import DRAIN_TIMEOUT
from tests.backends import BackendProcess
from tests.http_helpers import echo_json, request
from tests.processes import REPO, free_port

SERVICE_UNIT = REPO / "etc" / "idgateway.service"
SOCKET_UNIT = REPO / "etc" / "idgateway.socket"
EXAMPLE_CONFIG = REPO / "etc" / "gateway.yaml"
# The install paths in the unit's ExecStart, and what this checkout has instead.
INSTALLED_TWISTD = "/opt/idgateway/venv/bin/twistd"
INSTALLED_CONFIG = "/etc/idgateway/gateway.yaml"
VENV_TWISTD = Path(sys.executable).parent / "twistd"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian package systemd; scripts/install-system-deps)",
)
needs_venv_twistd = pytest.mark.skipif(
    not VENV_TWISTD.exists(), reason=f"no twistd next to {sys.executable} (not in a venv?)"
)


# ---- reading the units ----------------------------------------------------------------------


def unit_settings(path: Path, section: str) -> dict[str, list[str]]:
    """``key -> [values]`` of one section, as systemd reads them (no line continuations here)."""
    found: dict[str, list[str]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        assert not line.endswith("\\"), f"{path.name}: continuation lines are not expected"
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        if current == section:
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def exec_start() -> list[str]:
    """The unit's ExecStart as the argv systemd runs."""
    (line,) = unit_settings(SERVICE_UNIT, "Service")["ExecStart"]
    # No prefixes (-@:+!) and no $VARIABLES: systemd splits this line as a shell would.
    assert line[0] not in "-@:+!" and "$" not in line and "%" not in line, line
    return shlex.split(line)


def command_for(config: Path) -> list[str]:
    """ExecStart with only the install paths replaced by this checkout's twistd and ``config``."""
    argv = exec_start()
    assert argv[0] == INSTALLED_TWISTD, "ExecStart no longer starts with the documented path"
    assert argv.count(INSTALLED_CONFIG) == 1, "ExecStart no longer names the documented config"
    return [
        str(VENV_TWISTD)
        if arg == INSTALLED_TWISTD
        else str(config)
        if arg == INSTALLED_CONFIG
        # everything else exactly as in the unit
        else arg
        for arg in argv
    ]


def unit_environment() -> dict[str, str]:
    """The unit's Environment= assignments."""
    found: dict[str, str] = {}
    for line in unit_settings(SERVICE_UNIT, "Service").get("Environment", []):
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            found[name] = value
    return found


def test_service_unit_keeps_the_contract() -> None:
    service = unit_settings(SERVICE_UNIT, "Service")

    def one(key: str) -> str:
        (value,) = service[key]
        return value

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Restart") == "on-failure"
    assert one("KillMode") == "mixed"
    # The master drains its workers, then kills them: systemd must wait longer than that.
    assert float(one("TimeoutStopSec")) > DRAIN_TIMEOUT + KILL_GRACE
    assert one("DynamicUser") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") == "yes"
    assert one("PrivateTmp") == "yes"
    assert one("NoNewPrivileges") == "yes"
    assert one("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one("AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one("RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert one("SystemCallFilter") == "@system-service"
    assert service["LoadCredential"] == [
        "app1-client-secret:/etc/idgateway/credentials/app1-client-secret"
    ]
    assert exec_start() == [
        INSTALLED_TWISTD,
        "--nodaemon",
        "--pidfile=",
        "idgateway",
        "--config",
        INSTALLED_CONFIG,
    ]


def test_socket_unit_matches_the_example_listeners() -> None:
    """Each ListenStream is the address of a listener in etc/gateway.yaml, so it is adopted."""
    sockets = unit_settings(SOCKET_UNIT, "Socket")
    assert sockets["Service"] == ["idgateway.service"]
    assert sockets["FileDescriptorName"] == ["idgateway"]
    streams = {parse_listen_address(value) for value in sockets["ListenStream"]}
    # (The example is not plain YAML: ${NAME} stands unquoted in flow lists.)
    addresses = re.findall(r'^\s*- address: "?([^"\s#]+)"?', EXAMPLE_CONFIG.read_text(), re.M)
    listeners = {parse_listen_address(address) for address in addresses}
    assert streams == listeners
    assert {port for _, port in streams} == {80, 443}


# ---- systemd-analyze verify -----------------------------------------------------------------


def verify(*args: str) -> str:
    """Run ``systemd-analyze verify``; fail on a non-zero exit or any word about our units."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_LOG_COLOR="0"),
    )
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if "idgateway" in line]
    assert result.returncode == 0 and not ours, output
    return output


def installed_copy(directory: Path, config: Path) -> Path:
    """The units in ``directory`` as installed from this checkout: ExecStart uses its twistd."""
    directory.mkdir(parents=True, exist_ok=True)
    text = SERVICE_UNIT.read_text()
    exec_line = "ExecStart=" + shlex.join(exec_start())
    assert text.count(exec_line) == 1
    text = text.replace(exec_line, "ExecStart=" + shlex.join(command_for(config)))
    (directory / "idgateway.service").write_text(text)
    shutil.copy(SOCKET_UNIT, directory / "idgateway.socket")
    return directory


@needs_systemd_analyze
@needs_venv_twistd
def test_verify_units_installed_from_this_checkout(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(plain_config(8080, 3000))
    units = installed_copy(tmp_path / "units", config)
    verify(str(units / "idgateway.service"), str(units / "idgateway.socket"))


def system_unit_directory() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if candidate.is_dir():
            return candidate.resolve()
    pytest.skip("no systemd unit directory (/usr/lib/systemd/system) to verify against")


def scratch_root(root: Path) -> Path:
    """A tree for ``verify --root``: the system's units, ours, and the binaries they name."""
    system = system_unit_directory()
    shutil.copytree(system, root / system.relative_to("/"), symlinks=True)
    etc = root / "etc" / "systemd" / "system"
    etc.mkdir(parents=True)
    shutil.copy(SERVICE_UNIT, etc)
    shutil.copy(SOCKET_UNIT, etc)
    service = unit_settings(SERVICE_UNIT, "Service")
    for key in ("ExecStart", "ExecReload"):
        for line in service.get(key, []):
            binary = root / shlex.split(line)[0].lstrip("/")
            binary.parent.mkdir(parents=True, exist_ok=True)
            binary.write_text("#!/bin/sh\nexit 0\n")
            binary.chmod(0o755)
    return root


@needs_systemd_analyze
def test_verify_the_shipped_units_as_they_are(tmp_path: Path) -> None:
    root = scratch_root(tmp_path / "root")
    verify(f"--root={root}", "idgateway.service", "idgateway.socket")


@needs_systemd_analyze
def test_verify_as_used_here_catches_mistakes(tmp_path: Path) -> None:
    """The checks above fail on what verify only warns about, and on a missing binary."""
    root = scratch_root(tmp_path / "root")
    unit = root / "etc" / "systemd" / "system" / "idgateway.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    with pytest.raises(AssertionError, match="Unknown key"):
        verify(f"--root={root}", "idgateway.service")
    (root / INSTALLED_TWISTD.lstrip("/")).unlink()
    with pytest.raises(AssertionError, match="is not executable"):
        verify(f"--root={root}", "idgateway.service")


# ---- a fake service manager ---------------------------------------------------------------


class Manager:
    """$NOTIFY_SOCKET's receiving end, as systemd binds it: a datagram socket with SO_PASSCRED."""

    def __init__(self) -> None:
        # A short path (sun_path holds 108 bytes), reachable by any user as systemd's is.
        self.directory = tempfile.mkdtemp(prefix="idgw-notify-")
        os.chmod(self.directory, 0o755)
        self.address = os.path.join(self.directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        os.chmod(self.address, 0o777)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.received: list[tuple[dict[str, str], int]] = []

    def receive(self, timeout: float) -> tuple[dict[str, str], int] | None:
        self.sock.settimeout(timeout)
        size = array.array("i").itemsize * 3
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(size))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = array.array("i", payload[:size])[0]
        state = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.received.append((state, pid))
        return state, pid

    def expect(self, key: str, gateway: Gateway, timeout: float = 30.0) -> dict[str, str]:
        """The next message; it must set ``key`` (e.g. READY) to 1."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.receive(0.2)
            if found is not None:
                state, pid = found
                assert state.get(key) == "1", f"expected {key}=1, got {state}\n{gateway.log()}"
                # Only the main process notifies (NotifyAccess=main): never a worker.
                assert pid == gateway.pid, f"{state} sent by pid {pid}, not {gateway.pid}"
                return state
            if gateway.process.poll() is not None:
                break
        raise AssertionError(f"no {key}=1 within {timeout}s\n{gateway.log()}")

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def manager() -> Iterator[Manager]:
    found = Manager()
    yield found
    found.close()


# Sets up what systemd gives a socket-activated service, then runs the command: the
# passed socket as descriptor 3, LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID (this very pid,
# which exec keeps). With "nobind", CAP_NET_BIND_SERVICE leaves the capability bounding
# set first, so that even as root the command cannot bind a port below 1024 itself.
EXEC_WRAPPER = """
import ctypes, fcntl, os, sys
fd, nobind, argv = int(sys.argv[1]), sys.argv[2] == "nobind", sys.argv[3:]
high = fcntl.fcntl(fd, fcntl.F_DUPFD, 100)
os.close(fd)
os.dup2(high, 3)  # inheritable, as systemd passes it
os.close(high)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="idgateway", LISTEN_PID=str(os.getpid()))
if nobind:
    PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE = 24, 10
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE)")
os.execv(argv[0], argv)
"""

CAP_NET_BIND_SERVICE = 10


def can_bind_privileged_ports(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^CapEff:\s+([0-9a-f]+)$", status, re.MULTILINE)
    assert found is not None
    return bool(int(found.group(1), 16) >> CAP_NET_BIND_SERVICE & 1)


class Gateway:
    """The unit's command, started as systemd would start it."""

    def __init__(
        self,
        config: Path,
        manager: Manager,
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        passed: socket.socket | None = None,
        nobind: bool = False,
    ) -> None:
        self.log_path = log_path
        environ = dict(os.environ)
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
            environ.pop(name, None)
        environ.update(unit_environment())
        environ["NOTIFY_SOCKET"] = manager.address
        environ.update(env or {})
        argv = command_for(config)
        pass_fds: tuple[int, ...] = ()
        if passed is not None:
            mode = "nobind" if nobind else "-"
            argv = [sys.executable, "-c", EXEC_WRAPPER, str(passed.fileno()), mode, *argv]
            pass_fds = (passed.fileno(),)
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd="/",  # systemd's default WorkingDirectory
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
            )
        self.pid = self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        gateway.kill()


def plain_config(port: int, backend_port: int, workers: int = 1, extra_routes: str = "") -> str:
    return f"""
workers: {workers}
listeners:
  - address: 127.0.0.1:{port}
routes:
  - name: app
    hosts: [app.localhost]
    upstream: http://127.0.0.1:{backend_port}
{extra_routes}"""


# A route whose client secret comes from a systemd credential, as the unit's comments say.
CREDENTIAL_ROUTE = """
  - name: login
    hosts: [login.localhost]
    upstream: http://127.0.0.1:{backend_port}
    oidc:
      provider: wso2
      client_id: app1
      client_secret_file: ${{CREDENTIALS_DIRECTORY}}/app1-client-secret
providers:
  wso2: {{issuer: "https://127.0.0.1:9/oauth2/token"}}
"""

SECOND_ROUTE = """
  - name: app2
    hosts: [app2.localhost]
    upstream: http://127.0.0.1:{backend_port}
"""


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_line = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat_line.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def assert_workers_without_systemd_variables(gateway: Gateway) -> None:
    """Workers get neither $NOTIFY_SOCKET nor LISTEN_*: only the master speaks to systemd."""
    workers = children(gateway.pid)
    assert workers, gateway.log()
    for pid in workers:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {entry.partition(b"=")[0] for entry in environ}
        assert not names & {b"NOTIFY_SOCKET", b"LISTEN_PID", b"LISTEN_FDS", b"LISTEN_FDNAMES"}


def served(port: int, host: str, timeout: float = 15.0) -> dict:
    """The back end's echo through the gateway, waiting while the host is still unknown."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = request(port, host, "/echo", headers={"Accept": "application/json"})
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return echo_json(port, host)


def expect_clean_exit(gateway: Gateway, workers: int) -> None:
    code = gateway.wait(DRAIN_TIMEOUT + KILL_GRACE + 10)
    # twistd re-raises SIGTERM after a clean single-process stop (systemd counts
    # death by SIGTERM as a clean exit); the master exits 0 once its workers are gone.
    allowed = (0,) if workers > 1 else (0, -signal.SIGTERM)
    assert code in allowed, gateway.log()


@needs_venv_twistd
@pytest.mark.parametrize("workers", [1, 2], ids=["single", "workers"])
def test_exec_start_notifies_ready_reloading_stopping(
    tmp_path: Path,
    manager: Manager,
    gateways: list[Gateway],
    backend: BackendProcess,
    workers: int,
) -> None:
    port = free_port()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "app1-client-secret").write_text("s3cret\n")
    config = tmp_path / "gateway.yaml"
    credential_route = CREDENTIAL_ROUTE.format(backend_port=backend.port)
    config.write_text(plain_config(port, backend.port, workers, credential_route))
    gateway = Gateway(
        config,
        manager,
        tmp_path / "gateway.log",
        env={"CREDENTIALS_DIRECTORY": str(credentials)},
    )
    gateways.append(gateway)

    ready = manager.expect("READY", gateway)
    assert ready["STATUS"].startswith("serving")
    # READY=1 means serving: with workers, every one of them already said so.
    assert echo_json(port, "app.localhost")["path"] == "/echo"
    if workers > 1:
        log = gateway.log()
        assert all(f"worker {index} serving" in log for index in range(workers)), log

        assert_workers_without_systemd_variables(gateway)

    # SIGHUP: RELOADING=1 (with the monotonic time systemd >= 253 wants), then READY=1.
    second_route = SECOND_ROUTE.format(backend_port=backend.port)
    config.write_text(plain_config(port, backend.port, workers, second_route + credential_route))
    gateway.signal(signal.SIGHUP)
    reloading = manager.expect("RELOADING", gateway)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now - int(reloading["MONOTONIC_USEC"]) < 30_000_000
    manager.expect("READY", gateway)
    if workers == 1:
        # In one process READY=1 comes once the new configuration serves.
        assert echo_json(port, "app2.localhost")["path"] == "/echo"
    else:
        # The master's READY=1 follows the SIGHUP fan-out; each worker then re-reads.
        assert served(port, "app2.localhost")["path"] == "/echo"

    # SIGTERM: STOPPING=1, then a clean exit.
    gateway.signal(signal.SIGTERM)
    manager.expect("STOPPING", gateway)
    expect_clean_exit(gateway, workers)
    assert manager.receive(0.5) is None, manager.received
    assert [state for state, _ in manager.received][0].get("READY") == "1"


def passable_socket(privileged: bool) -> socket.socket:
    """A listening socket on 127.0.0.1: below 1024 if ``privileged``, else any free port."""
    candidates = range(1023, 511, -1) if privileged else [0]
    for port in candidates:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen(128)
        return sock
    pytest.skip("no free port below 1024")


@needs_venv_twistd
@pytest.mark.parametrize("workers", [1, 2], ids=["single", "workers"])
def test_exec_start_serves_on_a_socket_systemd_passed(
    tmp_path: Path,
    manager: Manager,
    gateways: list[Gateway],
    backend: BackendProcess,
    workers: int,
) -> None:
    # As root (which may bind anything): a port below 1024, and the gateway runs without
    # CAP_NET_BIND_SERVICE, as under the unit with idgateway.socket.
    privileged = os.geteuid() == 0 and can_bind_privileged_ports(os.getpid())
    passed = passable_socket(privileged)
    port = passed.getsockname()[1]
    config = tmp_path / "gateway.yaml"
    config.write_text(plain_config(port, backend.port, workers))
    with passed:
        gateway = Gateway(
            config, manager, tmp_path / "gateway.log", passed=passed, nobind=privileged
        )
        gateways.append(gateway)
    # Only the gateway holds the socket now.
    manager.expect("READY", gateway)
    assert echo_json(port, "app.localhost")["path"] == "/echo"
    log = gateway.log()
    adopted = (
        "serving on the socket systemd passed"
        if workers == 1
        else "using the socket systemd passed"
    )
    assert re.search(rf"127\.0\.0\.1:{port}: {adopted} \(fd 3\)", log), log
    assert "systemd passed 1 listening socket(s)" in log
    if privileged:
        assert port < 1024
        assert not can_bind_privileged_ports(gateway.pid)
    if workers > 1:
        assert_workers_without_systemd_variables(gateway)
    gateway.signal(signal.SIGTERM)
    manager.expect("STOPPING", gateway)
    expect_clean_exit(gateway, workers)


@needs_venv_twistd
def test_without_the_passed_socket_a_low_port_fails(
    tmp_path: Path, manager: Manager, gateways: list[Gateway]
) -> None:
    """The control for the test above: without CAP_NET_BIND_SERVICE, binding :1-1023 fails."""
    if os.geteuid() != 0 or not can_bind_privileged_ports(os.getpid()):
        pytest.skip("needs root with CAP_NET_BIND_SERVICE")
    with passable_socket(privileged=False) as unrelated:  # passed, but for no listener
        low = passable_socket(privileged=True)
        port = low.getsockname()[1]
        low.close()
        config = tmp_path / "gateway.yaml"
        config.write_text(plain_config(port, 9))
        gateway = Gateway(config, manager, tmp_path / "gateway.log", passed=unrelated, nobind=True)
        gateways.append(gateway)
    assert gateway.wait(60) != 0
    assert manager.receive(0.2) is None
    log = gateway.log()
    assert "Permission denied" in log, log
    assert f"127.0.0.1:{port}: systemd passed no socket for this listener" in log, log
