"""One worker process: the gateway service on inherited sockets, until told to stop.

Started by the master as ``python -m idgateway.workers.process``; SIGTERM or
the end of its stdin (the master died) drains and exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IListeningPort,
    IReadDescriptor,
)
from twisted.logger import (
    Logger,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from idgateway.config.load import ConfigError, load_config
from idgateway.config.model import Config, Listener
from idgateway.observe.metrics import METRICS, GatewayMetrics
from idgateway.server.connection_limits import throttle_accept_logs
from idgateway.server.service import GatewayService
from idgateway.server.socket_writes import accept_listened
from idgateway.workers.drain import DRAIN_TIMEOUT
from idgateway.workers.log_relay import READY_FIELD, log_json_to_stdout
from idgateway.workers.memory import release_free_memory
from idgateway.workers.metrics import WorkerMetricsGatherer, listen_exposition
from idgateway.workers.shared_port import adopt_shared_port, parse_listen_fd


class WorkerService(GatewayService):
    """GatewayService on sockets inherited from the master instead of its own."""

    drains_on_sigterm = False  # the worker installs its own SIGTERM handling
    watches_config = False  # the master watches (reload: watch) and sends SIGHUP

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        index: int,
        inherited: dict[tuple[str, int], int],
        install_signal_handlers: bool = True,
        workers: int = 1,
        metrics_dir: str | None = None,
        metrics: GatewayMetrics = METRICS,
    ) -> None:
        super().__init__(config, reactor, install_signal_handlers=install_signal_handlers)
        self.index = index
        # One worker serves the admin listener (it binds its own port).
        self.serves_admin = index == 0
        # (host, port) -> inherited descriptor, until adopted.
        self.inherited = dict(inherited)
        self._drained: defer.Deferred[None] | None = None
        self.metrics = metrics
        self.metrics_dir = metrics_dir
        self.gather_metrics = None
        if index == 0 and workers > 1 and metrics_dir is not None:
            # The admin listener's /metrics: every worker's figures.
            self.gather_metrics = WorkerMetricsGatherer(
                reactor, metrics.registry, metrics_dir, workers
            ).exposition

    def startService(self) -> None:
        if self.index > 0 and self.metrics_dir is not None:
            from idgateway.server.admin import bind_metrics

            # Worker 0 reads this worker's figures (scrape-time values included).
            bind_metrics(self.metrics, self.holder, self)
            self._ports[("metrics", self.index)] = listen_exposition(
                self.reactor, self.metrics_dir, self.index, self.metrics.registry
            )
        super().startService()
        for (host, port), fd in self.inherited.items():
            self._log.warn(
                "{host}:{port} is no longer in the configuration; this worker does not serve "
                "it (restart the gateway to stop listening there)",
                host=host,
                port=port,
            )
            os.close(fd)
        self.inherited = {}

    def _listen(self, listener: Listener) -> None:
        fd = self.inherited.pop((listener.host, listener.port), None)
        if fd is None:
            self._log.warn(
                "the master does not listen on {address}; restart the gateway to serve it",
                address=listener.address,
            )
            return
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        try:
            # The master made it non-blocking; be sure, since a blocking
            # listening socket would hang twisted's accept loop.
            os.set_blocking(fd, False)
            port: IListeningPort = adopt_shared_port(
                self.reactor, fd, family, self._factory_for(listener)
            )
        finally:
            # adoptStreamPort works on its own duplicate.
            os.close(fd)
        accept_listened(port)
        throttle_accept_logs(port, self.reactor, listener.address)
        self._ports[(listener.host, listener.port)] = port

    def _open_new_listeners(self, config: Config) -> None:
        # The master owns the sockets; it logs that a listener change needs a
        # restart. TLS certificates on the existing listeners do reload.
        pass

    def _close_old_listeners(self, config: Config) -> None:
        pass  # (as above: the workers keep serving the master's sockets)

    def drain(self, timeout: float) -> defer.Deferred[None]:
        """Stop accepting, let in-flight requests finish (at most ``timeout`` s), stop."""
        if self._drained is None:
            self._drained = self.drain_connections(timeout).addCallback(
                lambda _: defer.maybeDeferred(self.stopService)
            )
        return self._drained


@implementer(IReadDescriptor)
class Lifeline:
    """The read end of a pipe from the master: end-of-file means the master is gone."""

    def __init__(self, fd: int, on_lost: Callable[[], None]) -> None:
        self.fd = fd
        self.on_lost = on_lost

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Failure | None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return Failure(ConnectionLost())
        return None if data else Failure(ConnectionDone())

    def connectionLost(self, reason: Failure) -> None:
        self.on_lost()

    def logPrefix(self) -> str:
        return "master-lifeline"


def release_memory_after_start(service: GatewayService, reactor: Any) -> None:
    """Give back what start-up freed now, and what each provider's first
    discovery freed once it is ready (see ``idgateway.workers.memory``)."""
    release_free_memory()
    for handle in service.holder.current.providers.values():
        client = handle.client
        if not client.ready:
            # (Once the discovery that made it ready has let go of its objects.)
            client.when_ready.append(lambda _metadata: reactor.callLater(0, release_free_memory))


def main(argv: Sequence[str] | None = None, *, reactor: Any) -> int:
    # The master forwards SIGHUP as soon as this worker says it is serving,
    # and handles ^C (the terminal sends SIGINT to every process) by sending
    # SIGTERM: until then, neither must kill this process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = argparse.ArgumentParser(
        prog="python -m idgateway.workers.process",
        description="One idgateway worker; the master (twistd idgateway) starts these.",
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT)
    parser.add_argument("--workers", type=int, default=1, help="how many workers the master runs")
    parser.add_argument(
        "--metrics-dir", default=None, help="where workers serve their metrics to worker 0"
    )
    parser.add_argument(
        "--access-text",
        action="store_true",
        help="send access lines finished, as the master's text log on stdout shows them",
    )
    parser.add_argument(
        "--listen-fd",
        action="append",
        type=parse_listen_fd,
        default=[],
        metavar="FD=HOST:PORT",
        help="an inherited listening socket and the listener it belongs to",
    )
    args = parser.parse_args(argv)
    log_json_to_stdout(reactor, text_for_worker=args.index if args.access_text else None)
    log = Logger(namespace="idgateway.workers.worker")
    try:
        config = load_config(args.config)
    except ConfigError as error:
        for problem in error.problems:
            log.error("configuration refused: {problem}", problem=str(problem))
        return 1
    inherited = {address: fd for fd, address in args.listen_fd}
    try:
        service = WorkerService(
            config,
            reactor,
            index=args.index,
            inherited=inherited,
            workers=args.workers,
            metrics_dir=args.metrics_dir,
        )
    except Exception:
        log.failure("worker {index} could not start", index=args.index)
        return 1
    exit_code = 0
    stopping = False

    def start() -> None:
        nonlocal exit_code
        try:
            service.startService()
        except Exception:
            log.failure("worker {index} could not start", index=args.index)
            exit_code = 1
            stop_reactor()
            return
        log.info(
            "worker {index} serving (pid {pid})",
            index=args.index,
            pid=os.getpid(),
            **{READY_FIELD: True},
        )
        release_memory_after_start(service, reactor)

    def stop_reactor() -> None:
        if reactor.running:
            reactor.stop()

    def stop(why: str) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        log.info("worker {index} stopping: {why}", index=args.index, why=why)
        done = service.drain(args.drain_timeout) if service.running else defer.succeed(None)

        def finished(result: object) -> None:
            if isinstance(result, Failure):
                log.failure("worker {index}: error while stopping", result, index=args.index)
            stop_reactor()

        done.addBoth(finished)

    def on_sigterm(signum: int, frame: Any) -> None:
        reactor.callFromThread(stop, "SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    reactor.addReader(Lifeline(0, lambda: stop("the master is gone")))
    reactor.callWhenRunning(start)
    # SIGHUP is GatewayService's, SIGTERM ours; nothing else is wanted.
    reactor.run(installSignalHandlers=False)
    return exit_code
