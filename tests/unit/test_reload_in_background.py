"""SIGHUP and reload: watch read the file in a thread, then apply it on the reactor."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock

from idgateway.config.load import load_config
from idgateway.server import service as service_module
from idgateway.server.service import GatewayService

CONFIG = (
    "listeners:\n  - address: 127.0.0.1:1\n"
    "routes:\n  - name: {name}\n    hosts: [app.localhost]\n    upstream: http://127.0.0.1:9\n"
)


class ThreadPoolReactor(MemoryReactorClock):
    """A memory reactor whose thread pool runs each job in a real thread, and
    whose callFromThread is delivered when the test says so (as the reactor
    loop would)."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.lock = threading.Lock()

    def getThreadPool(self) -> Any:
        class Pool:
            def callInThreadWithCallback(self, done: Any, job: Any, *args: Any) -> None:
                def run() -> None:
                    try:
                        done(True, job(*args))
                    except BaseException as error:  # pragma: no cover - passed on
                        done(False, error)

                thread = threading.Thread(target=run)
                thread.start()
                thread.join()

        return Pool()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        with self.lock:
            self.from_threads.append((lambda: f(*args, **kw), ()))

    def deliver(self) -> None:
        while self.from_threads:
            call, _ = self.from_threads.pop(0)
            call()


def make(tmp_path: Path) -> tuple[GatewayService, ThreadPoolReactor, Path]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(name="first"))
    reactor = ThreadPoolReactor()
    service = GatewayService(load_config(str(path)), reactor, install_signal_handlers=False)
    service.startService()
    return service, reactor, path


def test_the_file_is_read_off_the_reactor_thread(tmp_path: Path, monkeypatch) -> None:
    service, reactor, path = make(tmp_path)
    readers: list[str] = []
    real = service_module.load_config

    def recording(file: str, environ: Any = None) -> Any:
        readers.append(threading.current_thread().name)
        return real(file)

    monkeypatch.setattr(service_module, "load_config", recording)
    path.write_text(CONFIG.format(name="second"))
    outcome: list[bool] = []
    service.reload_in_background().addCallback(outcome.append)
    reactor.deliver()
    assert readers and readers[0] != threading.main_thread().name
    assert outcome == [True]
    assert [route.name for route in service.config.routes] == ["second"]


def test_only_the_latest_of_several_reloads_is_applied(tmp_path: Path) -> None:
    service, reactor, path = make(tmp_path)
    path.write_text(CONFIG.format(name="second"))
    first = service.reload_in_background()
    path.write_text(CONFIG.format(name="third"))
    second = service.reload_in_background()
    outcomes: list[bool] = []
    first.addCallback(outcomes.append)
    second.addCallback(outcomes.append)
    reactor.deliver()
    assert [route.name for route in service.config.routes] == ["third"]
    assert service.reloads == 1


def test_a_bad_file_read_in_the_thread_is_refused_on_the_reactor(tmp_path: Path) -> None:
    service, reactor, path = make(tmp_path)
    path.write_text("listeners: [")
    outcome: list[bool] = []
    service.reload_in_background().addCallback(outcome.append)
    reactor.deliver()
    assert outcome == [False]
    assert [route.name for route in service.config.routes] == ["first"]
