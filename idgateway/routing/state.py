"""What a configuration becomes when it runs: route table, pools, precomputed bytes.

``GatewayState`` is built whole from a ``Config`` and swapped in with one
assignment on reload; a request keeps the state it started with. Upstream
pools are shared between the old and the new state when the upstream did not
change, so a reload keeps warm connections.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from idgateway.config.model import (
    Config,
    HeaderSettings,
    OIDCSettings,
    ProviderSettings,
    RedisSettings,
    Route,
    Upstream,
)
from idgateway.config.organizations import organization_provider
from idgateway.config.signing_keys import AssertionKeySet
from idgateway.gate.assertion import AssertionSigner
from idgateway.gate.bearer import BearerGate
from idgateway.gate.identity_headers import IdentityHeaders
from idgateway.gate.session_check import ProviderHandle, RouteLogin
from idgateway.http.paths import PathJudge, PathPolicy, PathReading
from idgateway.observe.metrics import METRICS, GatewayMetrics
from idgateway.oidc.client import ClientCredentials
from idgateway.oidc.http import ProviderHTTPClient, make_http_client
from idgateway.oidc.provider import ProviderClient
from idgateway.proxy.headers import TrustedProxies, header_key
from idgateway.proxy.upstream import UpstreamPool
from idgateway.proxy.websocket_limits import WebSocketSlots
from idgateway.routing.table import RouteTable
from idgateway.server.tls import client_tls_options
from idgateway.sessions.revocation import ReplayCache, RevocationList

if TYPE_CHECKING:
    from idgateway.redis.cluster import AnyRedisClient

PoolKey = tuple[Upstream, float]


@attrs.define(eq=False)
class RouteRuntime:
    route: Route
    # Pools for the route's own upstream and for each path sub-route, in the
    # order of route.paths (the path judge picks the sub-route).
    default_pool: UpstreamPool
    default_upstream: Upstream
    path_pools: tuple[tuple[UpstreamPool, Upstream], ...]
    hsts_header: bytes | None
    # Reads request paths: canonical form, sub-route, rules (idgateway.http.paths).
    paths: PathJudge
    # Header keys (see http.header_names.header_key) never accepted from clients:
    # every identity header any route could inject.
    strip_headers: frozenset[bytes] = frozenset()
    strip_prefixes: tuple[bytes, ...] = ()
    # The login gate; None for open routes.
    login: RouteLogin | None = None
    # The route's identity-assertion signer (any gate that admits a request may
    # use it: RouteLogin does for sessions); None when the route has no assertion.
    assertion: AssertionSigner | None = None
    # The bearer-token gate (routes with ``bearer``); on routes with a login
    # too, the requests that carry a token are its (see routing.resource).
    bearer: BearerGate | None = None
    # Whether a cookie name is one of the gateway's (any route's): such cookies
    # are removed from every request sent upstream. None when no route logs in.
    own_cookie: Callable[[bytes], bool] | None = None

    # strip_headers plus Cookie (for a request whose Cookie header the gate
    # rewrites); made once, since header decisions are memoised per set.
    strip_headers_and_cookie: frozenset[bytes] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.set_strip_headers(self.strip_headers)

    def set_strip_headers(self, headers: frozenset[bytes]) -> None:
        self.strip_headers = headers
        self.strip_headers_and_cookie = headers | {b"cookie"}

    # Where https_redirect sends plain-HTTP clients: b"" for 443, else b":8443".
    https_port_suffix: bytes = b""

    @property
    def has_login(self) -> bool:
        return self.login is not None

    def pool_for(self, reading: PathReading) -> tuple[UpstreamPool, Upstream]:
        if reading.sub_route is not None:
            return self.path_pools[reading.sub_route]
        return self.default_pool, self.default_upstream


@attrs.define(eq=False)
class GatewayState:
    config: Config
    routes: RouteTable
    runtimes: dict[str, RouteRuntime]
    trusted: TrustedProxies
    pools: dict[PoolKey, UpstreamPool]
    providers: dict[ProviderSettings, ProviderHandle]
    # Back-channel logout state shared by all routes (and, with Redis, processes).
    revocation: RevocationList
    replay: ReplayCache
    redis_clients: dict[RedisSettings, AnyRedisClient]
    # The identity-assertion keys of this configuration (their JWKS is served as is).
    assertion_keys: AssertionKeySet = AssertionKeySet()

    def runtime_for(self, route: Route) -> RouteRuntime:
        return self.runtimes[route.name]


def upstream_endpoint(reactor: object, upstream: Upstream, timeout: float) -> IStreamClientEndpoint:
    if upstream.kind == "unix":
        return UNIXClientEndpoint(reactor, upstream.socket_path, timeout=timeout)
    endpoint: IStreamClientEndpoint
    try:
        address = ipaddress.ip_address(upstream.host)
    except ValueError:
        endpoint = HostnameEndpoint(reactor, upstream.host, upstream.port, timeout=timeout)
    else:
        endpoint_class = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
        endpoint = endpoint_class(reactor, upstream.host, upstream.port, timeout=timeout)
    if upstream.kind == "https":
        endpoint = wrapClientTLS(client_tls_options(upstream.host, upstream.ca_file), endpoint)
    return endpoint


class StateBuilder:
    """Builds GatewayState values, reusing pools from the previous state."""

    _log = Logger()

    def __init__(self, reactor: IReactorTime, *, metrics: GatewayMetrics = METRICS) -> None:
        self.reactor = reactor
        # Where provider clients report their calls (idgateway_provider_* metrics).
        self.metrics = metrics
        # Made on first use and kept across reloads: revoked sids and seen
        # logout-token jtis must survive a config change.
        self._revocation: RevocationList | None = None
        self._replay: ReplayCache | None = None
        self._revocation_redis: tuple[RedisSettings | None, AnyRedisClient | None] = (None, None)

    def build(self, config: Config, previous: GatewayState | None = None) -> GatewayState:
        old_pools = previous.pools if previous is not None else {}
        pools: dict[PoolKey, UpstreamPool] = {}

        def pool(upstream: Upstream, route: Route) -> UpstreamPool:
            key = (upstream, route.connect_timeout)
            existing = pools.get(key) or old_pools.get(key)
            if existing is None or existing.closed:
                existing = UpstreamPool(
                    upstream_endpoint(self.reactor, upstream, route.connect_timeout),
                    self.reactor,
                    size=upstream.pool_size,
                    describe=upstream.url,
                    on_discard=self.metrics.upstream_discards(upstream.url),
                )
            pools[key] = existing
            return existing

        https_port = _first_tls_port(config)
        old_providers = previous.providers if previous is not None else {}
        providers: dict[ProviderSettings, ProviderHandle] = {}
        for settings in config.providers:
            handle = old_providers.get(settings)
            if handle is None:
                handle = self.provider_handle(settings)
            providers[settings] = handle
        by_name = {settings.name: handle for settings, handle in providers.items()}

        def login_provider(oidc: OIDCSettings) -> ProviderHandle:
            """The route's provider; for oidc.organization, that organization's own
            (its issuer below the root's), made once per configuration."""
            if oidc.organization is None:
                return by_name[oidc.provider]
            settings = organization_provider(by_name[oidc.provider].settings, oidc.organization)
            handle = providers.get(settings) or old_providers.get(settings)
            if handle is None:
                handle = self.provider_handle(settings)
            providers[settings] = handle
            return handle

        old_clients = previous.redis_clients if previous is not None else {}
        redis_clients: dict[RedisSettings, AnyRedisClient] = {}

        def redis_client(settings: RedisSettings) -> AnyRedisClient:
            client = redis_clients.get(settings) or old_clients.get(settings)
            if client is None:
                # Here, not at the top: a gateway without Redis never loads the client.
                from idgateway.redis.cluster import redis_client_for

                client = redis_client_for(self.reactor, settings)
            redis_clients[settings] = client
            return client

        shared = config.redis or next(
            (r.auth.session.redis for r in config.routes if r.auth and r.auth.session.redis), None
        )
        shared_client = redis_client(shared) if shared is not None else None
        per_route = revocation_ttls(config)
        longest = max(per_route.values(), default=86400.0)
        if self._revocation is None:
            # Made once, on the first configuration: a reload that changes the
            # shared Redis takes effect at the next restart (logged below).
            self._revocation_redis = (shared, shared_client)
            self._revocation = RevocationList(self.reactor, shared_client, ttl=longest)
            self._revocation.set_ttl(longest, per_route)
            self._replay = ReplayCache(self.reactor, shared_client)
            self._revocation.start()
            if self._revocation.warning and any(
                r.auth and r.auth.session.store == "cookie" for r in config.routes
            ):
                self._log.warn("{warning}", warning=self._revocation.warning)
                if config.workers > 1:
                    self._log.warn(
                        "workers: {n} with cookie sessions and no shared Redis: token refreshes "
                        "are not coordinated between processes, and WSO2's rotating refresh "
                        "tokens may then log users out; set redis: {{url: ...}}",
                        n=config.workers,
                    )
        else:
            # Revocations live as long as the sessions they end could: a reload
            # that raises max_duration extends them (and keeps sessions that
            # had outlived the old one dead).
            self._revocation.set_ttl(longest, per_route)
            kept_settings, kept_client = self._revocation_redis
            if kept_settings != shared:
                self._log.warn(
                    "the shared Redis changed: logout state keeps using the old one "
                    "until the gateway restarts"
                )
            if kept_settings is not None and kept_client is not None:
                # Never closed by a reload while logout state depends on it.
                redis_clients.setdefault(kept_settings, kept_client)
        runtimes: dict[str, RouteRuntime] = {}
        assertion_keys = AssertionKeySet(config.assertion_keys)
        for route in config.routes:
            login = None
            identity = IdentityHeaders.for_route(
                HeaderSettings(), user_claim="sub", email_claim="email", groups_claim="groups"
            )
            if route.auth is not None:
                session_redis = route.auth.session.redis
                login = RouteLogin(
                    route,
                    route.auth,
                    login_provider(route.auth.oidc),
                    self.reactor,
                    redis_client(session_redis) if session_redis is not None else None,
                    shared_client,
                    revocation=self._revocation,
                    token_http=self.mutual_tls_client(route.auth.oidc, by_name),
                )
                identity = login.identity
            before = previous.runtimes.get(route.name) if previous is not None else None
            if login is not None and before is not None and before.login is not None:
                login.adopt(before.login)
            bearer = self.bearer_gate(
                route, login, by_name, redis_client, shared_client, config.workers
            )
            if bearer is not None and before is not None and before.bearer is not None:
                bearer.adopt(before.bearer)
            if bearer is not None:
                identity = bearer.identity if login is None else identity
                if login is not None:
                    login.bearer = bearer
            strip = identity.strip
            signer = None
            if route.assertion is not None:
                # Whatever the client sends in it is dropped, on every route (see below).
                strip = strip | {header_key(route.assertion.header.encode("ascii"))}
                if assertion_keys.signing is not None:  # (config checks guarantee one)
                    signer = AssertionSigner(
                        route.assertion,
                        assertion_keys.signing,
                        audience=route.assertion.audience or route.name,
                    )
                if login is not None:
                    login.assertion = signer
                if bearer is not None:
                    bearer.assertion = signer
            runtimes[route.name] = RouteRuntime(
                route=route,
                default_pool=pool(route.upstream, route),
                default_upstream=route.upstream,
                path_pools=tuple((pool(sub.upstream, route), sub.upstream) for sub in route.paths),
                paths=path_judge(route),
                hsts_header=_hsts(route),
                https_port_suffix=b"" if https_port in (None, 443) else b":%d" % https_port,
                strip_headers=strip,
                strip_prefixes=identity.strip_prefixes,
                login=login,
                assertion=signer,
                bearer=bearer,
            )
        # Every route strips every identity header and every gateway cookie that
        # ANY route could set: routes may share an upstream or a cookie domain.
        logins = [r.login for r in runtimes.values() if r.login is not None]
        # Authorization is only replaced on routes that pass the access token in
        # it; open API routes behind the same gateway keep their clients' bearer.
        all_strip = frozenset().union(*(r.strip_headers for r in runtimes.values())) - {
            b"authorization"
        }
        all_prefixes = tuple(sorted({p for r in runtimes.values() for p in r.strip_prefixes}))
        own_cookie = _any_own_cookie(logins) if logins else None
        for runtime in runtimes.values():
            runtime.set_strip_headers(all_strip | (runtime.strip_headers & {b"authorization"}))
            runtime.strip_prefixes = all_prefixes
            runtime.own_cookie = own_cookie
        assert self._replay is not None
        return GatewayState(
            config=config,
            routes=RouteTable.build(config.routes),
            runtimes=runtimes,
            trusted=TrustedProxies(config.trusted_proxies),
            pools=pools,
            providers=providers,
            revocation=self._revocation,
            replay=self._replay,
            redis_clients=redis_clients,
            assertion_keys=assertion_keys,
        )

    def bearer_gate(
        self,
        route: Route,
        login: RouteLogin | None,
        by_name: dict[str, ProviderHandle],
        redis_client: Callable[[RedisSettings], AnyRedisClient],
        shared_client: AnyRedisClient | None,
        workers: int = 1,
    ) -> BearerGate | None:
        """The route's token gate: introspection answers shared through the Redis
        of its sessions (sealed with their keys), DPoP proofs' jti remembered in
        that Redis, else the shared one, else this process."""
        if route.bearer is None:
            return None
        session_redis = (
            route.auth.session.redis
            if route.auth is not None and route.auth.session.store == "redis"
            else None
        )
        redis = redis_client(session_redis) if session_redis is not None else None
        if route.bearer.settings.dpop != "off" and redis is None and shared_client is None:
            if workers > 1:
                self._log.warn(
                    "route {route}: DPoP proofs' jti are remembered per process (no Redis): "
                    "with workers: {n}, a proof replayed to another worker is not caught; "
                    "set redis: {{url: ...}}",
                    route=route.name,
                    n=workers,
                )
        return BearerGate(
            route,
            route.bearer,
            by_name[route.bearer.settings.provider],
            self.reactor,
            redis=redis,
            keyring=login.keyring if login is not None and redis is not None else None,
            replay_redis=redis or shared_client,
            client=_key_client(route, login),
        )

    def mutual_tls_client(
        self, oidc: OIDCSettings, by_name: dict[str, ProviderHandle]
    ) -> ProviderHTTPClient | None:
        """The route's own provider client for tls_client_auth (its certificate
        is the client's credential); None: the provider's shared one."""
        if oidc.client_cert is None or oidc.client_key is None:
            return None
        settings = by_name[oidc.provider].settings
        return make_http_client(
            self.reactor,
            ca_file=settings.ca_file,
            insecure_skip_verify=settings.insecure_skip_verify,
            calls=self.metrics.provider_calls(settings.name),
            client_certificate=(oidc.client_cert, oidc.client_key),
        )

    def provider_handle(self, settings: ProviderSettings) -> ProviderHandle:
        """A started client for one provider: discovery retries in the background."""
        if settings.insecure_skip_verify:
            self._log.warn(
                "provider {name}: TLS verification is OFF (insecure_skip_verify)",
                name=settings.name,
            )
        if settings.insecure_http:
            self._log.warn(
                "provider {name}: plain HTTP allowed (insecure_http): tokens and the client "
                "secret may cross the network unencrypted",
                name=settings.name,
            )
        http = make_http_client(
            self.reactor,
            ca_file=settings.ca_file,
            insecure_skip_verify=settings.insecure_skip_verify,
            calls=self.metrics.provider_calls(settings.name),
        )
        client = ProviderClient(
            settings.name,
            discovery_url=settings.discovery_url,
            issuer=settings.issuer,
            http=http,
            clock=self.reactor,
            insecure_http=settings.insecure_http,
        )
        client.start()
        return ProviderHandle(settings=settings, client=client, http=http)

    @staticmethod
    def retire(old: GatewayState, new: GatewayState) -> None:
        """Close the pools the new state no longer uses (busy connections finish first)."""
        kept = {id(p) for p in new.pools.values()}
        for pool in old.pools.values():
            if id(pool) not in kept:
                pool.close()
        for settings, handle in old.providers.items():
            if new.providers.get(settings) is not handle:
                handle.client.stop()
        for redis_settings, client in old.redis_clients.items():
            if new.redis_clients.get(redis_settings) is not client:
                client.close()


def _key_client(route: Route, login: RouteLogin | None) -> tuple[ClientCredentials, Any] | None:
    """The route's own oidc client, when its bearer introspection is that client
    and it authenticates with a key (private_key_jwt, tls_client_auth)."""
    introspection = route.bearer.settings.introspection if route.bearer is not None else None
    if login is None or introspection is None or introspection.client_secret:
        return None
    if introspection.client_id != login.oidc.client_id:
        return None
    return login.credentials, login.token_http


def revocation_ttls(config: Config) -> dict[str, float]:
    """How long a revocation must last on each route with cookie sessions: its
    max_duration (Redis sessions are deleted instead)."""
    return {
        r.name: r.auth.session.max_duration
        for r in config.routes
        if r.auth is not None and r.auth.session.store == "cookie"
    }


# Distinct cookie names whose verdict is remembered (browsers send a handful;
# the bound keeps made-up names from growing it).
OWN_COOKIE_MEMO_MAX = 1024


def _any_own_cookie(logins: list[RouteLogin]) -> Callable[[bytes], bool]:
    matchers = [login.is_own_cookie for login in logins]
    known: dict[bytes, bool] = {}

    def is_own(name: bytes) -> bool:
        # Every request asks about each of its cookies: remember the answers.
        verdict = known.get(name)
        if verdict is None:
            verdict = any(matches(name) for matches in matchers)
            if len(known) >= OWN_COOKIE_MEMO_MAX:
                known.clear()
            known[name] = verdict
        return verdict

    return is_own


def path_judge(route: Route) -> PathJudge:
    policy = PathPolicy(
        encoded_slashes=route.path_rules.encoded_slashes,
        backslashes=route.path_rules.backslashes,
        case_insensitive=route.case_insensitive_paths,
    )
    return PathJudge(
        policy,
        [sub.prefix for sub in route.paths],
        [sub.authorize is not None for sub in route.paths],
    )


def _hsts(route: Route) -> bytes | None:
    if route.hsts_max_age is None:
        return None
    value = b"max-age=%d" % route.hsts_max_age
    if route.hsts_include_subdomains:
        value += b"; includeSubDomains"
    return value


def _first_tls_port(config: Config) -> int | None:
    ports: Iterable[int] = (listener.port for listener in config.listeners if listener.tls)
    return next(iter(ports), None)


class StateHolder:
    """The one mutable cell: the current GatewayState, replaced whole on reload."""

    def __init__(self, state: GatewayState) -> None:
        self.current = state
        # Open WebSocket tunnels per route (they outlive reloads).
        self.websockets = WebSocketSlots()
