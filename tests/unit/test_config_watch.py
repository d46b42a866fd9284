"""``reload: {watch: true, interval: 2s}``: the config file's changes reload the gateway.

The schema (with bad input), the watcher on a ``Clock``, and a GatewayService
and a MasterService on a MemoryReactorClock whose file is rewritten between
clock advances.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from idgateway.config.load import ConfigError, load_config
from idgateway.config.model import ReloadSettings
from idgateway.config.watch import ConfigWatcher
from idgateway.server.service import GatewayService

BASE = """\
listeners:
  - address: 127.0.0.1:1
routes:
  - name: app
    hosts: [app.localhost]
    upstream: http://127.0.0.1:9
"""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def problem(tmp_path: Path, extra: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "gateway.yaml", BASE + extra), {})
    assert len(caught.value.problems) == 1, caught.value.problems
    return str(caught.value.problems[0])


# ---- the schema ------------------------------------------------------------------------------


def test_default_is_off(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "gateway.yaml", BASE), {})
    assert config.reload == ReloadSettings(watch=False, interval=2.0)


def test_watch_and_interval(tmp_path: Path) -> None:
    text = BASE + "reload: {watch: true, interval: 500ms}\n"
    config = load_config(write(tmp_path / "gateway.yaml", text), {})
    assert config.reload == ReloadSettings(watch=True, interval=0.5)
    text = BASE + "reload:\n  watch: true\n  interval: 3\n"
    assert load_config(write(tmp_path / "gateway.yaml", text), {}).reload.interval == 3.0


@pytest.mark.parametrize(
    ("extra", "line", "key", "says"),
    [
        ("reload: true\n", 7, "reload", "expected a mapping like {watch: true, interval: 2s}"),
        ("reload: {watch: often}\n", 7, "reload.watch", "expected true or false"),
        ("reload: {watch: true, interval: 10ms}\n", 7, "reload.interval", "at least 100ms"),
        ("reload: {watch: true, interval: soon}\n", 7, "reload.interval", "not a duration"),
        ("reload:\n  watch: true\n  every: 2s\n", 9, "reload.every", "every"),
    ],
)
def test_bad_reload_settings_name_file_line_and_key(
    tmp_path: Path, extra: str, line: int, key: str, says: str
) -> None:
    text = problem(tmp_path, extra)
    assert text.startswith(f"{tmp_path / 'gateway.yaml'}:{line}: {key}: "), text
    assert says in text, text


# ---- the watcher -------------------------------------------------------------------------------


class Watched:
    def __init__(self, tmp_path: Path, interval: float = 2.0) -> None:
        self.path = tmp_path / "gateway.yaml"
        self.path.write_text("version: 1\n")
        self.clock = Clock()
        self.calls = 0
        self.watcher = ConfigWatcher(str(self.path), self.clock, self.changed)
        self.watcher.apply(ReloadSettings(watch=True, interval=interval))

    def changed(self) -> None:
        self.calls += 1

    def rewrite(self, text: str) -> None:
        self.path.write_text(text)
        # The same second as the last write on a coarse file system: move the
        # modification time on so that only the contents decide.
        stat = self.path.stat()
        os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_change_is_seen_at_the_next_poll(tmp_path: Path) -> None:
    watched = Watched(tmp_path)
    watched.rewrite("version: 2\n")
    watched.clock.advance(1.9)
    assert watched.calls == 0
    watched.clock.advance(0.1)
    assert watched.calls == 1
    # Once per change.
    watched.clock.advance(2)
    watched.clock.advance(2)
    assert watched.calls == 1
    watched.rewrite("version: 3\n")
    watched.clock.advance(2)
    assert watched.calls == 2


def test_touch_without_a_change_reloads_nothing(tmp_path: Path) -> None:
    watched = Watched(tmp_path)
    watched.rewrite("version: 1\n")
    watched.clock.advance(2)
    assert watched.calls == 0


def test_a_replaced_file_and_a_missing_one(tmp_path: Path) -> None:
    watched = Watched(tmp_path)
    watched.path.unlink()
    watched.clock.advance(2)
    assert watched.calls == 0
    # Replaced by rename, as editors and deploy tools do: a new inode.
    new = tmp_path / "gateway.yaml.new"
    new.write_text("version: 2\n")
    new.rename(watched.path)
    watched.clock.advance(2)
    assert watched.calls == 1


def test_a_failing_reload_does_not_end_the_watch(tmp_path: Path) -> None:
    watched = Watched(tmp_path)

    def broken() -> None:
        watched.calls += 1
        raise RuntimeError("boom")

    watched.watcher.on_change = broken
    watched.rewrite("version: 2\n")
    watched.clock.advance(2)
    watched.rewrite("version: 3\n")
    watched.clock.advance(2)
    assert watched.calls == 2
    assert watched.watcher.running


def test_apply_stops_and_retimes(tmp_path: Path) -> None:
    watched = Watched(tmp_path)
    watched.watcher.apply(ReloadSettings(watch=True, interval=5))
    watched.rewrite("version: 2\n")
    watched.clock.advance(2)
    assert watched.calls == 0
    watched.clock.advance(3)
    assert watched.calls == 1
    watched.watcher.apply(ReloadSettings(watch=False))
    assert not watched.watcher.running
    assert watched.clock.getDelayedCalls() == []


# ---- the services ------------------------------------------------------------------------------


def service_on(tmp_path: Path, text: str) -> tuple[GatewayService, MemoryReactorClock, Path]:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    reactor = MemoryReactorClock()
    service = GatewayService(load_config(str(path)), reactor, install_signal_handlers=False)
    service.startService()
    return service, reactor, path


def touch_forward(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_single_process_reloads_when_the_file_changes(tmp_path: Path) -> None:
    watching = BASE + "reload: {watch: true, interval: 1s}\n"
    service, reactor, path = service_on(tmp_path, watching)
    assert service.watcher.running
    path.write_text(watching.replace("127.0.0.1:9", "127.0.0.1:10"))
    touch_forward(path)
    reactor.advance(1)
    assert service.reloads == 1
    assert service.holder.current.config.routes[0].upstream.port == 10

    # A broken file is refused, as with SIGHUP; the old configuration stays.
    path.write_text(watching + "  - oops\n")
    touch_forward(path)
    reactor.advance(1)
    assert service.reloads == 1
    assert service.holder.current.config.routes[0].upstream.port == 10

    # Turning the watch off in the file takes effect with that reload.
    path.write_text(BASE)
    touch_forward(path)
    reactor.advance(1)
    assert service.reloads == 2
    assert not service.watcher.running
    service.stopService()


def test_off_by_default_and_stopped_by_a_drain(tmp_path: Path) -> None:
    service, reactor, _ = service_on(tmp_path, BASE)
    assert not service.watcher.running
    service.stopService()
    service, reactor, _ = service_on(tmp_path, BASE + "reload: {watch: true}\n")
    assert service.watcher.running
    service.drain_connections(30)
    assert not service.watcher.running


def test_with_workers_the_master_watches_and_tells_every_worker(tmp_path: Path) -> None:
    from idgateway.workers.master import MasterService
    from idgateway.workers.worker import WorkerService

    text = BASE + "workers: 2\nreload: {watch: true, interval: 1s}\n"
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    config = load_config(str(path))
    # A worker never watches: the master's SIGHUP reaches it.
    worker = WorkerService(
        config, MemoryReactorClock(), index=1, inherited={}, install_signal_handlers=False
    )
    worker.startService()
    assert not worker.watcher.running
    worker.stopService()

    reactor = MemoryReactorClock()
    master = MasterService(config, reactor, workers=2, install_signal_handlers=False)
    signals: list[tuple[int, str]] = []

    class Process:
        def __init__(self, index: int) -> None:
            self.index = index

        def signalProcess(self, name: str) -> Any:
            signals.append((self.index, name))

    master.watcher.apply(config.reload)
    for each in master.workers:
        each.process = Process(each.index)  # type: ignore[assignment]
        each.ready = True
    path.write_text(text.replace("127.0.0.1:9", "127.0.0.1:10"))
    touch_forward(path)
    reactor.advance(1)
    assert signals == [(0, "HUP"), (1, "HUP")]
    master.watcher.stop()
