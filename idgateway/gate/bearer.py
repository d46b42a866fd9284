"""The bearer-token gate of a route: APIs called with OAuth 2.0 access tokens.

A request's token comes from its one ``Authorization: Bearer`` (or ``DPoP``)
header, never from the query string or the body. A JWT access token is
verified here (``idgateway.oidc.access_tokens``), an opaque one introspected
(``idgateway.oidc.introspection``), a DPoP-bound one needs its proof
(``idgateway.oidc.dpop``); then the route's rules (``scopes`` and the others)
apply, and the identity headers are built from the token as from a session.

The hot path of a token seen before (a JWT verified, an opaque token's cached
answer) is a SHA-256 and two dictionary lookups: no RSA, no provider call, no
Deferred. Refusals follow RFC 6750 and RFC 9449: ``401`` with a
``WWW-Authenticate`` challenge (``Bearer`` and/or ``DPoP``), ``403
insufficient_scope`` naming the scopes. A token is never logged; a short
prefix of its SHA-256 is, to correlate.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from idgateway.config.model import AuthorizeRules, BearerAuth, Route
from idgateway.gate.assertion import AssertionSigner, IdentityRecord, claim_strings
from idgateway.gate.bearer_answers import (
    NO_TOKEN,
    WELL_KNOWN_RESOURCE,
    Refusal,
    challenges,
    insufficient_scope,
    quoted,
    send_json,
    send_refusal,
)
from idgateway.gate.identity_headers import IdentityHeaders
from idgateway.gate.rules import (
    authorization_failure,
    compile_public_paths,
    every_reading_is_public,
)
from idgateway.gate.session_check import _folded, secure_origin
from idgateway.http.paths import AmbiguousPath, PathReading, fold_case, no_fold
from idgateway.observe.metrics import METRICS  # metrics hook
from idgateway.oidc.access_tokens import (
    AccessToken,
    JWTAccessTokens,
    ath_of,
    looks_like_jwt,
    token_digest,
)
from idgateway.oidc.client import ClientCredentials
from idgateway.oidc.dpop import DPoPError, check_proof
from idgateway.oidc.introspection import Introspection, IntrospectionUnavailable
from idgateway.oidc.tokens import PROVIDER_UNAVAILABLE, TokenError
from idgateway.routing.table import normalised_host_header
from idgateway.sessions.cookie import strip_cookies
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.model import Session
from idgateway.sessions.recent import RecentlyUsed
from idgateway.sessions.revocation import ReplayCache

if TYPE_CHECKING:
    from idgateway.gate.contracts import Forwarder, GatewayView, RouteView
    from idgateway.gate.session_check import ProviderHandle
    from idgateway.redis.cluster import AnyRedisClient
    from idgateway.server.channel import GatewayRequest

# An Authorization header longer than this is refused before it is parsed.
MAX_AUTHORIZATION = 16 * 1024
# RFC 6750 2.1: b64token.
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
# Opaque tokens are short (WSO2's are UUIDs): a longer one is not sent to the
# provider, so a client cannot make the gateway post kilobytes per made-up token.
MAX_OPAQUE_TOKEN = 4096
# How old a DPoP proof may be, at least (the route's leeway, if longer).
DPOP_MIN_AGE = 10.0
# How many tokens' verdicts and identity headers are kept.
ADMISSION_MEMO_MAX = 4096
MEMO_PERIOD = 60.0  # the memo forgets tokens not used for one to two of these
# Authorization header values already read (scheme, token, SHA-256), how many,
# and up to what length: a repeated token skips the syntax check and the hash.
READ_MEMO_MAX = 1024
READ_MEMO_LONGEST = 4096


def read_authorization(request: GatewayRequest) -> tuple[str, str] | None:
    """(scheme, token) of the request's Bearer or DPoP credentials; None if it has
    none (no Authorization header, or another scheme); Refusal if they are unusable.

    Exactly one Authorization header: two are refused, not one of them believed
    (a proxy in front may add its own). Over MAX_AUTHORIZATION bytes: refused
    without parsing.
    """
    values = request.requestHeaders.getRawHeaders(b"authorization")
    if not values:
        return None
    if len(values) > 1:
        raise Refusal(
            401, "invalid_request", "Send exactly one Authorization header.", reason="duplicate"
        )
    value = values[0]
    if len(value) > MAX_AUTHORIZATION:
        raise Refusal(401, "invalid_token", "The access token is too long.", reason="oversized")
    scheme, _, token = value.strip(b" \t").partition(b" ")
    scheme = scheme.lower()
    if scheme == b"bearer":
        kind = "bearer"
    elif scheme == b"dpop":
        kind = "dpop"
    else:
        return None
    token = token.strip(b" \t")
    if not _B64TOKEN.fullmatch(token):
        raise Refusal(401, "invalid_token", "The access token is malformed.", reason="malformed")
    return kind, token.decode("ascii")


def has_token(request: GatewayRequest) -> bool:
    """Whether the request tries to authenticate with a token (Bearer or DPoP),
    well-formed or not: such a request is judged by its token, never by a cookie."""
    values = request.requestHeaders.getRawHeaders(b"authorization")
    if not values:
        return False
    if len(values) > 1:
        return True
    scheme = values[0].lstrip(b" \t")[:6].lower()
    return scheme.startswith((b"bearer", b"dpop"))


def _default_port(scheme: str) -> bytes:
    return b":443" if scheme == "https" else b":80"


class BearerGate:
    """Everything one route needs to judge requests by their access tokens."""

    _log = Logger()

    def __init__(
        self,
        route: Route,
        bearer: BearerAuth,
        provider: ProviderHandle,
        clock: IReactorTime,
        *,
        redis: AnyRedisClient | None = None,
        keyring: KeyRing | None = None,
        replay_redis: AnyRedisClient | None = None,
        client: tuple[ClientCredentials, Any] | None = None,
    ) -> None:
        """``client``: the route's own oidc credentials and HTTP client, for an
        introspection client that authenticates with a key (no secret)."""
        self.route = route
        self.bearer = bearer
        self.settings = settings = bearer.settings
        self.provider = provider
        self.clock = clock
        # The route's identity assertion (set by the state builder); None: off.
        self.assertion: AssertionSigner | None = None
        self.identity = IdentityHeaders.for_route(
            bearer.headers,
            user_claim=bearer.user_claim,
            email_claim=bearer.email_claim,
            groups_claim=bearer.groups_claim,
        )
        self.fold = fold_case if route.case_insensitive_paths else no_fold
        self.public = compile_public_paths(
            [_folded(p) for p in bearer.public_paths]
            if route.case_insensitive_paths
            else bearer.public_paths
        )
        self.jwt = (
            JWTAccessTokens(provider.client, settings, clock, user_claim=bearer.user_claim)
            if "jwt" in settings.tokens
            else None
        )
        self.introspection = (
            Introspection(
                provider.client,
                client[1] if client is not None else provider.http,
                settings,
                settings.introspection,
                clock,
                route=route.name,
                user_claim=bearer.user_claim,
                redis=redis,
                keyring=keyring,
                timeout=settings.introspection.timeout,
                credentials=client[0] if client is not None else None,
            )
            if "opaque" in settings.tokens and settings.introspection is not None
            else None
        )
        self.dpop = settings.dpop
        self.dpop_max_age = max(DPOP_MIN_AGE, settings.leeway)
        self.replay = ReplayCache(clock, replay_redis, leeway=settings.leeway)
        self.realm = quoted(settings.realm or route.name)
        self.scopes_supported = _all_scopes(bearer.authorize, route)
        # Authorization header value -> (scheme, token, SHA-256 of the token).
        self._read: dict[bytes, tuple[str, str, bytes]] = {}
        # id(token) -> (token, rules, missing scopes, other failure, identity headers)
        # (Forgets tokens not seen for a minute or two: sessions/recent.py.)
        self._admission: RecentlyUsed[
            int,
            tuple[AccessToken, AuthorizeRules, bool, str | None, list[tuple[bytes, bytes]]],
        ] = RecentlyUsed(clock.seconds, MEMO_PERIOD, ADMISSION_MEMO_MAX)

    # -- which requests, which rules ------------------------------------------------

    def claims_request(self, request: GatewayRequest, path: str) -> bool:
        """On a route with a login too: whether this request is the token gate's
        (the metadata document, or a request that carries a token)."""
        if path == WELL_KNOWN_RESOURCE:
            return True
        if path.startswith("/oauth2/") and path != "/oauth2/auth":
            return False
        return has_token(request)

    def adopt(self, before: BearerGate) -> None:
        """Keep what ``before`` (this route's gate before a reload) verified and
        cached, when the tokens would be judged the same way: same bearer
        settings, same provider client."""
        if before.settings != self.settings or before.provider.client is not self.provider.client:
            return
        if self.jwt is not None and before.jwt is not None:
            self.jwt.memo = before.jwt.memo
        if self.introspection is not None and before.introspection is not None:
            self.introspection.adopt(before.introspection)

    def rules_for(self, reading: PathReading) -> AuthorizeRules:
        if reading.rules_route is not None:
            rules = self.route.paths[reading.rules_route].authorize
            assert rules is not None
            return rules
        return self.bearer.authorize

    def is_public(self, method: bytes, reading: PathReading) -> bool:
        return every_reading_is_public(self.public, method, reading)

    # -- the request path -------------------------------------------------------------

    def handle(
        self,
        resource: Forwarder,
        request: GatewayRequest,
        state: GatewayView,
        runtime: RouteView,
        host: bytes,
    ) -> None:
        reading: PathReading = request.idgw_reading
        path = reading.text
        tls = secure_origin(resource, request, state)
        # (The metadata document and /oauth2/auth were answered before this:
        # gate.bearer_endpoints.serve.)
        if path.startswith("/oauth2/") and not runtime.has_login:
            send_json(request, 404, {"error": "not_found", "message": "No such gateway endpoint."})
            return
        cookie: bytes | None | bool = True
        if runtime.own_cookie is not None and request.requestHeaders.hasHeader(b"cookie"):
            cookies = request.requestHeaders.getRawHeaders(b"cookie", [])
            cookie = strip_cookies(cookies, runtime.own_cookie)
        if self.is_public(request.method, reading):
            resource.forward(request, state, runtime, host, cookie=cookie)
            return
        values = request.requestHeaders.getRawHeaders(b"authorization")
        seen = self._read.get(values[0]) if values is not None and len(values) == 1 else None
        if seen is None:
            try:
                credentials = read_authorization(request)
            except Refusal as refusal:
                self.refuse(request, host, tls, refusal)
                return
            if credentials is None:
                self.refuse(request, host, tls, NO_TOKEN)
                return
            scheme, token = credentials
            digest = token_digest(token)
            assert values is not None
            if len(values[0]) <= READ_MEMO_LONGEST:
                if len(self._read) >= READ_MEMO_MAX:
                    self._read.clear()
                self._read[values[0]] = (scheme, token, digest)
        else:
            scheme, token, digest = seen
        known = self._known(digest) if scheme == "bearer" else None
        if known is not None and known.jkt is None and self.dpop != "required":
            self.admit(resource, request, state, runtime, host, tls, known, token, cookie, reading)
            return
        d: defer.Deferred[AccessToken] = defer.ensureDeferred(
            self.authenticate(
                request, scheme, token, digest, request.method, reading, runtime, host, tls
            )
        )
        d.addCallbacks(
            lambda verified: self.admit(
                resource, request, state, runtime, host, tls, verified, token, cookie, reading
            ),
            self._refused,
            errbackArgs=(request, host, tls, digest),
        )
        d.addErrback(self.failed, request)

    def _known(self, digest: bytes) -> AccessToken | None:
        """A token verified (JWT) or found active (opaque) before: the hot path."""
        if self.jwt is not None:
            known = self.jwt.remembered(digest)
            if known is not None:
                return known
        if self.introspection is not None:
            found, answer = self.introspection.cached(digest)
            if found:
                return answer
        return None

    async def authenticate(
        self,
        request: GatewayRequest,
        scheme: str,
        token: str,
        digest: bytes,
        method: bytes,
        reading: PathReading,
        runtime: RouteView,
        host: bytes,
        tls: bool,
    ) -> AccessToken:
        """The verified token, bound to this request's DPoP proof where it must be;
        Refusal otherwise."""
        verified = await self.validate(token, digest)
        if scheme == "dpop":
            await self._check_dpop(request, verified, digest, method, reading, runtime, host, tls)
        elif verified.jkt is not None:
            raise Refusal(
                401,
                "invalid_token",
                "This access token is DPoP-bound: send it with the DPoP scheme and a proof.",
                dpop=self.dpop != "off",
                reason="dpop_bound_as_bearer",
            )
        elif self.dpop == "required":
            raise Refusal(
                401,
                "invalid_token",
                "This API accepts DPoP-bound access tokens only.",
                dpop=True,
                reason="dpop_required",
            )
        return verified

    async def validate(self, token: str, digest: bytes) -> AccessToken:
        """The token's verdict: a JWT verified here, an opaque one introspected."""
        if looks_like_jwt(token) and self.jwt is not None:
            known = self.jwt.remembered(digest)
            if known is not None:
                return known
            try:
                return await self.jwt.verify(token, digest)
            except TokenError as error:
                if error.reason == PROVIDER_UNAVAILABLE:
                    raise Refusal(
                        503, None, "The identity provider cannot be reached.", reason=error.reason
                    ) from None
                raise Refusal(
                    401,
                    "invalid_token",
                    f"The access token is invalid: {error.message}.",
                    reason=error.reason,
                ) from None
        if self.introspection is not None:
            if len(token) > MAX_OPAQUE_TOKEN:
                raise Refusal(
                    401, "invalid_token", "The access token is too long.", reason="oversized"
                )
            try:
                answer = await self.introspection.check(token, digest)
            except IntrospectionUnavailable as why:
                self._log.warn(
                    "route {route}: introspection unavailable: {why}",
                    route=self.route.name,
                    why=str(why),
                )
                raise Refusal(
                    503,
                    None,
                    "The identity provider cannot check the access token now.",
                    reason="introspection_unavailable",
                ) from None
            if answer is None:
                raise Refusal(
                    401,
                    "invalid_token",
                    "The access token is not active, or not valid for this API.",
                    reason="inactive",
                )
            return answer
        raise Refusal(401, "invalid_token", "The access token is not a JWT.", reason="not_a_jwt")

    async def _check_dpop(
        self,
        request: GatewayRequest,
        verified: AccessToken,
        digest: bytes,
        method: bytes,
        reading: PathReading,
        runtime: RouteView,
        host: bytes,
        tls: bool,
    ) -> None:
        if self.dpop == "off":
            raise Refusal(401, "invalid_token", "This API does not accept DPoP.", reason="dpop_off")
        proofs = request.requestHeaders.getRawHeaders(b"dpop") or []
        if len(proofs) != 1:
            raise Refusal(
                401,
                "invalid_dpop_proof",
                "Send exactly one DPoP proof header.",
                dpop=True,
                reason="dpop_proof_count",
            )
        try:
            proof = proofs[0].decode("ascii")
        except UnicodeDecodeError:
            raise Refusal(
                401, "invalid_dpop_proof", "The DPoP proof is malformed.", dpop=True
            ) from None
        scheme = "https" if tls else "http"
        try:
            jkt, jti, iat = check_proof(
                proof,
                method=method.decode("latin-1"),
                htu_matches=self._htu_matcher(scheme, host, reading, runtime),
                ath=ath_of(digest),
                now=self.clock.seconds(),
                max_age=self.dpop_max_age,
                leeway=self.settings.leeway,
            )
        except DPoPError as error:
            raise Refusal(401, "invalid_dpop_proof", str(error) + ".", dpop=True) from None
        if verified.jkt is None or not hmac.compare_digest(verified.jkt, jkt):
            raise Refusal(
                401,
                "invalid_token",
                "The access token is not bound to the DPoP proof's key.",
                dpop=True,
                reason="dpop_key_mismatch",
            )
        first = await self.replay.first_use(
            f"dpop\x00{self.route.name}\x00{jkt}", jti, iat + self.dpop_max_age
        )
        if not first:
            raise Refusal(
                401,
                "invalid_dpop_proof",
                "The DPoP proof was used before.",
                dpop=True,
                reason="dpop_replay",
            )

    def _htu_matcher(
        self, scheme: str, host: bytes, reading: PathReading, runtime: RouteView
    ) -> Callable[[str], bool]:
        """Whether a proof's htu names this request: same scheme and host (default
        port or not), and a path whose canonical reading is this request's."""
        own_host = (
            host[: -len(_default_port(scheme))] if host.endswith(_default_port(scheme)) else host
        )

        def matches(htu: str) -> bool:
            try:
                parts = urlsplit(htu)
                netloc = parts.netloc.encode("ascii")
            except (ValueError, UnicodeEncodeError):
                return False
            if parts.scheme.lower() != scheme or b"@" in netloc:
                return False
            their = normalised_host_header(netloc)
            if their is None:
                return False
            if their.endswith(_default_port(scheme)):
                their = their[: -len(_default_port(scheme))]
            if their != own_host:
                return False
            try:
                path = parts.path.encode("ascii") or b"/"
                their_reading = runtime.paths.read(path)
            except (AmbiguousPath, UnicodeEncodeError):
                return False
            return their_reading.canonical == reading.canonical

        return matches

    # -- answers ------------------------------------------------------------------------

    def admit(
        self,
        resource: Forwarder,
        request: GatewayRequest,
        state: GatewayView,
        runtime: RouteView,
        host: bytes,
        tls: bool,
        verified: AccessToken,
        token: str,
        cookie: bytes | None | bool,
        reading: PathReading,
    ) -> None:
        if request.finished or request.client_gone:
            return
        request.idgw_user = verified.user  # observe hook: the access log's user
        rules = self.rules_for(reading)
        missing, failure, identity = self.verdict(verified, rules, token)
        if missing:
            self.refuse(request, host, tls, insufficient_scope(rules))
            return
        if failure is not None:
            self._log.info(
                "route {route}: {user} refused: {why}",
                route=self.route.name,
                user=verified.user,
                why=failure,
            )
            send_json(request, 403, {"error": "forbidden", "message": "Not allowed."})
            return
        if self.assertion is not None:
            identity = self.assertion.headers_with(
                identity, self.token_identity(verified), host, tls, self.clock.seconds()
            )
        resource.forward(request, state, runtime, host, cookie=cookie, identity=identity)

    def token_identity(self, verified: AccessToken) -> IdentityRecord:
        """Who the token speaks for, as the identity assertion states it."""
        claims = verified.claims
        sub = claims.get("sub")
        email = claims.get(self.bearer.email_claim)
        return IdentityRecord(
            sub=sub if isinstance(sub, str) else verified.user,
            email=email if isinstance(email, str) else None,
            groups=claim_strings(claims.get(self.bearer.groups_claim)),
            client_id=verified.client_id,
        )

    def verdict(
        self, verified: AccessToken, rules: AuthorizeRules, token: str
    ) -> tuple[bool, str | None, list[tuple[bytes, bytes]]]:
        """(scopes missing, other rule failure, identity headers): once per token and rules."""
        memo = self._admission.get(id(verified))
        if memo is not None and memo[0] is verified and memo[1] is rules:
            return memo[2], memo[3], memo[4]
        missing = any(scope not in verified.scopes for scope in rules.scopes)
        failure = authorization_failure(
            rules,
            verified.claims,
            email_claim=self.bearer.email_claim,
            groups_claim=self.bearer.groups_claim,
            granted_scopes=verified.scopes,
        )
        identity = self.identity_headers(verified, token)
        self._admission.put(id(verified), (verified, rules, missing, failure, identity))
        return missing, failure, identity

    def as_session(self, verified: AccessToken, token: str) -> Session:
        sub = verified.claims.get("sub")
        return Session(
            id="",
            route=self.route.name,
            sub=sub if isinstance(sub, str) else verified.user,
            user=verified.user,
            claims=verified.claims,
            created_at=0.0,
            last_seen=0.0,
            access_token=token,
        )

    def identity_headers(self, verified: AccessToken, token: str) -> list[tuple[bytes, bytes]]:
        """The route's identity headers for this token, and the client's id
        (oauth2-proxy preset: X-Forwarded-Client-Id; mod_auth_openidc:
        OIDC_CLAIM_client_id, from the token's client_id claim)."""
        headers = self.identity.headers_for(self.as_session(verified, token))
        if verified.client_id is not None and self.identity.settings.preset == "oauth2-proxy":
            encoded = self.identity.encoder.value(verified.client_id)
            if encoded is not None:
                headers.append((b"X-Forwarded-Client-Id", encoded))
        return headers

    def challenges(
        self, host: bytes, tls: bool, refusal: Refusal = NO_TOKEN
    ) -> list[tuple[bytes, bytes]]:
        return challenges(self.realm, self.dpop, host, tls, refusal)

    def refuse(self, request: GatewayRequest, host: bytes, tls: bool, refusal: Refusal) -> None:
        METRICS.bearer_refused(self.route.name, refusal.reason)  # metrics hook
        send_refusal(request, refusal, self.challenges(host, tls, refusal))

    def _refused(
        self, failure: Failure, request: GatewayRequest, host: bytes, tls: bool, digest: bytes
    ) -> None:
        failure.trap(Refusal)
        refusal = failure.value
        assert isinstance(refusal, Refusal)
        self._log.info(
            "route {route}: token {token} refused ({reason}) [{request_id}]",
            route=self.route.name,
            token=digest.hex()[:12],
            reason=refusal.reason,
            request_id=request.request_id.decode(),
        )
        self.refuse(request, host, tls, refusal)

    def failed(self, failure: Failure, request: GatewayRequest) -> None:
        self._log.failure(
            "route {route}: unexpected error judging a token [{request_id}]",
            failure,
            route=self.route.name,
            request_id=request.request_id.decode(),
        )
        if not request.finished and not request.client_gone:
            send_json(request, 500, {"error": "server_error", "message": "Gateway error."})


def _all_scopes(rules: AuthorizeRules, route: Route) -> tuple[str, ...]:
    scopes = set(rules.scopes)
    for sub in route.paths:
        if sub.authorize is not None:
            scopes.update(sub.authorize.scopes)
    return tuple(sorted(scopes))
