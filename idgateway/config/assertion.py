"""Config specs for signed identity assertions: ``assertion_keys`` and a route's ``assertion``.

The keys are loaded when the file is read (a bad key is a config error with its
file, line and the fix, never a failure at the first request); checks that need
several routes at once run from ``check_assertions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml

from idgateway.config import values as value_syntax
from idgateway.config.auth import _header_name_problem
from idgateway.config.files import loose_permissions
from idgateway.config.identity_names import identity_header_names
from idgateway.config.model import AssertionSettings, HeaderSettings, Route
from idgateway.config.schema import (
    INVALID,
    Field,
    Reader,
    Section,
    _Invalid,
    file_path,
    list_of,
    parsed,
    record,
)
from idgateway.http.header_names import header_key

if TYPE_CHECKING:
    from idgateway.config.signing_keys import SigningKey

MAX_LIFETIME = 3600.0
MIN_LIFETIME = 1.0
_KEY_FILE = file_path("a PEM key file, e.g. /etc/idgateway/assertion-2026.pem")
_KEYS_EXPECTED = "a list of PEM key files, e.g. [/etc/idgateway/assertion.pem]"


def _signing_key(reader: Reader, node: yaml.Node, key: str) -> SigningKey | _Invalid:
    path = _KEY_FILE(reader, node, key)
    if path is INVALID:
        return INVALID
    # Here, not at the top: it imports cryptography (see load_config).
    from idgateway.config.signing_keys import AssertionKeyError, load_signing_key

    try:
        signing_key = load_signing_key(path)
    except AssertionKeyError as error:
        return reader.problem(node, key, str(error))
    # Whoever can read the key can sign identities every upstream believes.
    warning = loose_permissions(path, secret=True)
    if warning is not None:
        reader.warnings.append(warning)
    return signing_key


def _assertion_keys(reader: Reader, node: yaml.Node, key: str) -> Any:
    if not reader.contents:
        # Names only, not opened: no key loaded (check_assertions knows).
        paths = list_of(_KEY_FILE, _KEYS_EXPECTED)(reader, node, key)
        return INVALID if paths is INVALID else ()
    keys = list_of(_signing_key, _KEYS_EXPECTED)(reader, node, key)
    if keys is INVALID:
        return INVALID
    seen: dict[str, int] = {}
    for index, signing_key in enumerate(keys):
        if signing_key.kid in seen:
            reader.problem(
                node.value[index],
                f"{key}[{index}]",
                f"{signing_key.path} holds the same key as {key}[{seen[signing_key.kid]}]; "
                "list each key once",
            )
        seen.setdefault(signing_key.kid, index)
    return keys


def _lifetime(text: str) -> float:
    seconds = value_syntax.parse_duration(text)
    if not MIN_LIFETIME <= seconds <= MAX_LIFETIME:
        raise ValueError(
            f"must be from 1s to 1h; got {text!r} (an assertion is a short-lived proof: "
            "a minute or two is usual, e.g. 60s)"
        )
    return seconds


def _assertion_header(value: str) -> str:
    problem = _header_name_problem(value)
    if problem is not None:
        raise ValueError(problem.replace("X-Remote-User", "X-Idgateway-Assertion"))
    return value


def _audience(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty; give the name the upstream expects, e.g. orders")
    return value


ASSERTION_FIELDS = (
    Field(
        "header",
        parsed(_assertion_header, "a header name, e.g. X-Idgateway-Assertion"),
        default=AssertionSettings().header,
        type_text="header name",
        default_text="default ``X-Idgateway-Assertion``",
        description=r"""
            The request header that carries the assertion to the upstream. It is
            an identity header: a copy sent by a client is removed (in any case,
            and spelled with ``_`` for ``-``) on **every** route, whether or not
            that route signs assertions, so an upstream never sees one that the
            gateway did not make. It may not be a header the gateway sets or
            strips for another reason, nor one of the identity headers of any
            route (``X-Forwarded-User``, ``OIDC_CLAIM_*``, a custom mapping's).
            Example: ``header: X-Idgateway-Assertion``
        """,
    ),
    Field(
        "lifetime",
        parsed(_lifetime, "a duration from 1s to 1h, e.g. 60s"),
        default=AssertionSettings().lifetime,
        type_text="duration from ``1s`` to ``1h``",
        default_text="default ``60s``",
        description=r"""
            ``exp`` - ``iat`` of each assertion. An assertion is reused for the
            requests of one session until it has half its lifetime (at most
            30 s) left, so the gateway signs rarely and an upstream always
            receives one with time to spare. Example: ``lifetime: 2m``
        """,
    ),
    Field(
        "audience",
        parsed(_audience, "a string, e.g. orders"),
        default=None,
        type_text="string",
        default_text="default: the route's ``name``",
        description=r"""
            The ``aud`` claim. An upstream checks it, so an assertion made for one
            route is refused by the upstream of another. Example: ``audience: orders``
        """,
    ),
)

ASSERTION_FIELD = Field(
    "assertion",
    record(
        ASSERTION_FIELDS,
        "a mapping like {header: X-Idgateway-Assertion, lifetime: 60s}",
        AssertionSettings,
    ),
    default=None,
    type_text="mapping",
    default_text="default: off",
    fields=ASSERTION_FIELDS,
    description=r"""
        Send the upstream a signed identity assertion (a JWT, ES256 or EdDSA by the
        signing key) with every request that passes the route's login: ``iss`` is
        the origin the client used (``https://app1.example.com``), ``aud`` the
        route's name (or ``audience``), then ``sub``, ``email``, ``groups``, ``sid``
        (the gateway's session id), ``iat``, ``exp`` and a unique ``jti``. The
        upstream verifies it with the keys at ``/.well-known/idgateway/jwks.json``
        and then knows that the identity came from the gateway, whatever reaches
        it otherwise (see :doc:`assertion`). Needs ``assertion_keys`` and a route
        with ``oidc``; public paths get no assertion.
        Example: ``assertion: {header: X-Idgateway-Assertion, lifetime: 60s}``
    """,
)

ASSERTION_KEYS_FIELD = Field(
    "assertion_keys",
    _assertion_keys,
    default=(),
    type_text="list of PEM key files",
    default_text="default ``[]``",
    description=r"""
        The gateway's own keys for signing identity assertions (routes'
        ``assertion``): unencrypted PEM private keys, EC P-256 (signs ES256) or
        Ed25519 (EdDSA); RSA keys and other curves are refused. ``idgateway keygen
        PATH`` writes one. The **first** key signs; **all** are published at
        ``/.well-known/idgateway/jwks.json`` on every route's hosts (no login
        needed) and on the admin listener, each with its RFC 7638 thumbprint as
        ``kid``. To roll over: add the new key second and reload, wait until
        verifiers have fetched the key set again (5 minutes: it is sent with
        ``max-age=300``), move it first and reload, and remove the old key once
        its last assertions have expired.
        Example: ``assertion_keys: [/etc/idgateway/assertion-2026.pem]``
    """,
)


def check_assertions(
    reader: Reader,
    keys: tuple[SigningKey, ...] | _Invalid,
    sections: Sequence[Section],
    routes: Sequence[Route | _Invalid],
) -> None:
    """What one route's ``assertion`` cannot show alone: keys to sign with, login to
    assert, and a header that is no route's identity header."""
    taken: set[bytes] = set()
    prefixes: set[bytes] = set()
    for route in routes:
        if route is INVALID:
            continue
        settings = HeaderSettings()
        if route.auth is not None:
            settings = route.auth.headers
        elif route.bearer is not None:
            settings = route.bearer.headers
        headers = identity_header_names(settings)
        taken |= headers.strip
        prefixes.update(headers.strip_prefixes)
    for found, route in zip(sections, routes, strict=True):
        if route is INVALID or route.assertion is None:
            continue
        node, key = found.nodes["assertion"], found.child("assertion")
        if keys == () and reader.contents:
            fix = "add assertion_keys: [/etc/idgateway/assertion.pem] at the top level"
            reader.problem(
                node,
                key,
                f"there is no key to sign with; {fix} (idgateway keygen writes one)",
            )
        if route.auth is None and route.bearer is None:
            reader.problem(
                node, key, "'assertion' only applies to a route with an 'oidc' or 'bearer' block"
            )
        name = route.assertion.header
        name_key = header_key(name.encode("ascii"))
        if name_key in taken or any(name_key.startswith(p) for p in prefixes):
            reader.problem(
                node,
                f"{key}.header",
                f"{name!r} is an identity header of a route here; choose another name, "
                "e.g. X-Idgateway-Assertion",
            )
