"""RFC 7662 token introspection for opaque access tokens, with a cache.

One route's client: it POSTs ``token=...`` to the provider's
``introspection_endpoint`` with HTTP basic client authentication (as at the
token endpoint), bounded like every provider call (``idgateway.oidc.http``:
timeout, body size, nesting). Answers are cached by the SHA-256 of the token:
an active one until ``min(exp, cache)``, an inactive one for
``negative_cache``. Concurrent requests with one token share one call. On
routes whose sessions live in Redis the cache is shared through it, sealed
with the route's session keys and keyed by the token's hash (never the token).

Nothing here ever lets a token through because the provider did not answer:
``IntrospectionUnavailable`` becomes ``503`` at the gate.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from idgateway.config.model import BearerSettings, IntrospectionSettings
from idgateway.oidc.access_tokens import (
    AccessToken,
    access_token_from_claims,
    check_audience_and_client,
    check_times,
)
from idgateway.oidc.client import ClientCredentials, basic_authorization
from idgateway.oidc.http import HTTPFailure, count_error, send
from idgateway.oidc.provider import ProviderClient
from idgateway.oidc.tokens import WRONG_ISSUER, WRONG_TYPE, TokenError
from idgateway.redis.errors import RedisUnavailable
from idgateway.sessions.keys import KeyRing

if TYPE_CHECKING:
    from idgateway.redis.cluster import AnyRedisClient

# Answers kept in this process (the oldest go first past it).
CACHE_MAX = 10_000
# Calls one route may have open at the provider at once. Every made-up opaque
# token is a new question (no cache helps), so a flood of them must not turn
# into a flood at the provider: past this, requests get 503 at once.
MAX_IN_FLIGHT = 64
# Introspection answers are a few hundred bytes.
MAX_ANSWER = 64 * 1024
# token_type values an access token may have (WSO2 answers "Refresh" for a
# refresh token, which must never pass as an access token).
_ACCESS_TOKEN_TYPES = frozenset({"bearer", "dpop", "n_a"})

INACTIVE = "inactive"


class IntrospectionUnavailable(Exception):
    """The provider could not say (down, timeout, 5xx, an unusable answer)."""


class Introspection:
    """One route's introspection client and answer cache."""

    _log = Logger()

    def __init__(
        self,
        provider: ProviderClient,
        http: Any,
        bearer: BearerSettings,
        settings: IntrospectionSettings,
        clock: IReactorTime,
        *,
        route: str,
        user_claim: str = "sub",
        redis: AnyRedisClient | None = None,
        keyring: KeyRing | None = None,
        timeout: float = 10.0,
        max_in_flight: int = MAX_IN_FLIGHT,
        credentials: ClientCredentials | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.provider = provider
        self.http = http
        self.bearer = bearer
        self.settings = settings
        self.clock = clock
        self.route = route
        self.user_claim = user_claim
        self.redis = redis if keyring is not None else None
        self.keyring = keyring
        self.timeout = timeout
        self._authorization = basic_authorization(settings.client_id, settings.client_secret)
        # The route's own client (private_key_jwt, tls_client_auth): it
        # authenticates each call itself, instead of the basic header.
        self.credentials = credentials
        # digest -> (until, AccessToken, or None for inactive)
        self._cache: dict[bytes, tuple[float, AccessToken | None]] = {}
        self._pending: dict[bytes, defer.Deferred[tuple[bool, Any]]] = {}

    def adopt(self, before: Introspection) -> None:
        """After a reload that changed nothing about tokens: keep the answers."""
        self._cache = before._cache

    def cached(self, digest: bytes) -> tuple[bool, AccessToken | None]:
        """(found, answer): the hot path, no I/O. answer None means inactive."""
        entry = self._cache.get(digest)
        if entry is None:
            return False, None
        if entry[0] <= self.clock.seconds():
            del self._cache[digest]
            return False, None
        return True, entry[1]

    async def check(self, token: str, digest: bytes) -> AccessToken | None:
        """The active, acceptable token, or None; IntrospectionUnavailable."""
        found, answer = self.cached(digest)
        if found:
            return answer
        pending = self._pending.get(digest)
        if pending is None:
            if len(self._pending) >= self.max_in_flight:
                raise IntrospectionUnavailable(
                    f"{len(self._pending)} introspections already in flight"
                )
            pending = defer.ensureDeferred(self._ask_once(token, digest))
            self._pending[digest] = pending
            pending.addBoth(self._done, digest)
        # Each waiter gets its own Deferred, relayed from the shared one, which
        # itself never fails (the outcome is a value), so no waiter's callbacks
        # can change what the others receive.
        waiter: defer.Deferred[tuple[bool, Any]] = defer.Deferred()

        def relay(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
            waiter.callback(outcome)
            return outcome

        pending.addCallback(relay)
        ok, value = await waiter
        if not ok:
            raise value
        assert value is None or isinstance(value, AccessToken)
        return value

    def _done(self, outcome: Any, digest: bytes) -> Any:
        self._pending.pop(digest, None)
        return outcome

    async def _ask_once(self, token: str, digest: bytes) -> tuple[bool, Any]:
        try:
            return True, await self._ask(token, digest)
        except Exception as error:  # noqa: BLE001 - handed to every waiter
            return False, error

    async def _ask(self, token: str, digest: bytes) -> AccessToken | None:
        shared = await self._shared_get(digest)
        if shared is not None:
            until, claims = shared
            known = self._from_claims(claims) if claims is not None else None
            self._remember(digest, until, known)
            return known
        claims = await self._introspect(token)
        now = self.clock.seconds()
        answer: AccessToken | None = None
        if claims is not None:
            try:
                answer = self._accept(claims, now)
            except TokenError as error:
                self._log.info(
                    "route {route}: introspected token refused: {reason}",
                    route=self.route,
                    reason=error.message,
                )
                claims = None
        if answer is None:
            until = now + self.settings.negative_cache
        else:
            until = now + self.settings.cache
            if answer.expires_at is not None:
                until = min(until, answer.expires_at)
        if until > now:
            self._remember(digest, until, answer)
            await self._shared_put(digest, until, claims if answer is not None else None)
        return answer

    def _from_claims(self, claims: dict[str, Any]) -> AccessToken:
        exp = claims.get("exp")
        return access_token_from_claims(
            "opaque",
            claims,
            user_claim=self.user_claim,
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )

    def _accept(self, claims: dict[str, Any], now: float) -> AccessToken | None:
        """An active answer's checks: the token is for this API, and an access token."""
        token_type = claims.get("token_type")
        if token_type is not None and (
            not isinstance(token_type, str) or token_type.lower() not in _ACCESS_TOKEN_TYPES
        ):
            raise TokenError(
                WRONG_TYPE, f"token_type {str(token_type)[:20]!r} is not an access token"
            )
        metadata = self.provider.metadata
        iss = claims.get("iss")
        if iss is not None and metadata is not None and iss != metadata.issuer:
            raise TokenError(WRONG_ISSUER, f"issuer is not {metadata.issuer!r}")
        check_times(claims, now, self.bearer.leeway, exp_required=False)
        check_audience_and_client(claims, self.bearer, required=False)
        return self._from_claims(claims)

    async def _introspect(self, token: str) -> dict[str, Any] | None:
        """The answer of an active token, None for an inactive one."""
        metadata = self.provider.metadata
        if metadata is None or not self.provider.ready:
            raise IntrospectionUnavailable(f"provider {self.provider.name} is not ready")
        endpoint = metadata.introspection_endpoint
        if endpoint is None:
            raise IntrospectionUnavailable(
                f"provider {self.provider.name} advertises no introspection_endpoint"
            )
        data = {"token": token, "token_type_hint": "access_token"}
        headers = {"Authorization": self._authorization}
        if self.credentials is not None:
            data, headers = self.credentials.authenticate(metadata, data, self.clock.seconds())
        try:
            result = await send(
                self.http,
                "POST",
                endpoint,
                clock=self.clock,
                timeout=self.timeout,
                headers={**headers, "Accept": "application/json"},
                data=data,
                max_body=MAX_ANSWER,
                call="introspection",
            )
        except HTTPFailure as failure:
            raise IntrospectionUnavailable(f"introspection failed: {failure}") from None
        if result.status != 200:
            raise IntrospectionUnavailable(f"introspection answered HTTP {result.status}")
        try:
            answer = result.json()
        except ValueError:
            count_error(self.http, "introspection", "invalid")  # metrics hook
            raise IntrospectionUnavailable("introspection answered something not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            count_error(self.http, "introspection", "invalid")  # metrics hook
            raise IntrospectionUnavailable("introspection answer has no boolean 'active'")
        return answer if answer["active"] is True else None

    def _remember(self, digest: bytes, until: float, answer: AccessToken | None) -> None:
        if len(self._cache) >= CACHE_MAX:
            now = self.clock.seconds()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
        self._cache[digest] = (until, answer)

    # -- the cache shared through the route's Redis ----------------------------------

    def _redis_key(self, digest: bytes) -> str:
        return f"idgw:{self.route}:introspect:{digest.hex()}"

    async def _shared_get(self, digest: bytes) -> tuple[float, dict[str, Any] | None] | None:
        if self.redis is None or self.keyring is None:
            return None
        key = self._redis_key(digest)
        try:
            raw = await self.redis.get(key)
        except RedisUnavailable:
            return None
        if raw is None:
            return None
        opened = self.keyring.open(raw, key.encode("ascii"))
        if opened is None:
            return None
        try:
            stored = json.loads(opened)
            until = float(stored["until"])
            claims = stored["claims"]
        except (ValueError, KeyError, TypeError):
            return None
        if until <= self.clock.seconds() or not (claims is None or isinstance(claims, dict)):
            return None
        return until, claims

    async def _shared_put(self, digest: bytes, until: float, claims: dict[str, Any] | None) -> None:
        if self.redis is None or self.keyring is None:
            return
        key = self._redis_key(digest)
        sealed = self.keyring.seal(
            json.dumps({"until": until, "claims": claims}).encode(), key.encode("ascii")
        )
        ttl_ms = max(1, int((until - self.clock.seconds()) * 1000))
        try:
            await self.redis.set(key, sealed, px=ttl_ms)
        except RedisUnavailable:
            pass  # this process still remembers
