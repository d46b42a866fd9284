"""The login part of the configuration: providers, and each route's oidc, session,
headers, public_paths and authorize blocks."""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any

import yaml

from idgateway.config import values as value_syntax
from idgateway.config.bearer import SCOPES_FIELD, bearer_field
from idgateway.config.files import (
    PEM_FILE_LIMIT,
    FileTooOdd,
    loose_permissions,
    read_bounded,
    read_problem,
)
from idgateway.config.model import (
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
    StepUp,
)
from idgateway.config.organizations import (
    NotAnOrganizationRoot,
    organization_issuer,
    parse_organization,
)
from idgateway.config.provider_urls import InsecureTransport, check_configured_url
from idgateway.config.redis_url import parse_cluster_seed, parse_redis_url
from idgateway.config.regex import compile_config_regex
from idgateway.config.schema import (
    INVALID,
    Field,
    Reader,
    Section,
    _describe,
    _Invalid,
    boolean,
    duration,
    file_path,
    integer,
    list_of,
    mapping,
    parsed,
    read_section,
    record,
)
from idgateway.http.header_names import (
    ALWAYS_STRIPPED,
    FORWARDING_HEADERS,
    REQUEST_HOP_BY_HOP,
    header_key,
)

# Authorization request parameters that ``extra`` may not set: they carry the
# flow's security (state, nonce, PKCE) or would change its shape.
RESERVED_AUTHORIZE_PARAMETERS = frozenset(
    {
        "response_type",
        "response_mode",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "request",
        "request_uri",
    }
)

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


CLIENT_AUTH_METHODS = (
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "tls_client_auth",
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


def _userinfo_mode(reader: Reader, node: yaml.Node, key: str) -> bool | str | _Invalid:
    """``true``, ``false`` or ``auto`` (YAML booleans stay booleans)."""
    value = reader.value(node, key)
    if value is INVALID or isinstance(value, bool) or value == "auto":
        return value  # type: ignore[no-any-return]
    return reader.problem(node, key, f"expected auto, true or false; got {_describe(node)}")


def _client_key_file(reader: Reader, node: yaml.Node, key: str) -> str | _Invalid:
    """A PEM private key that can sign private_key_jwt assertions."""
    path = file_path("a PEM private key file")(reader, node, key)
    if path is INVALID:
        return INVALID
    if reader.contents:
        # Here, not at the top: it imports cryptography (see load_config).
        from idgateway.config.client_keys import ClientKeyError, load_client_key

        try:
            load_client_key(path)
        except ClientKeyError as error:
            return reader.problem(node, key, str(error))
    warning = loose_permissions(path, secret=True)
    if warning:
        reader.warnings.append(f"{key}: {warning}")
    return path  # type: ignore[no-any-return]


def _client_cert_file(reader: Reader, node: yaml.Node, key: str) -> str | _Invalid:
    """A readable PEM file with the client's certificate (chain)."""
    path = file_path("a PEM certificate file")(reader, node, key)
    if path is INVALID or not reader.contents:
        return path  # type: ignore[no-any-return]
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(read_bounded(path, PEM_FILE_LIMIT))
    except (OSError, FileTooOdd) as error:
        return reader.problem(node, key, read_problem(error))
    except ValueError:
        return reader.problem(node, key, f"{path} is not PEM (-----BEGIN CERTIFICATE-----)")
    return path  # type: ignore[no-any-return]


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
    return PublicPath(method=method, prefix=value_syntax.canonical_prefix(rest))


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
    return value_syntax.canonical_prefix(_redirect_path(value))


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
        if isinstance(value_node, yaml.SequenceNode):
            # Any of these exact values (org_id: [id1, id2]).
            choices = list_of(_text("a value"), "a list of values", min_items=1)(
                reader, value_node, f"{key}.{claim}"
            )
            if choices is not INVALID:
                rules.append(ClaimRule(claim, "", any_of=choices))
            continue
        value = reader.text(value_node, f"{key}.{claim}", "a value, a list of values, or '~ regex'")
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
    if path is INVALID or not reader.contents:
        return path  # type: ignore[no-any-return]
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(read_bounded(path, PEM_FILE_LIMIT))
    except (OSError, FileTooOdd) as error:
        return reader.problem(node, key, read_problem(error))
    except ValueError:
        return reader.problem(node, key, f"{path} is not PEM (-----BEGIN CERTIFICATE-----)")
    return path  # type: ignore[no-any-return]


_STRINGS = list_of(_text("a string"), "a list of strings")

PROVIDER_FIELDS = (
    Field(
        "discovery_url",
        parsed(_https_url, "a URL"),
        type_text="URL",
        default_text="one of the two",
        description=r"""
            The provider's discovery document; the issuer it states is the one every
            ID token must then carry. WSO2:
            ``https://HOST:9443/oauth2/oidcdiscovery/.well-known/openid-configuration``
            for the super tenant, and
            ``https://HOST:9443/t/TENANT/oauth2/oidcdiscovery/.well-known/openid-configuration``
            for any other tenant.
            Example:
            ``discovery_url:
            https://localhost:9443/oauth2/oidcdiscovery/.well-known/openid-configuration``
        """,
    ),
    Field(
        "issuer",
        parsed(_https_url, "a URL"),
        type_text="URL",
        default_text="one of the two",
        description=r"""
            The provider's issuer. The discovery document is then fetched from
            ``<issuer>/.well-known/openid-configuration`` (after dropping a trailing
            ``/``), and it must state exactly this issuer, or the provider is not
            used (the log says why). **WSO2's issuer is its token endpoint URL**, not
            its base URL and not the discovery URL: ``https://HOST:9443/oauth2/token``
            for the super tenant, ``https://HOST:9443/t/TENANT/oauth2/token`` for
            another tenant. WSO2 serves its discovery document below that issuer too
            (``https://HOST:9443/oauth2/token/.well-known/openid-configuration``), so
            the two forms reach the same provider, and either way ID tokens are
            checked for ``iss`` = the token endpoint URL. This is the
            ``oidc_issuer_url`` of OAuth2 Proxy's configuration.
            Example: ``issuer: https://localhost:9443/t/acme.com/oauth2/token``
        """,
    ),
    Field(
        "ca_file",
        _ca_bundle,
        type_text="file path",
        default_text="default: the system's trusted CAs",
        description=r"""
            PEM file of the certificates trusted for TLS to this provider, instead of
            the system store: for a WSO2 with its shipped self-signed certificate, that
            certificate exported from WSO2 (see :ref:`wso2:Registering the gateway in WSO2`).
            The file is read while loading: an unreadable file, or one without a
            ``-----BEGIN CERTIFICATE-----``, is an error. The provider's host name is
            checked against its certificate too, so the URLs must use a name the
            certificate carries (WSO2's default certificate names ``localhost``).
            Example: ``ca_file: /etc/idgateway/wso2carbon.pem``
        """,
    ),
    Field(
        "insecure_skip_verify",
        boolean,
        default=False,
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            ``true`` turns **off** every check of the provider's TLS certificate, its
            chain and its host name: mod_auth_openidc's ``OIDCSSLValidateServer
            Off``. Anyone on the network path to the provider can then pose as it,
            serve their own signing keys and sign in as anybody. ``idgateway check``
            and every start warn about it, loudly: ``provider 'acme': insecure_skip_verify is
            on: the provider's TLS certificate is NOT checked; anyone on the network path
            can impersonate it``.

            For a throwaway test set-up only, never in production: give ``ca_file``
            instead. Even then the gateway still checks ID tokens (signature,
            issuer, audience, times...) and never accepts ``alg: none``.
            Example: ``insecure_skip_verify: true``
        """,
    ),
    Field(
        "insecure_http",
        boolean,
        default=False,
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            Provider traffic is HTTPS, always: the discovery document, the keys
            (JWKS), the token, userinfo, introspection and revocation calls, and the
            authorize and end-session URLs the browser is sent to. That holds for
            the configured ``discovery_url`` or ``issuer`` and for **every endpoint
            the discovery document advertises**: a document naming an ``http://``
            ``jwks_uri`` or ``token_endpoint`` is refused (the provider stays not
            ready and the log says which endpoint and why), before any request goes
            there. An endpoint on another HTTPS host than the discovery document is
            allowed, as WSO2 behind a proxy does, and logged once. ``http://`` is
            accepted without this option only for a provider on this machine
            (``localhost``, ``127.0.0.0/8``, ``::1``; its advertised endpoints must be
            on loopback too), with a warning; anywhere else it is a configuration
            error naming the key and this option. ``true`` allows plain HTTP to that
            provider anyway: tokens and the client secret then cross the network
            unencrypted, and ``idgateway check`` and every start say so: ``provider 'wso2':
            insecure_http is on: http://wso2.internal:9763/oauth2/token is plain HTTP; tokens
            and the client secret cross the network unencrypted``.

            Example: ``insecure_http: true``
        """,
    ),
)

OIDC_FIELDS = (
    Field(
        "provider",
        _text("a provider name"),
        required=True,
        example="provider: wso2",
        type_text="string",
        default_text="required",
        description=r"""
            A name under ``providers``. An unknown name is an error that lists the
            known ones. Sessions are bound to the provider's ``issuer`` or
            ``discovery_url`` as written (not to the name): a reload that changes
            it ends the route's sessions (users log in again). Example:
            ``provider: wso2``
        """,
    ),
    Field(
        "client_id",
        _text("a client id"),
        required=True,
        example="client_id: my-app",
        type_text="string",
        default_text="required",
        description=r"""
            The client id the provider gave this application (WSO2: the *Client ID*
            on the application's *Protocol* tab). Sessions are bound to it: a reload
            that changes it ends the route's sessions. Example:
            ``client_id: mod-auth-app``
        """,
    ),
    Field(
        "client_secret",
        _text("a client secret"),
        secret=True,
        example="client_secret: ${APP1_CLIENT_SECRET}",
        type_text="string, *secret*",
        default_text="required with a ``client_secret_*`` ``client_auth``",
        description=r"""
            The client's secret; or ``client_secret_file: PATH``, a file holding it
            (see `General rules`_). Required with ``client_auth:
            client_secret_basic`` (the default) or ``client_secret_post``; not used
            with ``private_key_jwt`` or ``tls_client_auth``. A secret shorter than 16
            characters is warned about by ``idgateway check`` and at every start.
            Examples: ``client_secret: ${APP1_CLIENT_SECRET}``,
            ``client_secret_file: ${CREDENTIALS_DIRECTORY}/app1-client-secret``
            (a credential of the systemd unit)
        """,
    ),
    Field(
        "client_auth",
        _one_of(CLIENT_AUTH_METHODS),
        default="client_secret_basic",
        type_text=", ".join(f"``{m}``" for m in CLIENT_AUTH_METHODS),
        default_text="default ``client_secret_basic``",
        description=r"""
            How the gateway authenticates to the provider's token endpoint (code
            exchange, refresh) and, when the route's ``bearer.introspection`` uses
            this same client, its introspection endpoint.
            ``client_secret_basic``: an HTTP Basic ``Authorization`` header (id and
            secret form-encoded first, as RFC 6749 says). ``client_secret_post``:
            two form fields. ``private_key_jwt`` (RFC 7523): a JWT signed with
            ``private_key_file``, with a fresh ``jti`` and a 60-second ``exp`` per
            call, ``aud`` as ``client_assertion_audience`` says; register the public
            key (or a JWKS URL serving it) with the application at the provider.
            ``tls_client_auth`` (RFC 8705): mutual TLS to the provider with
            ``client_cert`` and ``client_key``; the form carries only
            ``client_id``. WSO2 IS 7 accepts all four (per application).
            Example: ``client_auth: private_key_jwt``
        """,
    ),
    Field(
        "private_key_file",
        _client_key_file,
        type_text="file path",
        default_text="required with ``private_key_jwt``",
        description=r"""
            The PEM private key that signs ``private_key_jwt`` client assertions:
            RSA of 2048 bits or more (``RS256``; ``PS256`` when the provider's
            ``token_endpoint_auth_signing_alg_values_supported`` lists only that) or
            EC P-256 (``ES256``). Unencrypted; keep it ``0600``. Read while loading:
            an unreadable file, a public key or certificate, an encrypted or
            unsupported key is an error naming the fix.
            Example: ``private_key_file: /etc/idgateway/app1-client.key``
        """,
    ),
    Field(
        "client_assertion_audience",
        _one_of(("token_endpoint", "issuer")),
        default="token_endpoint",
        type_text="``token_endpoint`` or ``issuer``",
        default_text="default ``token_endpoint``",
        description=r"""
            The ``aud`` of ``private_key_jwt`` assertions: the token endpoint's URL
            (RFC 7523, what most providers expect) or the provider's issuer (WSO2
            accepts both; some providers only the issuer).
            Example: ``client_assertion_audience: issuer``
        """,
    ),
    Field(
        "client_cert",
        _client_cert_file,
        type_text="file path",
        default_text="required with ``tls_client_auth``",
        description=r"""
            The PEM certificate (chain) the gateway presents to the provider for
            ``tls_client_auth`` (mutual TLS), with ``client_key``. Register its
            subject DN (or the certificate) with the application at the provider.
            Example: ``client_cert: /etc/idgateway/app1-client.pem``
        """,
    ),
    Field(
        "client_key",
        file_path("a PEM private key file"),
        type_text="file path",
        default_text="required with ``tls_client_auth``",
        description=r"""
            The PEM private key of ``client_cert``. Read while loading: it must be
            readable and match the certificate.
            Example: ``client_key: /etc/idgateway/app1-client.key``
        """,
    ),
    Field(
        "par",
        _one_of(("auto", "required", "off")),
        default="auto",
        type_text="``auto``, ``required`` or ``off``",
        default_text="default ``auto``",
        description=r"""
            Pushed authorization requests (RFC 9126). ``auto``: when the provider's
            discovery document names a ``pushed_authorization_request_endpoint``
            (WSO2 IS 7: ``/oauth2/par``), the authorization request (state, nonce,
            PKCE challenge, scopes, ``extra_params``) is POSTed there with the
            client's authentication, and the browser is sent to the authorize
            endpoint with only ``client_id`` and the ``request_uri`` it answered; a
            provider without one gets the classic redirect. ``required``: refuse to
            start a login without PAR (``503``, and the log says why). ``off``: never.
            An error or garbage from the PAR endpoint gives the login error page
            (``502``), not a ``500``; a ``request_uri`` that expired before the
            browser reached the provider (WSO2: 60 s) ends at the provider, which
            sends the browser back with an error; ``/oauth2/start`` begins anew.
            Example: ``par: required``
        """,
    ),
    Field(
        "organization",
        parsed(parse_organization, "an organization id"),
        type_text="organization id or handle",
        default_text="default: none, the provider's own users",
        description=r"""
            WSO2 IS 7 (and Asgardeo) B2B: log users into this sub-organization of the
            provider's root organization (tenant) instead of the root itself. The
            gateway talks to the organization's own endpoints and checks its own
            issuer, ``https://HOST/t/ROOT/o/ORG-ID/oauth2/token`` (``ROOT`` is
            ``carbon.super`` for the super tenant), found by discovery like any
            provider, so the provider must be named by a WSO2 issuer or discovery
            URL of the root. The application must be shared into the organization.
            One gateway can front an app for many customer organizations, each on
            its own route or host; sessions of one are useless on another. ID
            tokens carry ``org_id`` and ``org_name``: ``authorize: {claims:
            {org_id: [...]}}`` can check them, the ``oauth2-proxy`` preset sends
            ``X-Forwarded-Org`` (the ``org_id``), ``mod_auth_openidc`` sends
            ``OIDC_CLAIM_org_id`` and ``OIDC_CLAIM_org_name``.
            Example: ``organization: a6b3c9d2-1e2f-4a5b-8c7d-0e1f2a3b4c5d``
        """,
    ),
    Field(
        "scopes",
        _STRINGS,
        default=("openid", "email", "profile"),
        type_text="list of strings",
        default_text="default ``[openid, email, profile]``",
        description=r"""
            Scopes asked for; must include ``openid``. With WSO2, ``email`` brings
            ``email``, ``profile`` brings ``username`` and the names, and ``groups``
            brings ``groups`` (and ``roles``), provided the application is allowed
            those attributes (see :ref:`wso2:Registering the gateway in WSO2`). Ask for
            ``groups`` when ``authorize.groups`` or a groups header needs them.
            Example: ``scopes: [openid, email, profile, groups]``
        """,
    ),
    Field(
        "extra_params",
        _extra_params,
        default=(),
        type_text="mapping of strings",
        default_text="default none",
        description=r"""
            Parameters added to the authorization request: ``prompt``,
            ``login_hint``, ``max_age``, ``acr_values``, WSO2's ``fidp`` (go
            straight to a federated identity provider)... Those the gateway sets
            itself are refused: ``response_type``, ``response_mode``, ``client_id``,
            ``redirect_uri``, ``scope``, ``state``, ``nonce``, ``code_challenge``,
            ``code_challenge_method``, ``request`` and ``request_uri``.
            Example: ``extra_params: {prompt: login}``
        """,
    ),
    Field(
        "redirect_path",
        parsed(_request_path, "a path"),
        default="/oauth2/callback",
        type_text="path",
        default_text="default ``/oauth2/callback``",
        description=r"""
            The callback path, on the route's own host. The callback URL the gateway
            sends (and the provider must have registered, exactly) is
            ``<scheme>://<host><redirect_path>``: ``https`` on a TLS listener, or
            on a plain one when a peer in ``trusted_proxies`` sends
            ``X-Forwarded-Proto: https`` (a TLS-terminating proxy in front), else
            ``http``; and the host as the browser sent it, with its port
            when that is not the default (``https://app1.example.com/oauth2/callback``,
            ``http://app1.localhost:8080/oauth2/callback``). A path starting with
            ``//`` is refused. Example: ``redirect_path: /oauth2/callback``
        """,
    ),
    Field(
        "user_claim",
        _text("a claim name"),
        default="sub",
        type_text="claim name",
        default_text="default ``sub``",
        description=r"""
            The claim that names the user in identity headers and logs. WSO2 IS 7's
            ``sub`` is a UUID; WSO2's own samples use ``username`` (not
            ``preferred_username``, and it comes with the ``profile`` scope). A
            token without the claim falls back to ``sub``, and the log says so
            (``the ID token has no 'username' claim (user_claim); using sub``).
            Example: ``user_claim: username``
        """,
    ),
    Field(
        "email_claim",
        _text("a claim name"),
        default="email",
        type_text="claim name",
        default_text="default ``email``",
        description=r"""
            The claim holding the e-mail address, for headers and
            ``authorize.email_domains``. Example: ``email_claim: email``
        """,
    ),
    Field(
        "groups_claim",
        _text("a claim name"),
        default="groups",
        type_text="claim name",
        default_text="default ``groups``",
        description=r"""
            The claim holding the user's groups, for headers and
            ``authorize.groups``. Example: ``groups_claim: groups``
        """,
    ),
    Field(
        "userinfo",
        _userinfo_mode,
        default="auto",
        type_text="``auto``, ``true`` or ``false``",
        default_text="default ``auto``",
        description=r"""
            Whether login also asks the provider's userinfo endpoint (with the new
            access token) and adds its claims to the session; the ID token's win
            where both have one, and the userinfo ``sub`` must be the ID token's.
            ``auto``: only when the ID token lacks a claim the route needs (its
            ``user_claim``, ``email_claim``, ``groups_claim``, the claims of its
            identity headers and of its ``authorize`` rules, on the route and its
            ``paths``) and the provider has a userinfo endpoint; many providers put
            groups and user names in userinfo only. ``true``: at every login.
            ``false``: never (a claim missing from the ID token is then missing).
            If the call fails, the login fails (``502``).
            Example: ``userinfo: true``
        """,
    ),
    Field(
        "post_logout_redirect",
        _text("a path or URL"),
        default=None,
        type_text="path or URL",
        default_text="default: ``/``, then the gateway's signed-out page",
        description=r"""
            Where ``/oauth2/sign_out`` finally sends the browser. A path is on the
            route's host (``/`` becomes ``https://app1.example.com/``). It is sent to
            the provider as ``post_logout_redirect_uri``, so it must be registered
            there (see :ref:`wso2:Registering the gateway in WSO2`). Unset, the
            provider sends the browser back to ``/`` and the gateway answers that
            visit with a small "You are signed out" page and a link to sign in
            again, instead of starting a new login at once (the provider's login
            form); set it to send the browser elsewhere.
            Example: ``post_logout_redirect: /goodbye``
        """,
    ),
    Field(
        "allowed_redirects",
        list_of(parsed(_https_url, "a URL"), "a list of URLs"),
        default=(),
        type_text="list of URLs",
        default_text="default ``[]``",
        description=r"""
            Origins other than the request's own host that ``rd=`` (and so the page
            shown after login) may name, as ``scheme://host[:port]``; an entry with
            a path never matches. See :ref:`login:Redirect safety`.
            Example: ``allowed_redirects: [https://portal.example.com]``
        """,
    ),
    Field(
        "api_paths",
        list_of(parsed(_request_path, "a path"), "a list of paths"),
        default=(),
        type_text="list of path prefixes",
        default_text="default ``[]``",
        description=r"""
            Requests under these paths are API calls whatever their headers say:
            without a session they get ``401`` JSON, never a login redirect (see
            :ref:`login:Browsers and API clients`). Compared as a plain text prefix of the
            canonical path (see ``public_paths``), so end them with ``/``.
            Example: ``api_paths: [/api/]``
        """,
    ),
    Field(
        "frontchannel_logout",
        boolean,
        default=False,
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            Serve ``/oauth2/frontchannel_logout``, the URL a provider loads in a
            hidden iframe when the user logs out there (see :ref:`login:Logout from the provider`).
            Its requests are not signed, so it is off unless asked for;
            when off the endpoint answers ``404`` like any unknown one. Prefer
            back-channel logout where the provider offers it.
            Example: ``frontchannel_logout: true``
        """,
    ),
)


def _redis_url(value: str) -> str:
    """redis://[:password@]host[:port][/db], rediss://..., unix:/path.sock[?db=N]."""
    parse_redis_url(value)  # its ValueError names the problem without the password
    return value


def _cluster_seed(value: str) -> str:
    """redis://host:port or rediss://host:port of one node of a Redis Cluster."""
    parse_cluster_seed(value)  # its ValueError names the problem without the password
    return value


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port, e.g. 10.0.0.5:26379")
    return host.strip("[]"), int(port)


REDIS_FIELDS = (
    Field(
        "url",
        parsed(_redis_url, "a Redis URL"),
        type_text="Redis URL",
        default_text="required unless ``sentinels`` are given",
        description=r"""
            Where Redis is, in one of these forms:

            ``redis://[:password@]host[:port][/db]``
                TCP; the port defaults to 6379 and the database to 0
                (``redis://127.0.0.1``, ``redis://:s3cret@10.0.0.5:6379/1``). With
                Redis 6 ACLs, ``redis://user:password@host...``. A password with
                ``@``, ``:``, ``/`` or ``#`` in it is percent-encoded (``%40``...).
                IPv6 hosts go in brackets: ``redis://[::1]:6379/0``.
            ``rediss://[:password@]host[:port][/db]``
                The same over TLS. The server's certificate is verified, against the
                system's trusted CAs or ``redis_ca_file``, and so is its host name;
                there is no switch to turn that off.
            ``unix:/path/redis.sock`` (or ``unix:///path/redis.sock``)
                A Unix socket; the database and password as parameters:
                ``unix:/run/redis/redis.sock?db=1&password=s3cret``.

            Anything else is an error that names the accepted forms; error messages
            and logs never repeat the password (``redis://:***@...``). Keep the
            password out of the file with ``${VAR}``:
            ``url: "redis://:${REDIS_PASSWORD}@10.0.0.5:6379/1"``.
            Example: ``url: redis://:s3cret@127.0.0.1:6379/1``
        """,
    ),
    Field(
        "sentinels",
        list_of(parsed(_host_port, "host:port"), "a list like [10.0.0.5:26379]"),
        default=(),
        type_text="list of ``host:port``",
        default_text="default ``[]``",
        description=r"""
            Redis Sentinel instances to ask, in order, which server is the master
            named ``master_name``. Every new connection asks again and checks that
            the server it reached really is the master (``ROLE``), so after a
            failover the gateway follows the new master as soon as its connections
            to the old one break. The sentinels are asked over plain TCP and without
            a password; the master is reached with the password, database and TLS of
            ``url`` (its host and port are not used, but must be written: the
            ``master_name`` will do). Needs ``master_name``.
            Example: ``sentinels: [10.0.0.5:26379, 10.0.0.6:26379, 10.0.0.7:26379]``
        """,
    ),
    Field(
        "master_name",
        _text("a Sentinel master name"),
        type_text="string",
        default_text="required with ``sentinels``",
        description=r"""
            The name the sentinels monitor the master under (``sentinel monitor
            NAME ...`` in ``sentinel.conf``). Example: ``master_name: idgateway``
        """,
    ),
    Field(
        "cluster",
        list_of(
            parsed(_cluster_seed, "a redis:// or rediss:// URL"),
            "a list like [redis://10.0.0.1:7000, redis://10.0.0.2:7000]",
            min_items=1,
        ),
        default=(),
        type_text="list of Redis URLs",
        default_text="default ``[]``: not a cluster",
        description=r"""
            A Redis Cluster, instead of ``url`` (and of ``sentinels``): the URLs of
            some of its nodes, ``redis://[[user]:password@]host:port`` or
            ``rediss://...`` (TLS, verified against ``redis_ca_file`` or the system's
            CAs), all with the same scheme and password, and no database (a cluster
            has only database 0). The gateway asks the first seed that answers for
            the slot map (``CLUSTER SLOTS``), keeps ``pool_size`` connections to each
            primary, follows ``MOVED`` and ``ASK`` redirections, and reads the map
            again when a node fails or a redirection says it changed, so a failover
            (a replica promoted) is followed without a restart. The keys of one
            session share a hash tag, so each session's operations stay in one slot;
            revocations travel by publish/subscribe, which a cluster delivers on every
            node. Seeds need not list every node, but list more than one: a seed
            that is down is skipped. See :ref:`operations:One Redis, Sentinel or Cluster`.
            Example: ``cluster: [redis://:s3cret@10.0.0.1:7000, redis://:s3cret@10.0.0.2:7000, redis://:s3cret@10.0.0.3:7000]``
        """,
    ),
    Field(
        "redis_ca_file",
        file_path("a PEM file of CA certificates"),
        type_text="file path",
        default_text="default: the system's trusted CAs",
        description=r"""
            PEM file of the CA certificates that a ``rediss://`` server's
            certificate must chain to. Read when the gateway starts, not by
            ``idgateway check``: an unreadable file stops the start. Ignored for
            ``redis://`` and ``unix:``.
            Example: ``redis_ca_file: /etc/idgateway/redis-ca.pem``
        """,
    ),
    Field(
        "pool_size",
        integer(1, 10),
        default=10,
        type_text="integer from 1 to 10",
        default_text="default ``10``",
        description=r"""
            Connections each gateway process keeps open to this Redis; commands are
            pipelined on them. The shared Redis has one more per process, for
            publish/subscribe. With ``workers: 4`` on two machines, that is up to
            8 × (``pool_size`` + 1) connections: mind Redis's ``maxclients``.
            Example: ``pool_size: 4``
        """,
    ),
    Field(
        "connect_timeout",
        duration(),
        default=2.0,
        type_text="duration > 0",
        default_text="default ``2s``",
        description=r"""
            Time allowed to open a connection and have it answer its set-up
            (``AUTH``, ``SELECT``...), and to ask each sentinel. Lost connections
            come back by themselves: at once, then after a pause that grows to at
            most a second while Redis stays away. Example: ``connect_timeout: 1s``
        """,
    ),
    Field(
        "command_timeout",
        duration(),
        default=1.0,
        type_text="duration > 0",
        default_text="default ``1s``",
        description=r"""
            The longest any Redis call may take, waiting for a connection included.
            Past it the call counts as "Redis unavailable": a request that needed it
            gets ``503`` (see :ref:`operations:When Redis is down`), and a connection that did not
            answer in time is dropped and opened again. Example: ``command_timeout: 500ms``
        """,
    ),
)
_REDIS_NAMES = tuple(field.name for field in REDIS_FIELDS)


def redis_settings(reader: Reader, found: Section, where: str) -> RedisSettings | None | _Invalid:
    """RedisSettings from the redis keys of a section, or None when none are given."""
    values: dict[str, Any] = {name: found.values.get(name) for name in _REDIS_NAMES}
    if all(values[name] in (None, ()) for name in ("url", "sentinels", "master_name", "cluster")):
        return None
    if values["cluster"]:
        return _cluster_settings(reader, found, values)
    if values["url"] is None and not (values["sentinels"] and values["master_name"]):
        return reader.problem(
            found.node,
            where,
            "give 'url' (e.g. redis://127.0.0.1:6379/0), 'sentinels' and 'master_name', "
            "or 'cluster'",
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


def _cluster_settings(
    reader: Reader, found: Section, values: dict[str, Any]
) -> RedisSettings | _Invalid:
    node = found.nodes.get("cluster", found.node)
    for other, why in (
        ("url", "a cluster's nodes come from its seeds; remove 'url' and put its password "
         "in each seed (redis://:s3cret@10.0.0.1:7000)"),
        ("sentinels", "a Redis Cluster promotes replicas itself; remove 'sentinels'"),
        ("master_name", "a Redis Cluster has no Sentinel master; remove 'master_name'"),
    ):
        if values[other] not in (None, ()):
            return reader.problem(
                found.nodes.get(other, node),
                found.child(other),
                f"'cluster' and '{other}' exclude each other: {why}",
            )
    seeds = [parse_cluster_seed(url) for url in values["cluster"]]
    first = seeds[0]
    for index, seed in enumerate(seeds[1:], 1):
        for part, name in (("tls", "scheme (redis:// or rediss://)"), ("username", "user"),
                           ("password", "password")):
            if seed[part] != first[part]:
                items = getattr(node, "value", None)
                return reader.problem(
                    items[index] if isinstance(items, list) else node,
                    f"{found.child('cluster')}[{index}]",
                    f"every seed of a cluster has the same {name} as the first "
                    f"(the gateway connects to every node alike); make them the same",
                )
    return RedisSettings(
        cluster=tuple(values["cluster"]),
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
            "store: redis needs 'url' (e.g. redis://:s3cret@127.0.0.1:6379/1), sentinels "
            "or cluster",
        )
    if store == "cookie" and redis is not None:
        used = "cluster" if redis.cluster else "url"
        return reader.problem(
            found.node, found.child(used), f"'{used}' is only used with store: redis"
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
    Field(
        "store",
        _one_of(("cookie", "redis")),
        default="cookie",
        type_text="``cookie`` or ``redis``",
        default_text="default ``cookie``",
        description=r"""
            Where sessions live. ``cookie``: in encrypted cookies, so the gateway
            keeps nothing (see :ref:`login:Session cookies`). ``redis``: in Redis, and the
            cookie holds only an opaque session id (see :ref:`login:Sessions in Redis`); then
            ``url`` (or ``sentinels`` and ``master_name``) is required, and the
            other keys of `Redis connections`_ may be given here too. ``url``,
            ``sentinels`` or ``master_name`` with ``store: cookie`` is an error
            (``'url' is only used with store: redis``). Example: ``store: redis``
        """,
    ),
    *REDIS_FIELDS,
    Field(
        "keys",
        list_of(parsed(_session_key, "a base64 key"), "a list of keys", 1),
        default=(),
        type_text="list of keys",
        default_text="default: one random key",
        description=r"""
            AES-256 keys: 32 random bytes each, written in base64, as
            ``openssl rand -base64 32`` prints them (the URL-safe alphabet and
            missing padding are accepted too). They seal the session cookies (with
            ``store: redis``, the session data in Redis) and the login-flow
            cookies. The first key encrypts, every key
            decrypts, which is how keys rotate (see :ref:`login:Rotating session keys`). A key
            of the wrong length is an error that never repeats the key
            (``decodes to 5 bytes, not 32; make a key with: openssl rand -base64 32``);
            so is an empty list. Without ``keys`` the gateway makes a random key,
            which ``check`` warns about: it lasts as long as the process (reloads
            keep it), so every restart signs everybody out, and other processes
            (``workers``, gateways behind one load balancer) cannot read what this
            one sealed. **Every process and machine must have the same keys.**
            Example: ``keys: [${APP1_SESSION_KEY}]``
        """,
    ),
    Field(
        "inactivity_timeout",
        duration(),
        default=3600.0,
        type_text="duration > 0",
        default_text="default ``1h``",
        description=r"""
            A session not used for this long ends (sliding). Use is recorded at most
            once a minute (the cookie is re-issued; with ``store: redis``, the
            session's expiry in Redis is pushed back), so the timeout holds to
            within a minute. Example: ``inactivity_timeout: 30m``
        """,
    ),
    Field(
        "max_duration",
        duration(),
        default=86400.0,
        type_text="duration > 0",
        default_text="default ``24h``",
        description=r"""
            A session ends this long after the login, however active (absolute;
            token refreshes do not extend it). Example: ``max_duration: 8h``
        """,
    ),
    Field(
        "cookie_name",
        parsed(value_syntax.parse_route_name, "a cookie name"),
        type_text="name",
        default_text="default ``_idgw_<route name>``",
        description=r"""
            The session cookie's name: letters, digits, ``_``, ``.`` and ``-``.
            When the browser uses HTTPS (a TLS listener, or a trusted proxy's
            ``X-Forwarded-Proto: https``) ``__Host-`` is put in front
            (``__Host-_idgw_app1``) unless ``cookie_domain`` is set or
            ``cookie_path`` is not ``/``. A large cookie
            session continues in ``<name>_1``, ``<name>_2``... (a Redis session's
            cookie is always one short id). Example: ``cookie_name: app1_session``
        """,
    ),
    Field(
        "cookie_domain",
        parsed(_cookie_domain, "a domain, e.g. example.com"),
        type_text="domain",
        default_text="default: none, a host-only cookie",
        description=r"""
            Sends the cookie to every host under the domain, so that one login
            covers all the hosts of, say, a ``*.apps.example.com`` route. The cookie
            then loses its ``__Host-`` prefix; it still opens only on its own route.
            Example: ``cookie_domain: apps.example.com``
        """,
    ),
    Field(
        "cookie_path",
        parsed(_cookie_path, "a path, e.g. /"),
        default="/",
        type_text="path",
        default_text="default ``/``",
        description="The cookie's ``Path``. Example: ``cookie_path: /``",
    ),
    Field(
        "same_site",
        _one_of(("Lax", "Strict", "None")),
        default="Lax",
        type_text="``Lax``, ``Strict`` or ``None``, as written",
        default_text="default ``Lax``",
        description=r"""
            The cookie's ``SameSite``. ``Strict`` withholds it on every navigation
            that comes from another site (a link in an e-mail, the provider sending
            the browser back), which then looks signed out: keep ``Lax`` unless you
            know better. ``None`` needs ``Secure``, so when the browser uses plain
            HTTP the gateway sends ``Lax`` instead (browsers drop the other).
            Example: ``same_site: Lax``
        """,
    ),
    Field(
        "refresh_leeway",
        duration(allow_zero=True),
        default=60.0,
        type_text="duration >= 0",
        default_text="default ``60s``",
        description=r"""
            The access token is refreshed on the first request that finds it
            expiring within this time (see :ref:`login:Token refresh`); ``0`` waits until it
            has expired. Example: ``refresh_leeway: 2m``
        """,
    ),
    Field(
        "minimal",
        boolean,
        default=False,
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            ``true`` keeps no refresh token in the session (with either store):
            smaller cookies, but the access token is never refreshed, so one passed
            upstream may have expired. Example: ``minimal: true``
        """,
    ),
)

HEADER_OPTION_FIELDS = (
    Field(
        "preset",
        _one_of(HEADER_PRESETS),
        required=True,
        type_text="``oauth2-proxy`` or ``mod_auth_openidc``",
        default_text="required in this form",
        description="The preset the options apply to.",
    ),
    Field(
        "pass_access_token",
        boolean,
        default=False,
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            Send the access token: ``X-Forwarded-Access-Token`` (``oauth2-proxy``) or
            ``OIDC_access_token`` (``mod_auth_openidc``).
        """,
    ),
    Field(
        "pass_authorization_header",
        boolean,
        default=False,
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            Send ``Authorization: Bearer <access token>``; a client's own
            ``Authorization`` header is then removed on this route.
        """,
    ),
    Field(
        "pass_id_token",
        boolean,
        default=False,
        type_text="boolean",
        default_text="default ``false``",
        description="Send ``OIDC_id_token`` (``mod_auth_openidc`` preset only).",
    ),
    Field(
        "claim_prefix",
        parsed(_claim_prefix, "a header prefix"),
        default="OIDC_CLAIM_",
        type_text="header-name prefix",
        default_text="default ``OIDC_CLAIM_``",
        description=r"""
            The claim headers' prefix (``mod_auth_openidc`` preset only). An RFC 9110
            token: letters, digits and ``!#$%&'*+-.^_`|~``, no spaces, colons, CR or
            LF.
        """,
    ),
    Field(
        "list_delimiter",
        parsed(_list_delimiter, "a delimiter"),
        default=",",
        type_text="string",
        default_text='default ``","``',
        description=r"""
            What joins the items of a list claim such as ``groups``. Printable ASCII
            punctuation or spaces (``,``, ``;``, ``", "``, ``|``...): no ``%``,
            letters, digits or control characters. Its characters are
            percent-encoded inside values (see above).
        """,
    ),
    Field(
        "remote_user_header",
        parsed(_header_name, "a header name"),
        default="X-Remote-User",
        type_text="header name",
        default_text="default ``X-Remote-User``",
        description=r"""
            The header naming the user (``mod_auth_openidc`` preset only). A token
            like ``claim_prefix``, and not a header the gateway sets or strips
            itself (``Host``, ``Content-Length``, ``Transfer-Encoding``,
            ``Connection`` and the other hop-by-hop headers, ``Cookie``,
            ``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``, ``X-Request-Id``,
            ``X-Original-URL``, ``X-Rewrite-URL``); ``idgateway check`` names the
            file, line and key of a bad one.
        """,
    ),
)

FORWARD_AUTH_FIELDS = (
    Field(
        "pass_tokens",
        boolean,
        default=False,
        type_text="boolean",
        default_text="default ``false``",
        description=r"""
            ``true`` adds the token headers to ``/oauth2/auth``'s answer, and only
            when the request comes from a peer in ``trusted_proxies`` (the nginx or
            Traefik that asks); anyone else still gets identity headers only. Use
            it only when the proxy in front must hand a token to the application
            (``auth_request_set $token $upstream_http_oidc_access_token;``).
            Example: ``forward_auth: {pass_tokens: true}``
        """,
    ),
)

AUTHORIZE_FIELDS = (
    Field(
        "email_domains",
        _STRINGS,
        default=(),
        type_text="list of strings",
        default_text="default ``[]``",
        description=r"""
            The domain of the ``email_claim`` (after its last ``@``, in any case)
            must be listed, **and** the address must be verified: ``email_verified``
            must be ``true``. A missing ``email_verified`` counts as not verified
            (WSO2 sends it only with the ``email`` scope, and only when the
            application may receive it), and so does a missing address.
            Example: ``email_domains: [example.com, example.org]``
        """,
    ),
    Field(
        "groups",
        _STRINGS,
        default=(),
        type_text="list of strings",
        default_text="default ``[]``",
        description=r"""
            One of the user's groups (``groups_claim``) must be listed. A claim that
            is a single string is one group (WSO2 sends a single group that way); it
            is never split at commas, so a group called ``evil,admins`` is not
            ``admins``. Example: ``groups: [engineering, ops]``
        """,
    ),
    Field(
        "roles",
        _STRINGS,
        default=(),
        type_text="list of strings",
        default_text="default ``[]``",
        description=r"""
            One of the user's roles (the ``roles`` claim, read like groups) must be
            listed. Example: ``roles: [admin]``
        """,
    ),
    Field(
        "claims",
        _claim_rules,
        default=(),
        type_text="mapping of claim names to values",
        default_text="default none",
        description=r"""
            Each named claim must equal its value (for a list claim: one item must);
            a list of values accepts any of them; a value starting with ``~`` is a
            regular expression (RE2, as for ``public_paths``) that must match the
            whole value (or one item). WSO2 IS 7 organizations: ``org_id`` and
            ``org_name`` (see ``oidc.organization``).
            Example: ``claims: {org_name: Super, department: "~ ^(eng|ops)$",
            org_id: [a6b3c9d2-1e2f-4a5b-8c7d-0e1f2a3b4c5d]}``
        """,
    ),
    SCOPES_FIELD,
)


def _acr_value(value: str) -> str:
    """An acr value goes space-separated into a URL and quoted into a header."""
    if not value or any(not "\x21" <= c <= "\x7e" or c in '"\\' for c in value):
        raise ValueError(
            f"{value!r} is not an acr value: printable ASCII without spaces, quotes or "
            "backslashes, e.g. mfa or urn:example:loa:2"
        )
    return value


def _build_step_up(reader: Reader, found: Section) -> StepUp | _Invalid:
    values = found.values
    if not values["acr_values"] and values["max_age"] is None:
        return reader.problem(
            found.node,
            found.key,
            "give acr_values, max_age or both, e.g. login: {acr_values: [mfa], max_age: 10m}",
        )
    return StepUp(acr_values=values["acr_values"], max_age=values["max_age"])


STEP_UP_FIELDS = (
    Field(
        "acr_values",
        list_of(parsed(_acr_value, "an acr value"), "a list of acr values", min_items=1),
        default=(),
        type_text="list of strings",
        default_text="default: any",
        description=r"""
            The authentication context classes this path accepts: the session's ID
            token ``acr`` must be one of them. A session without one is sent through a
            new login asking for them (``acr_values``, space-separated, in that
            order of preference); its new ID token's ``acr`` must then be one of them,
            or the answer is ``403``. WSO2 IS 7 maps ``acr`` values to
            authentication flows (adaptive authentication).
            Example: ``acr_values: [mfa]``
        """,
    ),
    Field(
        "max_age",
        duration(),
        type_text="duration",
        default_text="default: any",
        description=r"""
            How long ago the user may have authenticated (the ID token's
            ``auth_time``) for this path: an older (or unknown) one is sent through a
            new login with ``max_age`` (in seconds), and the new ID token's
            ``auth_time`` must be within it, or the answer is ``403``.
            Example: ``max_age: 10m``
        """,
    ),
)

STEP_UP_FIELD = Field(
    "login",
    mapping(STEP_UP_FIELDS, "a mapping like {acr_values: [mfa], max_age: 10m}", _build_step_up),
    type_text="mapping",
    default_text="optional",
    fields=STEP_UP_FIELDS,
    description=r"""
        Step-up for this path, on a route with ``oidc``: a session whose login
        is weaker (``acr``) or older (``auth_time``) than this asks for goes
        through a new login with these parameters (browsers; the session keeps
        its id and is upgraded in place), or gets ``401`` with
        ``WWW-Authenticate: Bearer error="insufficient_user_authentication"``
        (RFC 9470) and the ``acr_values``/``max_age`` it needs (API clients). A
        provider that answers the new login with a lower ``acr`` or an older
        ``auth_time`` gets ``403``: never a loop. See
        :ref:`login:Step-up per path`.
        Example: ``login: {acr_values: [mfa], max_age: 10m}``
    """,
)


SECRET_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
MIN_SECRET_LENGTH = 16
# Keys that belong to one client_auth method each.
_METHOD_KEYS = {
    "private_key_file": ("private_key_jwt",),
    "client_assertion_audience": ("private_key_jwt",),
    "client_cert": ("tls_client_auth",),
    "client_key": ("tls_client_auth",),
}


def _build_oidc(reader: Reader, found: Section) -> OIDCSettings | _Invalid:
    """OIDCSettings, once the keys that go with ``client_auth`` are all there."""
    values = found.values
    method = values["client_auth"]
    node = found.node
    ok = True
    for name, methods in _METHOD_KEYS.items():
        if name in found.nodes and method not in methods:
            reader.problem(
                found.nodes[name],
                found.child(name),
                f"{name!r} is used only with client_auth: {' or '.join(methods)}; "
                f"remove it or set client_auth: {methods[0]}",
            )
            ok = False
    needed = {
        "client_secret_basic": ("client_secret",),
        "client_secret_post": ("client_secret",),
        "private_key_jwt": ("private_key_file",),
        "tls_client_auth": ("client_cert", "client_key"),
    }[method]
    for name in needed:
        if values.get(name) is None:
            alternative = " (or 'client_secret_file')" if name == "client_secret" else ""
            reader.problem(
                node,
                found.child(name),
                f"missing required key {name!r}{alternative} for client_auth: {method}",
            )
            ok = False
    if "client_secret" in found.nodes and method not in SECRET_AUTH_METHODS:
        reader.warnings.append(
            f"{found.child('client_secret')}: not used with client_auth: {method}; remove it"
        )
    if not ok:
        return INVALID
    if method == "tls_client_auth" and reader.contents:
        from idgateway.config.client_keys import certificate_key_mismatch

        mismatch = certificate_key_mismatch(values["client_cert"], values["client_key"])
        if mismatch is not None:
            return reader.problem(found.nodes["client_key"], found.child("client_key"), mismatch)
    secret = values.get("client_secret")
    if method in SECRET_AUTH_METHODS and secret is not None and len(secret) < MIN_SECRET_LENGTH:
        reader.warnings.append(
            f"{found.child('client_secret')}: the client secret is shorter than "
            f"{MIN_SECRET_LENGTH} characters and may be guessed; have the provider generate "
            "a longer one (WSO2 does), or use client_auth: private_key_jwt"
        )
    return OIDCSettings(**{**values, "client_secret": secret or ""})


ROUTE_AUTH_FIELDS = (
    Field(
        "oidc",
        mapping(OIDC_FIELDS, "a mapping like {provider: wso2, client_id: app1, ...}", _build_oidc),
        type_text="mapping",
        default_text="default: none, no login",
        fields=OIDC_FIELDS,
        description=r"""
            A route logs users in when it has an ``oidc`` block. Five more blocks shape
            the login: ``session``, ``headers``, ``public_paths``, ``authorize`` and
            ``forward_auth``; ``session``, ``public_paths``, ``authorize`` and
            ``forward_auth`` on a route without ``oidc`` are errors (``headers`` there
            has no effect: every route removes forged identity headers anyway). A
            complete example, two applications on two WSO2 tenants (``listeners`` left
            out)::

                providers:
                  wso2:
                    discovery_url:
                    https://localhost:9443/oauth2/oidcdiscovery/.well-known/openid-configuration
                    ca_file: /etc/idgateway/wso2carbon.pem
                  acme:
                    issuer: https://localhost:9443/t/acme.com/oauth2/token
                    insecure_skip_verify: true               # logs a warning at start
                routes:
                  - name: app1
                    hosts: [app1.example.com]
                    upstream: http://127.0.0.1:3000
                    oidc:
                      provider: wso2
                      client_id: mod-auth-app
                      client_secret: ${APP1_CLIENT_SECRET}
                      client_auth: client_secret_basic        # or client_secret_post
                      scopes: [openid, email, profile, groups]
                      user_claim: username
                    session:
                      store: cookie
                      keys: [${APP1_SESSION_KEY}]             # first encrypts, all decrypt
                      inactivity_timeout: 1h
                      max_duration: 24h
                    headers: oauth2-proxy                     # or mod_auth_openidc, or a mapping
                    public_paths: [/healthz, "GET /static/"]
                    authorize:
                      email_domains: [example.com]
                      groups: [engineering]
                  - name: app2
                    hosts: [app2.example.com]
                    upstream: http://127.0.0.1:3001
                    oidc:
                      provider: acme
                      client_id: gw-app2
                      client_secret_file: /run/credentials/app2

            ``app1`` logs in on WSO2's super tenant, found by its discovery URL, with TLS
            verified against WSO2's exported certificate; it names the user by WSO2's
            ``username`` claim, sends OAuth2 Proxy style headers, lets ``/healthz`` and
            ``GET``/``HEAD`` under ``/static/`` through without login, and admits only
            users with a verified ``example.com`` address in the ``engineering``
            group. ``app2`` shows the minimum: a provider (the ``acme.com`` tenant,
            named by its issuer), a client id and a secret, here read from a file;
            everything else takes its default, including a random session key
            (``check`` warns about that, and about ``insecure_skip_verify``). Note that
            ``${VAR}`` works unquoted inside ``[...]``.
        """,
    ),
    Field(
        "session",
        mapping(
            SESSION_FIELDS,
            "a mapping like {keys: [${APP1_SESSION_KEY}]}",
            _build_session,
        ),
        type_text="mapping",
        default_text="default: cookie sessions",
        fields=SESSION_FIELDS,
        description=r"""
            With ``store: redis``, the route's ``session`` block also takes ``url``,
            ``sentinels``, ``master_name``, ``redis_ca_file``, ``pool_size``,
            ``connect_timeout`` and ``command_timeout``, as described under `Redis
            connections`_; the keys below apply to both stores. For example::

                workers: auto                                 # or a number; default 1
                routes:
                  - name: app1
                    # ... as before ...
                    session:
                      store: redis
                      url: redis://:s3cret@127.0.0.1:6379/1
                      keys: [${APP1_SESSION_KEY}]
                      inactivity_timeout: 1h
                      max_duration: 24h

            Here ``app1``'s sessions live in database 1 of the Redis on 127.0.0.1
            (password ``s3cret``), encrypted with ``APP1_SESSION_KEY``; a session ends
            after an hour without use or 24 hours after the login; and the gateway runs
            one worker process per CPU, all of them sharing those sessions.
        """,
    ),
    Field(
        "headers",
        _headers,
        default=HeaderSettings(),
        type_text="preset name, options mapping or custom mapping",
        default_text="default ``oauth2-proxy``",
        fields=HEADER_OPTION_FIELDS,
        description=r"""
            Which identity headers the upstream gets, in one of three forms:

            * a **preset** name: ``headers: oauth2-proxy`` (the default) or
              ``headers: mod_auth_openidc``;
            * the **options** form, a mapping with ``preset`` and options:
              ``headers: {preset: oauth2-proxy, pass_access_token: true}``;
            * a **custom** mapping of header names to claim names:
              ``headers: {X-User: username, X-Email: email, X-Org: org_name}``.

            What each preset sets (a header is left out when its claim is missing):

            .. list-table::
               :header-rows: 1
               :widths: 30 40 30

               * - ``oauth2-proxy``
                 - value
                 - note
               * - ``X-Forwarded-User``
                 - the user (``user_claim``, else ``sub``)
                 -
               * - ``X-Forwarded-Email``
                 - the ``email_claim``
                 -
               * - ``X-Forwarded-Preferred-Username``
                 - ``preferred_username``, else ``username``
                 -
               * - ``X-Forwarded-Groups``
                 - the ``groups_claim``, joined by ``list_delimiter``
                 -
               * - ``X-Forwarded-Org``
                 - ``org_id`` (WSO2 IS 7 organizations)
                 - when the token has one
               * - ``X-Forwarded-Access-Token``
                 - the access token
                 - only with ``pass_access_token: true``

            .. list-table::
               :header-rows: 1
               :widths: 30 40 30

               * - ``mod_auth_openidc``
                 - value
                 - note
               * - ``X-Remote-User``
                 - the user (``user_claim``, else ``sub``)
                 - name set by ``remote_user_header``
               * - ``OIDC_CLAIM_<claim>``
                 - every claim of the session whose name is letters, digits, ``_``,
                   ``.`` and ``-``: ``OIDC_CLAIM_sub``, ``OIDC_CLAIM_email``,
                   ``OIDC_CLAIM_groups``, ``OIDC_CLAIM_org_name``...
                 - prefix set by ``claim_prefix``; claims that are JSON objects are left
                   out
               * - ``OIDC_access_token``
                 - the access token
                 - only with ``pass_access_token: true``
               * - ``OIDC_id_token``
                 - the ID token
                 - only with ``pass_id_token: true``

            With either preset, ``pass_authorization_header: true`` adds
            ``Authorization: Bearer <access token>`` (and removes the client's own
            ``Authorization`` header). The session's claims are those of the ID token
            (and of userinfo with ``oidc.userinfo``), without the ones that only matter
            for checking it (``iss``, ``aud``, ``exp``, ``iat``, ``nbf``, ``jti``,
            ``at_hash``, ``c_hash``, ``nonce``, ``azp``, ``isk``). List claims are
            joined with ``list_delimiter``, booleans are ``true``/``false``, numbers
            are written as JSON writes them. Note that nginx, as an upstream, drops
            header names with ``_`` unless told ``underscores_in_headers on;``.

            **Claim values are percent-encoded where they could be misread.** Every
            identity header value built from a claim (the user, e-mail, groups, every
            ``OIDC_CLAIM_*``, custom headers) is printable ASCII, and a list header has
            exactly one entry per list item: in each value or list item, the gateway
            writes ``%HH`` (the UTF-8 bytes, as in a URL) for

            * ``%`` itself, so that decoding gives the claim back exactly;
            * every character of ``list_delimiter`` (with the default ``,``, the group
              ``ops,admin`` arrives as ``ops%2Cadmin``, one group, not two);
            * CR, LF, NUL, tab, every other control character and DEL;
            * every non-ASCII character (``José`` arrives as ``Jos%C3%A9``): upstreams
              read header bytes above 127 as Latin-1, as UTF-8 or not at all, and some
              treat U+0085 or U+2028 as line breaks;
            * a space at the start or end of a value or list item (HTTP parsers and list
              splitters trim it, so the group " admins" would become ``admins``); spaces inside
              are kept (``Domain Users``).

            Anything else, the common case, arrives unchanged. An application decodes an
            item with any URL-decoding function (``urllib.parse.unquote``,
            ``decodeURIComponent``, ``rawurldecode``) after splitting the list. In a
            list, items that are JSON objects, lists or ``null`` are left out; a claim
            that is a JSON object gives no header. Tokens (``X-Forwarded-Access-Token``,
            ``OIDC_access_token``, ``OIDC_id_token``, ``Authorization``) are sent as they
            are, or not at all if they hold anything but visible ASCII. With the
            ``mod_auth_openidc`` preset, a claim whose header would be one the gateway
            sets or strips itself (for instance a claim ``For`` with ``claim_prefix:
            X-Forwarded-``, or ``Content-Length``) is left out.

            Example::

                headers:
                  preset: mod_auth_openidc
                  pass_access_token: true
                  list_delimiter: ";"

            In the custom form, each key is a header name (a token, not a header the
            gateway sets or strips itself, as for ``remote_user_header``) and each value
            a claim name; the route's ``user_claim`` gives the user (falling back to
            ``sub`` like the presets), and lists are joined with ``,`` (values encoded
            as above). This form passes no tokens (use
            a preset's options for that), and a mapping with a ``preset`` key is the
            options form, so no header can be called ``preset``.

            Whatever the form, every route, with login or without, removes from
            incoming requests every identity header that *any* route of the gateway
            could set (routes may share an upstream), in any spelling (any case, ``_``
            for ``-``), so a client can never pose as a user: ``X-Forwarded-User``,
            ``X-Forwarded-Email``, ``X-Forwarded-Preferred-Username``,
            ``X-Forwarded-Groups``, ``X-Forwarded-Org``, ``X-Forwarded-Access-Token``,
            ``X-Auth-Request-User``, ``X-Auth-Request-Email``,
            ``X-Auth-Request-Groups``, ``X-Auth-Request-Preferred-Username``,
            ``X-Remote-User``, ``Remote-User``, ``OIDC_access_token``,
            ``OIDC_id_token`` and every header starting with ``OIDC_CLAIM_``, plus every
            login route's ``remote_user_header``, ``claim_prefix`` headers and custom
            header names. One consequence to know: when any route has
            ``pass_authorization_header: true``, ``Authorization`` is on that list too,
            so **no route** passes a client's own ``Authorization`` header upstream any
            more.

            The options form's keys:
        """,
    ),
    Field(
        "public_paths",
        list_of(parsed(_public_path, "a path"), "a list like [/healthz, 'GET /static/']"),
        default=(),
        type_text="list of strings",
        default_text="default ``[]``",
        description=r"""
            Requests that skip login, each in one of three forms:

            ``/healthz``
                A path prefix, for any method.
            ``"GET /static/"``
                A method (``GET``, ``HEAD``, ``POST``, ``PUT``, ``PATCH``,
                ``DELETE``, ``OPTIONS``, ``TRACE``, ``CONNECT``; any case) and a
                prefix. A ``GET`` rule also lets ``HEAD`` through.
            ``"~ ^/assets/.*[.]css$"``
                ``~`` and a regular expression (RE2 syntax, see below), searched for
                in the path, so anchor it with ``^``; a method may come first:
                ``"GET ~ ^/api/public/"``. Quote these: YAML reads ``[``, ``]``,
                ``{``, ``}`` and ``,`` inside ``[...]`` as its own.

            Anything else is an error (``'healthz' is not a public path``), and so is
            a regular expression that does not compile.

            Regular expressions here and in ``authorize.claims`` run on RE2, whose
            time is linear in the path whatever the pattern, so no pattern (such as
            ``^/pub/(a+)+$``, which makes Python's ``re`` take seconds over 30
            characters) lets a request stall the gateway. RE2 is Python's syntax
            without backreferences (``\1``, ``(?P=name)``), lookahead and lookbehind
            (``(?=``, ``(?!``, ``(?<=``, ``(?<!``) and ``\Z`` (write ``$`` or ``\z``):
            ``idgateway check`` refuses those, saying why. ``\d``, ``\w`` and ``\b``
            are ASCII-only and ``$`` matches only at the very end.
            Example: ``public_paths: [/healthz, "GET /static/", "~ ^/assets/.*[.]css$"]``

            Matching uses the request's **canonical path** (see
            :ref:`architecture:Request paths: one reading for the gate and the upstream`), the same
            path the upstream
            receives: ``/static/../admin`` is ``/admin`` and needs a login, while
            ``/static/%2e%2e/admin``, ``/static/..;/admin`` and
            ``//static/..%2Fadmin`` cannot be read one way only and get ``400``. A
            request is public only if every way an upstream may read its path is public
            (nginx merging ``//``, a servlet container dropping ``;parameters``). The
            query string never counts. A prefix ends at a path segment: ``/healthz``
            matches ``/healthz`` and ``/healthz/deep`` but not ``/healthzz`` or
            ``/healthz-internal``, and ``/static/`` matches everything under it and
            ``/static`` itself. Prefixes are case-sensitive unless the route sets
            ``case_insensitive_paths: true``. A public request is passed without
            identity headers, even from a signed-in user, and without the gateway's
            cookies. Paths under ``/oauth2/`` (and ``redirect_path``) belong to the
            gateway and are never public.
        """,
    ),
    Field(
        "authorize",
        record(AUTHORIZE_FIELDS, "a mapping like {email_domains: [example.com]}", AuthorizeRules),
        default=AuthorizeRules(),
        type_text="mapping",
        default_text="default: none, every user signed in may pass",
        fields=AUTHORIZE_FIELDS,
        description=r"""
            Who may use the route once signed in. Every rule given must pass; a user who
            fails one gets ``403`` (see :ref:`login:Answers and error pages`), and the log says
            which rule (``route app1: bob refused: not in an allowed group``). Without
            ``authorize``, every user the provider signs in may pass. The rules read the
            session's claims (from the ID token, and from userinfo with
            ``oidc.userinfo``).

            An entry of the route's ``paths`` may carry its own ``authorize`` with the
            same keys: under that prefix its rules apply **instead of** the route's
            (they are not added to them; the longest such prefix wins). The prefix is
            compared with the canonical path here, so ``/%61dmin/users`` and
            ``/x/../admin/users`` fall under ``/admin/`` too. ``/oauth2/auth`` picks the
            rules by the path in the ``X-Forwarded-Uri`` (Traefik) or
            ``X-Original-URI`` header when a trusted proxy sends it, else by its own
            path. For example, everyone in
            ``engineering`` may use the application, but only ``admins`` its
            ``/admin/`` pages::

                authorize:
                  groups: [engineering]
                paths:
                  - prefix: /admin/
                    upstream: http://127.0.0.1:3000
                    authorize: {groups: [admins]}
        """,
    ),
    Field(
        "forward_auth",
        record(FORWARD_AUTH_FIELDS, "a mapping like {pass_tokens: false}", ForwardAuthSettings),
        default=ForwardAuthSettings(),
        type_text="mapping",
        default_text="default ``{pass_tokens: false}``",
        fields=FORWARD_AUTH_FIELDS,
        description=r"""
            ``/oauth2/auth`` (nginx ``auth_request``, Traefik ``forwardAuth``) answers
            with the user's identity headers. It never includes the route's **token**
            headers (``X-Forwarded-Access-Token``, ``OIDC_access_token``,
            ``OIDC_id_token``, ``Authorization``), whatever ``headers`` passes to the
            upstream: the endpoint is on the application's own origin, so a script in
            the page (an XSS in the application) could ``fetch('/oauth2/auth')`` and read
            them, which would defeat the HttpOnly session cookie. The upstream still
            gets them on proxied requests.
        """,
    ),
    bearer_field(),
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
        broken = reader.broken_names.setdefault("providers", set())
        broken.add(name)  # until it passes every check below
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
                    f"provider {name!r}: {url_key} {value_syntax.mask_credentials(url)} carries "
                    "credentials, which the gateway does not send; remove them (they are "
                    "masked wherever the URL is shown)"
                )
        providers.append(ProviderSettings(name=name, **values))
        broken.discard(name)
    return tuple(providers)


def check_provider_reference(
    reader: Reader, found: Section, providers: tuple[ProviderSettings, ...] | _Invalid
) -> bool:
    """Whether the route's ``oidc.provider`` names a usable provider (else a problem).

    Run even on a route whose other keys are wrong, so that one pass of the
    checker reports every problem in the file. A provider that is declared but
    failed its own checks is not "unknown": its problem is reported where it
    is declared, and the reference is simply not usable.
    """
    oidc = found.values.get("oidc")
    if oidc is None or oidc is INVALID or providers is INVALID:
        return oidc is not INVALID
    if oidc.provider in reader.broken_names.get("providers", set()):
        return False
    known = [p.name for p in providers]
    if oidc.provider not in known:
        declared = sorted({*known, *reader.broken_names.get("providers", set())})
        choices = ", ".join(declared) or "none are defined under 'providers:'"
        reader.problem(
            found.nodes["oidc"],
            found.child("oidc") + ".provider",
            f"unknown provider {oidc.provider!r}; known providers: {choices}",
        )
        return False
    return True


def build_route_auth(
    reader: Reader, found: Section, providers: tuple[ProviderSettings, ...] | _Invalid
) -> RouteAuth | None | _Invalid:
    """The route's RouteAuth from its oidc/session/... values, or None for open routes."""
    values = found.values
    oidc = values.get("oidc")
    names = ("session", "public_paths", "authorize", "forward_auth")
    if oidc is None:
        # A bearer route without login still has rules and public paths.
        bearer_only = "bearer" in found.nodes
        for name in names:
            if name in found.nodes and not (bearer_only and name != "session"):
                reader.problem(
                    found.nodes[name],
                    found.child(name),
                    f"'{name}' only applies to a route with an 'oidc' block"
                    + ("" if name == "session" else " or a 'bearer' block"),
                )
        return None
    if oidc is INVALID or not check_provider_reference(reader, found, providers):
        return INVALID
    if any(values.get(n) is INVALID for n in (*names, "headers")):
        return INVALID
    if oidc.organization is not None and providers is not INVALID:
        root = next(p for p in providers if p.name == oidc.provider)
        try:
            organization_issuer(root, oidc.organization)
        except NotAnOrganizationRoot as error:
            return reader.problem(
                found.nodes["oidc"], found.child("oidc") + ".organization", str(error)
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
