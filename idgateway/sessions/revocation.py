"""What back-channel logout leaves behind: revoked provider sessions, used logout tokens.

A route with Redis sessions simply deletes them (``RedisSessionStore.delete_by_sid``).
A route with cookie sessions cannot reach into browsers, so it remembers the
provider ``sid`` as logged out (``RevocationList``) and refuses cookies that
carry it. With Redis, every process learns of a revocation through
publish/subscribe within moments, and a process starting (or reconnecting)
later loads the list::

    idgw:revoked:<route>:<sha256(sid)>   "1", PX = the list's ttl
    channel idgw:revoked                 "<ttl ms>:<that key>" per revocation

``is_revoked`` never calls Redis: it is on every request's path.

``ReplayCache`` remembers logout token ``jti`` values until the token
expires, so a captured token cannot be played again (OpenID Back-Channel
Logout 1.0, section 2.6).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from idgateway.sessions.redis_client import RedisClient, RedisUnavailable

__all__ = ["REVOKED_CHANNEL", "RedisUnavailable", "ReplayCache", "RevocationList"]

REVOKED_CHANNEL = "idgw:revoked"
_REVOKED_PREFIX = "idgw:revoked:"
_JTI_PREFIX = "idgw:jti:"
_HASH_LENGTH = 64

LOCAL_ONLY_WARNING = (
    "logged-out sessions are only remembered by this process; "
    "other processes will not see back-channel logouts"
)

# In-memory tables drop expired entries when they grow past this (and then
# past twice what survived), so they stay proportional to what is live.
_PRUNE_FROM = 1024

# KEYS: the revocation key. ARGV: ttl ms, channel, message. One round trip.
_REVOKE = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return redis.call('PUBLISH', ARGV[2], ARGV[3])
"""

# One SCAN step with the remaining lifetime of each key found.
# ARGV: cursor, pattern, count. Returns {next cursor, key, pttl, key, pttl, ...}.
_SCAN_WITH_TTL = """
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local found = {step[1]}
for _, key in ipairs(step[2]) do
  found[#found + 1] = key
  found[#found + 1] = redis.call('PTTL', key)
end
return found
"""
_SCAN_COUNT = 1000


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _revocation_key(route: str, sid_hash: str) -> str:
    return f"{_REVOKED_PREFIX}{route}:{sid_hash}"


def _parse_revocation_key(key: str) -> tuple[str, str] | None:
    """(route, sid hash) from a revocation key, reading the fixed-size hash from the right."""
    if not key.startswith(_REVOKED_PREFIX) or len(key) < len(_REVOKED_PREFIX) + _HASH_LENGTH + 2:
        return None
    sid_hash = key[-_HASH_LENGTH:]
    if key[-_HASH_LENGTH - 1] != ":" or not all(c in "0123456789abcdef" for c in sid_hash):
        return None
    route = key[len(_REVOKED_PREFIX) : -_HASH_LENGTH - 1]
    return (route, sid_hash) if route else None


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


class RevocationList:
    """Provider sessions logged out by back-channel logout, for cookie-session routes.

    ``clock`` provides ``seconds()`` (pass the reactor). Without a Redis
    ``client`` the list lives in this process only, and ``warning`` says so.
    Entries are kept for ``ttl`` seconds: make it at least the routes'
    longest max_duration, after which their cookies are dead anyway.
    """

    _log = Logger()

    def __init__(self, clock: Any, client: RedisClient | None, *, ttl: float = 86400) -> None:
        if ttl <= 0:
            raise ValueError(f"the revocation ttl must be more than 0 seconds, not {ttl}")
        self._clock = clock
        self._client = client
        self.ttl = ttl
        self._revoked = _ExpiringSet(clock)
        self._started = False
        self.warning: str | None = None if client is not None else LOCAL_ONLY_WARNING
        # How many loads from Redis have completed (for readiness and tests).
        self.loaded = 0

    def start(self) -> None:
        """With Redis: subscribe, and load what is revoked now (again after reconnects)."""
        if self._client is None or self._started:
            return
        self._started = True
        self._client.subscribe(REVOKED_CHANNEL, self._on_message, self._reload)

    def is_revoked(self, route: str, sid: str | None) -> bool:
        """Whether ``sid`` was logged out on ``route``. Memory only, no Redis."""
        if sid is None or not len(self._revoked):
            return False
        return (route, _sha256(sid)) in self._revoked

    async def revoke(self, route: str, sid: str) -> None:
        """Remember ``sid`` as logged out here now, then tell Redis and the other processes.

        Raises ``RedisUnavailable`` if Redis cannot be told (this process still knows).
        """
        sid_hash = _sha256(sid)
        self._revoked.add((route, sid_hash), self._clock.seconds() + self.ttl)
        if self._client is None:
            return
        key = _revocation_key(route, sid_hash)
        ttl_ms = max(1, math.ceil(self.ttl * 1000))
        await self._client.eval(_REVOKE, [key], [ttl_ms, REVOKED_CHANNEL, f"{ttl_ms}:{key}"])

    def _on_message(self, payload: bytes) -> None:
        try:
            ttl_text, _, key = payload.decode("utf-8").partition(":")
            ttl_ms = int(ttl_text)
        except (UnicodeDecodeError, ValueError):
            self._log.warn("Ignoring a malformed message on {channel}", channel=REVOKED_CHANNEL)
            return
        self._remember(key, ttl_ms)

    def _remember(self, key: str, ttl_ms: int) -> None:
        parsed = _parse_revocation_key(key)
        if parsed is None or ttl_ms <= 0:
            return
        self._revoked.add(parsed, self._clock.seconds() + ttl_ms / 1000)

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
        cursor: bytes | str = "0"
        while True:
            reply = await self._client.eval(
                _SCAN_WITH_TTL, [], [cursor, _REVOKED_PREFIX + "*", _SCAN_COUNT]
            )
            cursor = reply[0]
            for index in range(1, len(reply) - 1, 2):
                key, ttl_ms = reply[index], reply[index + 1]
                if isinstance(ttl_ms, int) and ttl_ms > 0:
                    self._remember(bytes(key).decode("utf-8", "replace"), ttl_ms)
                    found += 1
            if cursor in (b"0", "0"):
                break
        self.loaded += 1
        return found


class ReplayCache:
    """Logout token ``jti`` values seen, until their token expires (plus ``leeway``).

    With Redis the memory is shared by every process (SET NX PX); without,
    it is this process's. ``leeway`` should match the token validation's
    (a token is accepted up to that long after its ``exp``).
    """

    def __init__(self, clock: Any, client: RedisClient | None, *, leeway: float = 60.0) -> None:
        self._clock = clock
        self._client = client
        self.leeway = leeway
        self._seen = _ExpiringSet(clock)

    async def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        """True the first time ``(issuer, jti)`` is seen, False for a replay.

        Raises ``RedisUnavailable`` when Redis cannot answer.
        """
        now = self._clock.seconds()
        # At least a second, so even an already expired token is remembered.
        lifetime = max(1.0, expires_at + self.leeway - now)
        key = _JTI_PREFIX + _sha256(f"{issuer}\x00{jti}")
        if self._client is not None:
            return await self._client.set(key, "1", px=math.ceil(lifetime * 1000), nx=True)
        if key in self._seen:
            return False
        self._seen.add(key, now + lifetime)
        return True
