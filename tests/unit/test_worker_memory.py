"""A worker gives freed heap memory back after start and after each provider's first discovery."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock

from idgateway.workers import memory, worker


def test_release_free_memory_asks_glibc_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    monkeypatch.setattr(memory, "_MALLOC_TRIM", lambda pad: asked.append(pad) or 1)
    assert memory.release_free_memory() is True
    assert asked == [0]  # (0: keep no free pad at the top of the heap)
    monkeypatch.setattr(memory, "_MALLOC_TRIM", None)
    assert memory.release_free_memory() is False


def test_this_glibc_has_malloc_trim() -> None:
    assert memory._MALLOC_TRIM is not None
    assert isinstance(memory.release_free_memory(), bool)


def test_a_worker_releases_after_start_and_after_each_first_discovery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    released: list[str] = []
    monkeypatch.setattr(worker, "release_free_memory", lambda: released.append("now") or True)
    ready = SimpleNamespace(ready=True, when_ready=[])
    waiting = SimpleNamespace(ready=False, when_ready=[])
    providers = {"a": SimpleNamespace(client=ready), "b": SimpleNamespace(client=waiting)}
    state = SimpleNamespace(providers=providers)
    service: Any = SimpleNamespace(holder=SimpleNamespace(current=state))
    clock = Clock()
    worker.release_memory_after_start(service, clock)
    assert released == ["now"]
    assert ready.when_ready == [] and len(waiting.when_ready) == 1
    # Ready: released once the discovery's callbacks are done (the next turn).
    waiting.when_ready[0](object())
    assert released == ["now"]
    clock.advance(0)
    assert released == ["now", "now"]
