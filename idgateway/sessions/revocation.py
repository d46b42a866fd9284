"""What logouts leave behind: revoked sessions, used logout tokens.

A route with Redis sessions simply deletes them (``RedisSessionStore.delete_by_sid``).
A route with cookie sessions cannot reach into browsers, so it remembers what
was logged out (``RevocationList``) and refuses cookies that match:

* a provider ``sid`` (back-channel and front-channel logout);
* one session's own id (sign-out, front-channel logout with the cookie), so a
  copy of the cookie is dead too;
* a ``sub`` and a time (a logout token with ``sub`` only): that subject's
  sessions created up to then.

Each entry has a reference time ``t`` (when the logout happened; for a
session id, when that session began) and lives until ``t + ttl``, where
``ttl`` is the longest ``max_duration`` of the cookie-session routes, read at
lookup: a reload that raises it extends every entry (and the Redis keys).
Memory holds at most ``max_entries`` per kind; past it the oldest go first,
and the route's sessions that began by then are refused (fail closed). With
Redis, every process learns of a revocation through publish/subscribe within
moments, and a process starting (or reconnecting) later loads the list::

    idgw:revoked:<route>:<sha256(sid)>       "<t>", PX = until t + ttl
    idgw:revoked-id:<route>:<sha256(id)>     (the same for session ids)
    idgw:revoked-sub:<route>:<sha256(sub)>   (and for subjects)
    channel idgw:revoked                     "v2 <t> <key>" per revocation

On a Redis Cluster the keys are the same (each revocation is one key, so
there is nothing to keep together); the loads SCAN every primary and read
each key on its own, and the channel reaches the subscribers of every node.

``is_revoked`` and ``session_revoked`` never call Redis: they are on every
request's path.

``ReplayCache`` remembers logout token ``jti`` values until the token
expires, so a captured token cannot be played again (OpenID Back-Channel
Logout 1.0, section 2.6).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from idgateway.redis.errors import RedisUnavailable

if TYPE_CHECKING:
    from idgateway.redis.cluster import AnyRedisClient

__all__ = ["REVOKED_CHANNEL", "RedisUnavailable", "ReplayCache", "RevocationList"]

REVOKED_CHANNEL = "idgw:revoked"
_REVOKED_PREFIX = "idgw:revoked:"
_JTI_PREFIX = "idgw:jti:"
_HASH_LENGTH = 64

# What a revocation names, and the Redis key prefix of each kind.
SID = "sid"
SESSION_ID = "id"
SUB = "sub"
# A provider sid named by a front-channel logout without a cookie: nobody
# proved it (anyone who knows the issuer can send one), so these are kept
# apart, fewer, and dropping one past the cap does not fail closed.
UNVERIFIED_SID = "fc"
_KIND_PREFIXES = {
    SID: "idgw:revoked:",
    SESSION_ID: "idgw:revoked-id:",
    SUB: "idgw:revoked-sub:",
    UNVERIFIED_SID: "idgw:revoked-fc:",
}
_SCAN_PATTERN = "idgw:revoked*"

# Entries kept in memory per kind; beyond it the oldest are dropped (and a
# warning logged). About 200 bytes each: 100,000 of each kind is some 60 MB
# at worst, reached only by a flood the front-channel budget below refuses.
MAX_ENTRIES = 100_000

# Front-channel logouts without a session cookie cannot be verified (anyone
# who knows the issuer can send one), yet each adds a revocation: per route
# and process, at most this many at once, refilled at this rate per second.
UNVERIFIED_BURST = 30.0
UNVERIFIED_RATE = 0.5

LOCAL_ONLY_WARNING = (
    "logged-out sessions are only remembered by this process; other processes will not "
    "see back-channel logouts, and a restart forgets them. To share them, set a shared "
    "Redis (redis: {url: redis://...} at the top level, or store: redis on the routes); "
    "with one process on one machine this is expected and can be ignored"
)

# In-memory tables drop expired entries when they grow past this (and then
# past twice what survived), so they stay proportional to what is live.
_PRUNE_FROM = 1024

# KEYS: the revocation key. ARGV: the reference time, ttl ms, channel, message.
_REVOKE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('PUBLISH', ARGV[3], ARGV[4])
"""

# One SCAN step with the remaining lifetime and the value of each key found.
# ARGV: cursor, pattern, count. Returns {next cursor, key, pttl, value, ...}.
_SCAN_WITH_TTL = """
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local found = {step[1]}
for _, key in ipairs(step[2]) do
  found[#found + 1] = key
  found[#found + 1] = redis.call('PTTL', key)
  found[#found + 1] = redis.call('GET', key) or ''
end
return found
"""

# One SCAN step: {next cursor, {keys}}. ARGV: cursor, pattern, count.
_SCAN_KEYS = """
return redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
"""

# Moves each key's expiry to its reference time + its ttl when that is later
# (a reload raised the ttl). KEYS: the keys. ARGV: now ms (the gateway's
# clock, as for every other revocation time), then each key's ttl ms.
_EXTEND = """
for i, key in ipairs(KEYS) do
  local t = tonumber(redis.call('GET', key))
  if t then
    local left = math.floor(t * 1000 + tonumber(ARGV[i + 1]) - tonumber(ARGV[1]))
    if left > redis.call('PTTL', key) then
      redis.call('PEXPIRE', key, string.format('%d', left))
    end
  end
end
return #KEYS
"""
_SCAN_COUNT = 1000

# Cluster mode, one key at a time (a script's keys must share a slot).
# KEYS: the key. Returns {pttl, value}.
_TTL_AND_VALUE = """
return {redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1]) or ''}
"""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _revocation_key(route: str, sid_hash: str, kind: str = SID) -> str:
    return f"{_KIND_PREFIXES[kind]}{route}:{sid_hash}"


def _parse_revocation_key(key: str) -> tuple[str, str, str] | None:
    """(kind, route, hash) from a revocation key, reading the fixed-size hash from the right."""
    found = next(((k, p) for k, p in _KIND_PREFIXES.items() if key.startswith(p)), None)
    if found is None:
        return None
    kind, prefix = found
    if len(key) < len(prefix) + _HASH_LENGTH + 2:
        return None
    digest = key[-_HASH_LENGTH:]
    if key[-_HASH_LENGTH - 1] != ":" or not all(c in "0123456789abcdef" for c in digest):
        return None
    route = key[len(prefix) : -_HASH_LENGTH - 1]
    return (kind, route, digest) if route else None


class _ExpiringSet:
    """Keys with expiry times; expired ones vanish on lookup or when pruned."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self.entries: dict[Any, float] = {}
        self._prune_at = _PRUNE_FROM

    def add(self, key: Any, expires_at: float) -> None:
        entries = self.entries
        if entries.get(key, 0.0) < expires_at:
            entries[key] = expires_at
        if len(entries) >= self._prune_at:
            now = self._clock.seconds()
            for old in [k for k, until in entries.items() if until <= now]:
                del entries[old]
            self._prune_at = max(_PRUNE_FROM, 2 * len(entries))

    def __contains__(self, key: Any) -> bool:
        expires_at = self.entries.get(key)
        if expires_at is None:
            return False
        if expires_at <= self._clock.seconds():
            del self.entries[key]
            return False
        return True

    def __len__(self) -> int:
        return len(self.entries)


class _Revocations:
    """One kind of revocation: "route:hash" -> reference time, oldest first."""

    def __init__(self, owner: RevocationList, kind: str) -> None:
        self._owner = owner
        self.kind = kind
        # Past the cap, dropping a proven revocation must not bring its sessions
        # back (fail closed); an unverified one only names a sid nobody proved.
        self.fail_closed = kind != UNVERIFIED_SID
        self.entries: dict[str, float] = {}
        self._prune_at = _PRUNE_FROM
        self.evicted = 0

    def add(self, key: str, t: float, now: float) -> bool:
        """Remember ``key`` from ``t`` on; False when it would be dead already."""
        owner = self._owner
        if t + owner.ttl_for(key[: -_HASH_LENGTH - 1]) <= now:
            return False
        entries = self.entries
        old = entries.get(key)
        if old is not None:
            if old >= t:
                return True
            del entries[key]  # re-inserted at the end: the order stays oldest first
        entries[key] = t
        if len(entries) >= self._prune_at:
            ttl_for = owner.ttl_for
            for dead in [
                k for k, since in entries.items() if since + ttl_for(k[: -_HASH_LENGTH - 1]) <= now
            ]:
                del entries[dead]
            self._prune_at = max(_PRUNE_FROM, 2 * len(entries))
        cap = owner.max_entries if self.fail_closed else owner.max_entries // 10
        excess = len(entries) - cap
        if excess > 0:
            dead_before = owner.dead_before
            for oldest in list(itertools.islice(entries, excess)):
                t = entries.pop(oldest)
                if self.fail_closed:
                    # A revocation dropped for room must not bring its sessions
                    # back: every session of that route that began by then is
                    # refused (its users log in again).
                    route = oldest[: -_HASH_LENGTH - 1]
                    dead_before[route] = max(dead_before.get(route, 0.0), t + 1.0)
            self.evicted += excess
            owner.evicted(self.kind, excess)
        return True

    def since(self, key: str, now: float) -> float | None:
        """The reference time of a live entry, else None."""
        t = self.entries.get(key)
        if t is None:
            return None
        if t + self._owner.ttl_for(key[: -_HASH_LENGTH - 1]) <= now:
            del self.entries[key]
            return None
        return t

    def __len__(self) -> int:
        return len(self.entries)


class RevocationList:
    """Sessions logged out, for cookie-session routes.

    ``clock`` provides ``seconds()`` (pass the reactor). Without a Redis
    ``client`` the list lives in this process only, and ``warning`` says so.
    Entries are kept for ``ttl`` seconds from their reference time: the
    routes' longest max_duration, after which their cookies are dead anyway
    (``set_ttl`` follows reloads).
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        client: AnyRedisClient | None,
        *,
        ttl: float = 86400,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"the revocation ttl must be more than 0 seconds, not {ttl}")
        self._clock = clock
        self._client = client
        self.ttl = ttl
        self.max_entries = max_entries
        self._tables = {kind: _Revocations(self, kind) for kind in _KIND_PREFIXES}
        self._revoked = self._tables[SID]
        self._ids = self._tables[SESSION_ID]
        self._subs = self._tables[SUB]
        self._unverified = self._tables[UNVERIFIED_SID]
        # Cookie sessions that began before this were dead (older than every
        # route's max_duration) when a reload raised the ttl: they stay dead,
        # whether or not their revocation entries are still around.
        self.dead_before: dict[str, float] = {}
        # route -> its own ttl (its max_duration); others use ``ttl``.
        self._ttls: dict[str, float] = {}
        # session id -> (session, route, its sid, id and sub keys): hashing three
        # values per request would cost more than the lookups.
        self._digests: dict[str, tuple[Any, str, str | None, str, str]] = {}
        # route -> (tokens, when last counted), for unverified front-channel logouts.
        self._budgets: dict[str, tuple[float, float]] = {}
        self._started = False
        self.warning: str | None = None if client is not None else LOCAL_ONLY_WARNING
        # How many loads from Redis have completed (for readiness and tests).
        self.loaded = 0
        self._last_eviction_warning = -math.inf

    def size(self) -> int:
        """Entries held in memory, of every kind. (Not ``__len__``: an empty
        list must not be falsy where ``revocation or ...`` picks one.)"""
        return sum(len(table) for table in self._tables.values())

    def start(self) -> None:
        """With Redis: subscribe, and load what is revoked now (again after reconnects)."""
        if self._client is None or self._started:
            return
        self._started = True
        self._client.subscribe(REVOKED_CHANNEL, self._on_message, self._reload)

    def ttl_for(self, route: str) -> float:
        """How long a revocation on ``route`` lasts: its sessions' max_duration."""
        return self._ttls.get(route, self.ttl)

    def set_ttl(self, ttl: float, per_route: dict[str, float] | None = None) -> None:
        """A reload's lifetimes: ``ttl`` (the longest max_duration) and each
        cookie-session route's own. Raising one extends that route's entries
        (here at once, in Redis in the background), and its sessions that had
        already outlived the old lifetime stay dead."""
        per_route = dict(per_route or {})
        for value in (ttl, *per_route.values()):
            if value <= 0:
                raise ValueError(f"the revocation ttl must be more than 0 seconds, not {value}")
        now = self._clock.seconds()
        routes = set(self._ttls) | set(per_route)
        raised = [r for r in routes if per_route.get(r, ttl) > self.ttl_for(r)]
        for route in raised:
            self.dead_before[route] = max(
                self.dead_before.get(route, 0.0), now - self.ttl_for(route)
            )
        raised_default = ttl > self.ttl
        self.ttl = ttl
        self._ttls = per_route
        if self._client is None:
            return
        patterns = [_SCAN_PATTERN] if raised_default else [f"{_SCAN_PATTERN}:{r}:*" for r in raised]
        for pattern in patterns:
            d = defer.ensureDeferred(self._extend_in_redis(pattern))
            d.addErrback(
                lambda failure: self._log.warn(
                    "Could not extend revoked sessions in Redis to the new ttl: {reason}",
                    reason=failure.getErrorMessage(),
                )
            )

    async def _extend_in_redis(self, pattern: str) -> None:
        assert self._client is not None
        from idgateway.redis.cluster import RedisClusterClient  # loaded with its client

        if isinstance(self._client, RedisClusterClient):
            for raw in await self._client.scan_keys(pattern, _SCAN_COUNT):
                key = bytes(raw).decode("utf-8", "replace")
                parsed = _parse_revocation_key(key)
                ttl_ms = math.ceil(self.ttl_for(parsed[1] if parsed else "") * 1000)
                now_ms = math.floor(self._clock.seconds() * 1000)
                await self._client.eval(_EXTEND, [key], [now_ms, ttl_ms])
            return
        cursor: bytes | str = "0"
        while True:
            now_ms = math.floor(self._clock.seconds() * 1000)
            reply = await self._client.eval(_SCAN_KEYS, [], [cursor, pattern, _SCAN_COUNT])
            cursor = reply[0]
            keys = [bytes(key).decode("utf-8", "replace") for key in reply[1]]
            ttls = []
            for key in keys:
                parsed = _parse_revocation_key(key)
                ttls.append(math.ceil(self.ttl_for(parsed[1] if parsed else "") * 1000))
            if keys:
                await self._client.eval(_EXTEND, keys, [now_ms, *ttls])
            if cursor in (b"0", "0"):
                return

    def is_revoked(self, route: str, sid: str | None) -> bool:
        """Whether ``sid`` was logged out on ``route``. Memory only, no Redis."""
        if sid is None or not (len(self._revoked) or len(self._unverified)):
            return False
        key, now = f"{route}:{_sha256(sid)}", self._clock.seconds()
        return self._revoked.since(key, now) is not None or (
            self._unverified.since(key, now) is not None
        )

    def session_revoked(self, route: str, session: Any) -> bool:
        """Whether a cookie session is dead: its sid, its id, or its sub since
        before it began was logged out (or it outlived a ttl a reload raised).
        Memory only, no Redis: on every request's path."""
        if session.created_at < self.dead_before.get(route, 0.0):
            return True
        sids, ids, subs, unverified = self._revoked, self._ids, self._subs, self._unverified
        if not (sids.entries or ids.entries or subs.entries or unverified.entries):
            return False
        memo = self._digests.get(session.id)
        if memo is None or memo[0] is not session or memo[1] != route:
            sid = session.provider_sid
            memo = (
                session,
                route,
                None if sid is None else f"{route}:{_sha256(sid)}",
                f"{route}:{_sha256(session.id)}",
                f"{route}:{_sha256(session.sub)}",
            )
            if len(self._digests) >= 4096:
                self._digests.clear()
            self._digests[session.id] = memo
        now = self._clock.seconds()
        if memo[2] is not None and sids.entries and sids.since(memo[2], now) is not None:
            return True
        if memo[2] is not None and unverified.entries:
            if unverified.since(memo[2], now) is not None:
                return True
        if ids.entries and ids.since(memo[3], now) is not None:
            return True
        if subs.entries:
            since = subs.since(memo[4], now)
            return since is not None and session.created_at <= since
        return False

    async def revoke(self, route: str, sid: str, *, verified: bool = True) -> None:
        """Remember ``sid`` as logged out here now, then tell Redis and the other processes.

        ``verified=False`` for a sid nobody proved (a front-channel logout
        without a cookie): kept apart, see UNVERIFIED_SID.
        Raises ``RedisUnavailable`` if Redis cannot be told (this process still knows).
        """
        kind = SID if verified else UNVERIFIED_SID
        await self._add(kind, route, sid, self._clock.seconds())

    async def revoke_session(self, route: str, session_id: str, created_at: float) -> None:
        """One session (its cookie, and every copy of it) ends, everywhere.

        Kept until the session's max_duration would have ended it.
        """
        await self._add(SESSION_ID, route, session_id, created_at)

    async def revoke_sub(self, route: str, sub: str, since: float) -> None:
        """Every session of ``sub`` that began at or before ``since`` ends."""
        await self._add(SUB, route, sub, since)

    def admit_unverified(self, route: str) -> bool:
        """Whether one more unverifiable revocation (a front-channel logout
        without a cookie) fits ``route``'s budget in this process."""
        now = self._clock.seconds()
        tokens, then = self._budgets.get(route, (UNVERIFIED_BURST, now))
        tokens = min(UNVERIFIED_BURST, tokens + (now - then) * UNVERIFIED_RATE)
        if tokens < 1:
            self._budgets[route] = (tokens, now)
            return False
        self._budgets[route] = (tokens - 1, now)
        return True

    async def _add(self, kind: str, route: str, value: str, t: float) -> None:
        digest = _sha256(value)
        now = self._clock.seconds()
        if not self._tables[kind].add(f"{route}:{digest}", t, now):
            return
        if self._client is None:
            return
        key = _revocation_key(route, digest, kind)
        ttl_ms = max(1, math.ceil((t + self.ttl_for(route) - now) * 1000))
        await self._client.eval(
            _REVOKE, [key], [repr(t), ttl_ms, REVOKED_CHANNEL, f"v2 {t!r} {key}"]
        )

    def evicted(self, kind: str, count: int) -> None:
        now = self._clock.seconds()
        if now - self._last_eviction_warning >= 60:
            self._last_eviction_warning = now
            self._log.warn(
                "The revocation list holds {max} {kind} entries: the oldest were dropped "
                "({count} now), and every session that began before them is refused (its "
                "user logs in again) so that none they ended comes back",
                max=self.max_entries,
                kind=kind,
                count=count,
            )

    def _on_message(self, payload: bytes) -> None:
        try:
            text = payload.decode("utf-8")
            if text.startswith("v2 "):
                _, t_text, key = text.split(" ", 2)
                t = float(t_text)
            else:  # "<ttl ms>:<key>" from an older gateway: revoked now
                ttl_text, _, key = text.partition(":")
                int(ttl_text)
                t = self._clock.seconds()
        except (UnicodeDecodeError, ValueError):
            self._log.warn("Ignoring a malformed message on {channel}", channel=REVOKED_CHANNEL)
            return
        self._remember(key, t)

    def _remember(self, key: str, t: float) -> None:
        parsed = _parse_revocation_key(key)
        if parsed is None or not math.isfinite(t):
            return
        kind, route, digest = parsed
        self._tables[kind].add(f"{route}:{digest}", t, self._clock.seconds())

    def _reload(self) -> None:
        d = defer.ensureDeferred(self.load())
        d.addErrback(
            lambda failure: self._log.warn(
                "Could not load revoked sessions from Redis: {reason}",
                reason=failure.getErrorMessage(),
            )
        )

    async def load(self) -> int:
        """Add every revocation stored in Redis to memory; how many were found.

        Runs by itself after each (re)subscription; SCANs the keyspace in
        steps of ``_SCAN_COUNT`` keys, one round trip each.
        """
        if self._client is None:
            return 0
        found = 0
        stored: list[tuple[float, str]] = []
        for key, ttl_ms, value in await self._stored_revocations():
            if not isinstance(ttl_ms, int) or ttl_ms <= 0:
                continue
            try:
                t = float(bytes(value))
            except ValueError:
                # An older gateway's "1": revoked a ttl before it expires.
                t = self._clock.seconds() + ttl_ms / 1000 - self.ttl
            stored.append((t, bytes(key).decode("utf-8", "replace")))
            found += 1
        # Oldest first, as they happened: past the cap, the oldest are the
        # ones dropped (SCAN's order is the keyspace's, not time's).
        for t, key in sorted(stored):
            self._remember(key, t)
        self.loaded += 1
        return found

    async def _stored_revocations(self) -> list[tuple[Any, Any, Any]]:
        """(key, pttl, value) of every revocation key in Redis (or in the cluster)."""
        assert self._client is not None
        found: list[tuple[Any, Any, Any]] = []
        from idgateway.redis.cluster import RedisClusterClient  # loaded with its client

        if isinstance(self._client, RedisClusterClient):
            for key in await self._client.scan_keys(_SCAN_PATTERN, _SCAN_COUNT):
                ttl_ms, value = await self._client.eval(_TTL_AND_VALUE, [key])
                found.append((key, ttl_ms, value))
            return found
        cursor: bytes | str = "0"
        while True:
            reply = await self._client.eval(
                _SCAN_WITH_TTL, [], [cursor, _SCAN_PATTERN, _SCAN_COUNT]
            )
            cursor = reply[0]
            for index in range(1, len(reply) - 2, 3):
                found.append((reply[index], reply[index + 1], reply[index + 2]))
            if cursor in (b"0", "0"):
                return found


class ReplayCache:
    """Logout token ``jti`` values seen, until their token expires (plus ``leeway``).

    With Redis the memory is shared by every process (SET NX PX); without,
    it is this process's. ``leeway`` should match the token validation's
    (a token is accepted up to that long after its ``exp``).
    """

    _log = Logger()

    def __init__(self, clock: Any, client: AnyRedisClient | None, *, leeway: float = 60.0) -> None:
        self._clock = clock
        self._client = client
        self.leeway = leeway
        self._seen = _ExpiringSet(clock)

    async def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        """True the first time ``(issuer, jti)`` is seen, False for a replay.

        With Redis, every process shares the answer; when Redis cannot answer,
        this process's own memory does.
        """
        now = self._clock.seconds()
        # At least a second, so even an already expired token is remembered.
        lifetime = max(1.0, expires_at + self.leeway - now)
        key = _JTI_PREFIX + _sha256(f"{issuer}\x00{jti}")
        if self._client is not None:
            try:
                first = await self._client.set(key, "1", px=math.ceil(lifetime * 1000), nx=True)
            except RedisUnavailable as error:
                # A logout must not be lost because Redis stalls: this
                # process's memory decides (a replay to another process in
                # the meantime would only end sessions already ended).
                self._log.warn(
                    "logout token replay check in this process only: {error}", error=str(error)
                )
            else:
                self._seen.add(key, now + lifetime)
                return bool(first)
        if key in self._seen:
            return False
        self._seen.add(key, now + lifetime)
        return True
