"""Several worker processes behind one master (``workers: N`` in the config).

The master is the twistd process. It binds every listener itself, never
accepts on them, and runs N worker processes (``python -m
idgateway.workers.process``, see ``workers.worker``) that inherit the
listening sockets as fixed descriptors (3, 4, ...) and accept on them side by
side. The kernel hands each new
connection to whichever worker accepts first; each takes one connection per
turn of its event loop (``SharedPort``), so a burst spreads over the workers.

- A worker that exits while the master is running is started again, after a
  pause that doubles while it keeps failing quickly (1 s up to 30 s).
- SIGHUP to the master reaches every worker; each re-reads the file itself.
  Changing the listeners (or the worker count) needs a restart: the master
  says so in the log, once a child has read the file (the master keeps none
  of what reads a config: ``workers.config_child``).
- SIGTERM to the master stops every worker gracefully: a worker stops
  accepting, closes idle keep-alive connections, lets in-flight requests
  finish (up to the drain timeout), then exits. The master exits 0 once they
  are all gone, killing any left after the drain timeout.
- A worker writes its log as JSON records on stdout; the master re-publishes
  each event into its own log with a ``[worker N]`` prefix (and a
  ``gateway_worker`` field), so there is one log. When twistd writes that log
  as text on stdout, the workers send their access lines finished, in framed
  batches the master writes there as they are (``workers.log_relay``).
- A worker's stdin is a pipe from the master that carries nothing: when it
  reaches end-of-file the master has died (even by SIGKILL), and the worker
  drains and exits instead of serving on as an orphan.
- Metrics: the master makes a private directory for the run
  (``--metrics-dir``, removed when it stops); worker N > 0 serves its
  registry on a UNIX socket there, and worker 0's ``/metrics`` shows every
  worker's figures with a ``worker`` label (``idgateway.workers.metrics``).
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import site
import socket
import sys
import tempfile
from typing import Any, TextIO

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    eventFromJSON,
    formatEvent,
)
from twisted.python.failure import Failure

import idgateway
from idgateway.config.model import Config, Listener
from idgateway.config.watch import ConfigWatcher
from idgateway.observe.log_time import text_timestamp
from idgateway.server import systemd
from idgateway.server.startup_errors import StartupError, listen_problem, stop_starting
from idgateway.workers.config_child import ConfigReader
from idgateway.workers.drain import DRAIN_TIMEOUT
from idgateway.workers.log_relay import (
    ACCESS_NAMESPACE,
    ACCESS_RECORD,
    MAX_LINE,
    READY_FIELD,
    TRACEBACK_FIELD,
    WORKER_FIELD,
    WorkerFailure,
)
from idgateway.workers.log_stream import WorkerStdout
from idgateway.workers.shared_port import FIRST_LISTEN_FD, bind_listener, listener_key

# Seconds the master waits past the drain timeout before it SIGKILLs a worker.
KILL_GRACE = 5.0


# Pause before restarting a worker that exited; doubles while it keeps dying
# within STABLE_UPTIME of its start, up to MAX_RESTART_DELAY.
RESTART_DELAY = 1.0


MAX_RESTART_DELAY = 30.0


STABLE_UPTIME = 10.0


def worker_count(config: Config) -> int:
    # The schema's `workers` key (1 by default, `auto` already resolved to the
    # number of cores); read defensively for configs built without it.
    return max(1, int(getattr(config, "workers", 1) or 1))


def _worker_pythonpath(environ: dict[str, str]) -> dict[str, str]:
    """The environment for a worker, so that it imports this very idgateway.

    From a checkout, the package's parent directory goes first on PYTHONPATH;
    an installed package (in site-packages) is found as it is.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(idgateway.__file__)))
    installed = {os.path.abspath(p) for p in site.getsitepackages()}
    installed.add(os.path.abspath(site.getusersitepackages()))
    env = dict(environ)
    if root not in installed:
        existing = env.get("PYTHONPATH")
        env["PYTHONPATH"] = root + (os.pathsep + existing if existing else "")
    return env


@attrs.define(eq=False)
class _Worker:
    index: int
    restart_delay: float = RESTART_DELAY
    process: IProcessTransport | None = None
    pid: int | None = None
    started: float = 0.0
    ready: bool = False
    reload_pending: bool = False
    restart_call: IDelayedCall | None = None


class MasterService(Service):
    """Binds the listeners and keeps N worker processes serving them."""

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        workers: int | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        install_signal_handlers: bool = True,
        python: str = sys.executable,
        access_out: TextIO | None = None,
    ) -> None:
        self.config = config
        # Where twistd writes the log as text (its stdout), if it does: the
        # workers' access lines are then written there directly, formatted as
        # twistd's text observer would, instead of going through it one event
        # at a time (a third of a core at 4,000 requests a second).
        self.access_out = access_out
        self.reactor = reactor
        self.count = workers if workers is not None else worker_count(config)
        self.drain_timeout = drain_timeout
        self.install_signal_handlers = install_signal_handlers
        self.python = python
        # Absolute now: twistd may change directory before the service starts.
        self.config_path = os.path.abspath(config.source)
        self.cwd = os.getcwd()
        self.workers = [_Worker(index) for index in range(self.count)]
        self._sockets: list[tuple[Listener, socket.socket]] = []
        self._stopping = False
        self._all_gone: defer.Deferred[None] | None = None
        self._kill_call: IDelayedCall | None = None
        # systemd hook: whether READY=1 was sent (once every worker first served).
        self._notified_ready = False
        # Where workers 1..N-1 serve their metrics to worker 0 (made at start).
        self.metrics_dir: str | None = None
        # The child reading the file for the latest reload, while it runs.
        self._config_reader: ConfigReader | None = None
        # reload: {watch: true}: a change to the file reloads every worker.
        self.watcher = ConfigWatcher(self.config_path, reactor, self.reload)

    # -- lifecycle --------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Before twistd drops privileges (--uid), so ports below 1024 work.
        self._bind_or_stop()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._bind_or_stop()
        if self.metrics_dir is None:
            # Private to the gateway's user (0700); gone when the master stops.
            self.metrics_dir = tempfile.mkdtemp(prefix="idgw-metrics-")
        # (Each worker logs the config's warnings as it starts.)
        if self.install_signal_handlers:
            signal.signal(signal.SIGHUP, self._on_sighup)
            # The reactor installs its own SIGTERM handler as it starts; ours
            # must come after it. Ours stops without recording the signal, so
            # twistd exits 0 after a clean drain instead of re-raising SIGTERM.
            self.reactor.callWhenRunning(signal.signal, signal.SIGTERM, self._on_sigterm)
        for worker in self.workers:
            self._spawn(worker)
        self.watcher.apply(self.config.reload)
        self._log.info(
            "idgateway master (pid {pid}) serving with {count} workers on {listeners}",
            pid=os.getpid(),
            count=self.count,
            listeners=", ".join(
                ("https://" if each.tls else "http://") + each.address
                for each in self.config.listeners
            ),
        )

    def _bind_or_stop(self) -> None:
        try:
            self._bind()
        except StartupError as error:
            stop_starting(self._log, error)

    def _bind(self) -> None:
        if self._sockets:
            return
        # (The certificates were loaded in twistd's option checks, in a child
        # process, so a bad one stops the start: workers.config_child.)
        bound: list[tuple[Listener, socket.socket]] = []
        try:
            for listener in self.config.listeners:
                # systemd hook (socket activation): the socket systemd passed, if any.
                passed = systemd.listener_socket(listener.host, listener.port)
                if passed is None:
                    try:
                        passed = bind_listener(listener)
                    except CannotListenError as error:  # the OSError inside says why
                        where = listener.source
                        raise StartupError(listen_problem(listener.address, where, error)) from None
                bound.append((listener, passed))
        except Exception:
            for _, sock in bound:
                sock.close()
            raise
        self._sockets = bound

    def stopService(self) -> defer.Deferred[None]:
        systemd.stopping()  # systemd hook: STOPPING=1
        super().stopService()
        self._stopping = True
        self.watcher.stop()
        for worker in self.workers:
            if worker.restart_call is not None and worker.restart_call.active():
                worker.restart_call.cancel()
            worker.restart_call = None
        running = [w for w in self.workers if w.process is not None]
        self._log.info("stopping {count} worker(s)", count=len(running))
        for worker in running:
            self._signal(worker, "TERM")
        self._all_gone = defer.Deferred()
        self._kill_call = self.reactor.callLater(
            self.drain_timeout + KILL_GRACE, self._kill_stragglers
        )
        self._check_all_gone()
        return self._all_gone

    def _kill_stragglers(self) -> None:
        self._kill_call = None
        for worker in self.workers:
            if worker.process is not None:
                self._log.warn(
                    "worker {index} (pid {pid}) still running after the drain timeout; killing it",
                    index=worker.index,
                    pid=worker.pid,
                )
                self._signal(worker, "KILL")

    def _check_all_gone(self) -> None:
        if self._all_gone is None or any(w.process is not None for w in self.workers):
            return
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        for _, sock in self._sockets:
            sock.close()
        self._sockets = []
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = None
        self._log.info("all workers stopped")
        done, self._all_gone = self._all_gone, None
        done.callback(None)

    # -- workers -----------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        worker.restart_call = None
        if self._stopping:
            return
        args = [
            self.python,
            "-m",
            "idgateway.workers.process",
            "--config",
            self.config_path,
            "--index",
            str(worker.index),
            "--drain-timeout",
            str(self.drain_timeout),
            "--workers",
            str(self.count),
        ]
        if self.metrics_dir is not None:
            args += ["--metrics-dir", self.metrics_dir]
        if self.access_out is not None:
            # The worker sends its access lines as this log shows them.
            args.append("--access-text")
        # 0: a pipe that only tells the worker the master is alive.
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for offset, (listener, sock) in enumerate(self._sockets):
            fd = FIRST_LISTEN_FD + offset
            child_fds[fd] = sock.fileno()
            args += ["--listen-fd", f"{fd}={listener.address}"]
        protocol = WorkerProtocol(self, worker, self._log.observer)
        worker.ready = False
        worker.reload_pending = False
        worker.started = self.reactor.seconds()
        try:
            process = self.reactor.spawnProcess(
                protocol,
                self.python,
                args,
                # systemd hook: no NOTIFY_SOCKET or LISTEN_* for the workers.
                env=_worker_pythonpath(systemd.child_environ(os.environ)),
                path=self.cwd,
                childFDs=child_fds,
            )
        except Exception:
            self._log.failure("could not start worker {index}", index=worker.index)
            self._schedule_restart(worker)
            return
        worker.process = process
        worker.pid = process.pid
        self._log.info("worker {index} started (pid {pid})", index=worker.index, pid=worker.pid)

    def worker_ready(self, worker: _Worker) -> None:
        worker.ready = True
        # systemd hook: READY=1 once every worker has said it is serving.
        if not self._notified_ready and all(each.ready for each in self.workers):
            self._notified_ready = True
            systemd.ready(f"serving with {self.count} worker(s)")
            # Started: what start-up left in the heap goes back (~1 MiB).
            return_free_memory()
        if worker.reload_pending:
            # A SIGHUP came while it was starting: it may have read the file
            # before the change.
            worker.reload_pending = False
            self._signal(worker, "HUP")

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        uptime = self.reactor.seconds() - worker.started
        pid, was_ready = worker.pid, worker.ready
        worker.process = None
        worker.pid = None
        worker.ready = False
        if self._stopping:
            self._log.info(
                "worker {index} (pid {pid}) stopped ({status})",
                index=worker.index,
                pid=pid,
                status=_describe_exit(reason),
            )
            self._check_all_gone()
            return
        if uptime >= STABLE_UPTIME:
            worker.restart_delay = RESTART_DELAY
        self._log.warn(
            "worker {index} (pid {pid}) ended ({status}){early}; restarting it in {delay:.0f} s",
            index=worker.index,
            pid=pid,
            status=_describe_exit(reason),
            early="" if was_ready else " before it was serving",
            delay=worker.restart_delay,
        )
        self._schedule_restart(worker)

    def _schedule_restart(self, worker: _Worker) -> None:
        delay = worker.restart_delay
        worker.restart_delay = min(delay * 2, MAX_RESTART_DELAY)
        worker.restart_call = self.reactor.callLater(delay, self._spawn, worker)

    def _signal(self, worker: _Worker, name: str) -> None:
        if worker.process is None:
            return
        try:
            worker.process.signalProcess(name)
        except Exception:
            # It has just exited; processEnded is on its way.
            pass

    # -- signals -----------------------------------------------------------------

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._terminate)

    def _terminate(self) -> None:
        self._log.info("received SIGTERM: draining the workers")
        # stopService, as a shutdown trigger, drains the workers first.
        self.reactor.stop()

    def reload(self) -> None:
        """Tell every worker to re-read the config; say what a reload cannot change."""
        if self._stopping:
            return
        if self._notified_ready:
            systemd.reloading()  # systemd hook: RELOADING=1 ... READY=1 around the fan-out
        self._log.info("SIGHUP: telling {count} worker(s) to reload", count=self.count)
        for worker in self.workers:
            if worker.ready:
                self._signal(worker, "HUP")
            elif worker.process is not None:
                worker.reload_pending = True
        if self._notified_ready:
            systemd.ready(f"serving with {self.count} worker(s); SIGHUP sent to each")
        self._read_config()

    def _read_config(self) -> None:
        """Read the file in a child (workers.config_child); then ``config_read``."""
        reader = ConfigReader(lambda config: self.config_read(reader, config))
        self._config_reader = reader
        try:
            self.reactor.spawnProcess(
                reader,
                self.python,
                ConfigReader.argv(self.python, self.config_path),
                env=_worker_pythonpath(systemd.child_environ(os.environ)),
                path=self.cwd,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except Exception:
            self._config_reader = None
            self._log.failure("could not start reading {path}", path=self.config_path)

    def config_read(self, reader: ConfigReader, config: Config | None) -> None:
        """The file as a reload reads it (None: refused; the workers log why)."""
        if reader is not self._config_reader or self._stopping:
            return  # a later reload's read is the one that counts
        self._config_reader = None
        if config is None:
            if reader.errors:
                # Not a refused file (the workers say why), but a reader that failed.
                self._log.warn(
                    "could not read {path} for the reload: {errors}",
                    path=self.config_path,
                    errors=reader.errors.decode("utf-8", "replace").strip(),
                )
            return
        bound = sorted(listener_key(listener) for listener, _ in self._sockets)
        wanted = sorted(listener_key(listener) for listener in config.listeners)
        if bound != wanted:
            self._log.warn(
                "the listeners changed in {path}; with several workers that needs a restart "
                "(still serving {listeners})",
                path=self.config_path,
                listeners=", ".join(listener.address for listener, _ in self._sockets),
            )
        if worker_count(config) != self.count:
            self._log.warn(
                "workers changed to {new} in {path}; that needs a restart (running {count})",
                new=worker_count(config),
                path=self.config_path,
                count=self.count,
            )
        self.config = config
        self.watcher.apply(config.reload)


def return_free_memory() -> bool:
    """Collect garbage and hand the heap's free pages back to the system (glibc).

    For a long-lived process whose start-up allocated and freed more than it
    keeps; whether ``malloc_trim`` was there and released anything.
    """
    gc.collect()
    try:
        # Loaded already (twisted.python.win32 imports it), so free to use.
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return False  # not glibc
    return bool(trim(0))


def _describe_exit(reason: Failure) -> str:
    value = reason.value
    signal_number = getattr(value, "signal", None)
    if signal_number:
        try:
            return f"killed by {signal.Signals(signal_number).name}"
        except ValueError:
            return f"killed by signal {signal_number}"
    return f"exit status {getattr(value, 'exitCode', None)}"


class WorkerProtocol(ProcessProtocol):
    """One worker's pipes: its JSON log on stdout, stray text on stderr."""

    def __init__(self, master: MasterService, worker: _Worker, observer: ILogObserver) -> None:
        self.master = master
        self.worker = worker
        self.observer = observer
        self._log = Logger(observer=observer)
        self._partial: dict[int, bytes] = {1: b"", 2: b""}
        self.access_lines: list[str] | None = None
        # With twistd's text log on stdout, the worker's stdout carries frames
        # of finished access lines among its lines (see _spawn: --access-text).
        self._stdout: WorkerStdout | None = None
        if getattr(master, "access_out", None) is not None:
            self._stdout = WorkerStdout(self._stdout_line, self._write_access_frame)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1 and self._stdout is not None:
            self.access_lines = []
            try:
                self._stdout.feed(data)
            finally:
                self._flush_access()
                self.access_lines = None
            return
        buffered = self._partial.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial[childFD] = rest
        # Access lines written straight to twistd's stdout are gathered per
        # read and written at once (and before any other event, to keep order).
        self.access_lines = [] if getattr(self.master, "access_out", None) is not None else None
        try:
            for line in lines:
                self._line(childFD, line)
        finally:
            self._flush_access()
            self.access_lines = None

    def _flush_access(self) -> None:
        out = self.master.access_out if self.access_lines else None
        if out is not None and self.access_lines:
            out.write("".join(self.access_lines))
            out.flush()
            self.access_lines.clear()

    def _stdout_line(self, raw: bytes) -> None:
        self._line(1, raw)

    def _write_access_frame(self, lines: bytes) -> None:
        """Finished access lines from the worker: to twistd's stdout, as they are."""
        self._flush_access()  # per-line records before it in this read go first
        if not lines.endswith(b"\n"):
            lines += b"\n"  # never let the next line run on from it
        out = self.master.access_out
        if out is not None:
            out.write(lines.decode("utf-8", "replace"))
            out.flush()

    def processEnded(self, reason: Failure) -> None:
        # What the worker was writing when it ended: whole lines are passed
        # on; an access line cut short is left out rather than logged torn.
        torn = self._stdout.end() if self._stdout is not None else 0
        for fd, rest in self._partial.items():
            if fd == 1 and rest.startswith(ACCESS_RECORD.encode()):
                torn += len(rest)
            elif rest:
                self._line(fd, rest)
        self._partial = {1: b"", 2: b""}
        if torn:
            self._log.warn(
                "[worker {gateway_worker}] ended in the middle of an access line; "
                "its {torn} bytes are left out of the log",
                gateway_worker=self.worker.index,
                torn=torn,
            )
        self.master.worker_ended(self.worker, reason)

    def _line(self, fd: int, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if fd == 1 and text.startswith(ACCESS_RECORD):
            when, tab, line = text[1:].partition("\t")
            try:
                log_time = float(when)
            except ValueError:
                log_time = None
            if tab and log_time is not None:
                self._relay_access(log_time, line)
                return
        self._flush_access()
        if fd == 1 and text.startswith("\x1e"):
            try:
                event = eventFromJSON(text[1:])
            except Exception:
                pass  # not a record after all: pass it on as text
            else:
                self._relay(event)
                return
        if text.strip():
            level = LogLevel.warn if fd == 2 else LogLevel.info
            self._log.emit(
                level,
                "[worker {gateway_worker}] {line}",
                gateway_worker=self.worker.index,
                line=text,
            )

    def _relay_access(self, log_time: float, line: str) -> None:
        if self.access_lines is not None:
            self.access_lines.append(
                f"{text_timestamp(log_time)} [{ACCESS_NAMESPACE}#info] "
                f"[worker {self.worker.index}] {line}\n"
            )
            return
        self.observer(
            {
                "log_namespace": ACCESS_NAMESPACE,
                "log_level": LogLevel.info,
                "log_system": f"{ACCESS_NAMESPACE}#info",
                "log_format": f"[worker {self.worker.index}] {{access_line}}",
                "log_time": log_time,
                "access_line": line,
                WORKER_FIELD: self.worker.index,
            }
        )

    def _relay(self, event: dict[str, Any]) -> None:
        index = self.worker.index
        prefix = f"[worker {index}] "
        if isinstance(event.get("log_format"), str):
            # Literal text: the flattened fields the format refers to stay valid.
            event["log_format"] = prefix + event["log_format"]
        else:
            text = formatEvent(event).replace("{", "{{").replace("}", "}}")
            event["log_format"] = prefix + text
        event[WORKER_FIELD] = index
        traceback = event.pop(TRACEBACK_FIELD, None)
        if isinstance(traceback, str) and "log_failure" in event:
            event["log_failure"] = WorkerFailure(traceback)
        ready = bool(event.pop(READY_FIELD, False))
        try:
            self.observer(event)
        finally:
            if ready:
                self.master.worker_ready(self.worker)
