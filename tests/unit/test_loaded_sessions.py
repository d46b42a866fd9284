"""Redis sessions a process reuses for a second (idgateway.sessions.loaded), in memory.

A Redis client whose GETs answer when the test says, a real
``RedisSessionStore`` (sealing, key names) and a ``Clock``: how many GETs a
burst costs, when an entry's time starts and ends, and that a session ended
here or elsewhere is not served past the documented bound.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from idgateway.redis.client import RedisUnavailable
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.loaded import FORGET_AFTER, LOADED_FOR, RELOAD_AHEAD, LoadedSessions
from idgateway.sessions.model import Session
from idgateway.sessions.redis_store import RedisSessionStore

NOW = 1_700_000_000.0
KEYRING = KeyRing([os.urandom(32)])


class SlowRedis:
    """A dict behind GETs the test answers (``answer``); DEL and saves act at once."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gets: list[tuple[str, defer.Deferred[Any]]] = []

    async def get(self, key: str) -> bytes | None:
        d: defer.Deferred[Any] = defer.Deferred()
        self.gets.append((key, d))
        return await d  # type: ignore[no-any-return]

    async def eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        if "SET" in script:  # the store's save: the value and its TTL
            self.data[keys[0]] = args[0]
        else:  # a sign-out: the session and its index entries
            self.data.pop(keys[0], None)
        return 1

    async def delete(self, *keys: str) -> int:
        return sum(self.data.pop(key, None) is not None for key in keys)

    def answer(self, how_many: int | None = None) -> None:
        """Answer the oldest GETs with what Redis holds *now*."""
        count = len(self.gets) if how_many is None else how_many
        for _ in range(count):
            key, d = self.gets.pop(0)
            d.callback(self.data.get(key))

    def fail(self) -> None:
        _, d = self.gets.pop(0)
        d.errback(RedisUnavailable("Redis at 127.0.0.1:6379 did not answer GET within 1 s"))


def make_session(**changes: Any) -> Session:
    values: dict[str, Any] = {
        "id": "s1",
        "route": "app",
        "sub": "user-1",
        "user": "alice",
        "claims": {"sub": "user-1"},
        "created_at": NOW,
        "last_seen": NOW,
    }
    values.update(changes)
    return Session(**values)


class Process:
    """One gateway process's view: a store and its loaded sessions, on a shared Redis."""

    def __init__(self, redis: SlowRedis, clock: Clock) -> None:
        self.store = RedisSessionStore(
            redis,  # type: ignore[arg-type]
            route="app",
            keyring=KEYRING,
            inactivity_timeout=1800,
            max_duration=86400,
            clock=clock,
        )
        self.loaded = LoadedSessions(self.store, clock)


@pytest.fixture
def world() -> tuple[SlowRedis, Clock, Process, str]:
    redis, clock = SlowRedis(), Clock()
    clock.advance(NOW)
    process = Process(redis, clock)
    session_id = RedisSessionStore.new_session_id()
    defer.ensureDeferred(process.store.save(session_id, make_session()))
    return redis, clock, process, session_id


def result(d: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not answered yet"
    return results[0]


def test_a_burst_of_misses_costs_one_get(world: Any) -> None:
    redis, clock, process, session_id = world
    waiting = [process.loaded.load(session_id) for _ in range(16)]
    assert len(redis.gets) == 1
    redis.answer()
    sessions = [result(d) for d in waiting]
    assert all(s is sessions[0] and s.user == "alice" for s in sessions)
    # Then the burst's later requests are answered from memory.
    assert process.loaded.fresh(session_id, clock.seconds()) is sessions[0]
    assert len(redis.gets) == 0


@pytest.mark.parametrize(
    "garbage", ["garbage", "A" * 42 + "B", "", "A" * 42 + "=", "A" * 44, "%41" * 14 + "A"]
)
def test_what_is_no_session_id_is_answered_at_once_without_redis(world: Any, garbage: str) -> None:
    redis, clock, process, _ = world
    assert result(process.loaded.load(garbage)) is None
    assert not redis.gets
    assert process.loaded.fresh(garbage, clock.seconds()) is None
    assert result(process.loaded.load(garbage)) is None, "nothing left in flight"


def test_an_entrys_second_runs_from_when_its_get_was_sent(world: Any) -> None:
    redis, clock, process, session_id = world
    d = process.loaded.load(session_id)
    clock.advance(0.4)  # a slow answer: Redis read the value somewhere in these 0.4 s
    redis.answer()
    assert result(d) is not None
    clock.advance(LOADED_FOR - 0.4 - 0.01)
    assert process.loaded.fresh(session_id, clock.seconds()) is not None
    clock.advance(0.02)
    assert process.loaded.fresh(session_id, clock.seconds()) is None


def test_a_busy_session_is_reloaded_ahead_without_waiting(world: Any) -> None:
    redis, clock, process, session_id = world
    d = process.loaded.load(session_id)
    redis.answer()
    first = result(d)
    clock.advance(LOADED_FOR - RELOAD_AHEAD - 0.01)
    assert process.loaded.fresh(session_id, clock.seconds()) is first
    assert not redis.gets, "no reload while the entry is young"
    clock.advance(0.02)
    # The last stretch: still answered from memory, one reload starts.
    for _ in range(5):
        assert process.loaded.fresh(session_id, clock.seconds()) is first
    assert len(redis.gets) == 1
    redis.answer()
    clock.advance(RELOAD_AHEAD)  # past the first entry's time: the reloaded one serves
    again = process.loaded.fresh(session_id, clock.seconds())
    assert again is not None and again.user == "alice"


def test_a_reload_ahead_that_finds_the_session_gone_drops_it_at_once(world: Any) -> None:
    redis, clock, process, session_id = world
    d = process.loaded.load(session_id)
    redis.answer()
    assert result(d) is not None
    clock.advance(LOADED_FOR - RELOAD_AHEAD / 2)
    assert process.loaded.fresh(session_id, clock.seconds()) is not None
    redis.data.clear()  # another process signed it out
    redis.answer()
    assert process.loaded.fresh(session_id, clock.seconds()) is None


def test_a_failed_load_fails_every_waiter_and_keeps_nothing(world: Any) -> None:
    redis, clock, process, session_id = world
    waiting = [process.loaded.load(session_id) for _ in range(3)]
    redis.fail()
    for d in waiting:
        failure = result(d)
        assert failure.check(RedisUnavailable)
    assert process.loaded.fresh(session_id, clock.seconds()) is None
    process.loaded.load(session_id)
    assert len(redis.gets) == 1, "the next request asks again"


def test_a_failed_reload_ahead_lets_the_entry_serve_out_its_time(world: Any) -> None:
    redis, clock, process, session_id = world
    d = process.loaded.load(session_id)
    redis.answer()
    first = result(d)
    clock.advance(LOADED_FOR - RELOAD_AHEAD / 2)
    assert process.loaded.fresh(session_id, clock.seconds()) is first
    redis.fail()  # nobody waits for it: no unhandled error either
    assert process.loaded.fresh(session_id, clock.seconds()) is first
    clock.advance(RELOAD_AHEAD)
    assert process.loaded.fresh(session_id, clock.seconds()) is None


def test_an_unexpected_error_in_a_reload_ahead_is_logged(world: Any) -> None:
    from twisted.logger import globalLogPublisher

    redis, clock, process, session_id = world
    d = process.loaded.load(session_id)
    redis.answer()
    assert result(d) is not None
    clock.advance(LOADED_FOR - RELOAD_AHEAD / 2)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert process.loaded.fresh(session_id, clock.seconds()) is not None
        _, get = redis.gets.pop(0)
        get.errback(ZeroDivisionError("a bug"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e for e in events if "Reloading a Redis session failed" in e.get("log_format", "")]


@pytest.mark.parametrize("how", ["forget", "forget_all"])
def test_a_session_ended_here_is_not_served_from_a_load_in_flight(world: Any, how: str) -> None:
    redis, clock, process, session_id = world
    before = process.loaded.load(session_id)  # sent before the sign-out
    getattr(process.loaded, how)(*([session_id] if how == "forget" else []))
    after = process.loaded.load(session_id)  # arrives after: does not join it
    assert len(redis.gets) == 2
    redis.answer(1)  # the old GET answers with the session still there...
    assert result(before) is not None  # (that request came before the sign-out)
    assert process.loaded.fresh(session_id, clock.seconds()) is None  # ...and is not kept
    redis.data.clear()
    redis.answer(1)
    assert result(after) is None


def test_a_sign_out_elsewhere_is_seen_within_the_bound(world: Any) -> None:
    redis, clock, a, session_id = world
    b = Process(redis, clock)
    # Process B serves a steady stream of the session's requests.
    d = b.loaded.load(session_id)
    redis.answer()
    assert result(d) is not None
    clock.advance(0.3)
    signed_out_at = clock.seconds()
    defer.ensureDeferred(a.store.delete(session_id))  # the sign-out, through process A
    a.loaded.forget(session_id)
    served_after = []
    while True:
        now = clock.seconds()
        session = b.loaded.fresh(session_id, now)
        if session is None:
            late = b.loaded.load(session_id)
            redis.answer()
            assert result(late) is None
            break
        served_after.append(now - signed_out_at)
        redis.answer()  # any reload ahead answers at once
        clock.advance(0.01)
    assert served_after, "within the second it may still pass on B"
    assert max(served_after) < LOADED_FOR


def test_past_the_limit_expired_entries_go_first(world: Any) -> None:
    redis, clock, process, _ = world
    loaded = LoadedSessions(process.store, clock, max_entries=3)
    ids = [RedisSessionStore.new_session_id() for _ in range(4)]
    for session_id in ids:
        defer.ensureDeferred(process.store.save(session_id, make_session()))
    for session_id in ids[:2]:
        loaded.load(session_id)
    redis.answer()
    clock.advance(LOADED_FOR + 0.1)
    for session_id in ids[2:]:
        loaded.load(session_id)
    redis.answer()
    assert len(loaded) == 2 and ids[0] not in loaded and ids[3] in loaded


def test_sessions_not_asked_for_since_a_minute_after_expiry_are_forgotten(world: Any) -> None:
    """Each login's entry used to stay until the 10,000 bound: memory that
    climbed for hours under steady logins (the soak)."""
    redis, clock, process, session_id = world
    loaded = LoadedSessions(process.store, clock)
    loaded.load(session_id)
    redis.answer()
    assert session_id in loaded
    clock.advance(LOADED_FOR + FORGET_AFTER + 1)
    other = RedisSessionStore.new_session_id()
    defer.ensureDeferred(process.store.save(other, make_session()))
    loaded.load(other)
    redis.answer()
    assert session_id not in loaded and other in loaded


def counting_opens(store: RedisSessionStore) -> list[str]:
    opened: list[str] = []
    real = store.open_sealed

    def open_sealed(key: str, sealed: bytes) -> Session | None:
        opened.append(key)
        return real(key, sealed)

    store.open_sealed = open_sealed  # type: ignore[method-assign]
    return opened


def test_an_unchanged_value_is_not_opened_again(world: Any) -> None:
    redis, clock, process, session_id = world
    opened = counting_opens(process.store)
    d = process.loaded.load(session_id)
    redis.answer()
    first = result(d)
    clock.advance(LOADED_FOR + 5)  # the entry is over; the next request loads
    d = process.loaded.load(session_id)
    redis.answer()
    assert result(d) is first, "the same object: the gate's memo of it holds too"
    assert len(opened) == 1


def test_a_value_changed_elsewhere_is_opened(world: Any) -> None:
    redis, clock, process, session_id = world
    opened = counting_opens(process.store)
    d = process.loaded.load(session_id)
    redis.answer()
    assert result(d).user == "alice"
    other = Process(redis, clock)  # another process stores new tokens
    defer.ensureDeferred(other.store.save(session_id, make_session(user="alice2")))
    clock.advance(LOADED_FOR + 5)
    d = process.loaded.load(session_id)
    redis.answer()
    assert result(d).user == "alice2"
    assert len(opened) == 2


@pytest.mark.parametrize("change", ["flip a byte", "truncate", "another session's value"])
def test_a_value_tampered_with_in_redis_is_opened_and_refused(world: Any, change: str) -> None:
    redis, clock, process, session_id = world
    d = process.loaded.load(session_id)
    redis.answer()
    assert result(d) is not None
    key = process.store.session_key(session_id)
    value = redis.data[key]
    if change == "flip a byte":
        middle = len(value) // 2
        redis.data[key] = value[:middle] + bytes([value[middle] ^ 1]) + value[middle + 1 :]
    elif change == "truncate":
        redis.data[key] = value[:-1]
    else:
        other_id = RedisSessionStore.new_session_id()
        defer.ensureDeferred(process.store.save(other_id, make_session(user="mallory")))
        redis.data[key] = redis.data[process.store.session_key(other_id)]
    clock.advance(LOADED_FOR + 5)
    d = process.loaded.load(session_id)
    redis.answer()
    assert result(d) is None
    assert process.loaded.fresh(session_id, clock.seconds()) is None


def test_a_reused_session_still_ends_at_its_maximum_duration(world: Any) -> None:
    redis, clock, process, session_id = world
    d = process.loaded.load(session_id)
    redis.answer()
    assert result(d) is not None
    clock.advance(86400)  # Redis (this one) has not expired the key; the store does
    d = process.loaded.load(session_id)
    redis.answer()
    assert result(d) is None


def test_after_a_slide_here_the_stored_value_is_opened_again(world: Any) -> None:
    redis, clock, process, session_id = world
    opened = counting_opens(process.store)
    d = process.loaded.load(session_id)
    redis.answer()
    first = result(d)
    slid = make_session(last_seen=NOW + 0.5)
    process.loaded.replace(session_id, slid)
    assert process.loaded.fresh(session_id, clock.seconds()) is slid
    clock.advance(LOADED_FOR + 5)
    d = process.loaded.load(session_id)
    redis.answer()
    assert result(d) == first and len(opened) == 2
