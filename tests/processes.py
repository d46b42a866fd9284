"""Real processes for end-to-end tests: the gateway under twistd, on free ports."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "twisted" / "plugins"

# Twisted writes a dropin.cache into every twisted/plugins/ directory it scans,
# and the twistd these tests start has the checkout on sys.path (its working
# directory, the test's PYTHONPATH, or an older venv's .pth): it leaves the
# checkout's directory out, so that a test run leaves no file in the working
# tree, and scans a copy of the plugin in a temporary directory instead, unless
# another directory on its path (the venv's link, an installed copy) has it.
_PLUGIN_COPY = tempfile.mkdtemp(prefix="idgateway-plugin-")
shutil.copy2(PLUGINS / "idgateway_plugin.py", _PLUGIN_COPY)
atexit.register(shutil.rmtree, _PLUGIN_COPY, True)

TWISTD = f"""
import os, twisted.plugins as plugins
checkout = {str(PLUGINS)!r}
plugins.__path__[:] = [d for d in plugins.__path__ if os.path.realpath(d) != checkout]
if not any(os.path.exists(os.path.join(d, "idgateway_plugin.py")) for d in plugins.__path__):
    plugins.__path__.append({_PLUGIN_COPY!r})
from twisted.scripts.twistd import run
run()
"""

# Test-only: shorter provider-client intervals in the gateway process (one
# process: not passed on to workers), so that an end-to-end test of a rate
# limit (a JWKS refetch at most every 30 s) need not wait out the production
# interval. The launcher sets the keyword defaults of ProviderClient; no config
# key or environment variable of the gateway can. The unit tests check the
# production intervals themselves (tests/unit/test_oidc_provider.py).
_PROVIDER_TIMINGS = """
from idgateway.oidc.provider import ProviderClient
defaults = ProviderClient.__init__.__kwdefaults__
for name, seconds in {timings!r}.items():
    assert name in defaults, f"ProviderClient has no keyword {{name}}"
    defaults[name] = seconds
"""


def _twistd_code(provider_timings: dict[str, float] | None) -> str:
    """TWISTD, with the provider timings set before twistd runs."""
    if not provider_timings:
        return TWISTD
    run = "from twisted.scripts.twistd import run\n"
    return TWISTD.replace(run, _PROVIDER_TIMINGS.format(timings=provider_timings) + run)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 15.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class GatewayProcess:
    """``twistd -n idgateway --config FILE`` as users run it."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        log_to_stdout: bool = False,
        provider_timings: dict[str, float] | None = None,
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.env = env
        # True: no --logfile, the log goes to stdout (redirected to log_path),
        # as under systemd.
        self.log_to_stdout = log_to_stdout
        self.process: subprocess.Popen[bytes] | None = None
        # ProviderClient keyword -> seconds (see _PROVIDER_TIMINGS), or None.
        self.provider_timings = provider_timings

    def start(self, wait_ports: list[int] = (), timeout: float = 20.0) -> GatewayProcess:  # type: ignore[assignment]
        env = dict(os.environ)
        env.update(self.env or {})
        # Run from the repo root so twistd finds twisted/plugins/idgateway_plugin.py.
        logging = [] if self.log_to_stdout else ["--logfile", str(self.log_path)]
        stdout: Any = subprocess.PIPE
        if self.log_to_stdout:
            stdout = open(self.log_path, "ab")  # noqa: SIM115 - Popen keeps its own copy
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _twistd_code(self.provider_timings),
                    "-n",
                    "--pidfile=",
                    *logging,
                    "idgateway",
                    "--config",
                    str(self.config_path),
                ],
                cwd=REPO,
                env=env,
                stdout=stdout,
                stderr=subprocess.STDOUT,
            )
        finally:
            if self.log_to_stdout:
                stdout.close()
        try:
            for port in wait_ports:
                wait_for_port(port, timeout, self.process)
        except Exception as error:
            self.stop()
            raise RuntimeError(f"gateway did not start: {error}\n{self.output()}") from error
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def output(self) -> str:
        text = self.log()
        if (
            self.process is not None
            and self.process.stdout is not None
            and self.process.poll() is not None
        ):
            text += self.process.stdout.read().decode(errors="replace")
        return text

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
