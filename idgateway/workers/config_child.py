"""The workers' master reads its configuration in a child process.

Of the config, the master uses the listeners, the worker count and the reload
settings. What reads and checks a file (PyYAML, the schema engine,
cryptography for key and certificate files, pyOpenSSL for TLS contexts) is
some 13 MiB a process keeps once it has imported it, and the master runs for
months; so the master never imports it. A child does the reading, and sends
back the master's part of the config (``for_the_master``: model values only):

- at start, in twistd's option checks (``read_at_start``), a forked child loads
  the file fully and builds each TLS listener's contexts, as each worker will:
  it prints every problem as ``--check`` does and exits 1, so a bad file stops
  the start with the same words and status as a single process;
- at SIGHUP and on a watched change (``ConfigReader``), ``python -m
  idgateway.workers.config_child PATH`` is spawned, so the master's loop goes
  on relaying logs meanwhile. It does not read key files: the workers check
  the file themselves and log why they refuse it.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from idgateway.config.model import Config

if TYPE_CHECKING:
    from idgateway.config.load import ConfigError

# What the child may send: values of the config model, nothing that runs.
_MODEL = "idgateway.config.model"

# A master's config is a few KiB; anything near this is not one.
MAX_ENCODED = 1 << 20


def for_the_master(config: Config) -> Config:
    """``config`` without what only the workers use (routes, providers, keys)."""
    return attrs.evolve(config, routes=(), providers=(), redis=None, assertion_keys=(), warnings=())


def encode(config: Config) -> bytes:
    return pickle.dumps(for_the_master(config), protocol=pickle.HIGHEST_PROTOCOL)


class _ModelUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module != _MODEL:
            raise pickle.UnpicklingError(f"{module}.{name} is not a config value")
        return super().find_class(module, name)


def decode(data: bytes) -> Config:
    """The master's config sent by a child; ValueError if it is not one."""
    import io

    try:
        config = _ModelUnpickler(io.BytesIO(data)).load()
    except Exception as error:
        raise ValueError(f"not a config from the child: {error}") from None
    if not isinstance(config, Config):
        raise ValueError(f"not a config from the child: {type(config).__name__}")
    return config


# ---- at start ---------------------------------------------------------------------------


def read_at_start(
    path: str, report: Callable[[str, ConfigError], None]
) -> tuple[int, Config | None]:
    """Check ``path`` in a forked child: its exit status and the master's config.

    With ``workers:`` 1 (or a file the lean load refuses) the child checks no
    more than that: the single process loads and reports in process.
    ``report`` prints a ConfigError's problems (in the child).
    """
    # Whatever is buffered would otherwise be written twice.
    sys.stdout.flush()
    sys.stderr.flush()
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child; what it sends and its status are tested)
        os.close(readable)
        status = 1
        try:
            status, data = _check(path, report)
            _write_all(writable, data)
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)
    os.close(writable)
    chunks = []
    with os.fdopen(readable, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)
    if status != 0:
        return status, None
    return 0, decode(b"".join(chunks))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)


def _check(path: str, report: Callable[[str, ConfigError], None]) -> tuple[int, bytes]:
    from idgateway.config.load import ConfigError, load_config

    try:
        lean = load_config(path, contents=False)
    except ConfigError:
        lean = None
    if lean is not None and lean.workers <= 1:
        return 0, encode(lean)
    try:
        config = load_config(path)
    except ConfigError as error:
        report(path, error)
        return 1, b""
    failed = _tls_problems(config)
    if failed:
        print(f"{path}: configuration is not valid:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1, b""
    return 0, encode(config)


def _tls_problems(config: Config) -> list[str]:
    """Each TLS listener's contexts built, as each worker will: why any cannot be."""
    from idgateway.server.tls import SNIServerContexts, TLSConfigurationError

    failed = []
    for listener in config.listeners:
        if listener.tls is None:
            continue
        try:
            SNIServerContexts.prepare(listener.tls)
        except TLSConfigurationError as error:
            failed.append(f"{listener.source}: listeners: tls of {listener.address}: {error}")
    return failed


# ---- at reload --------------------------------------------------------------------------


class ConfigReader(ProcessProtocol):
    """One spawned ``python -m idgateway.workers.config_child PATH``: its config, or None."""

    def __init__(self, done: Callable[[Config | None], None]) -> None:
        self.done = done
        self._chunks: list[bytes] = []
        self._size = 0
        self.errors = b""

    @staticmethod
    def argv(python: str, path: str) -> list[str]:
        return [python, "-m", "idgateway.workers.config_child", path]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self._size += len(data)
            if self._size <= MAX_ENCODED:
                self._chunks.append(data)
        elif len(self.errors) < 4096:
            self.errors += data

    def processEnded(self, reason: Failure) -> None:
        config = None
        if getattr(reason.value, "exitCode", None) == 0 and self._size <= MAX_ENCODED:
            try:
                config = decode(b"".join(self._chunks))
            except ValueError:
                config = None
        self.done(config)


def main(argv: list[str]) -> int:
    """``python -m idgateway.workers.config_child PATH``: the master's config on stdout."""
    from idgateway.config.load import ConfigError, load_config

    if len(argv) != 1:
        print("usage: python -m idgateway.workers.config_child PATH", file=sys.stderr)
        return 2
    try:
        config = load_config(argv[0], contents=False)
    except ConfigError:
        return 1  # the workers say why
    sys.stdout.buffer.write(encode(config))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
