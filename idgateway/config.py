"""Load and check the gateway's YAML configuration into ``idgateway.model`` values.

The file is composed (not constructed) with PyYAML so every value keeps its line,
then walked by a small schema engine: a mapping is a tuple of ``Field`` specs and
each converter turns one node into a value or records a ``Problem`` and returns
INVALID. Checking goes on after a problem so that one ``ConfigError`` reports
them all: nothing starts on a bad file, and the operator fixes it in one pass.
A new block is new specs plus a builder; the engine does not change.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Mapping
from typing import Any

import attrs
import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from idgateway import units
from idgateway.config_auth import (
    AUTHORIZE_FIELDS,
    ROUTE_AUTH_FIELDS,
    build_providers,
    build_route_auth,
    build_top_redis,
)
from idgateway.config_auth import workers as config_workers
from idgateway.model import (
    AuthorizeRules,
    CertificatePair,
    Config,
    Listener,
    LoggingSettings,
    PathRoute,
    PathRules,
    ProviderSettings,
    ReloadSettings,
    Route,
    TLSSettings,
    Upstream,
)
from idgateway.schema import (  # noqa: F401  (re-exported: callers import them from here)
    CONFIG_FILE_LIMIT,
    INVALID,
    PEM_FILE_LIMIT,
    YAML_NODE_BUDGET,
    ConfigError,
    Field,
    FileTooOdd,
    Problem,
    Reader,
    Section,
    _describe,
    _Invalid,
    _reason,
    boolean,
    duration,
    expanded_size,
    file_path,
    hide_references,
    integer,
    list_of,
    loose_permissions,
    mapping,
    parsed,
    read_bounded,
    read_section,
    section,
    size,
)

# Certificates this close to expiry earn a warning at start and on --check.
EXPIRY_WARNING_DAYS = 14


# ---- certificates -----------------------------------------------------------------------


def read_certificates(path: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file, leaf first; OSError or ValueError if none."""
    return x509.load_pem_x509_certificates(read_bounded(path, PEM_FILE_LIMIT))


def _certificates(reader: Reader, node: yaml.Node, key: str, path: str) -> Any:
    try:
        return read_certificates(path)
    except (OSError, FileTooOdd) as error:
        return reader.problem(node, key, _reason(error))
    except ValueError:
        return reader.problem(node, key, f"{path} is not PEM (-----BEGIN CERTIFICATE-----)")


def _pem_bundle(reader: Reader, node: yaml.Node, key: str) -> str | _Invalid:
    path = file_path("a PEM file of CA certificates")(reader, node, key)
    if path is INVALID or _certificates(reader, node, key, path) is INVALID:
        return INVALID
    return path  # type: ignore[no-any-return]


def _private_key(reader: Reader, node: yaml.Node, key: str, path: str) -> Any:
    try:
        pem = read_bounded(path, PEM_FILE_LIMIT)
    except (OSError, FileTooOdd) as error:
        return reader.problem(node, key, _reason(error))
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        return reader.problem(node, key, f"{path} is encrypted; give an unencrypted PEM key")
    except (ValueError, UnsupportedAlgorithm):
        return reader.problem(
            node, key, f"{path} is not a PEM private key (-----BEGIN ...KEY-----)"
        )


def _public_der(key: Any) -> bytes:
    encoding, public_format = serialization.Encoding.DER, serialization.PublicFormat
    return bytes(key.public_key().public_bytes(encoding, public_format.SubjectPublicKeyInfo))


def certificate_label(path: str, certificate: x509.Certificate) -> str:
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = f"CN={common[0].value!s}" if common else certificate.subject.rfc4514_string()
    return f"certificate {path} ({subject or 'no subject'})"


def certificate_hostnames(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS SANs that clients check, else the subject CN of an old-style certificate."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return tuple(name.lower() for name in names.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(attribute.value).lower() for attribute in common)


def _build_certificate_pair(reader: Reader, found: Section) -> CertificatePair | _Invalid:
    cert, key = found.values["cert"], found.values["key"]
    chain = _certificates(reader, found.nodes["cert"], found.child("cert"), cert)
    private_key = _private_key(reader, found.nodes["key"], found.child("key"), key)
    if chain is INVALID or private_key is INVALID:
        return INVALID
    label = certificate_label(cert, chain[0])
    if _public_der(private_key) != _public_der(chain[0]):
        message = f"{key} does not match {label}; give the key the certificate was issued for"
        return reader.problem(found.nodes["key"], found.child("key"), message)
    expires = chain[0].not_valid_after_utc
    if expires < datetime.datetime.now(datetime.UTC):
        reader.warnings.append(f"{label} expired on {expires:%Y-%m-%d}")
    elif expires < datetime.datetime.now(datetime.UTC) + datetime.timedelta(EXPIRY_WARNING_DAYS):
        reader.warnings.append(f"{label} expires soon, on {expires:%Y-%m-%d}")
    hostnames = certificate_hostnames(chain[0])
    if not hostnames:
        reader.warnings.append(f"{label} names no host (no DNS SAN, no CN)")
    return CertificatePair(cert=cert, key=key, hostnames=hostnames)


# ---- builders ---------------------------------------------------------------------------


def _build_listener(reader: Reader, found: Section) -> Listener:
    host, port = found.values["address"]
    values = found.values
    return Listener(
        host=host,
        port=port,
        tls=values["tls"],
        client_header_timeout=values["client_header_timeout"],
        client_body_timeout=values["client_body_timeout"],
        client_send_timeout=values["client_send_timeout"],
        max_connections=values["max_connections"],
    )


def _hsts(reader: Reader, node: yaml.Node, key: str) -> tuple[int | None, bool] | _Invalid:
    """false/absent: no header; true: the defaults; or {max_age, include_subdomains}."""
    switch = reader.value(node, key) if isinstance(node, yaml.ScalarNode) else {}
    if switch is INVALID or switch is None or isinstance(switch, bool):
        return INVALID if switch is INVALID else (365 * 86400 if switch else None, False)
    expected = "false, true or a mapping like {max_age: 365d, include_subdomains: false}"
    found = read_section(reader, node, key, HSTS_FIELDS, expected)
    if found is INVALID or not found.valid:
        return INVALID
    return round(found.values["max_age"]), found.values["include_subdomains"]


def _build_route(
    reader: Reader, found: Section, providers: tuple[ProviderSettings, ...] | _Invalid = ()
) -> Route | _Invalid:
    values = found.values
    auth = build_route_auth(reader, found, providers)
    subs: tuple[Section, ...] = values["paths"]
    if not all(sub.valid for sub in subs):
        return INVALID
    pool_size, route_ca = values["upstream_pool_size"], values["upstream_ca_file"]
    problems_before = len(reader.problems)

    def check_ca_file(where: Section, kinds: set[str]) -> None:
        if where.values["upstream_ca_file"] is not None and "https" not in kinds:
            message = (
                f"only used with https:// upstreams, and {where.values['upstream'].url} is not one"
            )
            reader.problem(
                where.nodes["upstream_ca_file"], where.child("upstream_ca_file"), message
            )

    # A route's CA file also serves its https path upstreams.
    check_ca_file(found, {each.values["upstream"].kind for each in (found, *subs)})
    for sub in subs:
        check_ca_file(sub, {sub.values["upstream"].kind})

    def upstream_of(where: Section, ca_file: str | None) -> Any:
        upstream = where.values["upstream"]
        ca_file = ca_file if upstream.kind == "https" else None
        return attrs.evolve(upstream, pool_size=pool_size, ca_file=ca_file)

    paths: list[PathRoute] = []
    for sub in subs:
        prefix = sub.values["prefix"]
        if any(path.prefix == prefix for path in paths):
            reader.problem(sub.nodes["prefix"], sub.child("prefix"), f"{prefix!r} is listed twice")
        paths.append(
            PathRoute(
                prefix,
                upstream_of(sub, sub.values["upstream_ca_file"] or route_ca),
                authorize=sub.values["authorize"],
            )
        )
    if auth is None:
        for sub in subs:
            if sub.values["authorize"] is not None:
                reader.problem(
                    sub.nodes["authorize"],
                    sub.child("authorize"),
                    "'authorize' only applies on a route with an 'oidc' block",
                )
    if len(reader.problems) > problems_before or auth is INVALID:
        return INVALID
    hsts_max_age, hsts_include_subdomains = values["hsts"]
    same_names = {name: values[name] for name in _ROUTE_ATTRIBUTES if name in values}
    return Route(
        **same_names,
        upstream=upstream_of(found, route_ca),
        paths=tuple(paths),
        hsts_max_age=hsts_max_age,
        hsts_include_subdomains=hsts_include_subdomains,
        auth=auth,
    )


def _check_routes_together(reader: Reader, routes: tuple[Section, ...]) -> None:
    """Unique names, one default at most, each host on one route: over the valid parts."""
    names: dict[str, int] = {}
    default_route: str | None = None
    host_owners: dict[str, str] = {}
    for index, found in enumerate(routes):
        name, is_default, hosts = (found.values[key] for key in ("name", "default", "hosts"))
        label = f"route {name!r}" if isinstance(name, str) else f"routes[{index}]"
        if isinstance(name, str) and name in names:
            message = f"route name {name!r} is already used on line {names[name]}; names are unique"
            reader.problem(found.nodes["name"], found.child("name"), message)
        elif isinstance(name, str):
            names[name] = found.line("name")
        if is_default is True and default_route is not None:
            message = f"only one route may be default: true, and {default_route} already is"
            reader.problem(found.nodes["default"], found.child("default"), message)
        elif is_default is True:
            default_route = f"{label} (line {found.line('default')})"
        if hosts == () and is_default is False:
            message = "a route without hosts must be default: true; add hosts: [app1.example.com]"
            reader.problem(found.node, found.child("hosts"), message)
        for position, host in enumerate(() if hosts is INVALID else hosts):
            host_node = found.nodes["hosts"].value[position]
            here = f"{label} (line {host_node.start_mark.line + 1})"
            if host in host_owners:
                message = f"host {host!r} is on both {host_owners[host]} and {here}; a host may"
                reader.problem(
                    host_node, f"{found.child('hosts')}[{position}]", f"{message} be on one route"
                )
            host_owners.setdefault(host, here)


def _build_config(reader: Reader, found: Section) -> Config | _Invalid:
    listeners = found.values["listeners"]
    addresses: dict[tuple[str, int], int] = {}
    for index, node in enumerate(() if listeners is INVALID else found.nodes["listeners"].value):
        where, line = (listeners[index].host, listeners[index].port), node.start_mark.line + 1
        if where in addresses:
            message = f"{listeners[index].address} is already used on line {addresses[where]}"
            reader.problem(node, f"listeners[{index}].address", message)
        addresses.setdefault(where, line)
    routes: list[Route | _Invalid] = []
    if found.values["routes"] is not INVALID:
        _check_routes_together(reader, found.values["routes"])
        providers = found.values["providers"]
        routes = [
            _build_route(reader, r, providers) if r.valid else INVALID
            for r in found.values["routes"]
        ]
    admin = found.values["admin"]
    if isinstance(admin, tuple) and not _is_loopback(admin[0]):
        reader.warnings.append(
            f"admin.address {admin[0]}:{admin[1]} is not a loopback address: /status, /metrics "
            "and /readyz answer anyone who can reach it (routes, providers, users' activity); "
            "bind it to 127.0.0.1 or restrict it with a firewall"
        )
    if reader.problems or not found.valid:
        return INVALID
    return Config(
        source=os.path.abspath(reader.file),
        listeners=listeners,
        routes=tuple(routes),  # type: ignore[arg-type]  # no problems, so no INVALID
        trusted_proxies=found.values["trusted_proxies"],
        warnings=tuple(units.mask_credentials(warning) for warning in reader.warnings),
        providers=found.values["providers"],
        workers=found.values["workers"],
        redis=found.values["redis"],
        admin=found.values["admin"],
        logging=found.values["logging"],
        reload=found.values["reload"],
        client_header_timeout=found.values["client_header_timeout"],
        client_body_timeout=found.values["client_body_timeout"],
        client_send_timeout=found.values["client_send_timeout"],
    )


# ---- the schema: defaults come from the model, so they are written once -----------------


def _pass_or_refuse(value: str) -> str:
    if value not in ("refuse", "pass"):
        raise ValueError(f"{value!r} is not refuse or pass")
    return value


def _default(cls: type, name: str) -> Any:
    return getattr(attrs.fields(cls), name).default


# Route fields whose YAML key is the model's attribute name are passed straight through.
_ROUTE_ATTRIBUTES = {field.name for field in attrs.fields(Route)} - {"upstream", "paths", "auth"}
_UPSTREAM = parsed(units.parse_upstream_url, f"an upstream URL ({units.UPSTREAM_FORMS})")
_PAIR = "{cert: /etc/idgateway/app1.pem, key: /etc/idgateway/app1.key}"
_ROUTE = "{name: app1, hosts: [app1.example.com], upstream: http://127.0.0.1:3000}"
_PATH = "{prefix: /api/, upstream: http://127.0.0.1:3001}"
_HOST = parsed(units.parse_host_pattern, "a host name, e.g. app1.example.com")

CERTIFICATE_FIELDS = (
    Field("cert", file_path("a PEM certificate file"), required=True, example="cert: app1.pem"),
    Field("key", file_path("a PEM private key file"), required=True, example="key: app1.key"),
)
_PAIRS = list_of(
    mapping(CERTIFICATE_FIELDS, f"a mapping like {_PAIR}", _build_certificate_pair),
    f"a list of {{cert, key}} mappings, e.g. [{_PAIR}]",
    min_items=1,
)
TLS_FIELDS = (
    Field("certificates", _PAIRS, required=True, example=f"certificates: [{_PAIR}]"),
    Field(
        "min_version",
        parsed(units.parse_tls_version, 'a TLS version, "1.2" or "1.3"'),
        default=_default(TLSSettings, "min_version"),
    ),
    Field("ciphers", parsed(units.parse_ciphers, "an OpenSSL cipher list, e.g. ECDHE+AESGCM")),
)
_LISTEN = parsed(units.parse_listen_address, "a listen address, e.g. 127.0.0.1:8080")
LISTENER_FIELDS = (
    Field("address", _LISTEN, required=True, example="address: 127.0.0.1:8080"),
    Field(
        "tls",
        mapping(
            TLS_FIELDS,
            f"a mapping like {{certificates: [{_PAIR}]}}",
            lambda _, found: TLSSettings(**found.values),
        ),
    ),
    # No default: absent means the top-level value (or, for max_connections,
    # the share of the file-descriptor limit), decided where it is used.
    Field("client_header_timeout", duration()),
    Field("client_body_timeout", duration()),
    Field("client_send_timeout", duration()),
    Field("max_connections", integer(1, 10000)),
)
HSTS_FIELDS = (
    Field("max_age", duration(allow_zero=True), default=365 * 86400.0),
    Field("include_subdomains", boolean, default=False),
)
PATH_FIELDS = (
    Field(
        "prefix",
        parsed(units.parse_path_prefix, "a path, e.g. /api/"),
        True,
        example="prefix: /api/",
    ),
    Field("upstream", _UPSTREAM, required=True, example="upstream: http://127.0.0.1:3001"),
    Field("upstream_ca_file", _pem_bundle),
    Field(
        "authorize",
        mapping(
            AUTHORIZE_FIELDS,
            "a mapping like {groups: [admins]}",
            lambda _, found: AuthorizeRules(**found.values),
        ),
    ),
)
_PASS_OR_REFUSE = parsed(_pass_or_refuse, "refuse (the default) or pass")
PATH_RULES_FIELDS = (
    Field("encoded_slashes", _PASS_OR_REFUSE, default=_default(PathRules, "encoded_slashes")),
    Field("backslashes", _PASS_OR_REFUSE, default=_default(PathRules, "backslashes")),
)
_PATHS = list_of(section(PATH_FIELDS, f"a mapping like {_PATH}"), f"a list like [{_PATH}]")
ROUTE_FIELDS = (
    Field("name", parsed(units.parse_route_name, "a name, e.g. app1"), True, example="name: app1"),
    Field("hosts", list_of(_HOST, "a list of strings, e.g. [app1.example.com]"), default=()),
    Field("default", boolean, default=False),
    Field("upstream", _UPSTREAM, required=True, example="upstream: http://127.0.0.1:3000"),
    Field("upstream_ca_file", _pem_bundle),
    Field("upstream_pool_size", integer(1, 64), default=_default(Upstream, "pool_size")),
    Field("paths", _PATHS, default=()),
    Field("preserve_host", boolean, default=_default(Route, "preserve_host")),
    Field("connect_timeout", duration(), default=_default(Route, "connect_timeout")),
    Field("response_timeout", duration(), default=_default(Route, "response_timeout")),
    Field("idle_timeout", duration(), default=_default(Route, "idle_timeout")),
    Field("max_body_size", size(zero_is_unlimited=True), default=_default(Route, "max_body_size")),
    Field("max_header_size", size(), default=_default(Route, "max_header_size")),
    Field("https_redirect", boolean, default=_default(Route, "https_redirect")),
    Field("hsts", _hsts, default=(None, False)),
    Field(
        "path_rules",
        mapping(
            PATH_RULES_FIELDS,
            "a mapping like {encoded_slashes: pass, backslashes: refuse}",
            lambda _, found: PathRules(**found.values),
        ),
        default=PathRules(),
    ),
    Field(
        "case_insensitive_paths",
        boolean,
        default=_default(Route, "case_insensitive_paths"),
    ),
    Field("max_websockets", integer(0, 1024), default=_default(Route, "max_websockets")),
    Field("websocket_idle_timeout", duration(), default=_default(Route, "websocket_idle_timeout")),
    *ROUTE_AUTH_FIELDS,
)
_LISTENERS = list_of(
    mapping(LISTENER_FIELDS, "a mapping like {address: 127.0.0.1:8080}", _build_listener),
    "a list like [{address: 127.0.0.1:8080}]",
    min_items=1,
)


def _choice(choices: tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
        return value

    return parsed(check, " or ".join(choices))


LOGGING_FIELDS = (
    Field("access_log", boolean, default=_default(LoggingSettings, "access_log")),
    Field("format", _choice(("text", "json")), default=_default(LoggingSettings, "format")),
    Field(
        "user_id", _choice(("plain", "hash", "none")), default=_default(LoggingSettings, "user_id")
    ),
)
# A shorter interval would only burn CPU: editors and deploy tools take longer
# than that to write a file.
MIN_WATCH_INTERVAL = 0.1


def _watch_interval(text: str) -> float:
    seconds = units.parse_duration(text)
    if seconds < MIN_WATCH_INTERVAL:
        raise ValueError(f"must be at least 100ms, e.g. 2s; got {text!r}")
    return seconds


RELOAD_FIELDS = (
    Field("watch", boolean, default=_default(ReloadSettings, "watch")),
    Field(
        "interval",
        parsed(_watch_interval, "a duration of at least 100ms, e.g. 2s"),
        default=_default(ReloadSettings, "interval"),
    ),
)
_NETWORKS = list_of(
    parsed(units.parse_network, "an IP address or network, e.g. 10.0.0.0/8"),
    "a list of IP addresses or networks, e.g. [10.0.0.0/8, 192.0.2.7]",
)
TOP_FIELDS = (
    Field("listeners", _LISTENERS, required=True, example="listeners: [{address: 127.0.0.1:8080}]"),
    Field(
        "routes",
        list_of(section(ROUTE_FIELDS, f"a mapping like {_ROUTE}"), f"a list like [{_ROUTE}]", 1),
        required=True,
        example=f"routes: [{_ROUTE}]",
    ),
    Field("trusted_proxies", _NETWORKS, default=()),
    Field("providers", build_providers, default=()),
    Field("workers", config_workers, default=1),
    Field("client_header_timeout", duration(), default=_default(Config, "client_header_timeout")),
    Field("client_body_timeout", duration(), default=_default(Config, "client_body_timeout")),
    Field("client_send_timeout", duration(), default=_default(Config, "client_send_timeout")),
    Field("redis", build_top_redis),
    Field(
        "admin",
        mapping(
            (Field("address", _LISTEN, default=("127.0.0.1", 9901)),),
            "a mapping like {address: 127.0.0.1:9901}",
            lambda _, found: found.values["address"],
        ),
    ),
    Field(
        "logging",
        mapping(
            LOGGING_FIELDS,
            "a mapping like {access_log: true, format: json, user_id: hash}",
            lambda _, found: LoggingSettings(**found.values),
        ),
        default=LoggingSettings(),
    ),
    Field(
        "reload",
        mapping(
            RELOAD_FIELDS,
            "a mapping like {watch: true, interval: 2s}",
            lambda _, found: ReloadSettings(**found.values),
        ),
        default=ReloadSettings(),
    ),
)


# ---- entry points -----------------------------------------------------------------------


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check ``path``; raise ConfigError listing every problem found."""
    reader = Reader(path, os.environ if environ is None else environ)
    root = _compose(reader)
    config: Config | _Invalid = INVALID
    if root is not INVALID:
        expected = "a mapping with 'listeners' and 'routes' at the top level"
        found = read_section(reader, root, "", TOP_FIELDS, expected)
        config = INVALID if found is INVALID else _build_config(reader, found)
    if config is INVALID:
        problems = list(dict.fromkeys(reader.problems))  # an aliased (*anchor) node reports once
        problems.sort(key=lambda problem: problem.line or 0)
        raise ConfigError(problems or [Problem(path, None, "", "invalid configuration")])
    return config


def _compose(reader: Reader) -> yaml.Node | _Invalid:
    try:
        text = hide_references(read_bounded(reader.file, CONFIG_FILE_LIMIT).decode("utf-8-sig"))
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (OSError, FileTooOdd) as error:
        return reader.problem(None, "", _reason(error))
    except RecursionError:
        return reader.problem(
            None, "", "the file nests lists or mappings too deeply (hundreds of levels)"
        )
    except UnicodeDecodeError as error:
        return reader.problem(None, "", f"not UTF-8 text (bad byte at offset {error.start})")
    except yaml.MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else None
        context = f" {error.context}" if error.context else ""
        message = f"YAML syntax error: {error.problem}{context}"
        reader.problems.append(Problem(reader.file, line, "", message))
        return INVALID
    except yaml.YAMLError as error:
        return reader.problem(None, "", f"YAML error: {error}")
    if root is None:
        return reader.problem(None, "", "the file is empty; it needs 'listeners' and 'routes'")
    if expanded_size(root, YAML_NODE_BUDGET) > YAML_NODE_BUDGET:
        return reader.problem(
            None,
            "",
            f"the file expands to more than {YAML_NODE_BUDGET} values through its anchors, "
            "aliases and merge keys (<<: *name); a gateway configuration needs far fewer: "
            "write the repeated parts out, or use fewer levels of aliases",
        )
    warning = loose_permissions(reader.file, secret=False)
    if warning:
        reader.warnings.append(warning)
    return root  # type: ignore[no-any-return]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def summarize(config: Config) -> str:
    """A one-screen account of what the configuration does, for ``--check``."""
    lines = [f"Configuration {config.source}", "Listeners:"]
    for listener in config.listeners:
        tls = listener.tls
        ciphers = f", ciphers {tls.ciphers}" if tls and tls.ciphers else ""
        kind = f"TLS {tls.min_version}+{ciphers}" if tls else "plain HTTP"
        lines.append(f"  {listener.address}  {kind}")
        for pair in tls.certificates if tls else ():
            names = ", ".join(pair.hostnames) or "(no host names)"
            lines.append(f"    {names}: {pair.cert}, {_expiry(pair.cert)}")
    lines.append("Routes:")
    for route in config.routes:
        hosts = ", ".join([*route.hosts, *(["(default)"] if route.default else [])])
        lines.append(f"  {route.name}: {hosts} -> {route.upstream.url}{_options(route)}")
        lines.extend(f"    {path.prefix} -> {path.upstream.url}" for path in route.paths)
    if config.trusted_proxies:
        lines.append("Trusted proxies: " + ", ".join(config.trusted_proxies))
    lines.append("Warnings:" if config.warnings else "No warnings.")
    lines.extend(f"  {warning}" for warning in config.warnings)
    return "\n".join(lines)


def _options(route: Route) -> str:
    options = [name for name in ("preserve_host", "https_redirect") if getattr(route, name)]
    if route.hsts_max_age is not None:
        subdomains = " +subdomains" if route.hsts_include_subdomains else ""
        options.append(f"hsts {units.format_duration(route.hsts_max_age)}{subdomains}")
    if route.max_body_size is None:
        options.append("no body limit")
    return f"  [{', '.join(options)}]" if options else ""


def _expiry(path: str) -> str:
    try:
        expires = read_certificates(path)[0].not_valid_after_utc
    except (OSError, ValueError):
        return "now unreadable"
    verb = "expired" if expires < datetime.datetime.now(datetime.UTC) else "expires"
    return f"{verb} {expires:%Y-%m-%d}"
