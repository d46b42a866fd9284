"""A signed identity assertion for upstreams: what identity headers cannot prove.

A route with ``assertion:`` sends its upstream, on every request that passed
the gate, a compact JWS (ES256 or EdDSA, by the key that signs) in the
configured header. Its claims: ``iss`` the route's public origin (scheme and
host the client used), ``aud`` the route's name or the configured
``audience``, ``sub``, ``email``, ``groups``, ``client_id`` (client tokens),
``sid``, ``iat``, ``exp`` = ``iat`` + ``lifetime``, and a random ``jti``. An
upstream checks it against the JWKS at ``/.well-known/idgateway/jwks.json``
(idgateway.config.signing_keys) and then knows the identity came from the gateway,
for this route, recently.

Signing is not on the hot path: an assertion is made once per identity, origin
and route and reused until shortly before it expires, so a session's requests
sign once per ``lifetime`` / 2 at most (30 s before expiry for longer lifetimes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import attrs

from idgateway.config.model import AssertionSettings
from idgateway.config.signing_keys import SigningKey, b64url
from idgateway.sessions.model import Session

# Assertions (and sessions' header lists) kept per route; past it, expired ones
# go, and if the cache is still full it starts again (made-up identities cannot
# grow it without bound; the cost is one signature per identity).
ASSERTION_CACHE_MAX = 10_000
# An assertion is replaced when it has less than this left (or half its
# lifetime, if that is shorter): an upstream always gets one with time to spare.
RENEW_MARGIN_MAX = 30.0


@attrs.frozen
class IdentityRecord:
    """Who passed the gate, as the assertion states it.

    Plain values, so that any gate (a session, a bearer token) can make one.
    """

    sub: str
    email: str | None = None
    groups: tuple[str, ...] = ()
    # The OAuth client of a client token (client-credentials grant).
    client_id: str | None = None
    # The gateway's session id (not the cookie, which is never sent upstream).
    sid: str | None = None


def session_identity(session: Session, *, email_claim: str, groups_claim: str) -> IdentityRecord:
    """The identity record of a browser session."""
    email = session.claims.get(email_claim)
    return IdentityRecord(
        sub=session.sub,
        email=email if isinstance(email, str) else None,
        groups=claim_strings(session.claims.get(groups_claim)),
        sid=session.id,
    )


def claim_strings(value: Any) -> tuple[str, ...]:
    """A list claim's string items (WSO2 sends a single group as a plain string)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(item for item in value if isinstance(item, str))
    return ()


@attrs.define(eq=False)
class _Made:
    """One signed assertion and when to replace it."""

    token: bytes
    renew_at: float


class AssertionSigner:
    """Makes (and keeps) one route's assertions with the gateway's signing key."""

    def __init__(
        self,
        settings: AssertionSettings,
        key: SigningKey,
        *,
        audience: str,
        cache_max: int = ASSERTION_CACHE_MAX,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.settings = settings
        self.key = key
        self.audience = audience
        self.header = settings.header.encode("ascii")
        self.lifetime = max(1, round(settings.lifetime))
        self.renew_margin = min(self.lifetime / 2, RENEW_MARGIN_MAX)
        self._cache_max = cache_max
        self._random = random
        protected = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
        self._protected = b64url(json.dumps(protected, separators=(",", ":")).encode())
        self._made: dict[tuple[IdentityRecord, str], _Made] = {}
        # (session id, host, tls) -> (the session's identity headers, those plus
        # the assertion, when to replace it): the hot path's one dict lookup.
        self._sessions: dict[
            tuple[str, bytes, bool],
            tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], float],
        ] = {}

    # -- for any gate -----------------------------------------------------------------

    def assertion(self, identity: IdentityRecord, issuer: str, now: float) -> bytes:
        """The assertion for ``identity`` arriving at ``issuer``: a cached one while it has
        more than the renewal margin left, else a new one."""
        return self._current(identity, issuer, now).token

    def _current(self, identity: IdentityRecord, issuer: str, now: float) -> _Made:
        key = (identity, issuer)
        made = self._made.get(key)
        if made is None or made.renew_at <= now:
            made = self._sign(identity, issuer, now)
            _bounded_put(self._made, key, made, self._cache_max, lambda m: m.renew_at > now)
        return made

    def _sign(self, identity: IdentityRecord, issuer: str, now: float) -> _Made:
        issued = int(now)
        expires = issued + self.lifetime
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": self.audience,
            "sub": identity.sub,
            "iat": issued,
            "exp": expires,
            "jti": b64url(self._random(16)),
        }
        if identity.email is not None:
            claims["email"] = identity.email
        if identity.groups:
            claims["groups"] = list(identity.groups)
        if identity.client_id is not None:
            claims["client_id"] = identity.client_id
        if identity.sid is not None:
            claims["sid"] = identity.sid
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{self._protected}.{payload}".encode("ascii")
        token = signing_input + b"." + b64url(self.key.sign(signing_input)).encode("ascii")
        return _Made(token, expires - self.renew_margin)

    # -- for the session gate (idgateway.gate.session_check) ---------------------------

    def session_headers(
        self,
        base: list[tuple[bytes, bytes]],
        session: Session,
        host: bytes,
        tls: bool,
        now: float,
        *,
        email_claim: str,
        groups_claim: str,
    ) -> list[tuple[bytes, bytes]]:
        """``base`` (the session's identity headers) plus this route's assertion header.

        The same list is handed out while the assertion is fresh and ``base`` is the
        same list (the gate keeps one per session object), so most requests cost one
        dict lookup here.
        """
        key = (session.id, host, tls)
        known = self._sessions.get(key)
        if known is not None and known[0] is base and known[2] > now:
            return known[1]
        issuer = ("https://" if tls else "http://") + host.decode("ascii", "replace")
        identity = session_identity(session, email_claim=email_claim, groups_claim=groups_claim)
        made = self._current(identity, issuer, now)
        combined = [*base, (self.header, made.token)]
        entry = (base, combined, made.renew_at)
        _bounded_put(self._sessions, key, entry, self._cache_max, lambda v: v[2] > now)
        return combined

    def headers_with(
        self,
        base: list[tuple[bytes, bytes]],
        identity: IdentityRecord,
        host: bytes,
        tls: bool,
        now: float,
    ) -> list[tuple[bytes, bytes]]:
        """``base`` plus this route's assertion for ``identity`` (the token gate's way in)."""
        issuer = ("https://" if tls else "http://") + host.decode("ascii", "replace")
        return [*base, (self.header, self._current(identity, issuer, now).token)]

    def session_header(
        self,
        session: Session,
        host: bytes,
        tls: bool,
        now: float,
        *,
        email_claim: str,
        groups_claim: str,
    ) -> tuple[bytes, bytes]:
        """The assertion header alone, for a session arriving at ``host`` (forward-auth)."""
        identity = session_identity(session, email_claim=email_claim, groups_claim=groups_claim)
        issuer = ("https://" if tls else "http://") + host.decode("ascii", "replace")
        return (self.header, self._current(identity, issuer, now).token)


def _bounded_put(
    cache: dict[Any, Any], key: Any, value: Any, limit: int, keep: Callable[[Any], bool]
) -> None:
    if key not in cache and len(cache) >= limit:
        for stale in [k for k, v in cache.items() if not keep(v)]:
            del cache[stale]
        if len(cache) >= limit:
            cache.clear()
    cache[key] = value
