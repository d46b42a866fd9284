"""``/metrics`` for every worker (``workers:`` above 1).

Each worker keeps its own registry (``idgateway.observe.metrics``). The master makes
a private directory for the run (mode 0700, removed when it stops) and names
it to every worker (``--metrics-dir``). Worker N > 0 listens there on the
UNIX socket ``worker-N.sock``; whoever connects gets the worker's Prometheus
text exposition and the connection closes. Worker 0, which serves the admin
listener, answers ``GET /metrics`` by reading every other worker's socket
(concurrently, each within ``PEER_TIMEOUT``), and shows all of them, its own
included, with a ``worker`` label on every sample, plus
``idgateway_worker_up{worker}``: 1 for each worker that answered, 0 for one
that did not (restarting, stuck), whose figures are then missing from that
scrape. A single process adds no label.

Why not prometheus_client's multiprocess mode: it needs an environment
variable before the first import, keeps files per pid that the gateway must
clean up, and cannot carry the values read at scrape time (provider
readiness, open connections and WebSockets). Counters restart from zero
when a worker is restarted, as they do for a restarted single process;
Prometheus' ``rate()`` handles that, and ``sum without (worker)`` gives the
gateway's totals.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

# Seconds worker 0 waits for another worker's figures.
PEER_TIMEOUT = 2.0
# An exposition larger than this is cut off (a worker's is tens of KiB).
MAX_EXPOSITION = 16 * 1024 * 1024


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"worker-{index}.sock")


class _Exposition(Protocol):
    """Server side: send the registry's text and close."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(generate_latest(self.registry))
        self.transport.loseConnection()


class ExpositionFactory(Factory):
    """Serves one process's registry on a UNIX socket (workers 1..N-1)."""

    noisy = False

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Exposition(self.registry)


class _Reader(Protocol):
    """Client side: everything until the worker closes the connection."""

    def __init__(self) -> None:
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_EXPOSITION:
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._size > MAX_EXPOSITION:
            self.done.errback(ValueError("exposition too large"))
        elif not reason.check(ConnectionDone):
            # Cut off (our timeout, or the worker died mid-way): not the whole text.
            self.done.errback(reason)
        else:
            self.done.callback(b"".join(self._chunks))


async def read_exposition(reactor: Any, path: str, timeout: float = PEER_TIMEOUT) -> bytes | None:
    """One worker's exposition from its socket, or None if it did not give it in time."""
    reader = _Reader()
    endpoint = UNIXClientEndpoint(reactor, path, timeout=timeout)
    timer = None
    try:
        connecting = endpoint.connect(Factory.forProtocol(lambda: reader))
        protocol = await connecting
        timer = reactor.callLater(timeout, protocol.transport.abortConnection)
        return await reader.done
    except Exception:
        return None
    finally:
        if timer is not None and timer.active():
            timer.cancel()


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge(expositions: Sequence[tuple[int, str | None]]) -> bytes:
    """Prometheus text for several workers: each sample labelled with its ``worker``.

    ``expositions`` is (worker index, its text or None when it did not answer).
    """
    merged: dict[str, Metric] = {}
    up = Metric("idgateway_worker_up", "1 when the worker's figures are in this scrape", "gauge")
    for index, text in expositions:
        worker = str(index)
        families: Iterable[Metric] = []
        if text is not None:
            try:
                families = list(text_string_to_metric_families(text))
            except Exception:
                text = None
        up.add_sample("idgateway_worker_up", {"worker": worker}, 0.0 if text is None else 1.0)
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type)
                into.unit = family.unit
                merged[family.name] = into
            into.samples.extend(
                sample._replace(labels={**sample.labels, "worker": worker})
                for sample in family.samples
            )
    return generate_latest(_Merged([*merged.values(), up]))  # type: ignore[arg-type]


class WorkerMetricsGatherer:
    """Worker 0's view of every worker: its own registry and the others' sockets."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        registry: CollectorRegistry,
        directory: str,
        workers: int,
        timeout: float = PEER_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.registry = registry
        self.directory = directory
        self.workers = workers
        self.timeout = timeout

    async def exposition(self) -> bytes:
        own = generate_latest(self.registry).decode("utf-8")
        peers = list(range(1, self.workers))
        results = await defer.gatherResults(
            [
                defer.ensureDeferred(
                    read_exposition(self.reactor, socket_path(self.directory, index), self.timeout)
                )
                for index in peers
            ]
        )
        expositions: list[tuple[int, str | None]] = [(0, own)]
        for index, raw in zip(peers, results, strict=True):
            expositions.append((index, None if raw is None else raw.decode("utf-8", "replace")))
        return merge(expositions)


def listen_exposition(reactor: Any, directory: str, index: int, registry: CollectorRegistry) -> Any:
    """Serve ``registry`` on this worker's socket (a stale one from before is replaced)."""
    path = socket_path(directory, index)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return reactor.listenUNIX(path, ExpositionFactory(registry), mode=0o600)
