"""Load and check the gateway's YAML configuration into ``idgateway.config.model`` values.

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
from typing import TYPE_CHECKING, Any

import attrs
import yaml

from idgateway.config import values as value_syntax
from idgateway.config.assertion import ASSERTION_FIELD, ASSERTION_KEYS_FIELD, check_assertions
from idgateway.config.auth import (
    AUTHORIZE_FIELDS,
    PROVIDER_FIELDS,
    REDIS_FIELDS,
    ROUTE_AUTH_FIELDS,
    STEP_UP_FIELD,
    build_providers,
    build_route_auth,
    build_top_redis,
    check_provider_reference,
)
from idgateway.config.auth import workers as config_workers
from idgateway.config.bearer import build_route_bearer, check_scopes_need_bearer
from idgateway.config.files import (
    CONFIG_FILE_LIMIT,
    PEM_FILE_LIMIT,
    FileTooOdd,
    loose_permissions,
    read_bounded,
    read_problem,
)
from idgateway.config.http2 import HTTP2_FIELD, LISTENER_HTTP2_FIELD, check_listener_http2
from idgateway.config.model import (
    AuthorizeRules,
    CertificatePair,
    Config,
    Listener,
    LoggingSettings,
    OIDCSettings,
    PathRoute,
    PathRules,
    ProviderSettings,
    ReloadSettings,
    Route,
    TLSSettings,
    Upstream,
)
from idgateway.config.schema import (
    INVALID,
    YAML_NODE_BUDGET,
    ConfigError,
    Field,
    Problem,
    Reader,
    Section,
    _Invalid,
    boolean,
    duration,
    expanded_size,
    file_path,
    hide_references,
    integer,
    list_of,
    mapping,
    parsed,
    read_section,
    record,
    section,
    size,
)

if TYPE_CHECKING:
    from cryptography import x509

# Certificates this close to expiry earn a warning at start and on --check.
EXPIRY_WARNING_DAYS = 14


# ---- certificates -----------------------------------------------------------------------


def read_certificates(path: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file, leaf first; OSError or ValueError if none."""
    # cryptography is imported where a file is read: the workers' master,
    # which loads the config without reading them, never loads it (6 MiB).
    from cryptography import x509

    return x509.load_pem_x509_certificates(read_bounded(path, PEM_FILE_LIMIT))


def _certificates(reader: Reader, node: yaml.Node, key: str, path: str) -> Any:
    try:
        return read_certificates(path)
    except (OSError, FileTooOdd) as error:
        return reader.problem(node, key, read_problem(error))
    except ValueError:
        return reader.problem(node, key, f"{path} is not PEM (-----BEGIN CERTIFICATE-----)")


def _pem_bundle(reader: Reader, node: yaml.Node, key: str) -> str | _Invalid:
    path = file_path("a PEM file of CA certificates")(reader, node, key)
    if path is INVALID:
        return INVALID
    if reader.contents and _certificates(reader, node, key, path) is INVALID:
        return INVALID
    return path  # type: ignore[no-any-return]


def _private_key(reader: Reader, node: yaml.Node, key: str, path: str) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        pem = read_bounded(path, PEM_FILE_LIMIT)
    except (OSError, FileTooOdd) as error:
        return reader.problem(node, key, read_problem(error))
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        return reader.problem(node, key, f"{path} is encrypted; give an unencrypted PEM key")
    except (ValueError, UnsupportedAlgorithm):
        return reader.problem(
            node, key, f"{path} is not a PEM private key (-----BEGIN ...KEY-----)"
        )


def _public_der(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    encoding, public_format = serialization.Encoding.DER, serialization.PublicFormat
    return bytes(key.public_key().public_bytes(encoding, public_format.SubjectPublicKeyInfo))


def certificate_label(path: str, certificate: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = f"CN={common[0].value!s}" if common else certificate.subject.rfc4514_string()
    return f"certificate {path} ({subject or 'no subject'})"


def certificate_hostnames(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS SANs that clients check, else the subject CN of an old-style certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return tuple(name.lower() for name in names.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(attribute.value).lower() for attribute in common)


def _build_certificate_pair(reader: Reader, found: Section) -> CertificatePair | _Invalid:
    cert, key = found.values["cert"], found.values["key"]
    if not reader.contents:
        return CertificatePair(cert=cert, key=key)
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
        http2=check_listener_http2(
            reader, found.nodes.get("http2"), found.child("http2"), values["http2"],
            tls=values["tls"] is not None,
        ),
        source=f"{reader.file}:{found.node.start_mark.line + 1}",
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


def _route_or_its_problems(
    reader: Reader, found: Section, providers: tuple[ProviderSettings, ...] | _Invalid
) -> Route | _Invalid:
    if found.valid:
        return _build_route(reader, found, providers)
    # Keys of the route are wrong: still check what it refers to, so that
    # the file's every problem is reported at once.
    check_provider_reference(reader, found, providers)
    return INVALID


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
                login=sub.values["login"],
            )
        )
    bearer = build_route_bearer(reader, found, providers, auth)
    check_scopes_need_bearer(reader, found, subs)
    for sub in subs:
        if auth is None and sub.values["login"] is not None:
            reader.problem(
                sub.nodes["login"],
                sub.child("login"),
                "'login' (step-up) only applies on a route with an 'oidc' block",
            )
    if auth is None and bearer is None:
        for sub in subs:
            if sub.values["authorize"] is not None:
                reader.problem(
                    sub.nodes["authorize"],
                    sub.child("authorize"),
                    "'authorize' only applies on a route with an 'oidc' block or a 'bearer' block",
                )
    if len(reader.problems) > problems_before or auth is INVALID or bearer is INVALID:
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
        bearer=bearer,
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
        routes = [_route_or_its_problems(reader, r, providers) for r in found.values["routes"]]
        check_assertions(reader, found.values["assertion_keys"], found.values["routes"], routes)
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
        warnings=tuple(value_syntax.mask_credentials(warning) for warning in reader.warnings),
        providers=found.values["providers"],
        workers=found.values["workers"],
        redis=found.values["redis"],
        admin=found.values["admin"],
        logging=found.values["logging"],
        reload=found.values["reload"],
        client_header_timeout=found.values["client_header_timeout"],
        client_body_timeout=found.values["client_body_timeout"],
        client_send_timeout=found.values["client_send_timeout"],
        http2=found.values["http2"],
        assertion_keys=found.values["assertion_keys"],
    )


# ---- the schema: defaults come from the model, so they are written once -----------------


def _pass_or_refuse(value: str) -> str:
    if value not in ("refuse", "pass"):
        raise ValueError(f"{value!r} is not refuse or pass")
    return value


def _default(cls: type, name: str) -> Any:
    return getattr(attrs.fields(cls), name).default


# Route fields whose YAML key is the model's attribute name are passed straight through.
_ROUTE_ATTRIBUTES = {field.name for field in attrs.fields(Route)} - {
    "upstream",
    "paths",
    "auth",
    "bearer",
}
_UPSTREAM = parsed(
    value_syntax.parse_upstream_url, f"an upstream URL ({value_syntax.UPSTREAM_FORMS})"
)
_PAIR = "{cert: /etc/idgateway/app1.pem, key: /etc/idgateway/app1.key}"
_ROUTE = "{name: app1, hosts: [app1.example.com], upstream: http://127.0.0.1:3000}"
_PATH = "{prefix: /api/, upstream: http://127.0.0.1:3001}"
_HOST = parsed(value_syntax.parse_host_pattern, "a host name, e.g. app1.example.com")

CERTIFICATE_FIELDS = (
    Field(
        "cert",
        file_path("a PEM certificate file"),
        required=True,
        example="cert: app1.pem",
        type_text="file path",
        default_text="required",
        description="PEM file with the certificate chain, leaf first.",
    ),
    Field(
        "key",
        file_path("a PEM private key file"),
        required=True,
        example="key: app1.key",
        type_text="file path",
        default_text="required",
        description=r"""
            PEM file with the leaf's private key, unencrypted. It must match
            the certificate: a key for another certificate is an error.
        """,
    ),
)
_PAIRS = list_of(
    mapping(CERTIFICATE_FIELDS, f"a mapping like {_PAIR}", _build_certificate_pair),
    f"a list of {{cert, key}} mappings, e.g. [{_PAIR}]",
    min_items=1,
)
TLS_FIELDS = (
    Field(
        "certificates",
        _PAIRS,
        required=True,
        example=f"certificates: [{_PAIR}]",
        type_text="list of ``{cert, key}`` mappings",
        default_text="required, at least one",
        fields=CERTIFICATE_FIELDS,
        description=r"""
            The certificates to serve. A client's SNI name selects the
            certificate whose DNS Subject Alternative Names cover it; the host
            names are read from the certificates (a certificate without SANs is
            matched by its subject CN). Each entry:

            Example::

                certificates:
                  - {cert: /etc/idgateway/app1.pem, key: /etc/idgateway/app1.key}
        """,
    ),
    Field(
        "min_version",
        parsed(value_syntax.parse_tls_version, 'a TLS version, "1.2" or "1.3"'),
        default=_default(TLSSettings, "min_version"),
        type_text='``"1.2"`` or ``"1.3"``',
        default_text='default ``"1.2"``',
        description=r"""
            Oldest TLS version accepted. The unquoted numbers ``1.2`` and ``1.3``
            are accepted too. Example: ``min_version: "1.3"``
        """,
    ),
    Field(
        "ciphers",
        parsed(value_syntax.parse_ciphers, "an OpenSSL cipher list, e.g. ECDHE+AESGCM"),
        type_text="string",
        default_text="default: OpenSSL's secure default",
        description=r"""
            OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are not affected). A
            list that selects no cipher is an error.
            Example: ``ciphers: ECDHE+AESGCM:ECDHE+CHACHA20``
        """,
    ),
)
_LISTEN = parsed(value_syntax.parse_listen_address, "a listen address, e.g. 127.0.0.1:8080")
# Timeouts a listener may set for itself, over the top-level keys of the same names.
LISTENER_TIMEOUTS = ("client_header_timeout", "client_body_timeout", "client_send_timeout")


def _listener_override(name: str) -> Field:
    return Field(
        name,
        duration(),
        type_text="duration > 0",
        default_text="default: the top-level value",
        description=f"""
            This listener's own value of the top-level ``{name}``.
            Example: ``{name}: 5s``
        """,
    )


LISTENER_FIELDS = (
    Field(
        "address",
        _LISTEN,
        required=True,
        example="address: 127.0.0.1:8080",
        type_text="string",
        default_text="required",
        description=r"""
            ``host:port``, ``[ipv6]:port``, ``:port`` or ``port``; the last two listen
            on all IPv4 interfaces (``0.0.0.0``). Use ``"[::]:443"`` for all IPv6
            interfaces (quote it: YAML reads ``[`` as a list). The host may be an IP
            address or a name such as ``localhost``. Port 0 lets the system pick a
            free port (useful in tests). Two listeners may not share an address.
            Example: ``address: 127.0.0.1:8080``
        """,
    ),
    Field(
        "tls",
        record(TLS_FIELDS, f"a mapping like {{certificates: [{_PAIR}]}}", TLSSettings),
        type_text="mapping",
        default_text="default: none, plain HTTP",
        fields=TLS_FIELDS,
        description="Makes the listener HTTPS.",
    ),
    # No default: absent means the top-level value (or, for max_connections,
    # the share of the file-descriptor limit), decided where it is used.
    *(_listener_override(name) for name in LISTENER_TIMEOUTS),
    Field(
        "max_connections",
        integer(1, 10000),
        type_text="integer from 1 to 10000",
        default_text="default: a share of the descriptor limit",
        description=r"""
            Client connections this listener holds open at once. Past it a new
            connection is accepted and closed at once (no response), and the number
            refused is logged at most once a second, never a traceback. With
            ``workers`` above 1 the limit is for all workers together: each admits
            ``max_connections // workers`` (at least 1). The default is each
            process's share of its own file-descriptor limit: ``(soft RLIMIT_NOFILE
            - 128) // (2 * number of listeners)``, at least 16 (128 descriptors are
            kept for logs, Redis, providers and the admin listener; halved because
            each client connection may hold an upstream connection). Under
            ``etc/idgateway.service`` (``LimitNOFILE=65536``) that is 32704 with
            one listener, per process. If descriptors run out anyway, connections
            are accepted and closed at once and logged the same way.
            Example: ``max_connections: 10000``
        """,
    ),
    LISTENER_HTTP2_FIELD,
)
HSTS_FIELDS = (
    Field(
        "max_age",
        duration(allow_zero=True),
        default=365 * 86400.0,
        type_text="duration",
        default_text="default ``365d``",
        description="How long browsers remember to use HTTPS only; sent in whole seconds.",
    ),
    Field(
        "include_subdomains",
        boolean,
        default=False,
        type_text="boolean",
        default_text="default ``false``",
        description="Add ``includeSubDomains``.",
    ),
)
PATH_FIELDS = (
    Field(
        "prefix",
        parsed(value_syntax.parse_path_prefix, "a path, e.g. /api/"),
        True,
        example="prefix: /api/",
        type_text="string starting with ``/``",
        default_text="required",
        description=r"""
            Compared with the request's canonical path (see :ref:`architecture:Request paths: one
            reading for the gate and the upstream`; case-sensitive unless
            ``case_insensitive_paths``, query excluded), so ``/api/`` does not match
            ``/api``; it is kept in canonical form itself (``/café/`` is
            ``/caf%C3%A9/``), and one with dot segments is an error.
        """,
    ),
    Field(
        "upstream",
        _UPSTREAM,
        required=True,
        example="upstream: http://127.0.0.1:3001",
        type_text="URL",
        default_text="required",
        description="As the route's ``upstream``, its own path prepended the same way.",
    ),
    Field(
        "upstream_ca_file",
        _pem_bundle,
        type_text="file path",
        default_text="optional",
        description="As the route's ``upstream_ca_file``; without it, the route's applies.",
    ),
    Field(
        "authorize",
        record(AUTHORIZE_FIELDS, "a mapping like {groups: [admins]}", AuthorizeRules),
        type_text="mapping",
        default_text="optional",
        fields=AUTHORIZE_FIELDS,
        description=r"""
            Only on a route with login or ``bearer``: the rules for this path instead of
            the route's, with the keys of ```authorize``: who may pass`_.
        """,
    ),
    STEP_UP_FIELD,
)
_PASS_OR_REFUSE = parsed(_pass_or_refuse, "refuse (the default) or pass")
PATH_RULES_FIELDS = (
    Field(
        "encoded_slashes",
        _PASS_OR_REFUSE,
        default=_default(PathRules, "encoded_slashes"),
        type_text="``refuse`` or ``pass``",
        default_text="default ``refuse``",
        description=r"""
            ``pass`` lets ``%2F`` and ``%5C`` through to the upstream instead of refusing
            them with ``400``.
        """,
    ),
    Field(
        "backslashes",
        _PASS_OR_REFUSE,
        default=_default(PathRules, "backslashes"),
        type_text="``refuse`` or ``pass``",
        default_text="default ``refuse``",
        description=r"""
            ``pass`` lets a literal ``\`` through to the upstream instead of refusing it
            with ``400``.
        """,
    ),
)
_PATHS = list_of(section(PATH_FIELDS, f"a mapping like {_PATH}"), f"a list like [{_PATH}]")
ROUTE_FIELDS = (
    Field(
        "name",
        parsed(value_syntax.parse_route_name, "a name, e.g. app1"),
        True,
        example="name: app1",
        type_text="string",
        default_text="required",
        description=r"""
            Unique name used in logs and ``check`` output: letters, digits, ``_``,
            ``.`` and ``-``. Example: ``name: app1``
        """,
    ),
    Field(
        "hosts",
        list_of(_HOST, "a list of strings, e.g. [app1.example.com]"),
        default=(),
        type_text="list of strings",
        default_text="default ``[]``",
        description=r"""
            Host names this route serves, without port: exact names
            (``app1.example.com``), IP literals (``192.0.2.1``, ``"[2001:db8::1]"``),
            or wildcards ``"*.example.com"`` that match any name under
            ``example.com`` at any depth (but not ``example.com`` itself). Names are
            lower-cased; international names must be written in their ASCII
            (``xn--``) form. A host may appear on only one route. A route without
            hosts must be the default route.
            Example: ``hosts: [app1.example.com, "*.app1.example.com"]``
        """,
    ),
    Field(
        "default",
        boolean,
        default=False,
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            Serve requests whose host no route lists. At most one route.
            Example: ``default: true``
        """,
    ),
    Field(
        "upstream",
        _UPSTREAM,
        required=True,
        example="upstream: http://127.0.0.1:3000",
        type_text="URL",
        default_text="required",
        description=r"""
            Where requests go: ``http://host[:port][/path]``,
            ``https://host[:port][/path]`` or ``unix:/path/to.sock`` (HTTP over a
            Unix socket; ``unix:///path/to.sock`` also works). Ports default to 80
            and 443. A path is prepended to every request path
            (``http://127.0.0.1:3000/app`` sends ``/x`` to ``/app/x``). User names,
            passwords, query strings and fragments are refused. IPv6 hosts go in
            brackets: ``"http://[::1]:3000"``. Host names are resolved when a
            connection is opened. Example: ``upstream: http://127.0.0.1:3000``
        """,
    ),
    Field(
        "upstream_ca_file",
        _pem_bundle,
        type_text="file path",
        default_text="default: the system's trusted CAs",
        description=r"""
            PEM file of CA certificates trusted for an ``https://`` upstream instead
            of the system store. The route's ``https://`` path upstreams use it too
            unless they name their own. An error unless the route has an
            ``https://`` upstream.
            Example: ``upstream_ca_file: /etc/idgateway/internal-ca.pem``
        """,
    ),
    Field(
        "upstream_pool_size",
        integer(1, 64),
        default=_default(Upstream, "pool_size"),
        type_text="integer from 1 to 64",
        default_text="default ``64``",
        description=r"""
            Most connections held open to each of the route's upstreams, busy and
            idle together; requests beyond that wait in a queue for a free
            connection (time in the queue does not count towards
            ``response_timeout``). Path upstreams use the route's value.
            Example: ``upstream_pool_size: 16``
        """,
    ),
    Field(
        "paths",
        _PATHS,
        default=(),
        type_text="list of ``{prefix, upstream, upstream_ca_file, authorize}``",
        default_text="default ``[]``",
        fields=PATH_FIELDS,
        description=r"""
            Path prefixes within the route's hosts served by another upstream; the
            longest matching prefix wins, and other paths go to the route's
            ``upstream``. A prefix may appear once per route. Example::

                paths:
                  - {prefix: /api/, upstream: http://127.0.0.1:3001}
                  - prefix: /admin/
                    upstream: http://127.0.0.1:3000
                    authorize: {groups: [admins]}
        """,
    ),
    Field(
        "preserve_host",
        boolean,
        default=_default(Route, "preserve_host"),
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            Send the client's ``Host`` header upstream, checked and normalised (lower
            case, no trailing dot, as nginx's ``$host`` with the port), instead of
            the upstream's own ``host[:port]`` (``localhost`` for Unix sockets).
            Example: ``preserve_host: true``
        """,
    ),
    Field(
        "connect_timeout",
        duration(),
        default=_default(Route, "connect_timeout"),
        type_text="duration > 0",
        default_text="default ``5s``",
        description=r"""
            Time allowed to open a TCP (or Unix socket) connection to the upstream;
            the TLS handshake with an ``https://`` upstream counts towards
            ``response_timeout``. Example: ``connect_timeout: 2s``
        """,
    ),
    Field(
        "response_timeout",
        duration(),
        default=_default(Route, "response_timeout"),
        type_text="duration > 0",
        default_text="default ``60s``",
        description=r"""
            Time allowed for the upstream to start answering (status line and
            headers) once the request is sent. Example: ``response_timeout: 30s``
        """,
    ),
    Field(
        "idle_timeout",
        duration(),
        default=_default(Route, "idle_timeout"),
        type_text="duration > 0",
        default_text="default ``300s``",
        description=r"""
            Longest silence in either direction once the exchange has started.
            Example: ``idle_timeout: 5m``
        """,
    ),
    Field(
        "max_body_size",
        size(zero_is_unlimited=True),
        default=_default(Route, "max_body_size"),
        type_text="size",
        default_text="default ``100MB``",
        description=r"""
            Largest request body accepted. ``0`` or ``null`` means unlimited.
            Example: ``max_body_size: 2GB``
        """,
    ),
    Field(
        "max_header_size",
        size(),
        default=_default(Route, "max_header_size"),
        type_text="size > 0",
        default_text="default ``16KB``",
        description=r"""
            Largest request header block accepted (request line plus headers).
            Request heads over 64 KiB are refused before routing whatever this says
            (see :ref:`architecture:Limits`). Example: ``max_header_size: 32KB``
        """,
    ),
    Field(
        "https_redirect",
        boolean,
        default=_default(Route, "https_redirect"),
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            Answer requests that arrive over plain HTTP with a ``308`` redirect to
            the same URL over HTTPS, on the port of the first TLS listener (left out
            when it is 443). "Plain HTTP" means a plain listener, whatever
            ``X-Forwarded-Proto`` says: behind a TLS-terminating proxy, redirect at
            the proxy instead. Example: ``https_redirect: true``
        """,
    ),
    Field(
        "hsts",
        _hsts,
        default=(None, False),
        type_text="``false``, ``true`` or a mapping",
        default_text="default ``false``",
        fields=HSTS_FIELDS,
        description=r"""
            Send ``Strict-Transport-Security`` on answers sent over a TLS listener
            (behind a TLS-terminating proxy, set it at the proxy). ``true`` means the
            defaults. Example: ``hsts: {max_age: 365d, include_subdomains: true}``
        """,
    ),
    Field(
        "path_rules",
        record(
            PATH_RULES_FIELDS,
            "a mapping like {encoded_slashes: pass, backslashes: refuse}",
            PathRules,
        ),
        default=PathRules(),
        type_text="mapping",
        default_text="default ``{encoded_slashes: refuse, backslashes: refuse}``",
        fields=PATH_RULES_FIELDS,
        description=r"""
            What the route passes to its upstream instead of refusing with ``400``:
            ``encoded_slashes: pass`` lets ``%2F`` and ``%5C`` through and
            ``backslashes: pass`` a literal ``\`` (each ``refuse`` or ``pass``). A
            passed character stays as it came (upper-cased escape) and is opaque to
            every path rule: it is never decoded and never separates segments, as
            Apache's ``AllowEncodedSlashes NoDecode``. Even then a path where a
            passed ``\`` or ``%2F`` would form a dot segment upstream
            (``/files/..%2Fetc``) is refused. Turn these on only for an upstream that
            needs them (file names with slashes in an API).
            Example: ``path_rules: {encoded_slashes: pass}``
        """,
    ),
    Field(
        "case_insensitive_paths",
        boolean,
        default=_default(Route, "case_insensitive_paths"),
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            Match every path rule of the route (``public_paths``, ``paths[].prefix``
            and their ``authorize``, ``api_paths``) without regard to case, for
            IIS-style upstreams that read ``/ADMIN/`` as ``/admin/``. A segment's
            trailing dots and spaces (``/admin./``) are then judged as IIS reads them
            too. By default prefixes are case-sensitive, as nginx's locations.
            Example: ``case_insensitive_paths: true``
        """,
    ),
    Field(
        "max_websockets",
        integer(0, 1024),
        default=_default(Route, "max_websockets"),
        type_text="integer from 0 to 1024",
        default_text="default ``1024``",
        description=r"""
            WebSocket tunnels open at once on this route (upgrades still on their
            way to the upstream count too). Past it an upgrade gets ``503`` with a
            message saying so. With ``workers`` above 1 each worker admits
            ``max_websockets // workers`` (at least 1). ``0`` refuses every upgrade.
            Example: ``max_websockets: 200``
        """,
    ),
    Field(
        "websocket_idle_timeout",
        duration(),
        default=_default(Route, "websocket_idle_timeout"),
        type_text="duration > 0",
        default_text="default ``1h``",
        description=r"""
            A WebSocket tunnel with no bytes in either direction for this long is
            closed (checked once a second). ``idle_timeout`` does not apply to a
            tunnel once it is open. Example: ``websocket_idle_timeout: 10m``
        """,
    ),
    *ROUTE_AUTH_FIELDS,
    ASSERTION_FIELD,
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
    Field(
        "access_log",
        boolean,
        default=_default(LoggingSettings, "access_log"),
        type_text="boolean",
        default_text="default ``true``",
        description="Write the per-request access line.",
    ),
    Field(
        "format",
        _choice(("text", "json")),
        default=_default(LoggingSettings, "format"),
        type_text="``text`` or ``json``",
        default_text="default ``text``",
        description="``text``: readable lines; ``json``: each message is one JSON object.",
    ),
    Field(
        "user_id",
        _choice(("plain", "hash", "none")),
        default=_default(LoggingSettings, "user_id"),
        type_text="``plain``, ``hash`` or ``none``",
        default_text="default ``plain``",
        description=r"""
            The user in access lines: ``plain``, ``hash`` (first 16 hex digits of its
            SHA-256) or ``none``.
        """,
    ),
)
# A shorter interval would only burn CPU: editors and deploy tools take longer
# than that to write a file.
MIN_WATCH_INTERVAL = 0.1


def _watch_interval(text: str) -> float:
    seconds = value_syntax.parse_duration(text)
    if seconds < MIN_WATCH_INTERVAL:
        raise ValueError(f"must be at least 100ms, e.g. 2s; got {text!r}")
    return seconds


RELOAD_FIELDS = (
    Field(
        "watch",
        boolean,
        default=_default(ReloadSettings, "watch"),
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            Poll the file. When its contents change, the gateway reloads exactly as on
            ``SIGHUP``: a file with problems is refused (each problem is logged,
            the running configuration stays), and the next change tries again.
        """,
    ),
    Field(
        "interval",
        parsed(_watch_interval, "a duration of at least 100ms, e.g. 2s"),
        default=_default(ReloadSettings, "interval"),
        type_text="duration, at least ``100ms``",
        default_text="default ``2s``",
        description=r"""
            How often the file is checked. A check is one ``stat()``; the file is
            read (and hashed) only when its modification time, size or inode
            changed, so ``touch`` alone reloads nothing, and a file replaced by
            renaming (editors, Kubernetes ConfigMap links) is seen.
        """,
    ),
)
_NETWORKS = list_of(
    parsed(value_syntax.parse_network, "an IP address or network, e.g. 10.0.0.0/8"),
    "a list of IP addresses or networks, e.g. [10.0.0.0/8, 192.0.2.7]",
)
ADMIN_FIELDS = (
    Field(
        "address",
        _LISTEN,
        default=("127.0.0.1", 9901),
        type_text="listen address",
        default_text="default ``127.0.0.1:9901``",
        description=r"""
            Where to listen, in the forms of a listener's address (``host:port``,
            ``[ipv6]:port``, ``:port``, ``port``); the default makes ``admin: {}``
            enough. Use a port that no listener uses.
        """,
    ),
)
TOP_FIELDS = (
    Field(
        "listeners",
        _LISTENERS,
        required=True,
        example="listeners: [{address: 127.0.0.1:8080}]",
        type_text="list of listeners",
        default_text="required, at least one",
        fields=LISTENER_FIELDS,
        description=r"""
            Where the gateway accepts connections.

            Each entry of ``listeners`` is a mapping with these keys.
        """,
    ),
    Field(
        "routes",
        list_of(section(ROUTE_FIELDS, f"a mapping like {_ROUTE}"), f"a list like [{_ROUTE}]", 1),
        required=True,
        example=f"routes: [{_ROUTE}]",
        type_text="list of routes",
        default_text="required, at least one",
        fields=ROUTE_FIELDS,
        description=r"""
            Which upstream serves which request.

            A request is matched on its ``Host`` header (see :ref:`architecture:Routing`). Each
            entry of
            ``routes`` is a mapping. with these keys.
        """,
    ),
    Field(
        "trusted_proxies",
        _NETWORKS,
        default=(),
        type_text="list of IP addresses or CIDR networks",
        default_text="default ``[]``",
        description=r"""
            Peers whose ``X-Forwarded-For``, ``-Proto``, ``-Host``, ``-Port`` and
            ``-Prefix`` headers are believed, such as a load balancer in front of the gateway.
            From any other peer these headers are replaced (see :ref:`architecture:Headers`). A
            trusted peer's ``X-Forwarded-Proto: https`` also tells login routes that
            the browser uses HTTPS: cookies are then ``Secure`` (with the
            ``__Host-`` prefix) and the callback URL is ``https://``, as on a TLS
            listener (see :ref:`operations:Behind a TLS-terminating proxy`). A bare
            address means that one host (``192.0.2.7`` is ``192.0.2.7/32``); host
            bits of a network are cleared (``10.1.2.3/16`` is ``10.1.0.0/16``).
            Example: ``trusted_proxies: [127.0.0.1, 10.0.0.0/8, "fd00::/8"]``
        """,
    ),
    Field(
        "providers",
        build_providers,
        default=(),
        type_text="mapping of names to providers",
        default_text="default ``{}``",
        fields=PROVIDER_FIELDS,
        description=r"""
            The OpenID providers (for WSO2: one entry per tenant) that routes log
            users in with, each under a name of your choice that routes refer to.

            Each entry under ``providers`` is one OpenID provider (with WSO2 Identity
            Server: one tenant) under a name of your choice, which routes name in
            ``oidc.provider``. Give **exactly one** of ``discovery_url`` and ``issuer``
            (both, or neither, is an error).

            The gateway fetches each provider's discovery document and signing keys
            (JWKS) in the background when it starts: it starts and serves even while a
            provider is unreachable, retries with a backoff growing from 1 s to 60 s,
            and then refreshes both every hour. A token signed with a key id it does not
            know makes it fetch the keys again at once (at most every 30 s), so a key
            rotation at the provider needs nothing from you. Back-channel logout tokens,
            which anyone can POST, have their own smaller allowance (one such refetch
            every 5 minutes, and none within 30 s of another fetch) that never uses up
            the logins'. Each provider has its own
            connection pool, and every call to it a 10 s deadline. Several routes may
            share a provider (several applications in one tenant), each with its own
            client. A reload keeps a provider whose settings did not change, with what
            it has loaded.
        """,
    ),
    Field(
        "workers",
        config_workers,
        default=1,
        type_text="``auto`` or a number from 1 to 256",
        default_text="default ``1``",
        description=r"""
            How many processes serve the listeners. ``1``: the ``twistd`` process
            serves alone, as it always has. More than one: the ``twistd`` process
            becomes a master that binds the listeners and runs that many worker
            processes accepting on them side by side (see :ref:`operations:Running on every core`).
            ``auto`` is the number of CPUs the system reports
            (``os.cpu_count()``) when the file is read; on a one-CPU machine that
            is 1, a single process. With more than one worker, give every login
            route ``session.keys``: a random key is made per process, and the
            workers could not read each other's cookies. Changing ``workers`` needs
            a restart. Example: ``workers: auto``
        """,
    ),
    Field(
        "client_header_timeout",
        duration(),
        default=_default(Config, "client_header_timeout"),
        type_text="duration > 0",
        default_text="default ``15s``",
        description=r"""
            Time a client has to send a whole request head (request line and
            headers), from its first byte; for a connection's first request, from
            the accept. Bytes arriving do not extend it, so a client that trickles
            a head a byte at a time (slowloris) is cut at the deadline: it gets
            ``408`` with ``Connection: close`` and the connection closes (checked
            once a second; one log line per check says how many were cut). Between
            requests on a keep-alive connection the idle timeout applies until the
            next head's first byte. A listener may set its own.
            Example: ``client_header_timeout: 10s``
        """,
    ),
    Field(
        "client_body_timeout",
        duration(),
        default=_default(Config, "client_body_timeout"),
        type_text="duration > 0",
        default_text="default ``60s``",
        description=r"""
            Longest silence from the client while a request body is being read
            (time the gateway itself holds the client back, because the upstream is
            slow to take the body, does not count). Past it the upstream request is
            cancelled and the client gets ``408`` if no response has begun, and the
            connection closes. The route's ``idle_timeout`` is the upstream's side
            of the same exchange. A listener may set its own.
            Example: ``client_body_timeout: 30s``
        """,
    ),
    Field(
        "client_send_timeout",
        duration(),
        default=_default(Config, "client_send_timeout"),
        type_text="duration > 0",
        default_text="default ``60s``",
        description=r"""
            Longest time a response may wait for a client that reads none of it
            (its socket full), as nginx's ``send_timeout``: past it the upstream
            request is cancelled and the connection is cut. A slow but steady reader
            is never cut; one that stops reading cannot hold a connection (and its
            upstream connection) for the route's whole ``idle_timeout``. A listener
            may set its own. Example: ``client_send_timeout: 30s``
        """,
    ),
    Field(
        "redis",
        build_top_redis,
        type_text="mapping",
        default_text="default: none",
        fields=REDIS_FIELDS,
        description=r"""
            A Redis that every gateway process (every worker, every machine) shares
            for what a logout and a token refresh must tell the others:

            * the provider sessions (``sid``) ended by back-channel or front-channel
              logout on routes with **cookie** sessions, so that every process
              refuses their cookies (see :ref:`login:Logout from the provider`);
            * the ``jti`` of every logout token already used (replay protection);
            * the coordination of access token refreshes of cookie sessions across
              processes (see :ref:`login:Token refresh`).

            Routes with ``session.store: redis`` name their own Redis in
            ``session`` (it may be the same one). Without ``redis:``, the Redis of
            the first route with ``store: redis`` plays this part; with neither, all
            of this lives in each process's memory, and the gateway warns at start
            when a route keeps cookie sessions: ``logged-out sessions are only remembered by this
            process; other processes will not see back-channel logouts``;

            and, with ``workers`` above 1, that refreshes are not coordinated
            between processes. The shared Redis is chosen when the gateway starts:
            after changing it, restart rather than reload.
            Example: ``redis: {url: "redis://:${REDIS_PASSWORD}@10.0.0.5:6379/0"}``

            The same keys say how to reach a Redis in the top-level ``redis:`` block
            and in a route's ``session`` block with ``store: redis``. Give ``url``,
            ``sentinels`` with ``master_name`` (and, optionally, a ``url`` too), or
            ``cluster`` (a Redis Cluster's seed URLs). Blocks
            with identical settings share one pool of connections. Examples::

                redis:
                  url: redis://:s3cret@127.0.0.1:6379/1         # password, host, port, database 1

                redis:
                  url: rediss://:s3cret@redis.internal:6380/0   # TLS, verified
                  redis_ca_file: /etc/idgateway/redis-ca.pem

                redis:
                  url: unix:/run/redis/redis.sock?db=2

                # a master watched by Sentinel (of url, only password, database and TLS count)
                redis:
                  sentinels: [10.0.0.5:26379, 10.0.0.6:26379, 10.0.0.7:26379]
                  master_name: idgateway
                  url: redis://:s3cret@idgateway/1

                # a Redis Cluster: some of its nodes, all with the same password
                redis:
                  cluster: [redis://:s3cret@10.0.0.1:7000, redis://:s3cret@10.0.0.2:7000]
        """,
    ),
    Field(
        "admin",
        mapping(
            ADMIN_FIELDS,
            "a mapping like {address: 127.0.0.1:9901}",
            lambda _, found: found.values["address"],
        ),
        type_text="mapping",
        default_text="default: none, no admin listener",
        fields=ADMIN_FIELDS,
        description=r"""
            A plain-HTTP listener of its own for health checks, apart from the
            public listeners and their routes. It answers two paths (anything else
            is ``404``):

            * ``GET /healthz``: ``200`` with ``ok`` while the process runs;
            * ``GET /readyz``: ``200`` when every login route's provider has been
              discovered and every Redis the gateway uses answers a ``PING`` within
              its ``command_timeout``, else ``503``; JSON with the detail per
              route, provider and Redis either way (see
              :ref:`operations:Health checks: /healthz and /readyz`).

            Keep it on loopback or an internal network: it has no
            TLS and no authentication, and ``/readyz`` names the routes, providers
            and Redis servers (never a password). With ``workers`` above 1, worker
            0 serves it, and reports what that worker sees (see
            :ref:`operations:Running on every core`). It is bound by the gateway itself, never
            taken from systemd's
            sockets. A
            reload leaves it as it is: adding, moving or removing it needs a
            restart. Example::

                admin:
                  address: 127.0.0.1:9901
        """,
    ),
    Field(
        "logging",
        record(
            LOGGING_FIELDS,
            "a mapping like {access_log: true, format: json, user_id: hash}",
            LoggingSettings,
        ),
        default=LoggingSettings(),
        type_text="mapping",
        default_text="default ``{access_log: true, format: text, user_id: plain}``",
        fields=LOGGING_FIELDS,
        description=r"""
            The access log and the audit log (see :ref:`operations:Running under systemd`), as a
            mapping of the keys below. Example: ``logging: {format: json, user_id: hash}``
        """,
    ),
    Field(
        "reload",
        record(RELOAD_FIELDS, "a mapping like {watch: true, interval: 2s}", ReloadSettings),
        default=ReloadSettings(),
        type_text="mapping",
        default_text="default ``{watch: false, interval: 2s}``",
        fields=RELOAD_FIELDS,
        description=r"""
            Whether the gateway re-reads its file by itself when it changes, as
            ``SIGHUP`` (``systemctl reload``) makes it do.

            With ``workers`` above 1 the master watches the file and sends every
            worker ``SIGHUP``. A reload that changes ``reload:`` itself takes effect
            at once (turning ``watch`` off stops the polling). Example::

                reload:
                  watch: true
                  interval: 2s
        """,
    ),
    HTTP2_FIELD,
    ASSERTION_KEYS_FIELD,
)


# ---- entry points -----------------------------------------------------------------------


def load_config(
    path: str, environ: Mapping[str, str] | None = None, *, contents: bool = True
) -> Config:
    """Read and check ``path``; raise ConfigError listing every problem found.

    ``contents=False`` takes the key and certificate files' names but does
    not open them, and does not import cryptography: for what needs only the
    listeners and the worker count (``idgateway.workers.config_child``). Its
    config has no certificate host names and no assertion keys; whatever it
    accepts, the full load may still refuse.
    """
    reader = Reader(path, os.environ if environ is None else environ, contents=contents)
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
        return reader.problem(None, "", read_problem(error))
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
        if route.auth is not None:
            lines.append("    " + _logout_summary(route.auth.oidc))
    if config.trusted_proxies:
        lines.append("Trusted proxies: " + ", ".join(config.trusted_proxies))
    if config.assertion_keys:
        lines.append("Assertion keys (the first signs):")
        lines.extend(f"  {k.path}: {k.alg}, kid {k.kid}" for k in config.assertion_keys)
    lines.append("Warnings:" if config.warnings else "No warnings.")
    lines.extend(f"  {warning}" for warning in config.warnings)
    return "\n".join(lines)


def _logout_summary(oidc: OIDCSettings) -> str:
    """The logout paths the gateway serves for a route; whether the provider uses
    them is in its discovery document, which /status and the start-up log show."""
    served = ["back-channel (by sid, or by sub)"]
    served.append("front-channel" if oidc.frontchannel_logout else "no front-channel")
    served.append("RP-initiated sign-out")
    return (
        "provider logout: " + ", ".join(served) + "; as the provider's discovery document "
        "offers them (see /status)"
    )


def _options(route: Route) -> str:
    options = [name for name in ("preserve_host", "https_redirect") if getattr(route, name)]
    if route.hsts_max_age is not None:
        subdomains = " +subdomains" if route.hsts_include_subdomains else ""
        options.append(f"hsts {value_syntax.format_duration(route.hsts_max_age)}{subdomains}")
    if route.max_body_size is None:
        options.append("no body limit")
    if route.assertion is not None:
        options.append(f"assertion in {route.assertion.header}")
    return f"  [{', '.join(options)}]" if options else ""


def _expiry(path: str) -> str:
    try:
        expires = read_certificates(path)[0].not_valid_after_utc
    except (OSError, ValueError):
        return "now unreadable"
    verb = "expired" if expires < datetime.datetime.now(datetime.UTC) else "expires"
    return f"{verb} {expires:%Y-%m-%d}"
