"""idgateway.workers.metrics: worker 0 shows every worker's figures, each with a ``worker`` label.

In memory: the workers' registries are real GatewayMetrics; their sockets are
a MemoryReactorClock's recorded UNIX connections, answered by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from idgateway.observe.metrics import GatewayMetrics
from idgateway.workers.metrics import (
    ExpositionFactory,
    WorkerMetricsGatherer,
    listen_exposition,
    merge,
    read_exposition,
    socket_path,
)


def worker_metrics(requests: int, route: str = "app") -> GatewayMetrics:
    metrics = GatewayMetrics()
    for _ in range(requests):
        metrics.observe_request(route, 200, 0.01, 0.005)
    return metrics


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def requests(found: dict[Any, float], worker: str) -> float | None:
    key = (
        "idgateway_requests_total",
        (("route", "app"), ("status_class", "2xx"), ("worker", worker)),
    )
    return found.get(key)


def test_merge_labels_every_sample_with_its_worker() -> None:
    first, second = worker_metrics(3), worker_metrics(5)
    text = merge(
        [
            (0, generate_latest(first.registry).decode()),
            (1, generate_latest(second.registry).decode()),
            (2, None),
        ]
    )
    found = samples(text)
    assert requests(found, "0") == 3
    assert requests(found, "1") == 5
    assert requests(found, "2") is None
    histogram = ("idgateway_request_seconds_count", (("route", "app"), ("worker", "1")))
    assert found[histogram] == 5
    assert found[("idgateway_worker_up", (("worker", "0"),))] == 1
    assert found[("idgateway_worker_up", (("worker", "1"),))] == 1
    assert found[("idgateway_worker_up", (("worker", "2"),))] == 0
    # One HELP and TYPE per family, whatever the number of workers.
    decoded = text.decode()
    assert decoded.count("# TYPE idgateway_requests_total counter") == 1
    assert decoded.count("# TYPE idgateway_request_seconds histogram") == 1
    # No sample without a worker label.
    for family in text_string_to_metric_families(decoded):
        for sample in family.samples:
            assert "worker" in sample.labels, sample


def test_unparseable_text_counts_as_not_answered() -> None:
    found = samples(merge([(0, "not { prometheus"), (1, None)]))
    assert found[("idgateway_worker_up", (("worker", "0"),))] == 0


def test_a_worker_serves_its_registry_and_closes() -> None:
    metrics = worker_metrics(2)
    protocol = ExpositionFactory(metrics.registry).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value() == generate_latest(metrics.registry)
    assert transport.disconnecting


def test_listen_replaces_a_stale_socket(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    stale = socket_path(str(tmp_path), 3)
    Path(stale).write_text("left by a worker that died")
    listen_exposition(reactor, str(tmp_path), 3, GatewayMetrics().registry)
    assert not os.path.exists(stale)
    path, factory, _backlog, mode, _want_pid = reactor.unixServers[0]
    assert path == stale and mode == 0o600
    assert isinstance(factory, ExpositionFactory)


def answer(reactor: MemoryReactorClock, index: int, data: bytes | None, clean: bool = True) -> Any:
    """Complete the recorded connection ``index`` (None: refused)."""
    path, factory, _timeout, _pid = reactor.unixClients[index]
    if data is None:
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        return None
    protocol = factory.buildProtocol(UNIXAddress(path))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    reason = ConnectionDone() if clean else ConnectionLost()
    protocol.connectionLost(Failure(reason))
    return transport


def test_read_exposition_whole_or_nothing() -> None:
    reactor = MemoryReactorClock()
    whole = defer.ensureDeferred(read_exposition(reactor, "/run/x/worker-1.sock"))
    answer(reactor, 0, b"# a whole exposition\n")
    assert whole.result == b"# a whole exposition\n"

    cut = defer.ensureDeferred(read_exposition(reactor, "/run/x/worker-1.sock"))
    answer(reactor, 1, b"# half of", clean=False)
    assert cut.result is None

    refused = defer.ensureDeferred(read_exposition(reactor, "/run/x/worker-2.sock"))
    answer(reactor, 2, None)
    assert refused.result is None


def test_read_exposition_gives_up_after_the_timeout() -> None:
    reactor = MemoryReactorClock()
    stuck = defer.ensureDeferred(read_exposition(reactor, "/run/x/worker-1.sock", timeout=2))
    path, factory, _timeout, _pid = reactor.unixClients[0]
    protocol = factory.buildProtocol(UNIXAddress(path))

    class Abortable(StringTransport):
        def abortConnection(self) -> None:
            protocol.connectionLost(Failure(ConnectionLost()))

    protocol.makeConnection(Abortable())
    protocol.dataReceived(b"# the beginning")
    assert not stuck.called
    reactor.advance(2)
    assert stuck.result is None
    assert reactor.getDelayedCalls() == []


def test_gatherer_reads_every_other_worker(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    own = worker_metrics(1)
    gatherer = WorkerMetricsGatherer(reactor, own.registry, str(tmp_path), workers=3)
    scrape = defer.ensureDeferred(gatherer.exposition())
    assert [entry[0] for entry in reactor.unixClients] == [
        socket_path(str(tmp_path), 1),
        socket_path(str(tmp_path), 2),
    ]
    answer(reactor, 0, generate_latest(worker_metrics(7).registry))
    assert not scrape.called
    answer(reactor, 1, None)  # worker 2 is restarting
    found = samples(scrape.result)
    assert requests(found, "0") == 1
    assert requests(found, "1") == 7
    assert requests(found, "2") is None
    assert found[("idgateway_worker_up", (("worker", "2"),))] == 0


# ---- the worker processes' side ----------------------------------------------------------------


def worker(tmp_path: Path, index: int, reactor: MemoryReactorClock, metrics: GatewayMetrics) -> Any:
    from idgateway.config.load import load_config
    from idgateway.workers.worker import WorkerService

    path = tmp_path / "gateway.yaml"
    path.write_text(
        "workers: 2\nadmin: {address: 127.0.0.1:1}\nlisteners:\n  - address: 127.0.0.1:2\n"
        "routes:\n  - name: app\n    hosts: [app.localhost]\n    upstream: http://127.0.0.1:9\n"
    )
    return WorkerService(
        load_config(str(path)),
        reactor,
        index=index,
        inherited={},
        install_signal_handlers=False,
        workers=2,
        metrics_dir=str(tmp_path),
        metrics=metrics,
    )


def test_worker_1_serves_its_figures_on_its_socket(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    metrics = worker_metrics(4)
    service = worker(tmp_path, 1, reactor, metrics)
    service.startService()
    path, factory, *_ = reactor.unixServers[0]
    assert path == socket_path(str(tmp_path), 1)
    assert service.gather_metrics is None
    # Worker 1 has no admin listener, but its scrape-time values are bound.
    transport = StringTransport()
    factory.buildProtocol(None).makeConnection(transport)
    found = samples(transport.value())
    assert found[("idgateway_requests_total", (("route", "app"), ("status_class", "2xx")))] == 4
    assert found[("idgateway_open_connections", ())] == 0
    assert found[("idgateway_websockets_open", (("route", "app"),))] == 0
    service.stopService()


def test_worker_0_admin_metrics_gather_every_worker(tmp_path: Path) -> None:
    from twisted.web.test.requesthelper import DummyRequest

    from idgateway.server.admin import admin_site

    reactor = MemoryReactorClock()
    metrics = worker_metrics(2)
    service = worker(tmp_path, 0, reactor, metrics)
    assert service.gather_metrics is not None
    site = admin_site(service.holder, service, metrics=metrics)
    request = DummyRequest([b"metrics"])
    request._disconnected = False  # as twisted.web.server.Request has
    resource = site.resource.getChildWithDefault(b"metrics", request)
    resource.render(request)
    assert not request.finished
    answer(reactor, 0, generate_latest(worker_metrics(6).registry))
    assert request.finished
    found = samples(b"".join(request.written))
    assert requests(found, "0") == 2
    assert requests(found, "1") == 6
    assert found[("idgateway_open_connections", (("worker", "0"),))] == 0
