"""The ``bearer:`` block of a route (APIs behind the gateway) and the ``scopes`` rule.

Read by the same schema engine as the rest of the file, so a bad value names
its file, line and key and says how to fix it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from idgateway.config.model import (
    BearerAuth,
    BearerSettings,
    IntrospectionSettings,
    ProviderSettings,
    RouteAuth,
)
from idgateway.config.schema import (
    INVALID,
    Field,
    Reader,
    Section,
    _Invalid,
    duration,
    list_of,
    parsed,
    record,
)

TOKEN_KINDS = ("jwt", "opaque")
DPOP_MODES = ("off", "optional", "required")
# RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"\A[\x21\x23-\x5b\x5d-\x7e]+\Z")
# RFC 7235 quoted-string content we are willing to write into a challenge.
_REALM = re.compile(r"\A[\x20\x21\x23-\x5b\x5d-\x7e]{1,200}\Z")


def _nonempty(expected: str) -> Any:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(f"must not be empty; expected {expected}")
        return value

    return parsed(check, expected)


def _scope(value: str) -> str:
    if not _SCOPE_TOKEN.match(value):
        raise ValueError(
            f"{value!r} is not an OAuth scope (RFC 6749: visible ASCII without spaces, "
            '" or \\), e.g. orders:read'
        )
    return value


def _token_kind(value: str) -> str:
    if value not in TOKEN_KINDS:
        raise ValueError(
            f"{value!r} is not a token kind; use jwt and/or opaque, e.g. [jwt, opaque]"
        )
    return value


def _dpop(value: str) -> str:
    if value not in DPOP_MODES:
        raise ValueError(f"{value!r} is not one of: off, optional, required")
    return value


def _realm(value: str) -> str:
    if not _REALM.match(value):
        raise ValueError('must be 1 to 200 printable ASCII characters without " or \\, e.g. orders')
    return value


_DPOP_TEXT = parsed(_dpop, "off, optional or required")


def _dpop_mode(reader: Reader, node: Any, key: str) -> Any:
    """``off``, ``optional`` or ``required``; YAML 1.1 reads a bare ``off`` (and
    ``false``) as a boolean, which means ``off`` here."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
        value = reader.value(node, key)
        if value is False:
            return "off"
    return _DPOP_TEXT(reader, node, key)


SCOPES = list_of(parsed(_scope, "an OAuth scope"), "a list of scopes, e.g. [orders:read]")

SCOPES_FIELD = Field(
    "scopes",
    SCOPES,
    default=(),
    type_text="list of strings",
    default_text="default ``[]``",
    description=r"""
        Bearer tokens only (see :doc:`apis`): every listed scope must have been
        granted to the token (its ``scope`` claim, a space-separated string or a
        list; for an opaque token, the introspection answer's ``scope``). A token
        that lacks one gets ``403`` with ``WWW-Authenticate: Bearer
        error="insufficient_scope", scope="..."`` naming the scopes needed. A
        browser session has no scopes: on a route with ``oidc`` and ``bearer``,
        rules that list ``scopes`` refuse every session (``403``), so give them
        to the API's paths (``paths[].authorize``). Example:
        ``scopes: [orders:read]``
    """,
)

INTROSPECTION_FIELDS = (
    Field(
        "client_id",
        _nonempty("a client id"),
        required=True,
        example="client_id: gw-introspect",
        type_text="string",
        default_text="required",
        description=r"""
            The client the gateway authenticates as at the provider's
            ``introspection_endpoint`` (HTTP basic authentication, as at the token
            endpoint). In WSO2 any application's client id and secret may
            introspect. Example: ``client_id: gw-introspect``
        """,
    ),
    Field(
        "client_secret",
        _nonempty("a client secret"),
        secret=True,
        default="",
        example="client_secret: ${INTROSPECT_SECRET}",
        type_text="string, *secret*",
        default_text="required, unless the route's oidc client authenticates with a key",
        description=r"""
            That client's secret, or ``client_secret_file: PATH`` as for ``oidc``.
            Leave it out when ``client_id`` is the route's own ``oidc.client_id`` and
            that client uses ``client_auth: private_key_jwt`` or ``tls_client_auth``:
            introspection then authenticates the same way (a fresh client assertion
            per call, or the client certificate).
            Example: ``client_secret: ${INTROSPECT_SECRET}``
        """,
    ),
    Field(
        "cache",
        duration(allow_zero=True),
        default=300.0,
        type_text="duration",
        default_text="default ``5m``",
        description=r"""
            The longest time an ``active: true`` answer is reused for the same token
            (never past the token's ``exp``): a token revoked at the provider still
            passes for up to this long. ``0`` asks on every request. Example:
            ``cache: 1m``
        """,
    ),
    Field(
        "negative_cache",
        duration(allow_zero=True),
        default=10.0,
        type_text="duration",
        default_text="default ``10s``",
        description=r"""
            How long an ``active: false`` answer is reused, so a client repeating a
            dead token does not make the gateway ask the provider each time.
            Example: ``negative_cache: 30s``
        """,
    ),
    Field(
        "timeout",
        duration(),
        default=10.0,
        type_text="duration > 0",
        default_text="default ``10s``",
        description=r"""
            The longest wait for the provider's answer. A request whose token has
            no cached answer then gets ``503`` with ``Retry-After`` (never a pass).
            Example: ``timeout: 3s``
        """,
    ),
)

BEARER_FIELDS = (
    Field(
        "provider",
        _nonempty("a provider name"),
        required=True,
        example="provider: wso2",
        type_text="string",
        default_text="required",
        description=r"""
            A name under ``providers``: the tokens' issuer. JWTs are checked against
            its discovery document's ``issuer`` and its JWKS (the keys ID tokens use,
            with the same rotation handling); opaque tokens are sent to its
            ``introspection_endpoint``. Example: ``provider: wso2``
        """,
    ),
    Field(
        "tokens",
        list_of(parsed(_token_kind, "jwt or opaque"), "a list like [jwt, opaque]", min_items=1),
        default=("jwt",),
        type_text="list of ``jwt``, ``opaque``",
        default_text="default ``[jwt]``",
        description=r"""
            Which access tokens the route accepts: ``jwt`` (WSO2's "Token type: JWT",
            verified by the gateway itself) and/or ``opaque`` (WSO2's default UUID
            tokens, checked by introspection, which needs ``introspection``). A JWT on
            a route with ``[opaque]`` only is introspected too. Example:
            ``tokens: [jwt, opaque]``
        """,
    ),
    Field(
        "audiences",
        list_of(_nonempty("an audience"), "a list of audiences, e.g. [orders]"),
        default=(),
        type_text="list of strings",
        default_text="required with ``jwt``",
        description=r"""
            A token's ``aud`` must contain one of these (WSO2 puts the client id and
            the application's configured audiences there). Required when ``tokens``
            has ``jwt``: without it, a token issued to any application of the tenant
            would pass. Checked on introspection answers too when they carry
            ``aud``. Example: ``audiences: [orders]``
        """,
    ),
    Field(
        "clients",
        list_of(_nonempty("a client id"), "a list of client ids, e.g. [spa-client]"),
        default=(),
        type_text="list of strings",
        default_text="default ``[]``: any client",
        description=r"""
            The client a token was issued to (its ``azp``, else ``client_id``) must be
            listed. Example: ``clients: [spa-client, billing-service]``
        """,
    ),
    Field(
        "introspection",
        record(
            INTROSPECTION_FIELDS,
            "a mapping like {client_id: gw-introspect, client_secret: ...}",
            IntrospectionSettings,
        ),
        type_text="mapping",
        default_text="required with ``opaque``",
        fields=INTROSPECTION_FIELDS,
        description=r"""
            How opaque tokens are checked (RFC 7662) at the provider's
            ``introspection_endpoint`` (WSO2: ``/oauth2/introspect``).
        """,
    ),
    Field(
        "dpop",
        _dpop_mode,
        default="off",
        type_text="``off``, ``optional`` or ``required``",
        default_text="default ``off``",
        description=r"""
            DPoP (RFC 9449) sender-constrained tokens. ``optional``: a request with
            ``Authorization: DPoP`` must carry a valid ``DPoP`` proof for this very
            request, signed by the key the token is bound to (``cnf.jkt``); plain
            ``Bearer`` tokens still pass unless they are DPoP-bound. ``required``:
            only DPoP. ``off``: DPoP requests and DPoP-bound tokens are refused.
            Example: ``dpop: optional``
        """,
    ),
    Field(
        "realm",
        parsed(_realm, "a realm name"),
        type_text="string",
        default_text="default: the route's name",
        description=r"""
            The ``realm`` of the ``WWW-Authenticate`` challenges of ``401`` and
            ``403`` answers. Example: ``realm: orders``
        """,
    ),
    Field(
        "user_claim",
        _nonempty("a claim name"),
        type_text="string",
        default_text="default: ``oidc.user_claim``, else ``sub``",
        description=r"""
            The token claim that names the user in the identity headers (for an
            opaque token: the introspection answer's member, e.g. ``username``). A
            token without it, issued by the client-credentials grant, names the
            user ``client:<client_id>``. Example: ``user_claim: username``
        """,
    ),
    Field(
        "leeway",
        duration(allow_zero=True),
        default=60.0,
        type_text="duration",
        default_text="default ``60s``",
        description=r"""
            Clock skew allowed when checking ``exp``, ``nbf`` and ``iat``, and the
            age of DPoP proofs. Example: ``leeway: 30s``
        """,
    ),
)


def bearer_field() -> Field:
    return Field(
        "bearer",
        record(
            BEARER_FIELDS, "a mapping like {provider: wso2, audiences: [orders]}", BearerSettings
        ),
        type_text="mapping",
        default_text="default: none, no tokens",
        fields=BEARER_FIELDS,
        description=r"""
            The route accepts OAuth 2.0 access tokens (``Authorization: Bearer`` or
            ``DPoP``) from API clients; see :doc:`apis`. With ``oidc`` too, a request
            carrying a token is judged by its token and any other by its session. The
            route's ``headers``, ``public_paths``, ``authorize`` and ``paths[].authorize``
            apply to tokens as to sessions. Example::

                routes:
                  - name: orders-api
                    hosts: [api.example.com]
                    upstream: http://127.0.0.1:4000
                    bearer:
                      provider: wso2
                      tokens: [jwt, opaque]
                      audiences: [orders]
                      clients: [spa-client, billing-service]
                      introspection:
                        client_id: gw-introspect
                        client_secret: ${INTROSPECT_SECRET}
                      dpop: optional
                    authorize:
                      scopes: [orders:read]
                    paths:
                      - {prefix: /admin/, upstream: http://127.0.0.1:4001,
                         authorize: {scopes: [orders:admin]}}
        """,
    )


def build_route_bearer(
    reader: Reader,
    found: Section,
    providers: tuple[ProviderSettings, ...] | _Invalid,
    auth: RouteAuth | None | _Invalid,
) -> BearerAuth | None | _Invalid:
    """The route's BearerAuth, or None when it has no ``bearer`` block."""
    values = found.values
    settings = values.get("bearer")
    if settings is None:
        return None
    if settings is INVALID or auth is INVALID:
        return INVALID
    assert isinstance(settings, BearerSettings)
    node = found.nodes["bearer"]
    where = found.child("bearer")
    problems = len(reader.problems)
    if providers is not INVALID:
        known = {p.name for p in providers}
        if settings.provider not in known:
            choices = ", ".join(sorted(known)) or "none are defined under 'providers:'"
            reader.problem(
                node,
                where + ".provider",
                f"unknown provider {settings.provider!r}; known providers: {choices}",
            )
    if "jwt" in settings.tokens and not settings.audiences:
        reader.problem(
            node,
            where + ".audiences",
            "required when tokens has jwt: list the audiences this API's tokens carry, "
            "e.g. audiences: [orders] (else a token issued to any application passes)",
        )
    if "opaque" in settings.tokens and settings.introspection is None:
        reader.problem(
            node,
            where + ".introspection",
            "required when tokens has opaque, e.g. introspection: "
            "{client_id: gw-introspect, client_secret: ${INTROSPECT_SECRET}}",
        )
    introspection = settings.introspection
    if introspection is not None and not introspection.client_secret:
        oidc = auth.oidc if auth is not None else None
        if (
            oidc is None
            or oidc.client_id != introspection.client_id
            or oidc.client_auth not in ("private_key_jwt", "tls_client_auth")
        ):
            reader.problem(
                node,
                where + ".introspection.client_secret",
                "missing required key 'client_secret' (or 'client_secret_file'); it may be "
                "left out only for the route's own oidc client_id with client_auth: "
                "private_key_jwt or tls_client_auth",
            )
    if len(set(settings.tokens)) != len(settings.tokens):
        reader.problem(node, where + ".tokens", "a token kind is listed twice")
    if len(reader.problems) > problems:
        return INVALID
    if auth is not None:
        oidc = auth.oidc
        return BearerAuth(
            settings=settings,
            headers=auth.headers,
            public_paths=auth.public_paths,
            authorize=auth.authorize,
            forward_auth=auth.forward_auth,
            user_claim=settings.user_claim or oidc.user_claim,
            email_claim=oidc.email_claim,
            groups_claim=oidc.groups_claim,
        )
    if any(values.get(n) is INVALID for n in ("headers", "public_paths", "authorize")):
        return INVALID
    return BearerAuth(
        settings=settings,
        headers=values["headers"],
        public_paths=values["public_paths"],
        authorize=values["authorize"],
        forward_auth=values["forward_auth"],
        user_claim=settings.user_claim or "sub",
    )


def check_scopes_need_bearer(reader: Reader, found: Section, subs: tuple[Section, ...]) -> None:
    """``scopes`` on a route without ``bearer`` could never pass (sessions have none)."""
    if found.values.get("bearer") is not None:
        return
    for where in (found, *subs):
        rules = where.values.get("authorize")
        if rules is not None and rules is not INVALID and rules.scopes:
            reader.problem(
                where.nodes["authorize"],
                where.child("authorize") + ".scopes",
                "'scopes' applies to bearer tokens only; add a 'bearer' block to the route "
                "or remove it (a browser session has no scopes)",
            )
