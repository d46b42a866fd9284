"""What the token gate answers when it refuses: RFC 6750 and RFC 9449 challenges.

``401`` carries ``WWW-Authenticate: Bearer`` (unless the route requires DPoP)
and ``DPoP`` (unless DPoP is off), each with the route's realm and, on the
challenge for the scheme the request used, the ``error``; ``403`` names the
scopes needed; ``503`` (the provider could not be asked) has ``Retry-After``.
Every challenge points at the route's RFC 9728 metadata (``resource_metadata``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from idgateway.config.model import AuthorizeRules
from idgateway.oidc.provider import ASYMMETRIC_ALGORITHMS

if TYPE_CHECKING:
    from idgateway.server.channel import GatewayRequest

# RFC 9728: where a protected resource publishes its metadata.
WELL_KNOWN_RESOURCE = "/.well-known/oauth-protected-resource"
# Seconds a client should wait when the provider could not be asked.
RETRY_AFTER = b"10"
# What a quoted-string in a challenge may hold (RFC 6750 3: error_description).
_UNQUOTABLE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
# The DPoP challenge's algs (RFC 9449 7.1): those a proof may use.
DPOP_ALGS = " ".join(sorted(ASYMMETRIC_ALGORITHMS))


class Refusal(Exception):
    """Why a token request is refused, as its answer will say it."""

    def __init__(
        self,
        status: int,
        error: str | None,
        description: str,
        *,
        scope: str | None = None,
        dpop: bool = False,
        reason: str = "",
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.scope = scope
        # The error is about DPoP (goes on the DPoP challenge).
        self.dpop = dpop
        # A short code for the log.
        self.reason = reason or (error or "no_token")


NO_TOKEN = Refusal(401, None, "An access token is required.")


def insufficient_scope(rules: AuthorizeRules) -> Refusal:
    return Refusal(
        403,
        "insufficient_scope",
        "The access token lacks a scope this resource needs.",
        scope=" ".join(rules.scopes),
    )


def quoted(text: str) -> str:
    """Text safe inside a challenge's quoted-string (and short)."""
    return _UNQUOTABLE.sub("?", text)[:300]


def challenges(
    realm: str, dpop: str, host: bytes, tls: bool, refusal: Refusal = NO_TOKEN
) -> list[tuple[bytes, bytes]]:
    """WWW-Authenticate values: Bearer (unless DPoP is required) and DPoP (unless off)."""
    metadata_url = f"{'https' if tls else 'http'}://{host.decode('latin-1')}{WELL_KNOWN_RESOURCE}"
    common = [f'realm="{realm}"']
    errors: list[str] = []
    if refusal.error is not None:
        errors.append(f'error="{refusal.error}"')
        errors.append(f'error_description="{quoted(refusal.description)}"')
    if refusal.scope is not None:
        errors.append(f'scope="{quoted(refusal.scope)}"')
    out: list[tuple[bytes, bytes]] = []
    if dpop != "required":
        params = common + ([] if refusal.dpop and dpop != "off" else errors)
        params.append(f'resource_metadata="{metadata_url}"')
        out.append((b"WWW-Authenticate", ("Bearer " + ", ".join(params)).encode("ascii")))
    if dpop != "off":
        params = [*common, f'algs="{DPOP_ALGS}"']
        if refusal.dpop or dpop == "required":
            params += errors
        out.append((b"WWW-Authenticate", ("DPoP " + ", ".join(params)).encode("ascii")))
    return out


def send_refusal(
    request: GatewayRequest, refusal: Refusal, challenge: list[tuple[bytes, bytes]]
) -> None:
    if request.finished or request.client_gone:
        return
    if refusal.status == 503:
        send_json(
            request,
            503,
            {"error": "temporarily_unavailable", "message": refusal.description},
            headers=[(b"Retry-After", RETRY_AFTER)],
        )
        return
    body: dict[str, Any] = {"error": refusal.error or "unauthenticated"}
    body["message"] = refusal.description
    if refusal.scope is not None:
        body["scope"] = refusal.scope
    send_json(request, refusal.status, body, headers=challenge)


def send_json(
    request: GatewayRequest,
    status: int,
    payload: dict[str, Any],
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    cache: bytes = b"no-store",
) -> None:
    body = json.dumps(payload).encode()
    request.setResponseCode(status)
    out = request.responseHeaders
    out.setRawHeaders(b"content-type", [b"application/json"])
    out.setRawHeaders(b"content-length", [b"%d" % len(body)])
    out.setRawHeaders(b"cache-control", [cache])
    for name, value in headers:
        out.addRawHeader(name, value)
    request.end_response_early()
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
