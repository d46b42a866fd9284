"""The login gate of one route: session check, refresh, authorization, identity.

An authenticated request on the hot path costs one cookie decryption, a few
comparisons and the header list: no provider call, no RSA, no Deferred. Only
an access token due for refresh takes the asynchronous path, and concurrent
requests of one session share that one refresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from idgateway.config.client_keys import load_client_key
from idgateway.config.model import (
    AuthorizeRules,
    ProviderSettings,
    PublicPath,
    Route,
    RouteAuth,
    StepUp,
)
from idgateway.gate.answers import origin, send_json, send_redirect, start_url
from idgateway.gate.assertion import AssertionSigner
from idgateway.gate.identity_headers import IdentityHeaders
from idgateway.gate.logout_pages import send_signed_out
from idgateway.gate.needed_claims import needed_claims
from idgateway.gate.rules import (
    authorization_failure,
    compile_public_paths,
    every_reading_is_public,
)
from idgateway.gate.step_up import (
    insufficient_authentication_challenge,
    satisfies,
    step_up_parameters,
)
from idgateway.http.paths import PathReading, fold_case, no_fold
from idgateway.observe import access_log as observe
from idgateway.observe.metrics import METRICS  # metrics hook
from idgateway.oidc.client import (
    ClientCredentials,
    PushedRequestError,
    TokenEndpointError,
    authorization_parameters,
    authorization_request_url,
    push_authorization_request,
    pushed_authorize_url,
    refresh_tokens,
)
from idgateway.oidc.client_assertion import ClientAssertionSigner
from idgateway.oidc.logout_paths import logout_paths, unhonoured_settings
from idgateway.oidc.provider import ProviderClient, ProviderMetadata
from idgateway.oidc.refresh import validate_refreshed_id_token
from idgateway.oidc.tokens import PROVIDER_UNAVAILABLE, TokenError
from idgateway.proxy.headers import header_lines
from idgateway.redis.errors import RedisUnavailable
from idgateway.server.answers import (
    send_error,
    send_provider_unavailable,
    send_sessions_unavailable,
    wants_json,
)
from idgateway.sessions.binding import session_binding
from idgateway.sessions.cookie import (
    CookieHeaderReader,
    CookieSessionCodec,
    CookieSettings,
    SessionTooLarge,
    parse_cookie_header,
)
from idgateway.sessions.flows import FlowCookies
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.loaded import LoadedSessions
from idgateway.sessions.model import Session
from idgateway.sessions.recent import RecentlyUsed
from idgateway.sessions.revocation import RevocationList

if TYPE_CHECKING:
    from idgateway.gate.contracts import Forwarder, GatewayView, RouteView, TokenChallenges
    from idgateway.redis.cluster import AnyRedisClient
    from idgateway.server.channel import GatewayRequest
    from idgateway.sessions.redis_store import RedisSessionStore

# A session's cookie is re-issued (sliding inactivity) at most this often.
SLIDE_EVERY = 60.0
# How long a refresh result is handed to requests still carrying the old cookie.
REFRESH_GRACE = 60.0
# How many sessions' authorization verdicts and identity headers are kept.
ADMISSION_MEMO_MAX = 4096
# How many Cookie headers' admissions are kept (cookie sessions; at most what
# the route's CookieHeaderReader keeps, 1,024 headers).
ADMITTED_MEMO_MAX = 1024
# An admission is taken again only this long before anything about its session
# falls due: the full checks compare "now - then > limit", the memo "now < due".
ADMITTED_MARGIN = 0.001
MEMO_PERIOD = 60.0  # the memos forget what was not used for one to two of these
# How many connections' last Cookie headers are kept (RouteLogin.handle): a
# bound on the bytes held (~2 KB a header), not on who gets the memo's speed.
LAST_COOKIE_HEADERS_MAX = 256
# A request without cookies (shared, never changed).
_NO_COOKIES: dict[bytes, bytes] = {}
# Redis sessions: how long one process may hold a session's refresh lock, and
# how long (steps x step seconds) the others wait for its result.
REFRESH_LOCK_MS = 10_000
REFRESH_WAIT_STEPS = 40
REFRESH_WAIT_STEP = 0.1
# While the access token is still good, a request waits this long for its
# refresh, then goes on with the token it has (the refresh carries on, and its
# result reaches the session's next request). A provider that hangs would
# otherwise hold every request of the session for the provider call's timeout.
REFRESH_PATIENCE = 2.0
# After a refresh could not ask the provider (down, timeout), this long before
# the session's requests ask again: a down provider costs one attempt per
# session and period, not one per request.
REFRESH_RETRY = 5.0
# Token endpoint answers that mean "could not ask", not "refused".
_PROVIDER_TROUBLE = frozenset({"temporarily_unavailable", "server_error", "invalid_response"})


class _Unavailable:
    """The provider could not be asked (down, 5xx, timeout)."""


UNAVAILABLE = _Unavailable()


@attrs.define(eq=False)
class Visit:
    """One request on its way through the gate."""

    resource: Forwarder
    request: GatewayRequest
    state: GatewayView
    runtime: RouteView
    host: bytes
    path: str
    upstream_cookie: bytes | None
    # The browser's scheme: https on TLS listeners, or behind a trusted proxy
    # that says so (X-Forwarded-Proto); decides Secure cookies and callback URLs.
    tls: bool = False
    chunks: int = 0
    session_id: str | None = None
    # Cookie sessions: the Cookie header as the route's reader answered it
    # (None: not one it keeps), and the expiry sealed in the session cookie.
    cookie_header: tuple[bytes | None, dict[bytes, bytes]] | None = None
    sealed_until: int | None = None


class _Admitted(NamedTuple):
    """A Cookie header's session as check and admit let it through, and until when."""

    cookie_header: tuple[bytes | None, dict[bytes, bytes]]
    tls: bool
    session: Session
    rules: AuthorizeRules
    identity: list[tuple[bytes, bytes]]  # before an identity assertion
    identity_lines: bytes  # the same, as written upstream (header_lines)
    due: float  # (clock seconds) the first deadline, less ADMITTED_MARGIN
    sealed_until: int | None  # the cookie's sealed expiry (the codec's clock)


@attrs.define(eq=False)
class ProviderHandle:
    """A running provider client and the HTTP client it (and token calls) use."""

    settings: ProviderSettings
    client: ProviderClient
    http: Any
    # What logins have shown about the provider and logged once ("short_tokens",
    # "no_sid"): a warning per provider, not per login.
    noted: set[str] = attrs.field(factory=set)


class RouteLogin:
    """Everything one route needs to log users in and check their sessions."""

    _log = Logger()

    def __init__(
        self,
        route: Route,
        auth: RouteAuth,
        provider: ProviderHandle,
        clock: IReactorTime,
        redis: AnyRedisClient | None = None,
        shared_redis: AnyRedisClient | None = None,
        *,
        revocation: RevocationList,
        token_http: Any = None,
    ) -> None:
        self.route = route
        # What sign-outs and back- and front-channel logouts ended (cookie
        # sessions only): required, so no gate can be built that never asks,
        # and the one list both end_sessions writes and every check reads.
        self.revocation = revocation
        # Cookie sessions: a Redis shared by every process coordinates refreshes.
        self.shared_redis = shared_redis
        self.auth = auth
        self.oidc = auth.oidc
        self.session_settings = auth.session
        self.provider = provider
        self.clock = clock
        keys = auth.session.keys or (_EPHEMERAL_KEYS.setdefault(route.name, _random_key()),)
        self.keyring = KeyRing.from_strings(keys)
        # Sessions are bound to the provider and client that made them: a
        # reload that changes either ends them (sessions/binding.py).
        binding = session_binding(provider.settings, auth.oidc.client_id)
        self.binding = binding
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
                binding=binding,
            )
            for secure in (False, True)
        }
        self.flows = {
            secure: FlowCookies(route.name, self.keyring, secure, binding=binding)
            for secure in (False, True)
        }
        self.identity = IdentityHeaders.for_route(
            auth.headers,
            user_claim=auth.oidc.user_claim,
            email_claim=auth.oidc.email_claim,
            groups_claim=auth.oidc.groups_claim,
        )
        # Case-insensitive routes compare folded paths with folded prefixes (and
        # run their public regexes case-insensitively).
        self.fold = fold_case if route.case_insensitive_paths else no_fold
        self.public = compile_public_paths(
            [_folded(p) for p in auth.public_paths]
            if route.case_insensitive_paths
            else auth.public_paths
        )
        self.credentials = ClientCredentials(
            client_id=auth.oidc.client_id,
            client_secret=auth.oidc.client_secret,
            auth_method=auth.oidc.client_auth,
            signer=(
                ClientAssertionSigner(load_client_key(auth.oidc.private_key_file))
                if auth.oidc.private_key_file is not None
                else None
            ),
            assertion_audience=auth.oidc.client_assertion_audience,
        )
        # Token, refresh and PAR calls: the provider's client, or this route's own
        # with its client certificate (tls_client_auth).
        self.token_http = token_http if token_http is not None else provider.http
        self.redirect_path = auth.oidc.redirect_path
        # Step-up per path (paths[].login), by path sub-route index.
        self.step_ups: tuple[StepUp | None, ...] = tuple(path.login for path in route.paths)
        self.has_step_up = any(step_up is not None for step_up in self.step_ups)
        # For oidc.userinfo: auto, and for the "missing claim" hints (once each).
        self.needed_claims = needed_claims(route, auth)
        self.hinted_claims: set[str] = set()
        # store: redis: the cookie holds an opaque id, the session lives in Redis.
        self.store: RedisSessionStore | None = None
        # Redis sessions recently loaded by this process (sessions/loaded.py).
        self._loaded: LoadedSessions | None = None
        # The cookie that holds the Redis session id, by TLS or not.
        self._store_cookie_names = {
            secure: codec.cookie_name.encode("ascii") for secure, codec in self.codecs.items()
        }
        if auth.session.store == "redis":
            assert redis is not None, "store: redis needs a Redis client"
            from idgateway.sessions.redis_store import RedisSessionStore  # only with Redis

            self.store = RedisSessionStore(
                redis,
                route=route.name,
                keyring=self.keyring,
                inactivity_timeout=auth.session.inactivity_timeout,
                max_duration=auth.session.max_duration,
                clock=clock,
                binding=binding,
            )
            self._loaded = LoadedSessions(self.store, clock)
        self._refreshing: dict[tuple[str, str], defer.Deferred[Any]] = {}
        # Refresh outcomes by (session id, refresh token): (until, the new session,
        # or UNAVAILABLE while a refresh is slow or after it could not ask).
        self._recent: dict[tuple[str, str], tuple[float, Session | _Unavailable]] = {}
        self._recent_pruned_at = 0.0
        # Cookie headers seen before: (Cookie for the upstream, cookies by name).
        self._cookie_headers = CookieHeaderReader()
        # Bound once: a fresh bound method per request would empty that memo.
        self._is_own_cookie = self.is_own_cookie
        # The route's token gate when it takes bearer tokens too (set by the
        # runtime): requests that carry a token are its, not the session's.
        self.bearer: TokenChallenges | None = None
        # id(session) -> (session, rules, authorization failure, identity headers).
        # Forgets sessions not seen for a minute or two (sessions/recent.py):
        # it holds each session, and refreshed sessions are never seen again.
        self._admission: RecentlyUsed[
            int, tuple[Session, AuthorizeRules, str | None, list[tuple[bytes, bytes]]]
        ] = RecentlyUsed(clock.seconds, MEMO_PERIOD, ADMISSION_MEMO_MAX)
        # Cookie sessions: id(Cookie header as read) -> _Admitted, what the
        # full checks found for it the last time, taken again while nothing is
        # due (see handle). Holds only headers the reader holds too: it starts
        # again with the reader's memo.
        self._admitted: RecentlyUsed[int, _Admitted] = RecentlyUsed(
            clock.seconds, MEMO_PERIOD, ADMITTED_MEMO_MAX
        )
        self._admitted_generation = self._cookie_headers.generation
        # The Cookie header each connection sent last, by id of its requests'
        # peer address (one object per connection, its HTTP/2 streams'
        # too): (the reader's generation, is_own, the header, the reader's
        # answer). A browser sends the same header on every request of a
        # connection: one comparison with the last one (a memcmp) spares
        # hashing its ~2 KB anew for the reader's dict on each request. The
        # comparison, not the id, decides: a reused id or another header
        # reads afresh. Only headers the reader holds, while it holds them
        # (same generation): it would answer with the same object.
        self._last_cookie_header: dict[
            int, tuple[int, Any, bytes, tuple[bytes | None, dict[bytes, bytes]]]
        ] = {}
        # The route's identity assertion (set by the state builder); None: off.
        self.assertion: AssertionSigner | None = None
        # What the provider's discovery document offers this route, checked
        # once it is known (warnings at start, and after a reload).
        client = provider.client
        if client is None:  # a gate built without a provider (tests of other stages)
            pass
        elif client.metadata is not None:
            self.check_provider_offers(client.metadata)
        else:
            client.when_ready.append(self.check_provider_offers)

    def check_provider_offers(self, metadata: ProviderMetadata) -> None:
        """Warn about settings the provider's discovery document cannot honour,
        and log which of its logout paths can end this route's sessions."""
        route, provider = self.route.name, self.provider.settings.name
        for warning in unhonoured_settings(self.oidc, metadata):
            self._log.warn(
                "route {route}, provider {provider}: {warning}",
                route=route,
                provider=provider,
                warning=warning,
            )
        paths = logout_paths(metadata, self.oidc)
        self._log.info(
            "route {route}: provider logout paths: {paths}",
            route=route,
            paths="; ".join(f"{name}: {how}" for name, how in paths.items()),
        )

    def rules_for(self, reading: PathReading) -> AuthorizeRules:
        """The longest path sub-route with its own rules wins, else the route's.

        The path judge has already checked that every reading of the path
        selects the same sub-route (or refused the request).
        """
        if reading.rules_route is not None:
            rules = self.route.paths[reading.rules_route].authorize
            assert rules is not None
            return rules
        return self.auth.authorize

    def is_public(self, method: bytes, reading: PathReading) -> bool:
        """Public only if every reading of the path is (see idgateway.http.paths)."""
        return every_reading_is_public(self.public, method, reading)

    def is_own_cookie(self, name: bytes) -> bool:
        return any(c.is_own_cookie(name) for c in self.codecs.values()) or any(
            f.is_own_cookie(name) for f in self.flows.values()
        )

    # -- the request path ---------------------------------------------------------

    def handle(
        self,
        resource: Forwarder,
        request: GatewayRequest,
        state: GatewayView,
        runtime: RouteView,
        host: bytes,
    ) -> None:
        reading: PathReading = request.idgw_reading
        cookie_values = request.requestHeaders.getRawHeaders(b"cookie")
        upstream_cookie: bytes | None = None
        cookies = _NO_COOKIES
        cookie_header = None
        if cookie_values:
            own = runtime.own_cookie or self._is_own_cookie
            reader = self._cookie_headers
            last = self._last_cookie_header.get(id(request.client))
            if (
                last is not None
                and last[0] == reader.generation
                and last[1] is own
                and len(cookie_values) == 1
                and last[2] == cookie_values[0]
            ):
                cookie_header = last[3]  # (reader.read's answer, as it still holds it)
            else:
                cookie_header = reader.read(cookie_values, own)
                if len(cookie_values) == 1 and reader.remembers(cookie_values):
                    self._remember_cookie_header(request, own, cookie_values[0], cookie_header)
            upstream_cookie, cookies = cookie_header
        tls = secure_origin(resource, request, state)
        # (is_public; no public paths, the usual case: none is)
        if self.public and every_reading_is_public(self.public, request.method, reading):
            resource.forward(request, state, runtime, host, cookie=upstream_cookie)
            return
        if self.store is None:
            if cookie_header is not None:
                # The same Cookie header as a request admitted before, with
                # nothing due since: every check that can change between two
                # requests (time against the session's, refresh and slide
                # deadlines, the cookie's sealed expiry; revocation; the
                # path's rules and step-up; a client gone) is made again, the
                # rest (decode, authorization verdict, identity headers) is
                # what the full checks found for this session.
                admitted = self._admitted.get(id(cookie_header))
                if admitted is not None:
                    # (Unpacked once: each field of a NamedTuple read by name
                    # is a descriptor looked up the slow way.)
                    header_then, tls_then, known, rules, identity, identity_lines, due, sealed = (
                        admitted
                    )
                if (
                    admitted is not None
                    and header_then is cookie_header
                    and tls_then is tls
                    # Would this request meet the same answer from check
                    # and admit: forwarded with the same identity headers,
                    # nothing refreshed, slid or re-issued? (Asked here, not
                    # in a method of its own: once per request.)
                    and not (request.finished or request.client_gone)
                    and self.clock.seconds() < due
                    and (sealed is None or self.codecs[tls].cookie_alive(sealed))
                    and not self.revocation.session_revoked(self.route.name, known)
                    and not (self.has_step_up and self.step_up_for(reading) is not None)
                    and (
                        self.auth.authorize
                        if reading.rules_route is None
                        else self.rules_for(reading)
                    )
                    is rules
                ):
                    request.idgw_user = known.user  # observe hook: the access log's user
                    request.idgw_login = self
                    request.idgw_session = known
                    request.idgw_session_id = None
                    if self.assertion is None:
                        # The identity headers as written upstream the first time.
                        resource.forward(
                            request,
                            state,
                            runtime,
                            host,
                            cookie=upstream_cookie,
                            identity_lines=identity_lines,
                        )
                        return
                    identity = self.assertion.session_headers(
                        identity,
                        known,
                        host,
                        tls,
                        self.clock.seconds(),
                        email_claim=self.oidc.email_claim,
                        groups_claim=self.oidc.groups_claim,
                    )
                    resource.forward(
                        request, state, runtime, host, cookie=upstream_cookie, identity=identity
                    )
                    return
                if not self._cookie_headers.remembers(cookie_values):  # type: ignore[arg-type]
                    cookie_header = None  # (not to be kept here either)
            visit = Visit(
                resource, request, state, runtime, host, reading.text, upstream_cookie, tls
            )
            visit.cookie_header = cookie_header
            session, visit.chunks, visit.sealed_until = self.codecs[tls].decode_with_expiry(cookies)
            self.check(visit, session)
            return
        visit = Visit(resource, request, state, runtime, host, reading.text, upstream_cookie, tls)
        session_id = cookies.get(self._store_cookie_names[tls])
        if not session_id:
            self.unauthenticated(visit)
            return
        visit.session_id = session_id.decode("latin-1")
        loaded = self._loaded
        assert loaded is not None
        cached = loaded.fresh(visit.session_id, self.clock.seconds())
        if cached is not None:
            self.check(visit, cached)
            return
        # One GET per session at a time; it then serves this process for
        # LOADED_FOR seconds (a page load's burst costs one round trip, and a
        # logout elsewhere still takes effect everywhere within that bound).
        d = loaded.load(visit.session_id)
        d.addCallbacks(
            lambda session: self.check(visit, session), self._store_failed, errbackArgs=(visit,)
        )
        d.addErrback(self._failed, visit)

    def _remember_cookie_header(
        self,
        request: GatewayRequest,
        own: Any,
        value: bytes,
        cookie_header: tuple[bytes | None, dict[bytes, bytes]],
    ) -> None:
        """Keep the Cookie header this request's connection sent (see handle)."""
        memo = self._last_cookie_header
        if len(memo) >= LAST_COOKIE_HEADERS_MAX:
            memo.clear()
        memo[id(request.client)] = (self._cookie_headers.generation, own, value, cookie_header)

    def check(self, visit: Visit, session: Session | None) -> None:
        """Lifetime, revocation and refresh; then admit or send to login."""
        request = visit.request
        if request.finished or request.client_gone:
            return
        now = self.clock.seconds()
        if session is not None:
            # (_alive and _revoked, spelled out: every request comes this way)
            settings = self.session_settings
            if (
                session.route != self.route.name
                or now - session.created_at > settings.max_duration
                or now - session.last_seen > settings.inactivity_timeout
            ):
                session = None
            elif self.store is None and self.revocation.session_revoked(self.route.name, session):
                session = None  # ended by a back-channel logout
        if session is None:
            self.unauthenticated(visit)
            return
        if (
            session.access_expires_at is None
            or session.refresh_token is None
            or not self._needs_refresh(session, now)
        ):
            # (_needs_refresh's own first test, asked here: most sessions'
            # tokens are far from due, and many have no refresh token.)
            self.admit(visit, session, reissue=False)
            return
        old = session
        d = defer.ensureDeferred(self.refreshed(session, visit.session_id))

        def refreshed(new: Session | None | _Unavailable) -> None:
            if request.finished or request.client_gone:
                return
            if new is UNAVAILABLE:
                # The provider is down or slow: keep the session while its access
                # token is still good; a blip must not log everyone out. Without
                # sliding it: a refresh may still be rotating its tokens, and a
                # re-issued cookie or re-saved Redis session with the old ones
                # would undo it.
                if (old.access_expires_at or 0) > self.clock.seconds():
                    self.admit(visit, old, reissue=False, slide=False)
                else:
                    send_provider_unavailable(
                        request,
                        "The identity provider cannot be reached to renew your sign-in.",
                        request.request_id,
                    )
                return
            if new is None:
                self.unauthenticated(visit)
                return
            assert isinstance(new, Session)
            self.admit(visit, new, reissue=self.store is None)

        d.addCallback(refreshed)
        d.addErrback(self._failed, visit)

    def _store_failed(self, failure: Failure, visit: Visit) -> None:
        failure.trap(RedisUnavailable)
        METRICS.session_store_error(self.route.name)  # metrics hook
        request = visit.request
        self._log.warn(
            "route {route}: session store unavailable: {error} [{request_id}]",
            route=self.route.name,
            error=failure.getErrorMessage(),
            request_id=request.request_id.decode(),
        )
        if request.finished or request.client_gone:
            return
        send_sessions_unavailable(request, request.request_id)

    def _failed(self, failure: Failure, visit: Visit) -> None:
        request = visit.request
        if failure.check(RedisUnavailable):
            METRICS.session_store_error(self.route.name)  # metrics hook
        self._log.failure(
            "route {route}: unexpected error [{request_id}]",
            failure,
            route=self.route.name,
            request_id=request.request_id.decode(),
        )
        if not request.finished and not request.client_gone:
            send_error(
                request, 500, "Something went wrong on the gateway.", request_id=request.request_id
            )

    def admit(self, visit: Visit, session: Session, *, reissue: bool, slide: bool = True) -> None:
        request = visit.request
        request.idgw_user = session.user  # observe hook: the access log's user
        # A WebSocket tunnel this request may open ends with this session.
        request.idgw_login = self
        request.idgw_session = session
        request.idgw_session_id = visit.session_id
        if self.has_step_up:
            step_up = self.step_up_for(request.idgw_reading)
            if step_up is not None and not satisfies(session, step_up, self.clock.seconds()):
                self.step_up(visit, session, step_up)
                return
        reading = request.idgw_reading
        if reading.rules_route is None:
            rules = self.auth.authorize  # (rules_for, spelled out for the usual case)
        else:
            rules = self.rules_for(reading)
        # A session's verdict and identity headers depend only on the session
        # object (immutable, and shared by every request with the same cookie or
        # loaded Redis session) and the rules: work them out once per pair.
        memo = self._admission.get(id(session))
        if memo is not None and memo[0] is session and memo[1] is rules:
            failure, identity = memo[2], memo[3]
        else:
            failure = authorization_failure(
                rules,
                session.claims,
                email_claim=self.oidc.email_claim,
                groups_claim=self.oidc.groups_claim,
            )
            identity = self.identity.headers_for(session)
            self._admission.put(id(session), (session, rules, failure, identity))
        memo_identity = identity
        if failure is not None:
            self._log.info(
                "route {route}: {user} refused: {why}",
                route=self.route.name,
                user=observe.log_user(session.user),
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
        if self.assertion is not None:
            identity = self.assertion.session_headers(
                identity,
                session,
                visit.host,
                visit.tls,
                now,
                email_claim=self.oidc.email_claim,
                groups_claim=self.oidc.groups_claim,
            )
        set_cookies: list[bytes] = []
        if reissue or (slide and now - session.last_seen > SLIDE_EVERY):
            session = attrs.evolve(session, last_seen=now)
            if self.store is None:
                set_cookies = self.session_cookies(session, visit.tls, visit.chunks)
            elif visit.session_id is not None:
                # Sliding expiry in Redis: a write once a minute per session,
                # off the request's path (the answer does not wait for it).
                self._save_later(visit.session_id, session)
        elif slide and visit.cookie_header is not None:
            # The session as its cookie opened, admitted as it is: the next
            # request with this Cookie header may take the same way (handle).
            self._remember_admitted(visit, session, rules, memo_identity)
        visit.resource.forward(
            request,
            visit.state,
            visit.runtime,
            visit.host,
            cookie=visit.upstream_cookie,
            identity=identity,
            set_cookies=set_cookies,
        )

    def _remember_admitted(
        self,
        visit: Visit,
        session: Session,
        rules: AuthorizeRules,
        identity: list[tuple[bytes, bytes]],
    ) -> None:
        """Keep what check and admit found for a cookie session that was let
        through as its cookie opened, until the first of its deadlines."""
        cookie_header = visit.cookie_header
        assert cookie_header is not None and self.store is None
        generation = self._cookie_headers.generation
        if generation != self._admitted_generation:
            # The reader let its headers go: so does this memo.
            self._admitted.clear()
            self._admitted_generation = generation
        settings = self.session_settings
        last_seen = session.last_seen
        due = min(
            session.created_at + settings.max_duration,
            last_seen + settings.inactivity_timeout,
            last_seen + SLIDE_EVERY,
        )
        expires = session.access_expires_at
        if expires is not None and session.refresh_token is not None:
            # (_needs_refresh is false until this, at the earliest.)
            leeway = settings.refresh_leeway
            if session.tokens_at is not None:
                leeway = min(leeway, (expires - session.tokens_at) / 2)
            due = min(due, expires - leeway)
        self._admitted.put(
            id(cookie_header),
            _Admitted(
                cookie_header,
                visit.tls,
                session,
                rules,
                identity,
                header_lines(identity),
                due - ADMITTED_MARGIN,
                visit.sealed_until,
            ),
        )

    def _save_later(self, session_id: str, session: Session) -> None:
        assert self.store is not None and self._loaded is not None
        loaded = self._loaded
        loaded.replace(session_id, session)
        # Only over the session Redis still holds: a sign-out or logout on
        # another process in the last second deleted it for good.
        d = defer.ensureDeferred(self.store.save(session_id, session, only_if_stored=True))

        def saved(stored: bool) -> None:
            if not stored:
                loaded.forget(session_id)

        d.addCallbacks(saved, self._save_failed)

    def _save_failed(self, failure: Failure) -> None:
        METRICS.session_store_error(self.route.name)  # metrics hook
        self._log.warn(
            "route {route}: could not extend a session: {error}",
            route=self.route.name,
            error=failure.getErrorMessage(),
        )

    def unauthenticated(self, visit: Visit) -> None:
        request, tls = visit.request, visit.tls
        if self.store is None:
            clear = self.codecs[tls].clear(visit.chunks) if visit.chunks else []
        else:
            clear = [self.store_cookie_clear(tls)] if visit.session_id else []
        if self._is_api_request(request, visit.path):
            login_url = start_url(request, visit.host, tls)
            send_json(
                request,
                401,
                {"error": "unauthenticated", "message": "Sign in first.", "login_url": login_url},
                set_cookies=clear,
                # A route that takes tokens too says how (RFC 6750, RFC 9728).
                headers=[] if self.bearer is None else self.bearer.challenges(visit.host, tls),
            )
            return
        if self.oidc.post_logout_redirect is None and request.method in (b"GET", b"HEAD"):
            codec = self.codecs[tls]
            cookie_values = request.requestHeaders.getRawHeaders(b"cookie", [])
            if codec.signed_out_name in parse_cookie_header(cookie_values):
                # Back from signing out at the provider: say so, once.
                send_signed_out(
                    request,
                    app=visit.host.decode("latin-1"),
                    sign_in_url="/oauth2/start?rd=" + quote(visit.path, safe="/"),
                    set_cookies=[*clear, codec.signed_out_marker_clear()],
                )
                return
        self.begin_login(
            request,
            visit.host,
            tls,
            return_to=request.uri.decode("latin-1"),
            set_cookies=clear,
            # A path that needs a step-up asks for it in the first login.
            step_up=self.step_up_for(request.idgw_reading) if self.has_step_up else None,
        )

    def step_up_for(self, reading: PathReading) -> StepUp | None:
        """The step-up of the path sub-route serving ``reading`` (every reading of
        the path selects the same one, or the path judge refused it)."""
        if reading.sub_route is None:
            return None
        return self.step_ups[reading.sub_route]

    def step_up(self, visit: Visit, session: Session, step_up: StepUp) -> None:
        """A session too weak or too old for this path: a new login with the
        path's acr_values/max_age (browsers), or RFC 9470's 401 (API clients)."""
        request = visit.request
        self._log.info(
            "route {route}: {user} needs a step-up for {path} (acr {acr})",
            route=self.route.name,
            user=observe.log_user(session.user),
            path=visit.path,
            acr=session.claims.get("acr"),
        )
        if self._is_api_request(request, visit.path):
            send_json(
                request,
                401,
                {
                    "error": "insufficient_user_authentication",
                    "message": "A stronger or more recent sign-in is required.",
                    "login_url": start_url(request, visit.host, visit.tls),
                },
                headers=[(b"www-authenticate", insufficient_authentication_challenge(step_up))],
            )
            return
        self.begin_login(
            request,
            visit.host,
            visit.tls,
            return_to=request.uri.decode("latin-1"),
            step_up=step_up,
        )

    def begin_login(
        self,
        request: GatewayRequest,
        host: bytes,
        tls: bool,
        *,
        return_to: str,
        set_cookies: list[bytes] = (),  # type: ignore[assignment]
        step_up: StepUp | None = None,
    ) -> None:
        """302 to the provider's authorize endpoint with state, nonce and PKCE S256
        (and a step-up's acr_values and max_age, which its flow remembers)."""
        metadata = self.provider.client.metadata
        if metadata is None:
            self._log.warn(
                "route {route}: provider {provider} not available: {error}",
                route=self.route.name,
                provider=self.provider.settings.name,
                error=self.provider.client.last_error or "discovery has not finished yet",
            )
            send_provider_unavailable(
                request,
                "Sign-in is unavailable right now: the identity provider cannot be reached.",
                request.request_id,
            )
            return
        use_par = self.oidc.par != "off" and (
            metadata.pushed_authorization_request_endpoint is not None
        )
        if self.oidc.par == "required" and not use_par:
            self._log.warn(
                "route {route}: oidc.par is required but provider {provider} advertises no "
                "pushed_authorization_request_endpoint; no login is started [{request_id}]",
                route=self.route.name,
                provider=self.provider.settings.name,
                request_id=request.request_id.decode(),
            )
            send_provider_unavailable(
                request,
                "Sign-in is unavailable: the identity provider does not take pushed "
                "authorization requests, which this application requires.",
                request.request_id,
            )
            return
        flows: FlowCookies = self.flows[tls]
        now = self.clock.seconds()
        extra = dict(self.oidc.extra_params)
        if step_up is None:
            flow = flows.new_flow(return_to, now)
        else:
            flow = flows.new_flow(
                return_to, now, acr_values=step_up.acr_values, max_age=step_up.max_age
            )
            extra.update(step_up_parameters(step_up))
        cookies = parse_cookie_header(request.requestHeaders.getRawHeaders(b"cookie", []))
        parameters = authorization_parameters(
            client_id=self.oidc.client_id,
            redirect_uri=origin(host, tls) + self.redirect_path,
            scopes=self.oidc.scopes,
            state=flow.state,
            nonce=flow.nonce,
            code_challenge=FlowCookies.code_challenge(flow.code_verifier),
            extra=extra,
        )
        flow_cookies = [*set_cookies, *flows.set_cookie(flow, cookies, now)]
        METRICS.login_started(self.route.name)  # metrics hook
        if not use_par:
            url = authorization_request_url(metadata, parameters)
            send_redirect(request, url, flow_cookies)
            return
        d = defer.ensureDeferred(self._pushed_login(request, metadata, parameters, flow_cookies))
        d.addErrback(self._failed_request, request)

    async def _pushed_login(
        self,
        request: GatewayRequest,
        metadata: ProviderMetadata,
        parameters: list[tuple[str, str]],
        flow_cookies: list[bytes],
    ) -> None:
        """RFC 9126: push the request, send the browser with its request_uri only."""
        try:
            request_uri = await push_authorization_request(
                self.token_http, metadata, self.credentials, parameters, clock=self.clock
            )
        except PushedRequestError as error:
            self._log.warn(
                "route {route}: the provider's PAR endpoint refused or failed the "
                "authorization request: {error} {description} [{request_id}]",
                route=self.route.name,
                error=error.error,
                description=error.description,
                request_id=request.request_id.decode(),
            )
            if request.finished or request.client_gone:
                return
            METRICS.login_failed(self.route.name, "par_failed")  # metrics hook
            send_error(
                request,
                502,
                "The identity provider refused to start the sign-in. Try again later.",
                error="par_failed",
                request_id=request.request_id,
            )
            return
        if request.finished or request.client_gone:
            return
        url = pushed_authorize_url(metadata, client_id=self.oidc.client_id, request_uri=request_uri)
        send_redirect(request, url, flow_cookies)

    def _failed_request(self, failure: Failure, request: GatewayRequest) -> None:
        self._log.failure(
            "route {route}: unexpected error [{request_id}]",
            failure,
            route=self.route.name,
            request_id=request.request_id.decode(),
        )
        if not request.finished and not request.client_gone:
            send_error(
                request, 500, "Something went wrong on the gateway.", request_id=request.request_id
            )

    # -- sessions: create, find, end ----------------------------------------------------

    def store_cookie_name(self, tls: bool) -> bytes:
        return self._store_cookie_names[tls]

    def store_cookie_clear(self, tls: bool) -> bytes:
        return self.codecs[tls].clear(1)[0]

    async def start_session(self, session: Session, tls: bool) -> list[bytes]:
        """Set-Cookie values for a new login."""
        if self.store is None:
            return self.session_cookies(session, tls, 0)
        session_id = self.store.new_session_id()
        await self.store.save(session_id, session)
        return [self.codecs[tls].plain_cookie(session_id.encode("ascii"))]

    async def replace_session(
        self, session: Session, tls: bool, chunks: int, session_id: str | None
    ) -> list[bytes]:
        """Set-Cookie values after storing ``session`` in place of the browser's
        current one (a step-up): the same Redis id, or a new cookie."""
        if self.store is None:
            return self.session_cookies(session, tls, chunks)
        if session_id is None:
            return await self.start_session(session, tls)
        await self.store.save(session_id, session)
        assert self._loaded is not None
        self._loaded.forget(session_id)
        return []

    async def current_session(
        self, request: GatewayRequest, tls: bool
    ) -> tuple[Session | None, int, str | None]:
        """(session, cookie chunks present, Redis session id) for the endpoints."""
        cookies = parse_cookie_header(request.requestHeaders.getRawHeaders(b"cookie", []))
        session: Session | None
        if self.store is None:
            session, chunks = self.codecs[tls].decode(cookies)
            session_id = None
        else:
            raw = cookies.get(self.store_cookie_name(tls))
            session_id = raw.decode("latin-1") if raw else None
            session = await self.store.load(session_id) if session_id else None
            chunks = 1 if raw else 0
        if session is not None and (
            not self._alive(session, self.clock.seconds()) or self._revoked(session)
        ):
            session = None
        return session, chunks, session_id

    async def end_session(
        self, tls: bool, chunks: int, session_id: str | None, session: Session | None = None
    ) -> list[bytes]:
        """Forget this browser's session; Set-Cookie values that clear it.

        A cookie session's id also goes on the revocation list (until its
        max_duration would have ended it), so a copy of the cookie is dead too.
        """
        if self.store is not None:
            if session_id:
                assert self._loaded is not None
                self._loaded.forget(session_id)
                await self.store.delete(session_id, session)
                # And what a request loaded while the DEL was on its way.
                self._loaded.forget(session_id)
            return [self.store_cookie_clear(tls)]
        if session is not None:
            try:
                await self.revocation.revoke_session(
                    self.route.name, session.id, session.created_at
                )
            except RedisUnavailable as error:
                # This process remembers; signing out must not fail over it.
                self._log.warn(
                    "route {route}: sign-out of {user} not shared with other processes: {error}",
                    route=self.route.name,
                    user=observe.log_user(session.user),
                    error=str(error),
                )
        return self.codecs[tls].clear(max(chunks, 1))

    async def end_sessions(
        self,
        *,
        sid: str | None,
        sub: str | None,
        since: float | None = None,
        verified: bool = True,
    ) -> str:
        """A back- or front-channel logout: end every session of a provider sid,
        else of a sub (those that began at or before ``since``, default now).
        Cookie sessions: on this gate's own revocation list, the one its
        checks read."""
        if self.store is not None:
            loaded = self._loaded
            assert loaded is not None
            loaded.forget_all()
            try:
                if sid:
                    return f"{await self.store.delete_by_sid(sid)} session(s) deleted"
                if sub:
                    return f"{await self.store.delete_by_sub(sub)} session(s) deleted"
                return "nothing to end"
            finally:
                # And what requests loaded while the deletion was on its way.
                loaded.forget_all()
        revocation = self.revocation
        if sid:
            await revocation.revoke(self.route.name, sid, verified=verified)
            return "sid revoked"
        if sub:
            now = self.clock.seconds()
            await revocation.revoke_sub(
                self.route.name, sub, now if since is None else min(since, now)
            )
            return "sub revoked"
        return "nothing to end"

    def _is_api_request(self, request: GatewayRequest, path: str) -> bool:
        if wants_json(request):
            return True
        fold = self.fold
        folded = fold(path)
        return any(folded.startswith(fold(prefix)) for prefix in self.oidc.api_paths)

    # -- session lifetime -------------------------------------------------------------

    def _alive(self, session: Session, now: float) -> bool:
        if session.route != self.route.name:
            return False
        if now - session.created_at > self.session_settings.max_duration:
            return False
        return now - session.last_seen <= self.session_settings.inactivity_timeout

    def keeps_sessions_of(self, before: RouteLogin) -> bool:
        """Whether the sessions ``before`` (this route's gate before a reload)
        admitted are still this route's: same provider and client (the
        binding), the key that sealed them still known, the same store and
        cookie. (What a cookie would meet on its next request, for the open
        WebSocket tunnels that send none.)"""
        return (
            self.route.name == before.route.name
            and self.binding == before.binding
            and before.keyring.key_ids[0] in self.keyring.key_ids
            and (self.store is None) == (before.store is None)
            and self.codecs[True].cookie_name == before.codecs[True].cookie_name
        )

    def session_ended(
        self, session: Session, session_id: str | None
    ) -> bool | defer.Deferred[bool]:
        """For an open WebSocket tunnel: has the session that opened it ended?

        Past its max_duration, revoked (sign-out, back- or front-channel
        logout: cookie sessions), or gone from Redis (deleted by a logout, or
        expired there). Redis being unavailable proves nothing: the tunnel
        stays. A tunnel is not a request, so it does not extend the session,
        and the session's inactivity timeout is left to its HTTP requests.
        """
        if session.route != self.route.name:
            return True
        if self.clock.seconds() - session.created_at > self.session_settings.max_duration:
            return True
        if self.store is None:
            return self._revoked(session)
        if session_id is None:
            return False
        return defer.ensureDeferred(self._gone_from_redis(session_id))

    async def _gone_from_redis(self, session_id: str) -> bool:
        assert self.store is not None
        try:
            return await self.store.load(session_id) is None
        except RedisUnavailable:
            return False

    def _revoked(self, session: Session) -> bool:
        """Cookie sessions ended by a sign-out or a back- or front-channel logout
        (Redis sessions are deleted instead)."""
        return self.store is None and self.revocation.session_revoked(self.route.name, session)

    def _needs_refresh(self, session: Session, now: float) -> bool:
        """Due within the leeway, which is at most half the token's lifetime; and
        not again within SLIDE_EVERY of the last tokens unless they have expired,
        so short tokens never mean a refresh (and a new cookie) per request."""
        expires = session.access_expires_at
        if expires is None or session.refresh_token is None:
            return False
        leeway = self.session_settings.refresh_leeway
        obtained = session.tokens_at
        if obtained is not None:
            if now < expires and now - obtained < SLIDE_EVERY:
                return False
            leeway = min(leeway, (expires - obtained) / 2)
        return expires - leeway <= now

    async def refreshed(
        self, session: Session, session_id: str | None = None
    ) -> Session | None | _Unavailable:
        """The session with fresh tokens; None if the refresh was refused (log in
        again); UNAVAILABLE if the provider could not be asked.

        Concurrent requests of one session share one refresh, and requests that
        still carry the pre-refresh cookie (parallel page loads) get its result for
        a grace period: WSO2 rotates refresh tokens, so refreshing twice with the
        same token would fail and log the user out.

        While the access token is still good for more than REFRESH_PATIENCE, a
        caller gets UNAVAILABLE (go on with the old token) after that long, and
        so does every caller until the refresh ends; after a refresh that could
        not ask the provider, callers get UNAVAILABLE for REFRESH_RETRY before
        the provider is asked again.
        """
        key = (session.id, session.refresh_token or "")
        now = self.clock.seconds()
        recent = self._recent.get(key)
        if recent is not None and recent[0] > now:
            # Without a good token to go on with, wait for a refresh still running.
            if (
                recent[1] is not UNAVAILABLE
                or (session.access_expires_at or 0) > now
                or key not in self._refreshing
            ):
                return recent[1]
        pending = self._refreshing.get(key)
        if pending is None:
            if session_id is not None:
                work = self._refresh_shared(session, session_id)
            elif self.shared_redis is not None:
                work = self._refresh_coordinated(session, self.shared_redis)
            else:
                work = self._refresh(session)
            pending = defer.ensureDeferred(work)
            self._refreshing[key] = pending

            def slow() -> None:
                # Requests from now on go on with the token they have.
                self._remember(key, UNAVAILABLE, REFRESH_PATIENCE + REFRESH_RETRY)

            slow_call = self.clock.callLater(REFRESH_PATIENCE, slow)

            def done(result: Any) -> Any:
                self._refreshing.pop(key, None)
                if slow_call.active():
                    slow_call.cancel()
                if isinstance(result, Session):
                    self._remember(key, result)
                elif result is UNAVAILABLE:
                    self._remember(key, UNAVAILABLE, REFRESH_RETRY)
                else:
                    self._recent.pop(key, None)
                return result

            pending.addBoth(done)
        # Each waiter gets its own Deferred relayed from the shared one, so one
        # waiter's callbacks cannot change what the others receive.
        waiter: defer.Deferred[Session | None | _Unavailable] = defer.Deferred()

        def relay(result: Any) -> Any:
            if waiter.called:
                pass  # this waiter went on without it (REFRESH_PATIENCE)
            elif isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
            return result

        pending.addBoth(relay)
        if (session.access_expires_at or 0) > now + REFRESH_PATIENCE:
            impatient = self.clock.callLater(REFRESH_PATIENCE, waiter.callback, UNAVAILABLE)

            def patient_enough(result: Any) -> Any:
                if impatient.active():
                    impatient.cancel()
                return result

            waiter.addBoth(patient_enough)
        return await waiter

    def adopt(self, before: RouteLogin) -> None:
        """Carry the refreshes of ``before`` (this route's gate until a reload) over:
        the ones still running and the recent results. Without them a request that
        arrives after the reload with the pre-refresh cookie would spend the
        already-rotated refresh token again, and WSO2 would end the session. Only
        when the tokens come from the same provider client."""
        same_client = (before.oidc.provider, before.oidc.client_id) == (
            self.oidc.provider,
            self.oidc.client_id,
        )
        if same_client and before.provider.client is self.provider.client:
            self._recent = before._recent
            self._recent_pruned_at = before._recent_pruned_at
            self._refreshing = before._refreshing

    def _remember(
        self,
        key: tuple[str, str],
        outcome: Session | _Unavailable,
        for_seconds: float = REFRESH_GRACE,
    ) -> None:
        now = self.clock.seconds()
        # Expired results go once a grace period (each holds a session), and
        # at once past 10,000.
        if len(self._recent) > 10000 or now >= self._recent_pruned_at + REFRESH_GRACE:
            self._recent = {k: v for k, v in self._recent.items() if v[0] > now}
            self._recent_pruned_at = now
        self._recent[key] = (now + for_seconds, outcome)

    async def _refresh_shared(
        self, session: Session, session_id: str
    ) -> Session | None | _Unavailable:
        """Refresh a Redis session: one process refreshes (SET NX PX lock); the others
        wait briefly and use the tokens it stored. A lost update here would log the
        user out, since WSO2 kills the old refresh token."""
        assert self.store is not None
        token = await self.store.lock(session_id, ttl_ms=REFRESH_LOCK_MS)
        if token is None:
            for _ in range(REFRESH_WAIT_STEPS):
                await _sleep(self.clock, REFRESH_WAIT_STEP)
                stored = await self.store.load(session_id)
                if stored is None:
                    return None
                if stored.refresh_token != session.refresh_token:
                    return stored
            return UNAVAILABLE
        try:
            # Another process may have finished just before we took the lock.
            stored = await self.store.load(session_id)
            if stored is None:
                return None
            if stored.refresh_token != session.refresh_token:
                return stored
            new = await self._refresh(session)
            if isinstance(new, Session):
                # A logout while the provider was asked deleted the session:
                # it stays deleted, and so do the new tokens.
                kept = await self.store.save(session_id, new, only_if_stored=True)
                assert self._loaded is not None
                self._loaded.forget(session_id)
                if not kept:
                    return None
            return new
        finally:
            await self.store.unlock(session_id, token)

    async def _refresh_coordinated(
        self, session: Session, redis: AnyRedisClient
    ) -> Session | None | _Unavailable:
        """Refresh a cookie session once across every process sharing ``redis``.

        The winner of a SET NX lock refreshes and leaves the result (sealed with
        the route's keys) for REFRESH_GRACE seconds; the others, and late requests
        still carrying the old cookie, take that result instead of spending the
        already-rotated refresh token.
        """
        digest = hashlib.sha256(f"{session.id}\0{session.refresh_token}".encode()).hexdigest()
        base = f"idgw:{self.route.name}:refresh:{digest}"
        try:
            stored = await self._stored_refresh(redis, base)
            if stored is not None:
                return stored
            token = os.urandom(16).hex()
            if not await redis.set(base + ":lock", token.encode(), px=REFRESH_LOCK_MS, nx=True):
                for _ in range(REFRESH_WAIT_STEPS):
                    await _sleep(self.clock, REFRESH_WAIT_STEP)
                    stored = await self._stored_refresh(redis, base)
                    if stored is not None:
                        return stored
                return UNAVAILABLE
        except RedisUnavailable as error:
            self._log.warn(
                "route {route}: Redis unavailable for refresh coordination ({error}); "
                "refreshing in this process only",
                route=self.route.name,
                error=str(error),
            )
            return await self._refresh(session)
        new = await self._refresh(session)
        if isinstance(new, Session):
            sealed = self.keyring.seal(
                json.dumps(new.to_json_dict()).encode(), base.encode("ascii")
            )
            try:
                await redis.set(base + ":result", sealed, px=int(REFRESH_GRACE * 1000))
            except RedisUnavailable:
                pass  # this process still has the result; others may ask the provider
        return new

    async def _stored_refresh(self, redis: AnyRedisClient, base: str) -> Session | None:
        raw = await redis.get(base + ":result")
        if raw is None:
            return None
        opened = self.keyring.open(raw, base.encode("ascii"))
        if opened is None:
            return None
        return Session.from_json_dict(json.loads(opened))

    async def _refresh(self, session: Session) -> Session | None | _Unavailable:
        # metrics hook: one count per refresh asked of the provider (not per request).
        result = await self._ask_refresh(session)
        METRICS.refresh(
            self.route.name,
            "unavailable" if result is UNAVAILABLE else "failed" if result is None else "ok",
        )
        return result

    async def _ask_refresh(self, session: Session) -> Session | None | _Unavailable:
        metadata = self.provider.client.metadata
        if metadata is None:
            return UNAVAILABLE
        if session.refresh_token is None:
            return None
        try:
            tokens = await refresh_tokens(
                self.token_http,
                metadata,
                self.credentials,
                refresh_token=session.refresh_token,
                clock=self.clock,
            )
        except TokenEndpointError as error:
            self._log.info(
                "route {route}: refresh for {user} failed: {error}",
                route=self.route.name,
                user=observe.log_user(session.user),
                error=error.error,
            )
            if error.error in _PROVIDER_TROUBLE:
                return UNAVAILABLE
            return None
        now = self.clock.seconds()
        if tokens.id_token is not None:
            # As untrusted as the login's: validated before it replaces the
            # session's (it goes upstream and back to the provider as a hint).
            try:
                await validate_refreshed_id_token(
                    tokens.id_token,
                    provider=self.provider.client,
                    client_id=self.oidc.client_id,
                    session_sub=session.sub,
                    previous_id_token=session.id_token,
                    access_token=tokens.access_token,
                    now=now,
                )
            except TokenError as error:
                # Refused like an invalid_grant: the user logs in again. The new
                # tokens are dropped; the session is never given them.
                self._log.warn(
                    "route {route}: refresh for {user} refused: the new ID token is "
                    "invalid ({reason})",
                    route=self.route.name,
                    user=observe.log_user(session.user),
                    reason=error.reason,
                )
                if error.reason == PROVIDER_UNAVAILABLE:
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
            tokens_at=now,
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
    # Step-up compares these: dropping them would send the user round again.
    keep.update(("acr", "auth_time"))
    return {k: v for k, v in claims.items() if k in keep}


def _folded(public: PublicPath) -> PublicPath:
    """A public path of a case-insensitive route: lower-case prefix, (?i) regex."""
    if public.prefix is not None:
        return attrs.evolve(public, prefix=fold_case(public.prefix))
    if public.regex is not None:
        return attrs.evolve(public, regex="(?i)" + public.regex)
    return public


async def _sleep(clock: IReactorTime, seconds: float) -> None:
    await task.deferLater(clock, seconds, lambda: None)


def secure_origin(resource: Forwarder, request: GatewayRequest, state: GatewayView) -> bool:
    """Whether the browser talks https to us (directly, or to a trusted proxy)."""
    if resource.tls:
        return True
    if not state.trusted.networks:
        return False  # (what trusts() answers for any peer: no header need be read)
    proto = request.requestHeaders.getRawHeaders(b"x-forwarded-proto")
    if not proto or proto[0].strip().lower() != b"https":
        return False
    peer = getattr(request.client, "host", None)
    return peer is not None and state.trusted.trusts(peer)


# Keys made up for routes configured without any: kept for the life of the
# process, so that a reload does not log everyone out.
_EPHEMERAL_KEYS: dict[str, str] = {}


def _random_key() -> str:
    import base64

    return base64.b64encode(os.urandom(32)).decode("ascii")
