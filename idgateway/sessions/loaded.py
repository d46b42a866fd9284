"""Redis sessions one process loaded recently, reused for ``LOADED_FOR`` seconds.

A page load's burst of requests, or one client's steady stream, is checked
against the session in memory instead of one ``GET`` per request. The price
is a bound: a session deleted by another process or machine (a sign-out, a
back-channel logout) can still pass here for at most ``LOADED_FOR`` seconds
after its deletion. That bound holds because an entry's time runs from the
moment its ``GET`` was *sent*: whatever Redis answered was read after that.

* **One load at a time per session**: requests that find no fresh entry
  while a load of that session is in flight wait for that load instead of
  sending a ``GET`` each (without this, every expiry of a busy session's
  entry cost one ``GET``, AES-GCM open and JSON parse per waiting request).
* **Reloaded ahead**: a request in the last ``RELOAD_AHEAD`` seconds of an
  entry starts its reload in the background and is answered from the entry
  (still within the bound), so a busy session never makes requests wait for
  Redis; a reload that finds the session gone drops the entry at once.
* **Forgotten at once** by the process that ends or replaces a session: its
  entry goes, and a load already in flight for it is neither kept nor shared
  with requests that arrive afterwards (its answer may predate the change).
* **Opened once per value**: a load that finds the very value the entry was
  opened from (a digest of the sealed bytes; the session is unchanged, the
  usual case) reuses the entry's session instead of opening, decoding and
  parsing it again. The session object stays the same, so what the gate
  worked out for it (authorization, identity headers) is reused too. Its
  lifetime is checked again all the same.

At most ``LOADED_MAX`` entries; past that, the expired ones go, then all.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from idgateway.redis.errors import RedisUnavailable
from idgateway.sessions.model import Session

if TYPE_CHECKING:
    # (Only a type: a worker without Redis does not load the Redis client.)
    from idgateway.sessions.redis_store import RedisSessionStore

__all__ = ["LOADED_FOR", "LOADED_MAX", "RELOAD_AHEAD", "LoadedSessions"]

# How long a loaded session is reused without asking Redis again (the bound
# on how late a logout elsewhere is seen), and how many are kept.
LOADED_FOR = 1.0
LOADED_MAX = 10_000
# Expired entries are kept for a reload that finds the value unchanged (the
# session opened before is reused); this long after expiry they go.
FORGET_AFTER = 60.0
# A request this close to the end of an entry's time starts its reload.
RELOAD_AHEAD = 0.25


class _Load:
    """One ``GET`` in flight and the requests waiting for it."""

    __slots__ = ("kept", "sent_at", "waiters")

    def __init__(self, sent_at: float) -> None:
        self.sent_at = sent_at
        self.waiters: list[defer.Deferred[Session | None]] = []
        # False once the session was forgotten while this load was in flight.
        self.kept = True


class LoadedSessions:
    """A route's Redis sessions loaded by this process (``clock``: the reactor)."""

    _log = Logger()

    def __init__(
        self,
        store: RedisSessionStore,
        clock: Any,
        *,
        loaded_for: float = LOADED_FOR,
        max_entries: int = LOADED_MAX,
    ) -> None:
        self._store = store
        self.clock = clock
        self._loaded_for = loaded_for
        self._max_entries = max_entries
        # session id -> (until, session, digest of the sealed value it came
        # from, or b"" when this process changed it since)
        self._entries: dict[str, tuple[float, Session, bytes]] = {}
        self._pruned_at = 0.0
        self._loading: dict[str, _Load] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def fresh(self, session_id: str, now: float) -> Session | None:
        """The session loaded less than ``LOADED_FOR`` ago, or None (no Redis call).

        Near the end of its time, also starts its reload in the background.
        """
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        until = entry[0]
        if until <= now:
            return None
        if until - now < RELOAD_AHEAD and session_id not in self._loading:
            self._start(session_id, now)
        return entry[1]

    def load(self, session_id: str) -> defer.Deferred[Session | None]:
        """The session from Redis, sharing a ``GET`` already in flight for it.

        Fails as the store's ``load`` does (``RedisUnavailable``).
        """
        waiter: defer.Deferred[Session | None] = defer.Deferred()
        load = self._loading.get(session_id)
        if load is not None:
            load.waiters.append(waiter)
        else:
            self._start(session_id, self.clock.seconds(), waiter)
        return waiter

    def replace(self, session_id: str, session: Session) -> None:
        """This process stored a newer ``session`` (its time left unchanged)."""
        entry = self._entries.get(session_id)
        if entry is not None:
            self._entries[session_id] = (entry[0], session, b"")

    def forget(self, session_id: str) -> None:
        """This process ended or replaced the session: no entry, no shared load."""
        self._entries.pop(session_id, None)
        load = self._loading.pop(session_id, None)
        if load is not None:
            load.kept = False

    def forget_all(self) -> None:
        self._entries.clear()
        loading, self._loading = self._loading, {}
        for load in loading.values():
            load.kept = False

    def _start(
        self, session_id: str, now: float, waiter: defer.Deferred[Session | None] | None = None
    ) -> None:
        load = self._loading[session_id] = _Load(now)
        if waiter is not None:
            # Before the GET: an id that is no session id is answered at once.
            load.waiters.append(waiter)
        d = defer.ensureDeferred(self._fetch(session_id))
        d.addBoth(self._answered, session_id, load)

    async def _fetch(self, session_id: str) -> tuple[Session | None, bytes]:
        """The store's ``load``, reusing the entry's session for an unchanged value."""
        store = self._store
        found = await store.load_sealed(session_id)
        if found is None:
            return None, b""
        key, sealed = found
        digest = hashlib.blake2b(sealed, digest_size=16).digest()
        entry = self._entries.get(session_id)
        if entry is not None and entry[2] == digest:
            return store.current(entry[1]), digest
        return store.current(store.open_sealed(key, sealed)), digest

    def _answered(
        self, result: tuple[Session | None, bytes] | Failure, session_id: str, load: _Load
    ) -> None:
        if self._loading.get(session_id) is load:
            del self._loading[session_id]
        session: Session | None = None
        if not isinstance(result, Failure):
            session, digest = result
            if not load.kept:
                pass
            elif session is None:
                self._entries.pop(session_id, None)
            else:
                self._keep(session_id, load.sent_at + self._loaded_for, session, digest)
        # A failed reload ahead has no waiters: the entry serves out its time,
        # and the request after it meets the failure itself (Redis being
        # unavailable is logged there); anything else is a bug to show now.
        if not load.waiters and isinstance(result, Failure):
            if not result.check(RedisUnavailable):
                self._log.failure("Reloading a Redis session failed", result)
            return
        for waiter in load.waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(session)

    def _keep(self, session_id: str, until: float, session: Session, digest: bytes) -> None:
        entries = self._entries
        now = self.clock.seconds()
        if now >= self._pruned_at + FORGET_AFTER:
            # Sessions not asked for in a minute go (each holds a session):
            # otherwise every login's entry stayed until the bound.
            self._pruned_at = now
            for stale in [k for k, v in entries.items() if v[0] <= now - FORGET_AFTER]:
                del entries[stale]
        if len(entries) >= self._max_entries and session_id not in entries:
            for stale in [k for k, v in entries.items() if v[0] <= now]:
                del entries[stale]
            if len(entries) >= self._max_entries:
                entries.clear()
        entries[session_id] = (until, session, digest)
