"""The login gate of one route: session check, refresh, authorization, identity.

An authenticated request on the hot path costs one cookie decryption, a few
comparisons and the header list: no provider call, no RSA, no Deferred. Only
an access token due for refresh takes the asynchronous path, and concurrent
requests of one session share that one refresh.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from idgateway.access import compile_public_paths, is_public, normalise_path
from idgateway.identity import IdentityHeaders
from idgateway.model import AuthorizeRules, ProviderSettings, Route, RouteAuth
from idgateway.oidc.client import ClientCredentials, TokenEndpointError, refresh_tokens
from idgateway.oidc.provider import ProviderClient
from idgateway.pages import send_error, wants_json
from idgateway.sessions.cookie import (
    CookieSessionCodec,
    CookieSettings,
    SessionTooLarge,
    parse_cookie_header,
    strip_cookies,
)
from idgateway.sessions.flows import FlowCookies
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.model import Session

if TYPE_CHECKING:
    from idgateway.proxy import GatewayResource
    from idgateway.request import GatewayRequest
    from idgateway.runtime import GatewayState, RouteRuntime

# A session's cookie is re-issued (sliding inactivity) at most this often.
SLIDE_EVERY = 60.0
# How long a refresh result is handed to requests still carrying the old cookie.
REFRESH_GRACE = 60.0
# Token endpoint answers that mean "could not ask", not "refused".
_PROVIDER_TROUBLE = frozenset({"temporarily_unavailable", "server_error", "invalid_response"})


class _Unavailable:
    """The provider could not be asked (down, 5xx, timeout)."""


UNAVAILABLE = _Unavailable()


@attrs.define(eq=False)
class ProviderHandle:
    """A running provider client and the HTTP client it (and token calls) use."""

    settings: ProviderSettings
    client: ProviderClient
    http: Any


class RouteLogin:
    """Everything one route needs to log users in and check their sessions."""

    _log = Logger()

    def __init__(
        self, route: Route, auth: RouteAuth, provider: ProviderHandle, clock: IReactorTime
    ) -> None:
        self.route = route
        self.auth = auth
        self.oidc = auth.oidc
        self.session_settings = auth.session
        self.provider = provider
        self.clock = clock
        keys = auth.session.keys or (_EPHEMERAL_KEYS.setdefault(route.name, _random_key()),)
        self.keyring = KeyRing.from_strings(keys)
        cookie_name = auth.session.cookie_name or f"_idgw_{route.name}"
        self.codecs = {
            secure: CookieSessionCodec(
                route.name,
                self.keyring,
                CookieSettings(
                    name=cookie_name,
                    secure=secure,
                    domain=auth.session.cookie_domain,
                    path=auth.session.cookie_path,
                    same_site=auth.session.same_site,
                ),
            )
            for secure in (False, True)
        }
        self.flows = {
            secure: FlowCookies(route.name, self.keyring, secure) for secure in (False, True)
        }
        self.identity = IdentityHeaders.for_route(
            auth.headers,
            user_claim=auth.oidc.user_claim,
            email_claim=auth.oidc.email_claim,
            groups_claim=auth.oidc.groups_claim,
        )
        self.public = compile_public_paths(auth.public_paths)
        self.credentials = ClientCredentials(
            client_id=auth.oidc.client_id,
            client_secret=auth.oidc.client_secret,
            auth_method=auth.oidc.client_auth,
        )
        self.redirect_path = auth.oidc.redirect_path
        self._path_rules = tuple(
            (sub.prefix, sub.authorize)
            for sub in sorted(route.paths, key=lambda sub: len(sub.prefix), reverse=True)
            if sub.authorize is not None
        )
        self._refreshing: dict[tuple[str, str], defer.Deferred[Any]] = {}
        self._recent: dict[tuple[str, str], tuple[float, Session]] = {}

    def rules_for(self, raw_path: bytes) -> AuthorizeRules:
        """The longest path sub-route with its own rules wins, else the route's."""
        if self._path_rules:
            path = normalise_path(raw_path)
            for prefix, rules in self._path_rules:
                if path.startswith(prefix):
                    return rules
        return self.auth.authorize

    def is_own_cookie(self, name: bytes) -> bool:
        return any(c.is_own_cookie(name) for c in self.codecs.values()) or any(
            f.is_own_cookie(name) for f in self.flows.values()
        )

    # -- the request path ---------------------------------------------------------

    def handle(
        self,
        resource: GatewayResource,
        request: GatewayRequest,
        state: GatewayState,
        runtime: RouteRuntime,
        host: bytes,
    ) -> None:
        from idgateway import endpoints

        path = normalise_path(request.path)
        if path.startswith("/oauth2/") or path == self.redirect_path:
            endpoints.dispatch(self, resource, request, state, runtime, host, path)
            return
        cookie_values = request.requestHeaders.getRawHeaders(b"cookie", [])
        own = runtime.own_cookie or self.is_own_cookie
        upstream_cookie = strip_cookies(cookie_values, own) if cookie_values else None
        if is_public(self.public, request.method, path):
            resource.forward(request, state, runtime, host, cookie=upstream_cookie)
            return
        codec = self.codecs[resource.tls]
        session, chunks = (
            codec.decode(parse_cookie_header(cookie_values)) if cookie_values else (None, 0)
        )
        now = self.clock.seconds()
        if session is not None and not self._alive(session, now):
            session = None
        if session is None:
            self.unauthenticated(request, host, path, resource.tls, chunks)
            return
        if self._needs_refresh(session, now):
            old = session
            d = defer.ensureDeferred(self.refreshed(session))

            def refreshed(new: Session | None | _Unavailable) -> None:
                if request.finished or request._disconnected:
                    return
                if new is UNAVAILABLE:
                    # The provider is down: keep the session while its access
                    # token is still good; a blip must not log everyone out.
                    if (old.access_expires_at or 0) > self.clock.seconds():
                        self.admit(
                            resource,
                            request,
                            state,
                            runtime,
                            host,
                            old,
                            chunks,
                            upstream_cookie,
                            reissue=False,
                        )
                    else:
                        send_error(
                            request,
                            503,
                            "The identity provider cannot be reached to renew your sign-in. "
                            "Please try again in a minute.",
                            error="provider_unavailable",
                            request_id=request.request_id,
                            extra_headers={b"retry-after": b"30"},
                        )
                    return
                if new is None:
                    self.unauthenticated(request, host, path, resource.tls, chunks)
                    return
                assert isinstance(new, Session)
                self.admit(
                    resource,
                    request,
                    state,
                    runtime,
                    host,
                    new,
                    chunks,
                    upstream_cookie,
                    reissue=True,
                )

            def failed(failure: Failure) -> None:
                self._log.failure(
                    "route {route}: refresh failed [{request_id}]",
                    failure,
                    route=self.route.name,
                    request_id=request.request_id.decode(),
                )
                if not request.finished and not request._disconnected:
                    send_error(
                        request,
                        500,
                        "Something went wrong on the gateway.",
                        request_id=request.request_id,
                    )

            d.addCallback(refreshed)
            d.addErrback(failed)
            return
        self.admit(
            resource, request, state, runtime, host, session, chunks, upstream_cookie, reissue=False
        )

    def admit(
        self,
        resource: GatewayResource,
        request: GatewayRequest,
        state: GatewayState,
        runtime: RouteRuntime,
        host: bytes,
        session: Session,
        chunks: int,
        upstream_cookie: bytes | None,
        *,
        reissue: bool,
    ) -> None:
        from idgateway.access import authorization_failure

        failure = authorization_failure(
            self.rules_for(request.path),
            session.claims,
            email_claim=self.oidc.email_claim,
            groups_claim=self.oidc.groups_claim,
        )
        if failure is not None:
            self._log.info(
                "route {route}: {user} refused: {why}",
                route=self.route.name,
                user=session.user,
                why=failure,
            )
            send_error(
                request,
                403,
                "You are signed in, but this application does not allow your account.",
                error="forbidden",
                request_id=request.request_id,
            )
            return
        now = self.clock.seconds()
        set_cookies: list[bytes] = []
        if reissue or now - session.last_seen > SLIDE_EVERY:
            session = attrs.evolve(session, last_seen=now)
            set_cookies = self.session_cookies(session, resource.tls, chunks)
        resource.forward(
            request,
            state,
            runtime,
            host,
            cookie=upstream_cookie,
            identity=self.identity.headers_for(session),
            set_cookies=set_cookies,
        )

    def unauthenticated(
        self, request: GatewayRequest, host: bytes, path: str, tls: bool, chunks: int
    ) -> None:
        from idgateway import endpoints

        clear = self.codecs[tls].clear(chunks) if chunks else []
        if self._is_api_request(request, path):
            login_url = endpoints.start_url(request, host, tls)
            endpoints.send_json(
                request,
                401,
                {"error": "unauthenticated", "message": "Sign in first.", "login_url": login_url},
                set_cookies=clear,
            )
            return
        endpoints.begin_login(
            self, request, host, tls, return_to=request.uri.decode("latin-1"), set_cookies=clear
        )

    def _is_api_request(self, request: GatewayRequest, path: str) -> bool:
        if wants_json(request):
            return True
        return any(path.startswith(prefix) for prefix in self.oidc.api_paths)

    # -- session lifetime -------------------------------------------------------------

    def _alive(self, session: Session, now: float) -> bool:
        if session.route != self.route.name:
            return False
        if now - session.created_at > self.session_settings.max_duration:
            return False
        return now - session.last_seen <= self.session_settings.inactivity_timeout

    def _needs_refresh(self, session: Session, now: float) -> bool:
        expires = session.access_expires_at
        if expires is None or session.refresh_token is None:
            return False
        return expires - self.session_settings.refresh_leeway <= now

    async def refreshed(self, session: Session) -> Session | None | _Unavailable:
        """The session with fresh tokens; None if the refresh was refused (log in
        again); UNAVAILABLE if the provider could not be asked.

        Concurrent requests of one session share one refresh, and requests that
        still carry the pre-refresh cookie (parallel page loads) get its result for
        a grace period: WSO2 rotates refresh tokens, so refreshing twice with the
        same token would fail and log the user out.
        """
        key = (session.id, session.refresh_token or "")
        now = self.clock.seconds()
        recent = self._recent.get(key)
        if recent is not None and recent[0] > now:
            return recent[1]
        pending = self._refreshing.get(key)
        if pending is None:
            pending = defer.ensureDeferred(self._refresh(session))
            self._refreshing[key] = pending

            def done(result: Any) -> Any:
                self._refreshing.pop(key, None)
                if isinstance(result, Session):
                    self._remember(key, result)
                return result

            pending.addBoth(done)
        # Each waiter gets its own Deferred relayed from the shared one, so one
        # waiter's callbacks cannot change what the others receive.
        waiter: defer.Deferred[Session | None | _Unavailable] = defer.Deferred()

        def relay(result: Any) -> Any:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
            return result

        pending.addBoth(relay)
        return await waiter

    def _remember(self, key: tuple[str, str], session: Session) -> None:
        now = self.clock.seconds()
        if len(self._recent) > 10000:
            self._recent = {k: v for k, v in self._recent.items() if v[0] > now}
        self._recent[key] = (now + REFRESH_GRACE, session)

    async def _refresh(self, session: Session) -> Session | None | _Unavailable:
        metadata = self.provider.client.metadata
        if metadata is None:
            return UNAVAILABLE
        if session.refresh_token is None:
            return None
        try:
            tokens = await refresh_tokens(
                self.provider.http,
                metadata,
                self.credentials,
                refresh_token=session.refresh_token,
                clock=self.clock,
            )
        except TokenEndpointError as error:
            self._log.info(
                "route {route}: refresh for {user} failed: {error}",
                route=self.route.name,
                user=session.user,
                error=error.error,
            )
            if error.error in _PROVIDER_TROUBLE:
                return UNAVAILABLE
            return None
        now = self.clock.seconds()
        return attrs.evolve(
            session,
            access_token=tokens.access_token,
            access_expires_at=now + tokens.expires_in if tokens.expires_in else None,
            refresh_token=tokens.refresh_token or session.refresh_token,
            id_token=tokens.id_token or session.id_token,
            last_seen=now,
        )

    def session_cookies(self, session: Session, tls: bool, previous_chunks: int) -> list[bytes]:
        codec = self.codecs[tls]
        try:
            return codec.encode(session, previous_chunks)
        except SessionTooLarge:
            # Keep what the headers need; drop the tokens (no refresh, no id_token_hint).
            slim = attrs.evolve(session, id_token=None, refresh_token=None, access_expires_at=None)
            try:
                return codec.encode(slim, previous_chunks)
            except SessionTooLarge:
                slim = attrs.evolve(
                    slim, access_token=None, claims=_essential(session.claims, self.oidc)
                )
                return codec.encode(slim, previous_chunks)


def _essential(claims: dict[str, Any], oidc: Any) -> dict[str, Any]:
    keep = {oidc.user_claim, oidc.email_claim, oidc.groups_claim, "sub", "sid", "username", "roles"}
    return {k: v for k, v in claims.items() if k in keep}


# Keys made up for routes configured without any: kept for the life of the
# process, so that a reload does not log everyone out.
_EPHEMERAL_KEYS: dict[str, str] = {}


def _random_key() -> str:
    import base64

    return base64.b64encode(os.urandom(32)).decode("ascii")
