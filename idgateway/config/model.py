"""The parsed configuration: immutable values, built by ``config.load_config``.

Routes are values: a reload builds a complete new set of these and swaps it in
one assignment. Nothing here does I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import attrs

if TYPE_CHECKING:
    from idgateway.config.signing_keys import SigningKey

UpstreamKind = Literal["http", "https", "unix"]


@attrs.frozen
class CertificatePair:
    """One certificate chain and its private key, both PEM files."""

    cert: str
    key: str
    # Host names the certificate covers (its DNS SANs, lower case), read at load.
    hostnames: tuple[str, ...] = ()


@attrs.frozen
class TLSSettings:
    certificates: tuple[CertificatePair, ...]
    # "1.2" or "1.3".
    min_version: str = "1.2"
    # OpenSSL cipher list for TLS <= 1.2; None keeps OpenSSL's secure default.
    ciphers: str | None = None


@attrs.frozen
class Listener:
    host: str
    port: int
    tls: TLSSettings | None = None
    # Seconds a request head may take to arrive in full, however it trickles
    # in; None: the top-level client_header_timeout.
    client_header_timeout: float | None = None
    # Longest silence while a request body is being read; None: the
    # top-level client_body_timeout.
    client_body_timeout: float | None = None
    # Client connections open at once on this listener (all worker processes
    # together); None: derived from the file-descriptor limit
    # (service.default_max_connections).
    max_connections: int | None = None
    # Longest time a client may leave a response unread (its socket full);
    # None: the top-level client_send_timeout.
    client_send_timeout: float | None = None
    # true: ALPN offers h2 (TLS only); false: HTTP/1.1 only; "prior_knowledge":
    # h2c on a plain listener; None: true on TLS listeners, false on plain ones.
    http2: bool | str | None = None
    # Where the file declares it ("gateway.yaml:12"), for start-up errors; not
    # part of what the listener is (a reload compares listeners without it).
    source: str = attrs.field(default="", eq=False)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def http2_mode(self) -> str:
        """How this listener speaks HTTP/2: "alpn", "prior_knowledge" or "off"."""
        if self.http2 == "prior_knowledge":
            return "prior_knowledge"
        if self.http2 is None:
            return "alpn" if self.tls is not None else "off"
        return "alpn" if self.http2 else "off"


@attrs.frozen
class HTTP2Limits:
    """``http2:``: per-connection limits of HTTP/2 clients (every listener speaking h2)."""

    # Streams (requests) a client may have open at once on one connection.
    max_concurrent_streams: int = 128
    # Bytes of request body a stream may send before the gateway passes them on
    # (its flow-control window): what one stream can make the gateway hold.
    initial_window_size: int = 256 * 1024
    # Decoded size of one header block (HPACK bombs end here).
    max_header_list_size: int = 64 * 1024
    # Streams a client may cancel (RST_STREAM) per minute before the connection
    # is closed with ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).
    max_resets_per_minute: int = 200


@attrs.frozen
class Upstream:
    """Where a route sends its requests."""

    url: str
    kind: UpstreamKind
    # For http/https: host and port; for unix: socket_path.
    host: str = ""
    port: int = 0
    socket_path: str = ""
    # Path prefix from the URL (without trailing slash), prepended upstream.
    base_path: str = ""
    # For https: PEM bundle to trust instead of the system store.
    ca_file: str | None = None
    # Maximum connections held open to this upstream (busy + idle).
    pool_size: int = 64
    # host_header, encoded once (it goes into every request sent upstream).
    host_header_bytes: bytes = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "host_header_bytes", self.host_header.encode())

    @property
    def host_header(self) -> str:
        """The Host header to send when the route does not preserve the client's."""
        if self.kind == "unix":
            return "localhost"
        default_port = 443 if self.kind == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default_port else f"{host}:{self.port}"


@attrs.frozen
class PathRules:
    """``path_rules``: what a route passes to its upstream instead of refusing.

    "pass" keeps the character encoded and opaque to matching (never decoded),
    as Apache's ``AllowEncodedSlashes NoDecode``.
    """

    # %2F and %5C in a path.
    encoded_slashes: Literal["refuse", "pass"] = "refuse"
    # A literal \ in a path.
    backslashes: Literal["refuse", "pass"] = "refuse"


@attrs.frozen
class StepUp:
    """``paths[].login``: how recent and how strong a login this path needs."""

    # The session's ID token acr must be one of these; () means any.
    acr_values: tuple[str, ...] = ()
    # Seconds since the user authenticated (ID token auth_time); None: any.
    max_age: float | None = None


@attrs.frozen
class PathRoute:
    """A path prefix within a route's hosts with its own upstream."""

    prefix: str
    upstream: Upstream
    # Stricter (or other) authorization for this path on a route with login.
    authorize: AuthorizeRules | None = None
    # Step-up: a stronger or more recent login for this path (routes with oidc).
    login: StepUp | None = None


@attrs.frozen
class Route:
    name: str
    hosts: tuple[str, ...]
    upstream: Upstream
    default: bool = False
    paths: tuple[PathRoute, ...] = ()
    preserve_host: bool = False
    connect_timeout: float = 5.0
    # Time allowed for the upstream to start answering (status line + headers).
    response_timeout: float = 60.0
    # Longest silence in either direction once the exchange has started.
    idle_timeout: float = 300.0
    # Bytes; None means unlimited.
    max_body_size: int | None = 100 * 1024 * 1024
    max_header_size: int = 16 * 1024
    https_redirect: bool = False
    # Seconds for Strict-Transport-Security max-age; None sends no HSTS header.
    hsts_max_age: int | None = None
    hsts_include_subdomains: bool = False
    # How paths that upstreams read differently are treated (see idgateway.http.paths).
    path_rules: PathRules = PathRules()
    # Every path rule (public paths, paths[].prefix, api_paths) ignores case,
    # for IIS-style upstreams.
    case_insensitive_paths: bool = False

    # WebSocket tunnels open at once on this route (all worker processes
    # together); upgrades past it get 503.
    max_websockets: int = 1024
    # A tunnel with no bytes either way for this long is closed.
    websocket_idle_timeout: float = 3600.0
    # Login; None means the route is open (a plain reverse proxy).
    auth: RouteAuth | None = None
    # Bearer tokens (APIs); None: the route takes no tokens. A route may have
    # both (idgateway.gate.bearer decides per request).
    bearer: BearerAuth | None = None
    # A signed identity assertion for the upstream (idgateway.gate.assertion); None: off.
    assertion: AssertionSettings | None = None


@attrs.frozen
class AssertionSettings:
    """``assertion:`` on a route: the header and lifetime of its signed identity assertion."""

    header: str = "X-Idgateway-Assertion"
    # Seconds from iat to exp.
    lifetime: float = 60.0
    # The aud claim; None: the route's name.
    audience: str | None = None


@attrs.frozen
class LoggingSettings:
    """The top-level ``logging:`` block: the access log and how lines look."""

    # One line per finished request (namespace idgateway.access).
    access_log: bool = True
    # "text": readable lines; "json": each access/audit message is a JSON object.
    format: Literal["text", "json"] = "text"
    # How the access and audit logs name the user: "plain", "hash" (a sha256
    # prefix) or "none" (left out).
    user_id: Literal["plain", "hash", "none"] = "plain"


@attrs.frozen
class ReloadSettings:
    """``reload:``: whether the gateway re-reads its file by itself when it changes."""

    # Poll the file; a change reloads exactly as SIGHUP does.
    watch: bool = False
    # Seconds between checks (a stat; the file is read only when that changed).
    interval: float = 2.0


@attrs.frozen
class Config:
    source: str
    listeners: tuple[Listener, ...]
    routes: tuple[Route, ...]
    # CIDR strings whose X-Forwarded-* headers are believed.
    trusted_proxies: tuple[str, ...] = ()
    # Non-fatal findings (expired certificates, insecure settings) to log at start.
    warnings: tuple[str, ...] = ()
    providers: tuple[ProviderSettings, ...] = ()
    # Worker processes sharing the listeners (1: the twistd process serves alone).
    workers: int = 1
    # The admin listener (/healthz, /readyz): (host, port), or None for none.
    admin: tuple[str, int] | None = None
    # Shared Redis for back-channel logout state when routes keep cookie sessions
    # (revoked sids, logout-token jti replay); None: process memory only.
    redis: RedisSettings | None = None
    logging: LoggingSettings = LoggingSettings()
    reload: ReloadSettings = ReloadSettings()
    # Seconds a request head may take to arrive in full (listeners may override).
    client_header_timeout: float = 15.0
    # Longest silence while a request body is read (listeners may override).
    client_body_timeout: float = 60.0
    # Longest time a response may wait for a client that does not read it
    # (nginx's send_timeout; listeners may override).
    client_send_timeout: float = 60.0
    http2: HTTP2Limits = HTTP2Limits()
    # The gateway's identity-assertion keys, loaded: the first signs, all are published.
    assertion_keys: tuple[SigningKey, ...] = ()


# ---- login: providers, per-route OIDC clients, sessions, identity headers ---------------


@attrs.frozen
class ProviderSettings:
    """An OpenID provider (a WSO2 tenant), named by discovery URL or by issuer."""

    name: str
    discovery_url: str | None = None
    issuer: str | None = None
    ca_file: str | None = None
    # mod_auth_openidc's "OIDCSSLValidateServer Off"; logged loudly at start.
    insecure_skip_verify: bool = False
    # Allow plain-HTTP provider URLs on another machine (loopback needs no
    # flag); logged loudly at start and by `idgateway check`.
    insecure_http: bool = False


@attrs.frozen
class OIDCSettings:
    provider: str
    client_id: str
    # "" with client_auth private_key_jwt or tls_client_auth.
    client_secret: str = attrs.field(default="", repr=False)
    # client_secret_basic, client_secret_post, private_key_jwt or tls_client_auth.
    client_auth: str = "client_secret_basic"
    # private_key_jwt: the PEM key signing client assertions, and their aud
    # ("token_endpoint" or "issuer").
    private_key_file: str | None = None
    client_assertion_audience: str = "token_endpoint"
    # tls_client_auth: the certificate and key presented to the provider.
    client_cert: str | None = None
    client_key: str | None = None
    # Pushed authorization requests (RFC 9126): "auto", "required" or "off".
    par: str = "auto"
    # WSO2 IS 7 organizations: log into this sub-organization of the provider's
    # root (its own issuer, idgateway.config.organizations); None: the root.
    organization: str | None = None
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    # Extra authorize parameters (prompt, acr_values, fidp, max_age, ...).
    extra_params: tuple[tuple[str, str], ...] = ()
    redirect_path: str = "/oauth2/callback"
    user_claim: str = "sub"
    email_claim: str = "email"
    groups_claim: str = "groups"
    # Merge the userinfo endpoint's claims into the session at login: True,
    # False, or "auto" (when the ID token lacks a claim the route needs).
    userinfo: bool | Literal["auto"] = "auto"
    # Where sign_out sends the browser back to after the provider's logout.
    # None: the provider returns the browser to "/", where the gateway shows its
    # signed-out page once (instead of starting a new login at once).
    post_logout_redirect: str | None = None
    # Absolute URLs besides this route's own host that rd/post-login may name.
    allowed_redirects: tuple[str, ...] = ()
    # Path prefixes that always get 401 JSON, never a login redirect.
    api_paths: tuple[str, ...] = ()
    # Serve /oauth2/frontchannel_logout (unsigned: off unless asked for).
    frontchannel_logout: bool = False


@attrs.frozen
class RedisSettings:
    """How to reach a Redis server (or a Sentinel-managed master)."""

    url: str | None = None  # redis://[:password@]host[:port][/db], rediss://..., unix:/path
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    # Redis Cluster: seed node URLs (instead of url and sentinels).
    cluster: tuple[str, ...] = ()
    ca_file: str | None = None
    pool_size: int = 10
    connect_timeout: float = 2.0
    command_timeout: float = 1.0


@attrs.frozen
class SessionSettings:
    store: str = "cookie"
    # For store: redis.
    redis: RedisSettings | None = None
    # base64 32-byte keys; the first encrypts, all decrypt.
    keys: tuple[str, ...] = ()
    inactivity_timeout: float = 3600.0
    max_duration: float = 86400.0
    cookie_name: str | None = None
    cookie_domain: str | None = None
    cookie_path: str = "/"
    same_site: str = "Lax"
    # Refresh the access token this long before it expires.
    refresh_leeway: float = 60.0
    # Keep only what the route needs (no tokens unless headers pass them).
    minimal: bool = False


@attrs.frozen
class HeaderSettings:
    """Which identity headers the upstream gets."""

    # "oauth2-proxy", "mod_auth_openidc" or "custom".
    preset: str = "oauth2-proxy"
    # For "custom": (header name, claim name) pairs.
    mapping: tuple[tuple[str, str], ...] = ()
    pass_access_token: bool = False
    pass_authorization_header: bool = False
    pass_id_token: bool = False
    claim_prefix: str = "OIDC_CLAIM_"
    list_delimiter: str = ","
    remote_user_header: str = "X-Remote-User"


@attrs.frozen
class ForwardAuthSettings:
    """``forward_auth:``: what /oauth2/auth (nginx auth_request, Traefik forwardAuth) answers."""

    # Add the route's token headers (access token, ID token, Authorization) to
    # the answer, for peers in trusted_proxies only; never for anyone else.
    pass_tokens: bool = False


@attrs.frozen
class PublicPath:
    """A request that skips login: an optional method and a path prefix or regex."""

    method: str | None
    prefix: str | None = None
    regex: str | None = None


@attrs.frozen
class ClaimRule:
    claim: str
    # Exact value, or a regex when ``regex`` is set. Lists match if any item does.
    value: str
    regex: bool = False
    # Any of these exact values (a YAML list in the rule); then ``value`` is unused.
    any_of: tuple[str, ...] = ()


@attrs.frozen
class AuthorizeRules:
    email_domains: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    claims: tuple[ClaimRule, ...] = ()
    # OAuth scopes a bearer token must all have been granted (sessions have none).
    scopes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.email_domains or self.groups or self.roles or self.claims or self.scopes)


@attrs.frozen
class RouteAuth:
    """Everything a route needs to log users in; None on routes without login."""

    oidc: OIDCSettings
    session: SessionSettings
    headers: HeaderSettings = HeaderSettings()
    public_paths: tuple[PublicPath, ...] = ()
    authorize: AuthorizeRules = AuthorizeRules()
    forward_auth: ForwardAuthSettings = ForwardAuthSettings()


# ---- bearer tokens: APIs behind the gateway (idgateway.gate.bearer) ---------------------------


@attrs.frozen
class IntrospectionSettings:
    """``bearer.introspection``: the RFC 7662 client for opaque tokens."""

    client_id: str
    # "": the route's own oidc client authenticates (private_key_jwt or
    # tls_client_auth, the same client_id).
    client_secret: str = attrs.field(default="", repr=False)
    # Longest reuse of an "active" answer (never past the token's exp).
    cache: float = 300.0
    # How long an "inactive" answer is reused.
    negative_cache: float = 10.0
    # Longest wait for the provider's answer.
    timeout: float = 10.0


@attrs.frozen
class BearerSettings:
    """``bearer:`` on a route: which access tokens it accepts, from which provider."""

    provider: str
    # "jwt" and/or "opaque".
    tokens: tuple[str, ...] = ("jwt",)
    # A JWT's aud must contain one of these.
    audiences: tuple[str, ...] = ()
    # Allowed azp / client_id; () means any.
    clients: tuple[str, ...] = ()
    introspection: IntrospectionSettings | None = None
    # "off", "optional" or "required" (RFC 9449).
    dpop: str = "off"
    # The realm of the WWW-Authenticate challenges; None: the route's name.
    realm: str | None = None
    # The claim naming the user; None: the route's oidc.user_claim, else "sub".
    user_claim: str | None = None
    # Seconds of clock skew allowed on exp, nbf and iat.
    leeway: float = 60.0


@attrs.frozen
class BearerAuth:
    """What a bearer route needs: its settings and the route's headers and rules
    (the same values as the route's ``auth`` when it also has ``oidc``)."""

    settings: BearerSettings
    headers: HeaderSettings = HeaderSettings()
    public_paths: tuple[PublicPath, ...] = ()
    authorize: AuthorizeRules = AuthorizeRules()
    forward_auth: ForwardAuthSettings = ForwardAuthSettings()
    user_claim: str = "sub"
    email_claim: str = "email"
    groups_claim: str = "groups"
