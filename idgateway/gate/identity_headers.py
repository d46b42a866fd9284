"""Identity headers for the upstream, per route: the oauth2-proxy and
mod_auth_openidc presets, or a custom header -> claim mapping.

Claim values reach a header as printable ASCII only (see ``ClaimEncoder``):
nothing a user or an identity provider puts in a claim can end a header, start
another, or add an entry to a list header such as X-Forwarded-Groups.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from idgateway.config.identity_names import (
    identity_header_names,
)
from idgateway.config.model import HeaderSettings
from idgateway.http.header_names import header_key
from idgateway.sessions.model import Session

# mod_auth_openidc preset: the claims that become <claim_prefix><name> headers.
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# Tokens are passed verbatim or not at all: RFC 6750's b64token and JWTs are
# visible ASCII, so anything else is not a token to vouch for.
_TOKEN = re.compile(r"[\x21-\x7e]+")


class ClaimEncoder:
    """Claim values as header values: printable ASCII, the list delimiter only between items.

    A string is written as its UTF-8 bytes with these percent-encoded (``%HH``,
    as in URLs, so ``urllib.parse.unquote`` gives the claim back exactly):
    ``%`` itself, every character of the list delimiter, bytes outside
    printable ASCII (controls, CR, LF, NUL, DEL, and non-ASCII characters as
    their UTF-8 bytes), and spaces at the start or end of a value or list item
    (HTTP parsers and list splitters trim them, so " admin" would become "admin").
    A list is its items so encoded, joined by the delimiter; items that are
    objects, lists or null are left out. An object claim gives no header.
    """

    __slots__ = ("delimiter", "_keep", "_escaped")

    def __init__(self, delimiter: str) -> None:
        reserved = {ord("%"), *delimiter.encode("utf-8")}
        keep = bytes(b for b in range(0x20, 0x7F) if b not in reserved)
        self.delimiter = delimiter.encode("utf-8")
        # Used as translate()'s deletechars: what is left needs encoding.
        self._keep = keep
        self._escaped = tuple(bytes((b,)) if b in keep else b"%%%02X" % b for b in range(256))

    def value(self, value: Any) -> bytes | None:
        """A claim's header value, or None: no header."""
        if isinstance(value, list | tuple):
            items = (self.item(v) for v in value)
            return self.delimiter.join(item for item in items if item is not None)
        return self.item(value)

    def item(self, value: Any) -> bytes | None:
        """One scalar claim value, encoded; None for null, objects and lists."""
        if value is None or isinstance(value, dict | list | tuple):
            return None
        if isinstance(value, bool):
            return b"true" if value else b"false"
        # surrogatepass: a JSON claim may hold a lone surrogate ("\ud800"),
        # which strict UTF-8 refuses; it is encoded like any other bytes.
        raw = str(value).encode("utf-8", "surrogatepass")
        if not raw.translate(None, self._keep) and raw[:1] != b" " and raw[-1:] != b" ":
            return raw  # the common case: nothing to encode
        core = raw.strip(b" ")
        if core:
            lead = raw.index(core)
            trail = len(raw) - lead - len(core)
        else:
            lead, trail = len(raw), 0
        escaped = self._escaped
        return b"%20" * lead + b"".join([escaped[b] for b in core]) + b"%20" * trail


def _token(value: str | None) -> bytes | None:
    if value and _TOKEN.fullmatch(value):
        return value.encode("ascii")
    return None


@attrs.frozen
class IdentityHeaders:
    """What one route injects, and what it therefore strips from clients."""

    settings: HeaderSettings
    user_claim: str
    email_claim: str
    groups_claim: str
    # header_key() forms stripped from every incoming request on the route.
    strip: frozenset[bytes]
    # header_key() prefixes stripped likewise (OIDC_CLAIM_* for mod_auth_openidc).
    strip_prefixes: tuple[bytes, ...]
    encoder: ClaimEncoder = attrs.field(eq=False)
    # header_key() forms a mod_auth_openidc claim header must not take.
    reserved: frozenset[bytes] = frozenset()

    @classmethod
    def for_route(
        cls, settings: HeaderSettings, *, user_claim: str, email_claim: str, groups_claim: str
    ) -> IdentityHeaders:
        names = identity_header_names(settings)
        return cls(
            settings=settings,
            user_claim=user_claim,
            email_claim=email_claim,
            groups_claim=groups_claim,
            strip=names.strip,
            strip_prefixes=names.strip_prefixes,
            encoder=ClaimEncoder(settings.list_delimiter),
            reserved=names.reserved,
        )

    def headers_for(self, session: Session) -> list[tuple[bytes, bytes]]:
        """The identity headers for a request from this session's user."""
        settings = self.settings
        claims = session.claims
        out: list[tuple[bytes, bytes]] = []
        encode = self.encoder.value

        def add(name: str, value: Any) -> None:
            encoded = encode(value)
            if encoded is not None:
                out.append((name.encode("ascii"), encoded))

        def add_token(name: str, token: str | None) -> None:
            encoded = _token(token)
            if encoded is not None:
                out.append((name.encode("ascii"), encoded))

        if settings.preset == "oauth2-proxy":
            add("X-Forwarded-User", session.user)
            add("X-Forwarded-Email", claims.get(self.email_claim))
            add(
                "X-Forwarded-Preferred-Username",
                claims.get("preferred_username", claims.get("username")),
            )
            add("X-Forwarded-Groups", claims.get(self.groups_claim))
            add("X-Forwarded-Org", claims.get("org_id"))
            if settings.pass_access_token:
                add_token("X-Forwarded-Access-Token", session.access_token)
        elif settings.preset == "mod_auth_openidc":
            add(settings.remote_user_header, session.user)
            prefix = settings.claim_prefix
            reserved = self.reserved
            for claim, value in claims.items():
                if _CLAIM_NAME.fullmatch(claim):
                    name = prefix + claim
                    if header_key(name.encode("ascii")) not in reserved:
                        add(name, value)
            if settings.pass_access_token:
                add_token("OIDC_access_token", session.access_token)
            if settings.pass_id_token:
                add_token("OIDC_id_token", session.id_token)
        else:
            for header, claim in settings.mapping:
                add(header, session.user if claim == self.user_claim else claims.get(claim))
        if settings.pass_authorization_header:
            token = _token(session.access_token)
            if token is not None:
                out.append((b"Authorization", b"Bearer " + token))
        return out

    def auth_request_headers(self, session: Session) -> list[tuple[bytes, bytes]]:
        """Response headers for /oauth2/auth (nginx auth_request, Traefik forwardAuth)."""
        out: list[tuple[bytes, bytes]] = []
        encode = self.encoder.value
        for name, value in (
            (b"X-Auth-Request-User", session.user),
            (b"X-Auth-Request-Email", session.claims.get(self.email_claim)),
            (b"X-Auth-Request-Groups", session.claims.get(self.groups_claim)),
            (
                b"X-Auth-Request-Preferred-Username",
                session.claims.get("preferred_username", session.claims.get("username")),
            ),
        ):
            encoded = encode(value)
            if encoded is not None:
                out.append((name, encoded))
        return out + self.headers_for(session)
