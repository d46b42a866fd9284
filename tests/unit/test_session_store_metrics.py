"""idgateway_session_store_seconds: every Redis call a session store makes is timed.

In memory: a Redis client whose commands answer when the test fires their
Deferreds, and a ``twisted.internet.task.Clock`` that the test advances in
between, so the observed durations are exact.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.internet.task import Clock

from idgateway.observe.metrics import GatewayMetrics
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.model import Session
from idgateway.sessions.redis_store import RedisSessionStore, RedisUnavailable

NOW = 1_700_000_000.0


class PendingRedis:
    """Each command returns a Deferred the test fires (``answer``/``fail``)."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, defer.Deferred[Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def command(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append((name, d))
            return d

        return command

    def answer(self, value: Any) -> str:
        name, d = self.pending.pop(0)
        d.callback(value)
        return name

    def fail(self) -> str:
        name, d = self.pending.pop(0)
        d.errback(RedisUnavailable("no answer within 0.5 s"))
        return name


def make(route: str = "app") -> tuple[RedisSessionStore, PendingRedis, Clock, GatewayMetrics]:
    redis = PendingRedis()
    clock = Clock()
    clock.advance(NOW)
    metrics = GatewayMetrics()
    store = RedisSessionStore(
        redis,  # type: ignore[arg-type]
        route=route,
        keyring=KeyRing([os.urandom(32)]),
        inactivity_timeout=1800,
        max_duration=86400,
        clock=clock,
        metrics=metrics,
    )
    return store, redis, clock, metrics


def seconds(metrics: GatewayMetrics, suffix: str, route: str, operation: str) -> float:
    found = metrics.registry.get_sample_value(
        "idgateway_session_store_seconds" + suffix, {"route": route, "operation": operation}
    )
    return 0.0 if found is None else found


def session() -> Session:
    return Session(
        id="s1",
        route="app",
        sub="user-1",
        user="alice",
        claims={},
        created_at=NOW,
        last_seen=NOW,
        provider_sid="sid-1",
    )


def test_load_save_delete_are_timed_by_operation() -> None:
    store, redis, clock, metrics = make()
    sid = store.new_session_id()

    saving = defer.ensureDeferred(store.save(sid, session()))
    clock.advance(0.004)
    assert redis.answer(1) == "eval"
    assert saving.called

    loading = defer.ensureDeferred(store.load(sid))
    clock.advance(0.002)
    assert redis.answer(None) == "get"
    assert loading.result is None

    deleting = defer.ensureDeferred(store.delete(sid))
    clock.advance(0.003)
    assert redis.answer(1) == "delete"
    assert deleting.called

    assert seconds(metrics, "_count", "app", "save") == 1
    assert seconds(metrics, "_sum", "app", "save") == pytest.approx(0.004, abs=1e-6)
    assert seconds(metrics, "_count", "app", "load") == 1
    assert seconds(metrics, "_sum", "app", "load") == pytest.approx(0.002, abs=1e-6)
    text = generate_latest(metrics.registry).decode()
    assert (
        'idgateway_session_store_seconds_bucket{le="0.0025",operation="load",route="app"} 1.0'
        in (text)
    )
    assert (
        'idgateway_session_store_seconds_bucket{le="0.001",operation="load",route="app"} 0.0'
        in (text)
    )
    assert 'idgateway_session_store_seconds_count{operation="delete",route="app"} 1.0' in text


def test_failed_calls_are_timed_too() -> None:
    store, redis, clock, metrics = make()
    loading = defer.ensureDeferred(store.load(store.new_session_id()))
    clock.advance(0.5)
    redis.fail()
    failure = loading.result
    loading.addErrback(lambda _: None)
    assert failure.check(RedisUnavailable)
    assert seconds(metrics, "_count", "app", "load") == 1
    assert seconds(metrics, "_sum", "app", "load") == pytest.approx(0.5, abs=1e-6)


def test_lock_unlock_and_logout_deletes_are_timed() -> None:
    store, redis, clock, metrics = make("other")
    sid = store.new_session_id()
    locking = defer.ensureDeferred(store.lock(sid))
    clock.advance(0.001)
    assert redis.answer(True) == "set"
    token = locking.result
    assert isinstance(token, str)
    unlocking = defer.ensureDeferred(store.unlock(sid, token))
    redis.answer(1)
    assert unlocking.called
    ending = defer.ensureDeferred(store.delete_by_sid("sid-1"))
    clock.advance(0.02)
    redis.answer(2)
    assert ending.result == 2
    assert seconds(metrics, "_sum", "other", "lock") == pytest.approx(0.001, abs=1e-6)
    assert seconds(metrics, "_count", "other", "unlock") == 1
    assert seconds(metrics, "_sum", "other", "delete_indexed") == pytest.approx(0.02, abs=1e-6)
    # No series for another route, and nothing for an id Redis never sees.
    assert seconds(metrics, "_count", "app", "load") == 0


def test_a_malformed_id_costs_no_call_and_no_sample() -> None:
    store, redis, _clock, metrics = make()
    loading = defer.ensureDeferred(store.load("not-an-id"))
    assert loading.result is None
    assert redis.pending == []
    assert seconds(metrics, "_count", "app", "load") == 0


def test_every_operation_is_present_for_each_store() -> None:
    # Children are made when the store is made: a scrape shows zeros for a
    # route whose Redis has not been used yet.
    _store, _redis, _clock, metrics = make()
    for operation in ("load", "save", "delete", "delete_indexed", "lock", "unlock"):
        assert (
            metrics.registry.get_sample_value(
                "idgateway_session_store_seconds_count", {"route": "app", "operation": operation}
            )
            == 0
        )
