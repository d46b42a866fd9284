"""``idgateway import oauth2-proxy FILE.cfg``: OAuth2 Proxy's legacy configuration file.

The file is ``key = value`` lines: strings in double quotes, lists in ``[...]``,
``true``/``false``, ``#`` comments; valid TOML in practice, so ``tomllib``
reads it. A file that is not valid TOML (a key given twice, an unquoted
string) is read again line by line, and the header says that oauth2-proxy
itself would refuse it.

What oauth2-proxy does by default matters as much as what the file says: it
passes the client's Host header upstream (``pass_host_header``), names the
user by the ``email`` claim (``user_id_claim``), keeps a session for 168 hours
with no inactivity timeout (``cookie_expire``), and with ``tls_cert_file`` it
serves HTTPS only, on ``https_address`` (default ``:443``), ignoring
``http_address``. The import writes those out so that the gateway behaves the
same.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from idgateway.config import values as value_syntax
from idgateway.importers._yaml import Block, Flow, config_text, render, shown
from idgateway.importers.common import (
    ImporterError,
    ImportOptions,
    Report,
    describe,
    duration_text,
    finish,
    hide_url_password,
    is_secret_name,
    parse_go_duration,
    provider_block,
    route_name,
    session_key_from,
    split_url,
    tls_self_signed_hint,
)

KIND = "oauth2-proxy"
ENV_CLIENT_SECRET = "OAUTH2_PROXY_CLIENT_SECRET"
ENV_SESSION_KEY = "OAUTH2_PROXY_SESSION_KEY"
ENV_REDIS_PASSWORD = "OAUTH2_PROXY_REDIS_PASSWORD"

# Providers that speak OpenID Connect with an oidc_issuer_url.
_OIDC_PROVIDERS = {"oidc", "keycloak-oidc", "adfs", "azure", "entra-id", "gitlab"}

# Options the gateway has no counterpart for, and why.
_NO_EQUIVALENT: dict[str, str] = {
    "oidc_jwks_url": "not needed: the gateway takes the JWKS URL from the discovery document",
    "skip_oidc_discovery": "the gateway always reads the provider's discovery document",
    "login_url": "the gateway takes the endpoints from the discovery document",
    "redeem_url": "the gateway takes the endpoints from the discovery document",
    "profile_url": "the gateway takes the endpoints from the discovery document",
    "validate_url": "the gateway takes the endpoints from the discovery document",
    "skip_claims_from_profile_url": "set oidc.userinfo: true to add the userinfo claims",
    "insecure_oidc_allow_unverified_email": (
        "authorize.email_domains always requires email_verified: true"
    ),
    "insecure_oidc_skip_issuer_verification": "the gateway always checks the ID token's issuer",
    "oidc_audience_claims": "the gateway accepts ID tokens whose aud holds the client id",
    "oidc_extra_audiences": "the gateway accepts ID tokens whose aud holds the client id",
    "oidc_public_key_files": "the gateway takes the signing keys from the provider's JWKS",
    "set_authorization_header": (
        "an auth_request response header carrying the ID token; /oauth2/auth answers with "
        "X-Auth-Request-* headers"
    ),
    "set_basic_auth": "the gateway sends no HTTP Basic credentials",
    "basic_auth_password": "the gateway sends no HTTP Basic credentials",
    "ssl_upstream_insecure_skip_verify": (
        "upstream TLS is always verified; name the upstream's CA in upstream_ca_file"
    ),
    "flush_interval": "the gateway streams responses as they arrive",
    "ping_path": (
        "the gateway answers GET /healthz on its admin listener (admin: {address: "
        "127.0.0.1:9901}), not on the public one"
    ),
    "ping_user_agent": "health checks go to /healthz on the admin listener",
    "ready_path": (
        "the gateway answers GET /readyz on its admin listener (admin: {address: "
        "127.0.0.1:9901}): 200 once the provider is discovered and Redis answers"
    ),
    "gcp_healthchecks": "health checks go to /healthz on the admin listener",
    "metrics_address": "no metrics endpoint",
    "metrics_secure_address": "no metrics endpoint",
    "metrics_tls_cert_file": "no metrics endpoint",
    "metrics_tls_key_file": "no metrics endpoint",
    "custom_templates_dir": "the gateway shows no sign-in page: it sends the browser to WSO2",
    "custom_sign_in_logo": "the gateway shows no sign-in page",
    "banner": "the gateway shows no sign-in page",
    "footer": "the gateway shows no sign-in page",
    "display_htpasswd_form": "no local users: every login goes to the provider",
    "htpasswd_file": "no local users: every login goes to the provider",
    "htpasswd_user_groups": "no local users: every login goes to the provider",
    "show_debug_on_error": "error pages never show internals",
    "provider_display_name": "the gateway shows no sign-in page",
    "authenticated_emails_file": (
        "no per-address list; use authorize.groups or authorize.claims with a WSO2 group"
    ),
    "whitelist_domains": (
        "give oidc.allowed_redirects as origins, e.g. https://portal.example.com"
    ),
    "backend_logout_url": "/oauth2/sign_out logs out at WSO2 through its end-session endpoint",
    "approval_prompt": "a non-standard parameter; use oidc.extra_params {prompt: consent}",
    "cookie_refresh": (
        "the gateway refreshes the access token when it is about to expire (session.refresh_leeway)"
    ),
    "cookie_secret_file": "set the session key in the variable named by session.keys",
    "cookie_csrf_expire": "the flow cookie lasts as long as a login may take",
    "tls_cipher_suites": (
        "Go cipher suite names; give listeners[].tls.ciphers as an OpenSSL list (e.g. ECDHE+AESGCM)"
    ),
    "redis_sentinel_password": "Sentinel authentication is not supported",
    "redis_insecure_skip_tls_verify": "Redis TLS is always verified; give redis_ca_file",
    "redis_connection_idle_timeout": "the gateway keeps its Redis connections open",
    "redis_username": "Redis ACL user names are not supported; use the password",
    "skip_jwt_bearer_tokens": (
        "give the route a bearer block by hand (provider, audiences; docs/apis.rst): "
        "requests with a token are then judged by it"
    ),
    "extra_jwt_issuers": "a bearer block names one provider; add one route per issuer",
    "bearer_token_login_fallback": (
        "with a bearer block, a request with a bad token gets 401, never a login"
    ),
    "real_client_ip_header": "X-Forwarded-For is believed from trusted_proxies only",
    "trusted_ips": "no address-based exceptions; use public_paths for paths",
    "encode_state": "the state parameter is always opaque",
    "allow_query_semicolons": "the query string reaches the upstream as sent",
    "force_json_errors": "API clients get JSON errors (see oidc.api_paths)",
    "errors_to_info_log": "the gateway logs through twistd",
    "api_routes": "only plain prefixes (^/api/) become oidc.api_paths",
    "jwt_key": "an option of the login.gov provider",
    "jwt_key_file": "an option of the login.gov provider",
    "pubjwk_url": "an option of the login.gov provider",
    "resource": "an option of the Azure provider",
}
_LOGGING = re.compile(
    r"\A(request_logging|auth_logging|standard_logging|request_logging_format|"
    r"auth_logging_format|standard_logging_format|logging_\w+|silence_ping_logging|"
    r"exclude_logging_paths?|request_id_header)\Z"
)
_OTHER_PROVIDERS = re.compile(
    r"\A(github|google|azure|keycloak|gitlab|bitbucket|entra_id|login_gov)_\w+\Z"
)


# ---- reading the file -----------------------------------------------------------------


MAX_OPTIONS = 1000
MAX_LIST_DEPTH = 8  # [[...]]: oauth2-proxy's options are flat lists of strings


def parse(text: str) -> tuple[dict[str, Any], str | None]:
    """The options, and why the file is not valid TOML (None when it is)."""
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as error:
        return _parse_lines(text), str(error)
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ImporterError(
            "values nested hundreds of levels deep: not an oauth2-proxy configuration"
        ) from None


def _parse_lines(text: str) -> dict[str, Any]:
    """A tolerant reader: ``key = value`` per line, lists may span lines, last one wins."""
    values: dict[str, Any] = {}
    lines = text.split("\n")  # TOML's line break; str.splitlines would also split at U+2028
    index = 0
    while index < len(lines):
        line = _strip_comment(lines[index]).strip()
        index += 1
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*=\s*(.*)", line)
        if match is None:
            continue
        key, raw = match.groups()
        if raw.startswith("["):
            # Scanned once, line by line: re-scanning the whole value per line was quadratic.
            parts, state = [raw], _scan(raw, (0, None))
            while state[0] > 0 and index < len(lines):
                part = _strip_comment(lines[index]).strip()
                parts.append(part)
                state = _scan(part, state)
                index += 1
            raw = " ".join(parts)
        values[key] = _value(raw.strip())
    return values


def _strip_comment(line: str) -> str:
    quote: str | None = None
    for position, character in enumerate(line):
        if quote:
            if character == quote and line[position - 1] != "\\":
                quote = None
        elif character in "\"'":
            quote = character
        elif character == "#":
            return line[:position]
    return line


def _scan(raw: str, state: tuple[int, str | None]) -> tuple[int, str | None]:
    """(bracket depth, open quote) after ``raw``, starting from ``state``."""
    depth, quote = state
    for position, character in enumerate(raw):
        if quote:
            if character == quote and (position == 0 or raw[position - 1] != "\\"):
                quote = None
        elif character in "\"'":
            quote = character
        elif character == "[":
            depth += 1
        elif character == "]":
            depth -= 1
    return depth, quote


def _value(raw: str, depth: int = 0) -> Any:
    if raw.startswith("[") and raw.endswith("]") and depth < MAX_LIST_DEPTH:
        items, current, quote = [], "", None
        for position, character in enumerate(raw[1:-1]):
            if quote:
                if character == quote and raw[position] != "\\":
                    quote = None
            elif character in "\"'":
                quote = character
            elif character == ",":
                items.append(current.strip())
                current = ""
                continue
            current += character
        items.append(current.strip())
        return [_value(item, depth + 1) for item in items if item]
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            return json.loads(raw)
        except ValueError:
            return raw[1:-1]
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    if raw in ("true", "false"):
        return raw == "true"
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    return raw


class _Options:
    """The file's options; every one read is remembered, so none is silently lost."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.used: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.values.get(key, default)

    def given(self, key: str) -> bool:
        return key in self.values

    def show(self, key: str) -> str:
        """``key = value`` for a comment, secrets hidden."""
        value = self.values.get(key)
        name = shown(key)
        if isinstance(value, str) and is_secret_name(key):
            return f"{name} = <hidden>"
        if isinstance(value, str) and "://" in value:
            return f"{name} = {describe(hide_url_password(value))}"
        if isinstance(value, list):
            return f"{name} = {describe([hide_url_password(str(v)) for v in value])}"
        return f"{name} = {describe(value)}"

    def skip(self, report: Report, key: str, why: str) -> None:
        self.used.add(key)
        report.skip(self.show(key), why)


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(item) for item in value]
    return [part for part in re.split(r"[\s,]+", str(value)) if part]


# ---- the conversion ---------------------------------------------------------------------


def convert(text: str, source: str, options: ImportOptions) -> str:
    try:
        values, toml_error = parse(text)
    except ImporterError as error:
        raise ImporterError(f"{shown(source)}: {error}") from None
    if len(values) > MAX_OPTIONS:
        raise ImporterError(
            f"{shown(source)}: {len(values)} options; oauth2-proxy has fewer than 200 and the "
            f"importer reads at most {MAX_OPTIONS}: not an oauth2-proxy configuration"
        )
    known = [key for key in values if not isinstance(values[key], dict)]
    if not known:
        raise ImporterError(
            f"{source} is not an oauth2-proxy configuration: no 'key = value' options "
            '(expected e.g. provider = "oidc", client_id = "...")'
        )
    cfg = _Options(values)
    report = Report(KIND, source)
    if toml_error:
        report.warnings.append(
            f"{source} is not valid TOML ({toml_error}), so oauth2-proxy would refuse it; "
            "it was read line by line (where a key is given twice, the last one counts)."
        )
    for key, value in values.items():
        if isinstance(value, dict):
            cfg.used.add(key)
            report.skip(
                f"[{shown(key)}] table", "oauth2-proxy's legacy configuration has no tables"
            )

    provider_type = str(cfg.get("provider", "google"))
    if provider_type not in _OIDC_PROVIDERS:
        raise ImporterError(
            f'{source}: provider = "{provider_type}"'
            + (" (oauth2-proxy's default)" if not cfg.given("provider") else "")
            + ': only OpenID Connect providers can be imported; set provider = "oidc" '
            "and oidc_issuer_url"
        )
    issuer = cfg.get("oidc_issuer_url")
    if not issuer:
        raise ImporterError(
            f"{source}: no oidc_issuer_url; with WSO2 it is the token endpoint URL, "
            'e.g. oidc_issuer_url = "https://localhost:9443/oauth2/token"'
        )
    client_id = cfg.get("client_id")
    if not client_id:
        raise ImporterError(
            f"{source}: no client_id; give the Client ID WSO2 shows for the application"
        )

    top = Block()
    listener, tls = _listener(cfg, report, options)
    top.add("listeners", [listener])
    provider_name, provider = _provider(cfg, report, str(issuer))
    if provider_type != "oidc":
        provider.note(f'provider = "{provider_type}": imported as a plain OpenID Connect provider.')
    if cfg.given("reverse_proxy") and cfg.get("reverse_proxy"):
        top.note(
            "reverse_proxy = true: oauth2-proxy believed X-Forwarded-* headers from anyone. "
            "The gateway believes them only from the addresses listed here: give your proxy's."
        )
        top.add("trusted_proxies", ["127.0.0.1"])
    top.child("providers").add(provider_name, provider)

    route = _route(cfg, report, options, tls, str(client_id), provider_name, listener)
    top.add("routes", [route])

    for key in values:
        if key in cfg.used:
            continue
        if key in _NO_EQUIVALENT:
            cfg.skip(report, key, _NO_EQUIVALENT[key])
        elif _LOGGING.match(key):
            cfg.skip(report, key, "the gateway logs through twistd (--logfile, --syslog)")
        elif _OTHER_PROVIDERS.match(key):
            cfg.skip(report, key, "an option of another oauth2-proxy provider type")
        else:
            cfg.skip(report, key, "an option this importer does not know; check it by hand")
    # An option read but mentioned nowhere keeps the gateway's default, which matches.
    mentioned = render(top, [], []) + "\n".join(report.not_imported + report.warnings)
    # One pass over the text, not one regular-expression search of it per option.
    words = set(re.findall(r"[\w-]+", mentioned))
    for key in values:
        named = key in words if re.fullmatch(r"[\w-]+", key) else key in mentioned
        if not named:
            report.same.append(cfg.show(key))
    steps = [
        "Register the callback URL in WSO2 (the application's Protocol tab, Authorized "
        "redirect URLs) exactly as the comment on oidc.redirect_path says."
    ]
    return finish(top, report, options, steps)


def _listener(cfg: _Options, report: Report, options: ImportOptions) -> tuple[Block, bool]:
    listener = Block()
    cert, key = cfg.get("tls_cert_file"), cfg.get("tls_key_file")
    http_address = cfg.get("http_address")
    https_address = cfg.get("https_address")
    tls = bool(cert or key)
    if tls:
        address = str(https_address or ":443")
        where = "https_address" if https_address else "https_address (oauth2-proxy's default)"
        if http_address:
            listener.note(
                f"{cfg.show('http_address')} is not used: with tls_cert_file, oauth2-proxy "
                "serves HTTPS only, on https_address (default :443)."
            )
    else:
        address = str(http_address or "127.0.0.1:4180")
        where = "http_address" if http_address else "http_address (oauth2-proxy's default)"
        if https_address:
            listener.note(f"{cfg.show('https_address')} is not used without tls_cert_file.")
    address = re.sub(r"\A(https?)://", "", address, flags=re.I)
    if address.startswith(":"):
        address = "0.0.0.0" + address
    try:
        value_syntax.parse_listen_address(address)
    except ValueError as error:
        report.warnings.append(f"The listen address {address!r} cannot be used: {error}")
    if options.listen:
        listener.add("address", options.listen, f"--listen (the configuration: {address})")
    else:
        listener.add("address", address, where)
    if tls:
        if not (cert and key):
            report.warnings.append("tls_cert_file and tls_key_file must both be given.")
        block = listener.child("tls")
        pair = Flow(cert=str(cert or "MISSING tls_cert_file"), key=str(key or "MISSING"))
        block.add("certificates", [pair], "tls_cert_file, tls_key_file")
        version = cfg.get("tls_min_version")
        if version:
            try:
                block.add(
                    "min_version", value_syntax.parse_tls_version(str(version)), "tls_min_version"
                )
            except ValueError as error:
                cfg.skip(report, "tls_min_version", str(error))
    return listener, tls


def _provider(cfg: _Options, report: Report, issuer: str) -> tuple[str, Block]:
    name, provider = provider_block(
        issuer, discovery=False, report=report, source="oidc_issuer_url"
    )
    if issuer.rstrip("/").endswith("/oauth2/oidcdiscovery"):
        report.warnings.append(
            "oidc_issuer_url names WSO2's discovery path, not its issuer: oauth2-proxy needs "
            "insecure_oidc_skip_issuer_verification for that; the gateway does not."
        )
    ca_files = _strings(cfg.get("provider_ca_files"))
    if ca_files:
        provider.add("ca_file", ca_files[0], "provider_ca_files")
        if len(ca_files) > 1:
            provider.note(
                "provider_ca_files lists several files: put all their certificates in this one "
                f"PEM file ({', '.join(ca_files[1:])} not included)."
            )
    if cfg.given("use_system_trust_store"):
        provider.note(
            f"{cfg.show('use_system_trust_store')}: with ca_file the gateway trusts that file "
            "only; without it, the system's CAs."
        )
        cfg.get("use_system_trust_store")
    if cfg.get("ssl_insecure_skip_verify"):
        provider.note(
            "!!! ssl_insecure_skip_verify = true: the provider's TLS certificate is NOT "
            "checked. Anyone on the network path can pose as WSO2, serve their own keys and "
            "sign in as anybody; the gateway warns about this at every start. Give ca_file "
            "(WSO2's exported certificate) and remove this line."
        )
        provider.add("insecure_skip_verify", True)
        report.warnings.append(
            "ssl_insecure_skip_verify = true became insecure_skip_verify: true: TLS to the "
            "provider is not verified. Use ca_file instead."
        )
    tls_self_signed_hint(provider, issuer)
    return name, provider


def _route(
    cfg: _Options,
    report: Report,
    options: ImportOptions,
    tls: bool,
    client_id: str,
    provider_name: str,
    listener: Block,
) -> Block:
    redirect = cfg.get("redirect_url")
    prefix = str(cfg.get("proxy_prefix", "/oauth2")).rstrip("/") or "/oauth2"
    if prefix != "/oauth2":
        cfg.skip(report, "proxy_prefix", "the gateway's own endpoints are always under /oauth2/")
    scheme, host, port, path = split_url(str(redirect or ""))
    route = Block()
    name = route_name(host, "oauth2-proxy")
    route.add("name", name)
    hosts: list[str] = []
    if host:
        try:
            hosts.append(value_syntax.parse_host_pattern(host))
        except ValueError as error:
            route.note(f"The host of redirect_url is not usable as a route host: {error}")
    if hosts:
        route.add("hosts", hosts, "the host of redirect_url")
    route.add("default", True, "like oauth2-proxy, answer whatever Host the request names")

    _upstreams(cfg, report, route)
    preserve = cfg.get("pass_host_header", True)
    route.add(
        "preserve_host",
        bool(preserve),
        "pass_host_header" if cfg.given("pass_host_header") else "pass_host_header (default)",
    )
    if cfg.given("upstream_timeout"):
        try:
            seconds = parse_go_duration(str(cfg.get("upstream_timeout")))
            route.add("response_timeout", duration_text(seconds), "upstream_timeout")
        except ValueError as error:
            cfg.skip(report, "upstream_timeout", str(error))
    if cfg.get("force_https"):
        if tls:
            route.add("https_redirect", True, "force_https")
        else:
            cfg.skip(report, "force_https", "https_redirect needs a TLS listener")
    if cfg.given("proxy_websockets"):
        route.note(f"{cfg.show('proxy_websockets')}: WebSockets are always proxied.")
        cfg.get("proxy_websockets")

    oidc = route.child("oidc")
    oidc.add("provider", provider_name)
    oidc.add("client_id", client_id)
    secret, secret_file = cfg.get("client_secret"), cfg.get("client_secret_file")
    if secret_file:
        oidc.add("client_secret_file", str(secret_file), "client_secret_file")
    elif secret and options.keep_secrets:
        oidc.add("client_secret", str(secret), "client_secret (--keep-secrets)")
    else:
        reference = report.secret(
            ENV_CLIENT_SECRET, f"the client secret WSO2 shows for client {client_id}"
        )
        oidc.add("client_secret", reference, "client_secret, from the environment")
        if not secret:
            report.warnings.append("The file has no client_secret; the gateway needs one.")
    scopes = _strings(cfg.get("scope")) or ["openid", "email", "profile"]
    if "openid" not in scopes:
        scopes.insert(0, "openid")
        oidc.note("'openid' added to scope: OpenID Connect needs it.")
    oidc.add("scopes", scopes, "scope" if cfg.given("scope") else "oauth2-proxy's default scope")
    redirect_path = path if path.startswith("/") else f"{prefix}/callback"
    oidc.note(_callback_note(cfg, report, scheme, host, port, redirect_path, tls, listener))
    oidc.add("redirect_path", redirect_path)
    user_claim = str(cfg.get("user_id_claim", "email"))
    email_claim = str(cfg.get("oidc_email_claim", "email"))
    if cfg.get("prefer_email_to_user"):
        user_claim = email_claim
        oidc.note("prefer_email_to_user = true: the user is named by the e-mail claim.")
    oidc.add(
        "user_claim",
        user_claim,
        "user_id_claim" if cfg.given("user_id_claim") else "oauth2-proxy's default user_id_claim",
    )
    if email_claim != "email":
        oidc.add("email_claim", email_claim, "oidc_email_claim")
    groups_claim = str(cfg.get("oidc_groups_claim", "groups"))
    if groups_claim != "groups":
        oidc.add("groups_claim", groups_claim, "oidc_groups_claim")
    extra = Flow()
    for key in ("prompt", "acr_values"):
        if cfg.get(key):
            extra[key] = str(cfg.get(key))
    if extra:
        oidc.add("extra_params", extra, "prompt, acr_values")
    api_paths = []
    for pattern in _strings(cfg.get("api_routes")):
        literal = re.fullmatch(r"\^(/[A-Za-z0-9/_.~-]*)", pattern)
        if literal:
            api_paths.append(literal.group(1))
        else:
            report.skip(f"api_routes item {describe(pattern)}", _NO_EQUIVALENT["api_routes"])
    if api_paths:
        oidc.add("api_paths", api_paths, "api_routes")
    method = cfg.get("code_challenge_method")
    if method:
        oidc.note(
            f"{cfg.show('code_challenge_method')}: the gateway always uses PKCE with S256 "
            "(WSO2 may require it; it never sends plain)."
        )
    if cfg.given("insecure_oidc_skip_nonce"):
        oidc.note(f"{cfg.show('insecure_oidc_skip_nonce')}: the gateway always checks the nonce.")
        cfg.get("insecure_oidc_skip_nonce")
    if cfg.given("skip_provider_button"):
        oidc.note(
            f"{cfg.show('skip_provider_button')}: the gateway never shows a sign-in button; it "
            "sends the browser straight to WSO2."
        )
        cfg.get("skip_provider_button")

    route.add("session", _session(cfg, report, options, tls))
    headers = _headers(cfg, route)
    route.add("headers", headers)
    public = _public_paths(cfg, report)
    if public:
        route.add("public_paths", public, "skip_auth_routes, skip_auth_regex, skip_auth_preflight")
    authorize = _authorize(cfg, route, scopes)
    if authorize.items:
        route.add("authorize", authorize)
    return route


def _callback_note(
    cfg: _Options,
    report: Report,
    scheme: str,
    host: str | None,
    port: int | None,
    path: str,
    tls: bool,
    listener: Block,
) -> str:
    listen_scheme = "https" if tls else "http"
    try:
        _, listen_port = value_syntax.parse_listen_address(str(listener.get("address")))
    except ValueError:
        listen_port = None
    shown = "" if listen_port in (None, 443 if tls else 80) else f":{listen_port}"
    callback = f"{listen_scheme}://{host or '<host>'}{shown}{path}"
    note = (f"{cfg.show('redirect_url')}" if cfg.given("redirect_url") else "No redirect_url") + (
        ". The gateway builds the callback URL from the request: "
        "<scheme>://<host>[:port] as the browser sent them, plus redirect_path; here "
        f"{callback}. Register exactly that in WSO2."
    )
    if not scheme:
        return note
    if cfg.get("reverse_proxy"):
        if scheme == "https" and not tls:
            report.warnings.append(
                f"redirect_url is {cfg.get('redirect_url')} behind a TLS-terminating proxy "
                "(reverse_proxy = true), but the gateway builds the callback URL from its own "
                f"listener, which is plain HTTP: WSO2 would be asked for {callback}. Give "
                "the gateway a TLS listener."
            )
        return note
    redirect_port = port or (443 if scheme == "https" else 80)
    if (scheme, redirect_port) != (listen_scheme, listen_port):
        report.warnings.append(
            f"redirect_url is {cfg.get('redirect_url')}, but the gateway listens with "
            f"{'TLS' if tls else 'plain HTTP'} on port {listen_port}: browsers come back "
            f"to {callback}. Register that in WSO2 (WSO2's guide adds TLS on :443 and "
            "leaves redirect_url at http://localhost:4180/oauth2/callback, which nothing "
            "answers any more)."
        )
    return note


def _upstreams(cfg: _Options, report: Report, route: Block) -> None:
    root: str | None = None
    paths: list[Block] = []
    for item in _strings(cfg.get("upstreams")):
        scheme, _, _, path = split_url(item)
        if scheme in ("file", "static"):
            report.skip(
                f"upstreams item {describe(item)}", "the gateway serves no files or fixed answers"
            )
            continue
        if scheme == "unix":
            url, path = "unix:" + item.split("://", 1)[1], "/"
        else:
            url = re.sub(r"\A([a-z]+://[^/?#]+).*\Z", r"\1", item, flags=re.I)
        try:
            value_syntax.parse_upstream_url(url)
        except ValueError as error:
            report.skip(f"upstreams item {describe(item)}", str(error))
            continue
        if path in ("", "/"):
            if root is None:
                root = url
            else:
                report.skip(
                    f"upstreams item {describe(item)}", f"a second upstream for /; {root} is used"
                )
            continue
        sub = Block()
        sub.add("prefix", path)
        sub.add("upstream", url)
        paths.append(sub)
    if root is None and paths:
        root = str(paths[0].get("upstream"))
        route.note(
            "No upstream serves /: oauth2-proxy answered 404 outside the listed paths; "
            "the gateway sends other paths here."
        )
    if root is None:
        root = "http://127.0.0.1:8080"
        route.note(
            "The file has no usable upstreams (an nginx auth_request set-up?): this one is a "
            "placeholder. For auth_request, point nginx at /oauth2/auth (docs/login.rst, "
            "The gateway's endpoints)."
        )
    route.add("upstream", root, "upstreams")
    if paths:
        route.note("The path stays as it is: /api/x goes to <upstream>/api/x, as in oauth2-proxy.")
        route.add("paths", paths)


def _session(cfg: _Options, report: Report, options: ImportOptions, tls: bool) -> Block:
    session = Block()
    store = str(cfg.get("session_store_type", "cookie"))
    if store == "redis":
        session.add("store", "redis", "session_store_type")
        _redis(cfg, report, options, session)
    else:
        session.add(
            "store", "cookie", "session_store_type" if cfg.given("session_store_type") else None
        )
        for option in (
            "redis_connection_url",
            "redis_password",
            "redis_use_sentinel",
            "redis_use_cluster",
        ):
            if cfg.given(option):
                cfg.skip(report, option, 'used only with session_store_type = "redis"')
    secret = cfg.get("cookie_secret")
    key = session_key_from(str(secret)) if secret and options.keep_secrets else None
    if key:
        session.add("keys", [key], "cookie_secret (--keep-secrets)")
    else:
        if secret and session_key_from(str(secret)):
            why = (
                "cookie_secret is 32 bytes, so it could serve as a session key "
                "(--keep-secrets copies it), but a new key is better: openssl rand -base64 32"
            )
        elif secret:
            why = (
                "cookie_secret cannot serve: a session key is 32 random bytes in base64, "
                "oauth2-proxy's secret may be 16 or 24. Make one: openssl rand -base64 32"
            )
        else:
            why = "oauth2-proxy had no cookie_secret; make a key: openssl rand -base64 32"
        session.note(why)
        session.add(
            "keys",
            [
                report.secret(
                    ENV_SESSION_KEY, "a new session key: openssl rand -base64 32", key=True
                )
            ],
        )
    expire_text = str(cfg.get("cookie_expire", "168h"))
    try:
        expire = parse_go_duration(expire_text)
    except ValueError as error:
        cfg.skip(report, "cookie_expire", str(error))
        expire = 168 * 3600.0
    if expire == 0:
        cfg.skip(
            report,
            "cookie_expire",
            "a browser-session cookie; the gateway's sessions end after max_duration",
        )
        expire = 168 * 3600.0
    where = (
        "cookie_expire" if cfg.given("cookie_expire") else "oauth2-proxy's default cookie_expire"
    )
    session.add(
        "inactivity_timeout", duration_text(expire), "oauth2-proxy has no inactivity timeout"
    )
    session.add("max_duration", duration_text(expire), where)
    name = cfg.get("cookie_name")
    if name and name != "_oauth2_proxy":
        try:
            session.add("cookie_name", value_syntax.parse_route_name(str(name)), "cookie_name")
        except ValueError as error:
            cfg.skip(report, "cookie_name", str(error))
    domains = _strings(cfg.get("cookie_domains")) or _strings(cfg.get("cookie_domain"))
    if domains:
        session.add("cookie_domain", domains[0].lstrip("."), "cookie_domains / cookie_domain")
        if len(domains) > 1:
            session.note(f"Only the first cookie domain is used ({', '.join(domains[1:])} not).")
    if cfg.given("cookie_path") and cfg.get("cookie_path") != "/":
        session.add("cookie_path", str(cfg.get("cookie_path")), "cookie_path")
    same_site = str(cfg.get("cookie_samesite", "")).lower()
    session.add(
        "same_site",
        {"strict": "Strict", "none": "None"}.get(same_site, "Lax"),
        "cookie_samesite" if same_site else "cookie_samesite unset: browsers treat it as Lax",
    )
    if cfg.get("session_cookie_minimal"):
        session.add("minimal", True, "session_cookie_minimal")
    cookie_notes = {
        "cookie_secure": "cookies are Secure on TLS listeners, by themselves"
        + (" (this one is TLS: they will be)" if tls else " (this listener is plain HTTP)"),
        "cookie_httponly": "session cookies are always HttpOnly",
        "cookie_csrf_per_request": "the gateway always keeps one flow cookie per login",
    }
    for option, note in cookie_notes.items():
        if cfg.given(option):
            session.note(f"{cfg.show(option)}: {note}.")
            cfg.get(option)
    return session


def _with_password(
    url: str, password: Any, report: Report, options: ImportOptions
) -> tuple[str, bool]:
    """``url`` with the Redis password (its own or ``redis_password``) as a reference,
    or kept with --keep-secrets; and whether it has one."""
    match = re.match(r"\A(rediss?://)(?:([^:@/]*):([^@/]*)@)?(.*)\Z", url)
    if not (match and (match.group(3) or password)):
        return url, False
    scheme, user, inline, rest = match.groups()
    if options.keep_secrets:
        from urllib.parse import quote

        secret = inline or quote(str(password), safe="")
    else:
        secret = report.secret(ENV_REDIS_PASSWORD, "the Redis password (URL-encoded)")
    # oauth2-proxy expands no ${...}: every part is literal but the reference.
    return config_text(f"{scheme}{user or ''}:", secret, f"@{rest}"), True


def _redis(cfg: _Options, report: Report, options: ImportOptions, session: Block) -> None:
    url = cfg.get("redis_connection_url")
    password = cfg.get("redis_password")
    # How a URL's comment says where its password went.
    how = " (--keep-secrets)" if options.keep_secrets else ", password from the environment"
    if cfg.get("redis_use_cluster"):
        seeds = [
            _with_password(item, password, report, options)
            for item in _strings(cfg.get("redis_cluster_connection_urls"))
        ]
        comment = "redis_cluster_connection_urls"
        if any(secret for _, secret in seeds):
            comment += how
        session.add("cluster", [seed for seed, _ in seeds], comment)
        if url:
            cfg.skip(report, "redis_connection_url", "redis_use_cluster takes the cluster's URLs")
            url = None
    elif url:
        url, secret = _with_password(str(url), password, report, options)
        session.add("url", url, "redis_connection_url" + (how if secret else ""))
    if cfg.get("redis_use_sentinel"):
        sentinels = []
        for item in _strings(cfg.get("redis_sentinel_connection_urls")):
            _, host, port, _ = split_url(item)
            if host:
                sentinels.append(f"{host}:{port or 26379}")
        session.add("sentinels", sentinels, "redis_sentinel_connection_urls")
        session.add(
            "master_name",
            str(cfg.get("redis_sentinel_master_name", "")),
            "redis_sentinel_master_name",
        )
    if cfg.get("redis_ca_path"):
        session.add("redis_ca_file", str(cfg.get("redis_ca_path")), "redis_ca_path")
    if not url and not cfg.get("redis_use_sentinel") and not cfg.get("redis_use_cluster"):
        report.warnings.append('session_store_type = "redis" without redis_connection_url.')


def _headers(cfg: _Options, route: Block) -> Any:
    """``oauth2-proxy``, or the options form when an option differs from the preset's."""
    headers = Block()
    headers.add("preset", "oauth2-proxy")
    if cfg.get("pass_access_token"):
        headers.add("pass_access_token", True, "pass_access_token")
    if cfg.get("pass_authorization_header"):
        headers.add("pass_authorization_header", True, "pass_authorization_header")
        headers.note(
            "oauth2-proxy put the ID token in Authorization: Bearer; the gateway puts the "
            "access token there. An application that reads the ID token from it needs "
            "changing."
        )
    notes = {
        "pass_user_headers": "X-Forwarded-User, -Email, -Groups and -Preferred-Username are "
        "always sent (a header is left out when its claim is missing)",
        "pass_basic_auth": "no HTTP Basic credentials are sent; the X-Forwarded-* headers are",
        "set_xauthrequest": "/oauth2/auth always answers with X-Auth-Request-User, -Email, "
        "-Groups and -Preferred-Username (for nginx auth_request)",
        "skip_auth_strip_headers": "identity headers sent by clients are always removed",
    }
    simple = headers.keys == ["preset"]
    for option, note in notes.items():
        if cfg.given(option):
            (route if simple else headers).note(f"{cfg.show(option)}: {note}.")
            cfg.get(option)
    return "oauth2-proxy" if simple else headers


def _public_paths(cfg: _Options, report: Report) -> list[str]:
    public: list[str] = []
    for rule in _strings(cfg.get("skip_auth_routes")):
        method, equals, pattern = rule.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z]+", method):
            method, pattern = "", rule
        candidate = f"{method.upper()} ~ {pattern}".strip()
        if _regex_ok(pattern):
            public.append(candidate)
        else:
            report.skip(
                f"skip_auth_routes item {describe(rule)}", "not a Python regular expression"
            )
    for pattern in _strings(cfg.get("skip_auth_regex")):
        if _regex_ok(pattern):
            public.append(f"~ {pattern}")
        else:
            report.skip(
                f"skip_auth_regex item {describe(pattern)}", "not a Python regular expression"
            )
    if cfg.get("skip_auth_preflight"):
        public.append("OPTIONS /")
    return public


def _regex_ok(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _authorize(cfg: _Options, route: Block, scopes: list[str]) -> Block:
    authorize = Block()
    domains = _strings(cfg.get("email_domains"))
    if domains and "*" not in domains:
        cleaned = [domain.lstrip("@") for domain in domains]
        authorize.add("email_domains", cleaned, "email_domains")
        authorize.note(
            "The address must also be verified (email_verified: true), as oauth2-proxy "
            "required; a leading '.' (subdomains) is not understood here."
        )
    elif domains:
        route.note(
            f"{cfg.show('email_domains')}: anyone WSO2 signs in may pass (no authorize rule)."
        )
    groups = _strings(cfg.get("allowed_groups"))
    if groups:
        authorize.add("groups", groups, "allowed_groups")
        if "groups" not in scopes:
            authorize.note(
                "WSO2 sends the groups claim only with the groups scope: add it to scopes."
            )
    roles = _strings(cfg.get("allowed_roles"))
    if roles:
        authorize.add("roles", roles, "allowed_roles")
    return authorize
