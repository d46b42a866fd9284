"""Which headers are a route's identity headers: stripped from every client request.

Both the config (an assertion header may not be one of them) and the gate
(``gate.identity_headers``, which fills them) need the same list.
"""

from __future__ import annotations

import attrs

from idgateway.config.model import HeaderSettings
from idgateway.http.header_names import (
    ALWAYS_STRIPPED,
    FORWARDING_HEADERS,
    REQUEST_HOP_BY_HOP,
    header_key,
)

# Headers no claim may become, whatever claim_prefix says (a prefix such as
# "X-Forwarded-" and a claim named "For" must not forge the client address):
# they frame the message, or carry what the gateway itself vouches for.
_NEVER_FROM_A_CLAIM = (
    REQUEST_HOP_BY_HOP
    | FORWARDING_HEADERS
    | ALWAYS_STRIPPED
    | {b"x-request-id", b"x-forwarded-prefix", b"cookie", b"authorization"}
)
OAUTH2_PROXY_HEADERS = (
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups",
    # The user's organization (WSO2 IS 7 B2B: the ID token's org_id).
    "X-Forwarded-Org",
    "X-Forwarded-Access-Token",
)


@attrs.frozen
class IdentityHeaderNames:
    # header_key() forms stripped from every incoming request on the route.
    strip: frozenset[bytes]
    # header_key() prefixes stripped likewise (OIDC_CLAIM_* for mod_auth_openidc).
    strip_prefixes: tuple[bytes, ...]
    # header_key() forms a mod_auth_openidc claim header must not take.
    reserved: frozenset[bytes]


def identity_header_names(settings: HeaderSettings) -> IdentityHeaderNames:
    # Both presets' headers are stripped whichever the route uses: an app
    # migrated from mod_auth_openidc may still trust OIDC_CLAIM_* headers.
    names: list[str] = [
        "X-Auth-Request-User",
        "X-Auth-Request-Email",
        "X-Auth-Request-Groups",
        "X-Auth-Request-Preferred-Username",
        # oauth2-proxy's own: apps migrated from it may read them.
        "X-Auth-Request-Access-Token",
        "X-Auth-Request-Id-Token",
        *OAUTH2_PROXY_HEADERS,
        # Bearer routes name the token's client (idgateway.gate.bearer).
        "X-Forwarded-Client-Id",
        "X-Auth-Request-Client-Id",
        "OIDC_access_token",
        "OIDC_id_token",
        "X-Remote-User",
        "Remote-User",
        settings.remote_user_header,
        *(header for header, _ in settings.mapping),
    ]
    prefixes = tuple(
        {header_key(b"OIDC_CLAIM_"), header_key(settings.claim_prefix.encode("ascii"))}
    )
    if settings.pass_authorization_header:
        names.append("Authorization")
    reserved = _NEVER_FROM_A_CLAIM | {
        header_key(name.encode("ascii"))
        for name in (settings.remote_user_header, "OIDC_access_token", "OIDC_id_token")
    }
    return IdentityHeaderNames(
        strip=frozenset(header_key(n.encode("ascii")) for n in names),
        strip_prefixes=prefixes,
        reserved=frozenset(reserved),
    )
