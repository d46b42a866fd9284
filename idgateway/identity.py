"""Identity headers for the upstream, per route: the oauth2-proxy and
mod_auth_openidc presets, or a custom header -> claim mapping."""

from __future__ import annotations

import re
from typing import Any

import attrs

from idgateway.forwarding import header_key
from idgateway.model import HeaderSettings
from idgateway.sessions.model import Session

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")

OAUTH2_PROXY_HEADERS = (
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups",
    "X-Forwarded-Access-Token",
)


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

    @classmethod
    def for_route(
        cls, settings: HeaderSettings, *, user_claim: str, email_claim: str, groups_claim: str
    ) -> IdentityHeaders:
        # Both presets' headers are stripped whichever the route uses: an app
        # migrated from mod_auth_openidc may still trust OIDC_CLAIM_* headers.
        names: list[str] = [
            "X-Auth-Request-User",
            "X-Auth-Request-Email",
            "X-Auth-Request-Groups",
            "X-Auth-Request-Preferred-Username",
            *OAUTH2_PROXY_HEADERS,
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
        return cls(
            settings=settings,
            user_claim=user_claim,
            email_claim=email_claim,
            groups_claim=groups_claim,
            strip=frozenset(header_key(n.encode("ascii")) for n in names),
            strip_prefixes=prefixes,
        )

    def headers_for(self, session: Session) -> list[tuple[bytes, bytes]]:
        """The identity headers for a request from this session's user."""
        settings = self.settings
        claims = session.claims
        out: list[tuple[bytes, bytes]] = []

        def add(name: str, value: Any) -> None:
            text = _text(value, settings.list_delimiter)
            if text is not None:
                out.append((name.encode("ascii"), text.encode("utf-8")))

        if settings.preset == "oauth2-proxy":
            add("X-Forwarded-User", session.user)
            add("X-Forwarded-Email", claims.get(self.email_claim))
            add(
                "X-Forwarded-Preferred-Username",
                claims.get("preferred_username", claims.get("username")),
            )
            add("X-Forwarded-Groups", claims.get(self.groups_claim))
            if settings.pass_access_token:
                add("X-Forwarded-Access-Token", session.access_token)
        elif settings.preset == "mod_auth_openidc":
            add(settings.remote_user_header, session.user)
            for claim, value in claims.items():
                if re.fullmatch(r"[A-Za-z0-9_.-]+", claim):
                    add(settings.claim_prefix + claim, value)
            if settings.pass_access_token:
                add("OIDC_access_token", session.access_token)
            if settings.pass_id_token:
                add("OIDC_id_token", session.id_token)
        else:
            for header, claim in settings.mapping:
                add(header, session.user if claim == self.user_claim else claims.get(claim))
        if settings.pass_authorization_header and session.access_token:
            add("Authorization", "Bearer " + session.access_token)
        return out

    def auth_request_headers(self, session: Session) -> list[tuple[bytes, bytes]]:
        """Response headers for /oauth2/auth (nginx auth_request, Traefik forwardAuth)."""
        out: list[tuple[bytes, bytes]] = []
        for name, value in (
            ("X-Auth-Request-User", session.user),
            ("X-Auth-Request-Email", session.claims.get(self.email_claim)),
            ("X-Auth-Request-Groups", session.claims.get(self.groups_claim)),
            (
                "X-Auth-Request-Preferred-Username",
                session.claims.get("preferred_username", session.claims.get("username")),
            ),
        ):
            text = _text(value, self.settings.list_delimiter)
            if text is not None:
                out.append((name.encode("ascii"), text.encode("utf-8")))
        return out + self.headers_for(session)


def _text(value: Any, delimiter: str) -> str | None:
    """A claim as header text, or None when absent or unsafe (CR, LF, controls)."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | tuple):
        text = delimiter.join(str(item) for item in value)
    elif isinstance(value, dict):
        return None
    else:
        text = str(value)
    if _UNSAFE.search(text):
        return None
    return text
