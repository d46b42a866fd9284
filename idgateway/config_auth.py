"""The login part of the configuration: providers, and each route's oidc, session,
headers, public_paths and authorize blocks."""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any

import yaml
from cryptography import x509

from idgateway import units
from idgateway.config_regex import compile_config_regex
from idgateway.forwarding import (
    ALWAYS_STRIPPED,
    FORWARDING_HEADERS,
    REQUEST_HOP_BY_HOP,
    header_key,
)
from idgateway.model import (
    AuthorizeRules,
    ClaimRule,
    ForwardAuthSettings,
    HeaderSettings,
    OIDCSettings,
    ProviderSettings,
    PublicPath,
    RedisSettings,
    RouteAuth,
    SessionSettings,
)
from idgateway.oidc.client import RESERVED_AUTHORIZE_PARAMETERS
from idgateway.oidc.transport import InsecureTransport, check_configured_url
from idgateway.schema import (
    INVALID,
    PEM_FILE_LIMIT,
    Field,
    FileTooOdd,
    Reader,
    Section,
    _describe,
    _Invalid,
    _reason,
    boolean,
    duration,
    file_path,
    integer,
    list_of,
    mapping,
    parsed,
    read_bounded,
    read_section,
)
from idgateway.sessions.redis_client import parse_redis_url

HEADER_PRESETS = ("oauth2-proxy", "mod_auth_openidc")
_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
# RFC 9110 section 5.6.2: a field name is a token.
_TOKEN = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_TOKEN_RULE = "letters, digits and !#$%&'*+-.^_`|~ only: no spaces, colons, CR or LF"
# Names an identity header must not take: they frame the message, or the
# gateway sets or strips them itself for every request.
_NOT_IDENTITY_HEADERS = (
    REQUEST_HOP_BY_HOP
    | FORWARDING_HEADERS
    | ALWAYS_STRIPPED
    | {b"x-request-id", b"x-forwarded-prefix", b"cookie"}
)


def _header_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as an identity header's name, or None."""
    if not _TOKEN.match(name):
        return f"{name!r} is not a valid header name ({_TOKEN_RULE}), e.g. X-Remote-User"
    if header_key(name.encode("ascii")) in _NOT_IDENTITY_HEADERS:
        return (
            f"{name!r} cannot be an identity header: the gateway sets or strips it "
            "itself; choose another name, e.g. X-Remote-User"
        )
    return None


def _header_name(value: str) -> str:
    problem = _header_name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _claim_prefix(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(
            f"{value!r} is not a valid header prefix ({_TOKEN_RULE}), e.g. OIDC_CLAIM_"
        )
    return value


def _list_delimiter(value: str) -> str:
    if not value:
        raise ValueError("must not be empty; expected a delimiter, e.g. ','")
    for char in value:
        if not " " <= char <= "~" or char.isalnum() or char == "%":
            raise ValueError(
                f"{value!r} is not a usable list delimiter: {char!r} is not allowed "
                "(printable ASCII punctuation or spaces only; no '%', letters or digits, "
                "which values would then have to encode), e.g. ','"
            )
    return value


def _text(expected: str) -> Any:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(f"must not be empty; expected {expected}")
        return value

    return parsed(check, expected)


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
        return value

    return parsed(check, " or ".join(choices))


def _https_url(value: str) -> str:
    url = value.strip()
    if not re.match(r"\Ahttps?://[^/\s]+", url):
        raise ValueError(
            f"{value!r} is not an http(s) URL; e.g. https://localhost:9443/oauth2/token"
        )
    return url


def _session_key(value: str) -> str:
    """A key is 32 random bytes as base64: what `openssl rand -base64 32` prints."""
    text = value.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64; make a key with: openssl rand -base64 32") from None
    if len(raw) != 32:
        raise ValueError(
            f"decodes to {len(raw)} bytes, not 32; make a key with: openssl rand -base64 32"
        )
    return text


def _public_path(value: str) -> PublicPath:
    """ "/healthz", "GET /static/", "~ ^/assets/.*[.]css$" or "GET ~ ^/x" """
    parts = value.split(None, 1)
    method: str | None = None
    if len(parts) == 2 and parts[0].upper() in _HTTP_METHODS:
        method, rest = parts[0].upper(), parts[1].strip()
    else:
        rest = value.strip()
    if rest.startswith("~"):
        pattern = rest[1:].strip()
        compile_config_regex(pattern)  # a ValueError saying why RE2 refuses it
        return PublicPath(method=method, regex=pattern)
    if not rest.startswith("/"):
        raise ValueError(
            f"{value!r} is not a public path; expected '/healthz', 'GET /static/' "
            "or '~ ^/assets/' (a regex)"
        )
    return PublicPath(method=method, prefix=units.canonical_prefix(rest))


def _redirect_path(value: str) -> str:
    if not value.startswith("/") or value.startswith("//"):
        raise ValueError(f"{value!r} must be a path on the route's host, e.g. /oauth2/callback")
    return value


_COOKIE_DOMAIN = re.compile(
    r"\A\.?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z"
)
# A cookie path is sent in Set-Cookie as is: no ";" (it would start another
# attribute), no spaces or controls, ASCII only.
_COOKIE_PATH = re.compile(r"\A/[!-:<-~]*\Z")


def _cookie_domain(value: str) -> str:
    domain = value.strip().lower()
    if not _COOKIE_DOMAIN.match(domain):
        raise ValueError(
            f"{value!r} is not a domain for a cookie: letters, digits, '-' and dots, "
            "no port, e.g. example.com"
        )
    return domain.lstrip(".")


def _cookie_path(value: str) -> str:
    path = _redirect_path(value)
    if not _COOKIE_PATH.match(path):
        raise ValueError(
            f"{value!r} is not a cookie path: printable ASCII starting with /, "
            "without ';' or spaces, e.g. /"
        )
    return path


def cookie_domain_covers(domain: str, host: str) -> bool:
    """Whether a browser would send a cookie for ``domain`` to ``host`` (RFC 6265 5.1.3)."""
    name = host[2:] if host.startswith("*.") else host
    return name == domain or name.endswith("." + domain)


def _request_path(value: str) -> str:
    """A path matched against request paths: in their canonical form."""
    return units.canonical_prefix(_redirect_path(value))


def _extra_params(reader: Reader, node: yaml.Node, key: str) -> Any:
    if not isinstance(node, yaml.MappingNode):
        return reader.problem(
            node, key, f"expected a mapping like {{prompt: login}}; got {_describe(node)}"
        )
    pairs: list[tuple[str, str]] = []
    reserved = RESERVED_AUTHORIZE_PARAMETERS
    for key_node, value_node in node.value:
        name = str(key_node.value)
        if name in reserved:
            reader.problem(key_node, f"{key}.{name}", f"{name!r} is set by the gateway itself")
            continue
        value = reader.text(value_node, f"{key}.{name}", "a string")
        if value is not INVALID:
            pairs.append((name, value))
    return tuple(pairs)


def _headers(reader: Reader, node: yaml.Node, key: str) -> HeaderSettings | _Invalid:
    """A preset name, or {preset: ..., options}, or a custom {Header-Name: claim} mapping."""
    if isinstance(node, yaml.ScalarNode):
        preset = reader.text(node, key, "oauth2-proxy, mod_auth_openidc or a mapping")
        if preset is INVALID:
            return INVALID
        if preset not in HEADER_PRESETS:
            return reader.problem(
                node,
                key,
                f"unknown header preset {preset!r}; use oauth2-proxy, mod_auth_openidc, "
                "or a mapping like {X-User: username}",
            )
        return HeaderSettings(preset=preset)
    if not isinstance(node, yaml.MappingNode):
        return reader.problem(
            node, key, f"expected a preset name or a mapping; got {_describe(node)}"
        )
    names = {str(k.value) for k, _ in node.value}
    if "preset" in names:
        found = read_section(reader, node, key, HEADER_OPTION_FIELDS, "header options")
        if found is INVALID or not found.valid:
            return INVALID
        return HeaderSettings(**found.values)
    pairs: list[tuple[str, str]] = []
    for key_node, value_node in node.value:
        header = str(key_node.value)
        child = f"{key}.{header}"
        problem = _header_name_problem(header)
        if problem is not None:
            reader.problem(key_node, child, problem)
            continue
        claim = reader.text(value_node, child, "a claim name, e.g. username")
        if claim is not INVALID:
            pairs.append((header, claim))
    return HeaderSettings(preset="custom", mapping=tuple(pairs))


def _claim_rules(reader: Reader, node: yaml.Node, key: str) -> Any:
    if not isinstance(node, yaml.MappingNode):
        return reader.problem(
            node, key, f"expected a mapping like {{department: sales}}; got {_describe(node)}"
        )
    rules: list[ClaimRule] = []
    for key_node, value_node in node.value:
        claim = str(key_node.value)
        value = reader.text(value_node, f"{key}.{claim}", "a value, or '~ regex'")
        if value is INVALID:
            continue
        if value.startswith("~"):
            pattern = value[1:].strip()
            try:
                compile_config_regex(pattern)
            except ValueError as error:
                reader.problem(value_node, f"{key}.{claim}", str(error))
                continue
            rules.append(ClaimRule(claim, pattern, regex=True))
        else:
            rules.append(ClaimRule(claim, value))
    return tuple(rules)


def _ca_bundle(reader: Reader, node: yaml.Node, key: str) -> str | _Invalid:
    """A readable PEM file with at least one certificate (WSO2's exported wso2carbon.pem)."""
    path = file_path("a PEM file of CA certificates")(reader, node, key)
    if path is INVALID:
        return INVALID
    try:
        x509.load_pem_x509_certificates(read_bounded(path, PEM_FILE_LIMIT))
    except (OSError, FileTooOdd) as error:
        return reader.problem(node, key, _reason(error))
    except ValueError:
        return reader.problem(node, key, f"{path} is not PEM (-----BEGIN CERTIFICATE-----)")
    return path  # type: ignore[no-any-return]


_STRINGS = list_of(_text("a string"), "a list of strings")

PROVIDER_FIELDS = (
    Field("discovery_url", parsed(_https_url, "a URL")),
    Field("issuer", parsed(_https_url, "a URL")),
    Field("ca_file", _ca_bundle),
    Field("insecure_skip_verify", boolean, default=False),
    Field("insecure_http", boolean, default=False),
)

OIDC_FIELDS = (
    Field("provider", _text("a provider name"), required=True, example="provider: wso2"),
    Field("client_id", _text("a client id"), required=True, example="client_id: my-app"),
    Field(
        "client_secret",
        _text("a client secret"),
        required=True,
        secret=True,
        example="client_secret: ${APP1_CLIENT_SECRET}",
    ),
    Field(
        "client_auth",
        _one_of(("client_secret_basic", "client_secret_post")),
        default="client_secret_basic",
    ),
    Field("scopes", _STRINGS, default=("openid", "email", "profile")),
    Field("extra_params", _extra_params, default=()),
    Field("redirect_path", parsed(_request_path, "a path"), default="/oauth2/callback"),
    Field("user_claim", _text("a claim name"), default="sub"),
    Field("email_claim", _text("a claim name"), default="email"),
    Field("groups_claim", _text("a claim name"), default="groups"),
    Field("userinfo", boolean, default=False),
    Field("post_logout_redirect", _text("a path or URL"), default="/"),
    Field("allowed_redirects", list_of(parsed(_https_url, "a URL"), "a list of URLs"), default=()),
    Field("api_paths", list_of(parsed(_request_path, "a path"), "a list of paths"), default=()),
    Field("frontchannel_logout", boolean, default=False),
)


def _redis_url(value: str) -> str:
    """redis://[:password@]host[:port][/db], rediss://..., unix:/path.sock[?db=N]."""
    parse_redis_url(value)  # its ValueError names the problem without the password
    return value


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port, e.g. 10.0.0.5:26379")
    return host.strip("[]"), int(port)


REDIS_FIELDS = (
    Field("url", parsed(_redis_url, "a Redis URL")),
    Field(
        "sentinels",
        list_of(parsed(_host_port, "host:port"), "a list like [10.0.0.5:26379]"),
        default=(),
    ),
    Field("master_name", _text("a Sentinel master name")),
    Field("redis_ca_file", file_path("a PEM file of CA certificates")),
    Field("pool_size", integer(1, 10), default=10),
    Field("connect_timeout", duration(), default=2.0),
    Field("command_timeout", duration(), default=1.0),
)
_REDIS_NAMES = tuple(field.name for field in REDIS_FIELDS)


def redis_settings(reader: Reader, found: Section, where: str) -> RedisSettings | None | _Invalid:
    """RedisSettings from the redis keys of a section, or None when none are given."""
    values: dict[str, Any] = {name: found.values.get(name) for name in _REDIS_NAMES}
    if all(values[name] in (None, ()) for name in ("url", "sentinels", "master_name")):
        return None
    if values["url"] is None and not (values["sentinels"] and values["master_name"]):
        return reader.problem(
            found.node,
            where,
            "give 'url' (e.g. redis://127.0.0.1:6379/0), or 'sentinels' and 'master_name'",
        )
    # With sentinels, a url may still be given: its password, database and TLS
    # apply to the master the sentinels name (its host is not used).
    if values["sentinels"] and not values["master_name"]:
        return reader.problem(found.node, where, "'sentinels' needs 'master_name'")
    return RedisSettings(
        url=values["url"],
        sentinels=values["sentinels"],
        master_name=values["master_name"],
        ca_file=values["redis_ca_file"],
        pool_size=values["pool_size"],
        connect_timeout=values["connect_timeout"],
        command_timeout=values["command_timeout"],
    )


def _build_session(reader: Reader, found: Section) -> SessionSettings | _Invalid:
    redis = redis_settings(reader, found, found.key)
    if redis is INVALID:
        return INVALID
    store = found.values["store"]
    if store == "redis" and redis is None:
        return reader.problem(
            found.node,
            found.child("url"),
            "store: redis needs 'url' (e.g. redis://:s3cret@127.0.0.1:6379/1) or sentinels",
        )
    if store == "cookie" and redis is not None:
        return reader.problem(
            found.node, found.child("url"), "'url' is only used with store: redis"
        )
    values = {k: v for k, v in found.values.items() if k not in _REDIS_NAMES}
    return SessionSettings(**values, redis=redis)


def build_top_redis(reader: Reader, node: yaml.Node, key: str) -> Any:
    found = read_section(reader, node, key, REDIS_FIELDS, "a mapping like {url: redis://...}")
    if found is INVALID or not found.valid:
        return INVALID
    settings = redis_settings(reader, found, key)
    return settings


def workers(reader: Reader, node: yaml.Node, key: str) -> Any:
    value = reader.value(node, key)
    if value == "auto":
        return os.cpu_count() or 1
    if type(value) is int and 1 <= value <= 256:
        return value
    if value is INVALID:
        return INVALID
    return reader.problem(
        node, key, f"expected auto or a number of processes from 1 to 256; got {_describe(node)}"
    )


SESSION_FIELDS = (
    Field("store", _one_of(("cookie", "redis")), default="cookie"),
    *REDIS_FIELDS,
    Field("keys", list_of(parsed(_session_key, "a base64 key"), "a list of keys", 1), default=()),
    Field("inactivity_timeout", duration(), default=3600.0),
    Field("max_duration", duration(), default=86400.0),
    Field("cookie_name", parsed(units.parse_route_name, "a cookie name")),
    Field("cookie_domain", parsed(_cookie_domain, "a domain, e.g. example.com")),
    Field("cookie_path", parsed(_cookie_path, "a path, e.g. /"), default="/"),
    Field("same_site", _one_of(("Lax", "Strict", "None")), default="Lax"),
    Field("refresh_leeway", duration(allow_zero=True), default=60.0),
    Field("minimal", boolean, default=False),
)

HEADER_OPTION_FIELDS = (
    Field("preset", _one_of(HEADER_PRESETS), required=True),
    Field("pass_access_token", boolean, default=False),
    Field("pass_authorization_header", boolean, default=False),
    Field("pass_id_token", boolean, default=False),
    Field("claim_prefix", parsed(_claim_prefix, "a header prefix"), default="OIDC_CLAIM_"),
    Field("list_delimiter", parsed(_list_delimiter, "a delimiter"), default=","),
    Field("remote_user_header", parsed(_header_name, "a header name"), default="X-Remote-User"),
)

FORWARD_AUTH_FIELDS = (Field("pass_tokens", boolean, default=False),)

AUTHORIZE_FIELDS = (
    Field("email_domains", _STRINGS, default=()),
    Field("groups", _STRINGS, default=()),
    Field("roles", _STRINGS, default=()),
    Field("claims", _claim_rules, default=()),
)

ROUTE_AUTH_FIELDS = (
    Field(
        "oidc",
        mapping(
            OIDC_FIELDS,
            "a mapping like {provider: wso2, client_id: app1, ...}",
            lambda _, found: OIDCSettings(**found.values),
        ),
    ),
    Field(
        "session",
        mapping(
            SESSION_FIELDS,
            "a mapping like {keys: [${APP1_SESSION_KEY}]}",
            _build_session,
        ),
    ),
    Field("headers", _headers, default=HeaderSettings()),
    Field(
        "public_paths",
        list_of(parsed(_public_path, "a path"), "a list like [/healthz, 'GET /static/']"),
        default=(),
    ),
    Field(
        "authorize",
        mapping(
            AUTHORIZE_FIELDS,
            "a mapping like {email_domains: [example.com]}",
            lambda _, found: AuthorizeRules(**found.values),
        ),
        default=AuthorizeRules(),
    ),
    Field(
        "forward_auth",
        mapping(
            FORWARD_AUTH_FIELDS,
            "a mapping like {pass_tokens: false}",
            lambda _, found: ForwardAuthSettings(**found.values),
        ),
        default=ForwardAuthSettings(),
    ),
)


def build_providers(reader: Reader, node: yaml.Node, key: str) -> Any:
    """``providers:`` — a mapping of name -> {discovery_url | issuer, ca_file, ...}."""
    if not isinstance(node, yaml.MappingNode):
        return reader.problem(
            node, key, f"expected a mapping like {{wso2: {{issuer: ...}}}}; got {_describe(node)}"
        )
    providers: list[ProviderSettings] = []
    for key_node, value_node in node.value:
        name = str(key_node.value)
        child = f"{key}.{name}"
        found = read_section(reader, value_node, child, PROVIDER_FIELDS, "a provider mapping")
        if found is INVALID or not found.valid:
            continue
        values = found.values
        if (values["discovery_url"] is None) == (values["issuer"] is None):
            reader.problem(
                value_node,
                child,
                "give exactly one of 'discovery_url' or 'issuer', e.g. "
                "issuer: https://localhost:9443/oauth2/token",
            )
            continue
        insecure = False
        for url_key in ("discovery_url", "issuer"):
            url = values[url_key]
            if url is None:
                continue
            try:
                warning = check_configured_url(url, insecure_http=values["insecure_http"])
            except InsecureTransport as error:
                reader.problem(found.nodes[url_key], f"{child}.{url_key}", str(error))
                insecure = True
                continue
            if warning is not None:
                reader.warnings.append(f"provider {name!r}: {warning}")
        if insecure:
            continue
        if values["insecure_http"] and not any(
            (values[k] or "").startswith("http://") for k in ("discovery_url", "issuer")
        ):
            reader.warnings.append(
                f"provider {name!r}: insecure_http is on: endpoints its discovery document "
                "advertises may be plain HTTP, so tokens may cross the network unencrypted"
            )
        if values["insecure_skip_verify"]:
            reader.warnings.append(
                f"provider {name!r}: insecure_skip_verify is on: the provider's TLS certificate "
                "is NOT checked; anyone on the network path can impersonate it"
            )
        for url_key in ("discovery_url", "issuer"):
            url = values.get(url_key)
            if url and "@" in url.split("://", 1)[-1].split("/", 1)[0]:
                reader.warnings.append(
                    f"provider {name!r}: {url_key} {units.mask_credentials(url)} carries "
                    "credentials, which the gateway does not send; remove them (they are "
                    "masked wherever the URL is shown)"
                )
        providers.append(ProviderSettings(name=name, **values))
    return tuple(providers)


def build_route_auth(
    reader: Reader, found: Section, providers: tuple[ProviderSettings, ...] | _Invalid
) -> RouteAuth | None | _Invalid:
    """The route's RouteAuth from its oidc/session/... values, or None for open routes."""
    values = found.values
    oidc = values.get("oidc")
    names = ("session", "public_paths", "authorize", "forward_auth")
    if oidc is None:
        for name in names:
            if name in found.nodes:
                reader.problem(
                    found.nodes[name],
                    found.child(name),
                    f"'{name}' only applies to a route with an 'oidc' block",
                )
        return None
    if oidc is INVALID or any(values.get(n) is INVALID for n in (*names, "headers")):
        return INVALID
    known = {} if providers is INVALID else {p.name: p for p in providers}
    if providers is not INVALID and oidc.provider not in known:
        choices = ", ".join(known) or "none are defined under 'providers:'"
        return reader.problem(
            found.nodes["oidc"],
            found.child("oidc") + ".provider",
            f"unknown provider {oidc.provider!r}; known providers: {choices}",
        )
    if "openid" not in oidc.scopes:
        return reader.problem(
            found.nodes["oidc"], found.child("oidc") + ".scopes", "scopes must include 'openid'"
        )
    session = values.get("session") or SessionSettings()
    if session.cookie_domain is not None and isinstance(values.get("hosts"), tuple):
        outside = [h for h in values["hosts"] if not cookie_domain_covers(session.cookie_domain, h)]
        if outside:
            reader.warnings.append(
                f"route {values['name']!r}: session.cookie_domain {session.cookie_domain!r} "
                f"does not cover {', '.join(outside)}: browsers refuse the session cookie "
                "there, so logins on that host cannot finish"
            )
    if not session.keys:
        reader.warnings.append(
            f"route {values['name']!r}: no session keys configured; using a random key, so "
            "sessions end when the gateway restarts and are not shared between processes "
            "(set session.keys: [<openssl rand -base64 32>])"
        )
    return RouteAuth(
        oidc=oidc,
        session=session,
        headers=values["headers"],
        public_paths=values["public_paths"],
        authorize=values["authorize"],
        forward_auth=values["forward_auth"],
    )
