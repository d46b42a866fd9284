"""Sessions kept in Redis, shared by every gateway process.

The browser's cookie holds only an opaque session id: 256 random bits,
base64url without padding (43 characters). Redis never sees that id; every
key is named after its SHA-256, so a copy of the Redis data yields no cookie
that works::

    idgw:<route>:s:<sha256(id)>      the session: KeyRing.seal(JSON), PX = its TTL
    idgw:<route>:sid:<sha256(sid)>   set of sha256(id) of the provider session's sessions
    idgw:<route>:sub:<sha256(sub)>   set of sha256(id) of the user's sessions
    idgw:<route>:lock:<sha256(id)>   the refresh lock (SET NX PX, compare-and-delete)

The value is sealed with the route's key ring, with associated data naming
the route, its provider and client id (``sessions.binding``) and the key, so
a value copied to another key or route does not open, nor does one saved
before a reload moved the route to another provider or client. The TTL
slides with the inactivity timeout and never passes the maximum duration:
``min(inactivity_timeout, created_at + max_duration - now)``.

On a Redis Cluster (``cluster:``) the session and lock keys put the hash in
a ``{hash tag}`` (``idgw:<route>:s:{<sha256(id)>}``,
``idgw:<route>:lock:{<sha256(id)>}``), so both live in one slot, and work
that spans sessions (saving into the indexes, deleting what an index lists)
is done command by command from here instead of in one script. One Redis and
Sentinel keep the names above, so an existing deployment keeps its sessions;
moving to a cluster starts with no sessions (users log in again).

``load`` is one GET (the hot path); an id that is not 43 base64url
characters costs no Redis call at all.

Every call that reaches Redis is timed into ``idgateway_session_store_seconds``
(route, operation), answered or failed: two ``clock.seconds()`` readings and
one ``observe`` on a histogram child fetched when the store was made.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from typing import Any

from twisted.logger import Logger

from idgateway.observe.metrics import METRICS, GatewayMetrics
from idgateway.redis.client import RedisUnavailable
from idgateway.redis.cluster import AnyRedisClient, RedisClusterClient
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.model import Session

__all__ = ["RedisSessionStore", "RedisUnavailable", "session_key_hash"]

SESSION_ID_BYTES = 32
SESSION_ID_LENGTH = 43  # base64url of 32 bytes, no padding
# 43 characters carry 258 bits; the last one's low two bits are zero padding.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")

# Indexes are pruned of ended sessions when a new session joins one that
# already holds this many (a user who logs in often on a long max_duration).
_PRUNE_INDEX_FROM = 16

# KEYS: session, [sid index], [sub index]. ARGV: value, ttl ms, session hash,
# index ttl ms, index count, key prefix for pruning, prune threshold, and
# "XX" to store only over a session still there (else ""). Returns 0 when
# XX found none (nothing stored), else 1.
_SAVE = """
if ARGV[8] == 'XX' then
  if not redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'XX') then
    return 0
  end
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
for i = 2, 1 + tonumber(ARGV[5]) do
  if redis.call('SADD', KEYS[i], ARGV[3]) == 1
      and redis.call('SCARD', KEYS[i]) > tonumber(ARGV[7]) then
    for _, member in ipairs(redis.call('SMEMBERS', KEYS[i])) do
      if redis.call('EXISTS', ARGV[6] .. member) == 0 then
        redis.call('SREM', KEYS[i], member)
      end
    end
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
return 1
"""

# KEYS: the index. ARGV: key prefix of sessions. Deletes the sessions it
# names and the index itself; returns how many sessions existed.
_DELETE_INDEXED = """
local deleted = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  deleted = deleted + redis.call('DEL', ARGV[1] .. member)
end
redis.call('DEL', KEYS[1])
return deleted
"""

# KEYS: the session, then its indexes. ARGV: the session's hash. A sign-out
# takes the session out of its sid and sub sets too (Redis drops a set that
# becomes empty): else every login's sid set would outlive its sign-out by
# max_duration, and the keys would grow with sign-outs, not live sessions.
_DELETE_ONE = """
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do
  redis.call('SREM', KEYS[i], ARGV[1])
end
return 1
"""

# Compare-and-delete: only the holder's token releases the lock.
# Cluster mode, one index (its own slot). KEYS: the index. ARGV: session hash,
# index ttl ms. Returns the index's size (the caller prunes a large one).
_INDEX_ADD = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('SCARD', KEYS[1])
"""

# Cluster mode: take an index's members and delete it, in one step, so a
# session filed after this is not lost from the next index.
_INDEX_TAKE = """
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return members
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def session_key_hash(session_id: str) -> str:
    """The hex SHA-256 that names a session id in Redis."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def _hash_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_session_id(value: object) -> bool:
    """Whether ``value`` could be an id from ``new_session_id`` (no Redis call)."""
    return (
        isinstance(value, str)
        and len(value) == SESSION_ID_LENGTH
        and _SESSION_ID.fullmatch(value) is not None
    )


class RedisSessionStore:
    """A route's sessions in Redis.

    ``clock`` provides ``seconds()`` (pass the reactor). Every method raises
    ``RedisUnavailable`` within the client's command timeout when Redis
    cannot answer.
    """

    _log = Logger()

    def __init__(
        self,
        client: AnyRedisClient,
        *,
        route: str,
        keyring: KeyRing,
        inactivity_timeout: float,
        max_duration: float,
        clock: Any,
        metrics: GatewayMetrics | None = None,
        binding: bytes = b"",
    ) -> None:
        if not route:
            raise ValueError("a Redis session store needs a route name")
        if inactivity_timeout <= 0 or max_duration <= 0:
            raise ValueError("inactivity_timeout and max_duration must be more than 0 seconds")
        self.client = client
        self.route = route
        self._keyring = keyring
        self.inactivity_timeout = inactivity_timeout
        self.max_duration = max_duration
        self._clock = clock
        self._prefix = f"idgw:{route}:"
        self._session_prefix = f"idgw:{route}:s:"
        # Cluster: the hash in a {tag}, so a session's keys share its slot.
        self._cluster = isinstance(client, RedisClusterClient)
        self._open, self._close = ("{", "}") if self._cluster else ("", "")
        self._associated_data = (
            b"idgateway redis session\x00" + route.encode("utf-8") + b"\x00" + binding + b"\x00"
        )
        # Histogram children by operation (the process's metrics unless given).
        timers = (metrics if metrics is not None else METRICS).session_store_timers(route)
        self._time_load = timers["load"].observe
        self._time_save = timers["save"].observe
        self._time_delete = timers["delete"].observe
        self._time_delete_indexed = timers["delete_indexed"].observe
        self._time_lock = timers["lock"].observe
        self._time_unlock = timers["unlock"].observe

    # -- names -----------------------------------------------------------------

    @staticmethod
    def new_session_id() -> str:
        """A fresh id for the cookie: 256 random bits, base64url, 43 characters."""
        return secrets.token_urlsafe(SESSION_ID_BYTES)

    def session_key(self, session_id: str) -> str:
        return self._session_key_for(session_key_hash(session_id))

    def _session_key_for(self, digest: str) -> str:
        return f"{self._session_prefix}{self._open}{digest}{self._close}"

    def _index_key(self, kind: str, value: str) -> str:
        return f"{self._prefix}{kind}:{_hash_text(value)}"

    def _lock_key(self, session_id: str) -> str:
        return f"{self._prefix}lock:{self._open}{session_key_hash(session_id)}{self._close}"

    def _ad(self, key: str) -> bytes:
        return self._associated_data + key.encode("ascii")

    # -- sessions --------------------------------------------------------------

    async def load(self, session_id: str) -> Session | None:
        """The session for a cookie's id, or None: one GET, none for a malformed id."""
        found = await self.load_sealed(session_id)
        if found is None:
            return None
        return self.current(self.open_sealed(*found))

    async def load_sealed(self, session_id: str) -> tuple[str, bytes] | None:
        """``load`` in parts: the key and the sealed value Redis holds for the
        id (one GET, none for a malformed id), or None."""
        if not is_session_id(session_id):
            return None
        key = self.session_key(session_id)
        started = self._clock.seconds()
        try:
            sealed = await self.client.get(key)
        finally:
            self._time_load(self._clock.seconds() - started)
        if sealed is None:
            return None
        return key, sealed

    def open_sealed(self, key: str, sealed: bytes) -> Session | None:
        """The session sealed in ``sealed`` under ``key`` (its lifetime unchecked)."""
        plaintext = self._keyring.open(sealed, self._ad(key))
        if plaintext is None:
            # Sealed by a retired key, or not by us at all.
            return None
        try:
            data = json.loads(plaintext)
            session = Session.from_json_dict(data) if isinstance(data, dict) else None
        except (ValueError, TypeError, RecursionError):
            session = None
        if session is None:
            self._log.warn("Unreadable session data in Redis for route {route}", route=self.route)
        return session

    def current(self, session: Session | None) -> Session | None:
        """``session`` unless it is past the maximum duration."""
        if session is None or session.created_at + self.max_duration <= self._clock.seconds():
            # Redis's own expiry is authoritative, but not every clock agrees.
            return None
        return session

    def ttl_ms(self, session: Session) -> int:
        """How long the session may live from now, in ms (0: it has ended)."""
        now = self._clock.seconds()
        remaining = min(self.inactivity_timeout, session.created_at + self.max_duration - now)
        return max(0, math.ceil(remaining * 1000))

    async def save(
        self, session_id: str, session: Session, *, only_if_stored: bool = False
    ) -> bool:
        """Store ``session`` under the cookie's id; the TTL starts again from now.

        A session past its maximum duration is deleted instead. Also files the
        session under its provider ``sid`` and its ``sub`` for back-channel
        logout, in the same round trip.

        With ``only_if_stored``, only over a session Redis still holds (``SET
        XX``): a write that slides or refreshes a session this process loaded
        must not bring back one a sign-out or logout deleted meanwhile, on any
        process. Whether it was stored.
        """
        if not is_session_id(session_id):
            raise ValueError("not a session id from new_session_id()")
        key = self.session_key(session_id)
        ttl = self.ttl_ms(session)
        if ttl <= 0:
            started = self._clock.seconds()
            try:
                await self.client.delete(key)
            finally:
                self._time_delete(self._clock.seconds() - started)
            return False
        payload = json.dumps(
            session.to_json_dict(), separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        sealed = self._keyring.seal(payload, self._ad(key))
        indexes = self._indexes(session)
        index_ttl = max(1, math.ceil(self.max_duration * 1000))
        started = self._clock.seconds()
        if self._cluster:
            try:
                return await self._save_on_cluster(
                    key, sealed, ttl, session_id, indexes, index_ttl, only_if_stored
                )
            finally:
                self._time_save(self._clock.seconds() - started)
        try:
            stored = await self.client.eval(
                _SAVE,
                [key, *indexes],
                [
                    sealed,
                    ttl,
                    session_key_hash(session_id),
                    index_ttl,
                    len(indexes),
                    self._session_prefix,
                    _PRUNE_INDEX_FROM,
                    "XX" if only_if_stored else "",
                ],
            )
        finally:
            self._time_save(self._clock.seconds() - started)
        return bool(int(stored))

    async def _save_on_cluster(
        self,
        key: str,
        sealed: bytes,
        ttl: int,
        session_id: str,
        indexes: list[str],
        index_ttl: int,
        only_if_stored: bool,
    ) -> bool:
        """``_SAVE`` for a cluster, where each index has its own slot.

        The indexes first: a session that is stored is always findable by a
        back-channel logout (a failure in between, or an ``only_if_stored``
        save that finds no session, leaves at most an index entry naming no
        session, which pruning removes).
        """
        digest = session_key_hash(session_id)
        crowded = []
        for index in indexes:
            size = await self.client.eval(_INDEX_ADD, [index], [digest, index_ttl])
            if int(size) > _PRUNE_INDEX_FROM:
                crowded.append(index)
        stored = await self.client.set(key, sealed, px=ttl, xx=only_if_stored)
        # Pruned once this session is stored, so it is not taken for an ended one.
        for index in crowded:
            await self._prune_index(index)
        return stored

    async def _prune_index(self, index: str) -> None:
        members = await self.client.smembers(index)
        gone = []
        for member in members:
            name = member.decode("ascii", "replace")
            if not await self.client.command("EXISTS", self._session_key_for(name)):
                gone.append(member)
        if gone:
            await self.client.command("SREM", index, *gone)

    async def delete(self, session_id: str, session: Session | None = None) -> None:
        """Forget one session (sign-out), and with ``session`` its index entries
        in the same round trip (without, they go when the index is next pruned)."""
        if not is_session_id(session_id):
            return
        key = self.session_key(session_id)
        indexes = self._indexes(session) if session is not None else []
        started = self._clock.seconds()
        try:
            if indexes and self._cluster:
                # Each index has its own slot on a cluster: one call per key.
                await self.client.delete(key)
                for index in indexes:
                    await self.client.command("SREM", index, session_key_hash(session_id))
            elif indexes:
                await self.client.eval(_DELETE_ONE, [key, *indexes], [session_key_hash(session_id)])
            else:
                await self.client.delete(key)
        finally:
            self._time_delete(self._clock.seconds() - started)

    def _indexes(self, session: Session) -> list[str]:
        indexes = []
        if session.provider_sid:
            indexes.append(self._index_key("sid", session.provider_sid))
        if session.sub:
            indexes.append(self._index_key("sub", session.sub))
        return indexes

    async def delete_by_sid(self, sid: str) -> int:
        """Delete every session of the provider session ``sid``; how many there were."""
        return await self._delete_indexed(self._index_key("sid", sid))

    async def delete_by_sub(self, sub: str) -> int:
        """Delete every session of the user ``sub``; how many there were."""
        return await self._delete_indexed(self._index_key("sub", sub))

    async def _delete_indexed(self, index: str) -> int:
        started = self._clock.seconds()
        try:
            if self._cluster:
                members = await self.client.eval(_INDEX_TAKE, [index])
                keys = [self._session_key_for(bytes(m).decode("ascii", "replace")) for m in members]
                deleted = await self.client.delete(*keys) if keys else 0
            else:
                deleted = await self.client.eval(_DELETE_INDEXED, [index], [self._session_prefix])
        finally:
            self._time_delete_indexed(self._clock.seconds() - started)
        return int(deleted)

    # -- refresh lock ------------------------------------------------------------

    async def lock(self, session_id: str, ttl_ms: int = 5000) -> str | None:
        """Take the session's refresh lock for ``ttl_ms``: a token, or None if held.

        Only the process holding the token refreshes; others wait briefly and
        load the session again to use the stored result.
        """
        if not is_session_id(session_id):
            return None
        token = secrets.token_urlsafe(16)
        started = self._clock.seconds()
        try:
            taken = await self.client.set(self._lock_key(session_id), token, px=ttl_ms, nx=True)
        finally:
            self._time_lock(self._clock.seconds() - started)
        return token if taken else None

    async def unlock(self, session_id: str, token: str) -> None:
        """Release the lock if ``token`` still holds it (it may have expired meanwhile)."""
        if not is_session_id(session_id):
            return
        started = self._clock.seconds()
        try:
            await self.client.eval(_UNLOCK, [self._lock_key(session_id)], [token])
        finally:
            self._time_unlock(self._clock.seconds() - started)
