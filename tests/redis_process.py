"""Real ``redis-server`` (and Sentinel) processes for tests, and a reactor to talk to them.

    with RedisProcess(tmp_path, password="s3cret") as redis:
        redis.url          # redis://:s3cret@127.0.0.1:<port>/0
        redis.call("DBSIZE")
        redis.kill()       # SIGKILL, for fault tests
        redis.restart()    # same port, empty data

Each server listens on a free port of 127.0.0.1, keeps nothing on disk
(``--save "" --appendonly no``) and logs to a file in its work directory,
whose tail is shown when it fails to start.

``run_in_reactor(main)`` runs ``await main(reactor)`` on a *fresh* reactor
instance (not the global one) and returns its result or raises its
exception: the code under test takes the reactor as an argument, so every
test gets its own, and nothing leaks between tests.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from twisted.internet import defer
from twisted.internet.epollreactor import EPollReactor
from twisted.python.failure import Failure

from idgateway.redis.client import RedisSettings

T = TypeVar("T")

# The shared server's password has characters a URL must percent-encode.
SHARED_PASSWORD = "s3cret/with:odd@chars"

REDIS_SERVER = shutil.which("redis-server")

requires_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)"
)


def redis_supports_tls() -> bool:
    """Whether this redis-server was built with TLS (Debian's is)."""
    if REDIS_SERVER is None:
        return False
    done = subprocess.run(
        [REDIS_SERVER, "--port", "0", "--tls-port", "0"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    # With TLS the server starts and exits because it listens nowhere; without,
    # it refuses the tls-port directive.
    return "not listen anywhere" in done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def short_tempdir(prefix: str = "rds") -> Path:
    """A directory with a short path: unix socket paths must fit in 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class _Server:
    """A redis-server child process whose log says when it is ready."""

    _ready_text = "Ready to accept connections"

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _arguments(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = subprocess.Popen(
            [REDIS_SERVER, *self._arguments()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.log_path.exists():
                with open(self.log_path, "rb") as log:
                    log.seek(offset)
                    if self._ready_text.encode() in log.read():
                        return
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM and wait (nothing is saved: there are no save points)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            self._resume(process)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, as in a crash."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self._resume(self.process)

    @staticmethod
    def _resume(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same port, with an empty data set."""
        self.stop()
        self.start()

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RedisProcess(_Server):
    """``redis-server --port <free> --bind 127.0.0.1 --save "" --appendonly no``.

    ``password`` adds ``--requirepass``; ``unix_socket`` also listens on a
    socket file (``.socket_path``); ``tls`` is ``(cert, key, ca)`` paths and
    makes the port a TLS port (and the plain port disappear).
    """

    def __init__(
        self,
        workdir: Path,
        password: str | None = None,
        *,
        unix_socket: bool = False,
        tls: tuple[Path, Path, Path] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        super().__init__(workdir, f"redis-{self.port}")
        self.password = password
        self.tls = tls
        self.socket_path: Path | None = None
        if unix_socket:
            self.socket_path = short_tempdir() / "redis.sock"

    def _arguments(self) -> list[str]:
        arguments = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
        ]
        if self.tls is None:
            arguments += ["--port", str(self.port)]
        else:
            cert, key, ca = self.tls
            arguments += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(cert),
                "--tls-key-file",
                str(key),
                "--tls-ca-cert-file",
                str(ca),
                "--tls-auth-clients",
                "no",
            ]
        if self.password is not None:
            arguments += ["--requirepass", self.password]
        if self.socket_path is not None:
            arguments += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return arguments

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        if self.socket_path is not None:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def call(self, *args: str | bytes | int, db: int = 0) -> Any:
        """One command over a fresh plain connection (test inspection, not TLS)."""
        assert self.tls is None, "call() speaks plain TCP"
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            reader = sock.makefile("rb")
            if self.password is not None:
                sock.sendall(_encode("AUTH", self.password))
                _read_reply(reader)
            if db:
                sock.sendall(_encode("SELECT", db))
                _read_reply(reader)
            sock.sendall(_encode(*args))
            return _read_reply(reader)

    def all_data(self, db: int = 0) -> dict[bytes, Any]:
        """Every key in ``db`` with its value (strings, or sets as sorted lists)."""
        data: dict[bytes, Any] = {}
        for key in self.call("KEYS", "*", db=db):
            kind = self.call("TYPE", key, db=db)
            if kind == "string":
                data[key] = self.call("GET", key, db=db)
            elif kind == "set":
                data[key] = sorted(self.call("SMEMBERS", key, db=db))
            else:
                data[key] = kind
        return data


class SentinelProcess(_Server):
    """``redis-server sentinel.conf --sentinel`` watching one master."""

    _ready_text = "+monitor master"

    def __init__(self, workdir: Path, master_port: int, master_name: str = "mymaster") -> None:
        self.port = free_port()
        super().__init__(workdir, f"sentinel-{self.port}")
        self.master_name = master_name
        self.master_port = master_port
        self.config_path = workdir / f"sentinel-{self.port}.conf"

    def _arguments(self) -> list[str]:
        self.config_path.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.workdir}\n"
            f"logfile {self.log_path}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} 60000\n"
        )
        return [str(self.config_path), "--sentinel"]

    def call(self, *args: str | bytes | int) -> Any:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(_encode(*args))
            return _read_reply(sock.makefile("rb"))

    def move_master(self, port: int) -> None:
        """Make the sentinels name 127.0.0.1:``port`` as the master (a failover, by hand)."""
        self.call("SENTINEL", "REMOVE", self.master_name)
        self.call("SENTINEL", "MONITOR", self.master_name, "127.0.0.1", port, 1)
        self.master_port = port


def _encode(*args: str | bytes | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise RuntimeError(f"unexpected reply {line!r}")


def run_in_reactor(main: Callable[[Any], Coroutine[Any, Any, T]], timeout: float = 15.0) -> T:
    """Run ``await main(reactor)`` on a fresh reactor; return its result or raise.

    The reactor is created for this call, run until ``main`` finishes (or
    ``timeout`` passes), then thrown away with everything still connected to
    it closed, so a test cannot leave work behind for the next one.
    """
    reactor = EPollReactor()
    outcome: list[Any] = []

    def finished(result: Any) -> None:
        outcome.append(result)
        if reactor.running:
            reactor.stop()

    def begin() -> None:
        defer.ensureDeferred(main(reactor)).addBoth(finished)

    def too_slow() -> None:
        outcome.append(Failure(TimeoutError(f"the test did not finish within {timeout}s")))
        reactor.stop()

    reactor.callWhenRunning(begin)
    watchdog = reactor.callLater(timeout, too_slow)
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        if watchdog.active():
            watchdog.cancel()
        waker = getattr(reactor, "waker", None)
        if waker is not None:
            waker.connectionLost(None)
        reactor._poller.close()
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


async def sleep(reactor: Any, seconds: float) -> None:
    """``await sleep(reactor, 0.1)`` on the given reactor."""
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


def elapsed_since(reactor: Any, start: float) -> float:
    return float(reactor.seconds()) - start


# The client settings every Redis test uses: a small pool and a 0.5 s command
# timeout, so that fault tests can check failures come within it.
COMMAND_TIMEOUT = 0.5


def redis_settings(url: str, **overrides: Any) -> RedisSettings:
    """RedisSettings for a test client of the server at ``url``."""
    values: dict[str, Any] = {
        "url": url,
        "pool_size": 2,
        "connect_timeout": 1.0,
        "command_timeout": COMMAND_TIMEOUT,
    }
    values.update(overrides)
    return RedisSettings(**values)


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One redis-server for the whole run (offered by tests/conftest.py); its password has
    characters a URL must percent-encode. Tests that kill, pause or restart a server
    start their own."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisProcess(tmp_path_factory.mktemp("redis"), password=SHARED_PASSWORD) as server:
        yield server


@pytest.fixture
def redis(shared_redis: RedisProcess) -> RedisProcess:
    """The shared redis-server, emptied for this test."""
    shared_redis.call("FLUSHALL")
    return shared_redis


__all__ = [
    "RedisProcess",
    "SHARED_PASSWORD",
    "SentinelProcess",
    "elapsed_since",
    "free_port",
    "redis_supports_tls",
    "redis_settings",
    "requires_redis",
    "run_in_reactor",
    "short_tempdir",
    "sleep",
]
