"""The token gate's own endpoints: RFC 9728 protected-resource metadata, and
``/oauth2/auth`` (nginx ``auth_request``, Traefik ``forwardAuth``) with a token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from idgateway.gate import endpoints
from idgateway.gate.bearer import WELL_KNOWN_RESOURCE, BearerGate, read_authorization
from idgateway.gate.bearer_answers import (
    NO_TOKEN,
    RETRY_AFTER,
    Refusal,
    insufficient_scope,
    send_json,
)
from idgateway.gate.session_check import secure_origin
from idgateway.oidc.access_tokens import token_digest
from idgateway.oidc.provider import ASYMMETRIC_ALGORITHMS

if TYPE_CHECKING:
    from idgateway.gate.contracts import Forwarder, GatewayView, RouteView
    from idgateway.server.channel import GatewayRequest


def metadata_document(gate: BearerGate, host: bytes, tls: bool) -> dict[str, Any] | None:
    """RFC 9728 protected-resource metadata; None while the issuer is unknown."""
    client = gate.provider.client
    issuer = client.metadata.issuer if client.metadata is not None else None
    issuer = issuer or gate.provider.settings.issuer
    if issuer is None:
        return None
    document: dict[str, Any] = {
        "resource": f"{'https' if tls else 'http'}://{host.decode('latin-1')}",
        "authorization_servers": [issuer],
        "scopes_supported": list(gate.scopes_supported),
        "bearer_methods_supported": ["header"],
        "resource_name": gate.route.name,
    }
    if gate.dpop != "off":
        document["dpop_signing_alg_values_supported"] = sorted(ASYMMETRIC_ALGORITHMS)
    if gate.dpop == "required":
        document["dpop_bound_access_tokens_required"] = True
    return document


def send_metadata(gate: BearerGate, request: GatewayRequest, host: bytes, tls: bool) -> None:
    if request.method not in (b"GET", b"HEAD"):
        send_json(
            request,
            405,
            {"error": "method_not_allowed", "message": "Use GET."},
            headers=[(b"Allow", b"GET, HEAD")],
        )
        return
    document = metadata_document(gate, host, tls)
    if document is None:
        send_json(
            request,
            503,
            {"error": "temporarily_unavailable", "message": "The provider is not ready."},
            headers=[(b"Retry-After", RETRY_AFTER)],
        )
        return
    send_json(request, 200, document, cache=b"public, max-age=300")


async def auth_request(
    gate: BearerGate,
    request: GatewayRequest,
    state: GatewayView,
    runtime: RouteView,
    host: bytes,
    tls: bool,
) -> None:
    """/oauth2/auth with a token: 202 and the identity headers, or the 401/403 a
    proxied request would get. The original request (X-Forwarded-Uri and
    X-Forwarded-Method from a trusted proxy) picks the rules and is what a DPoP
    proof must name, as endpoints.auth_request does for sessions."""
    original = endpoints.original_request(request, state, runtime)
    if original is None:
        return
    method, reading = original.method, original.reading
    if original.forwarded and gate.is_public(method, reading):
        send_json(request, 202, {"public": True})
        return
    try:
        credentials = read_authorization(request)
        if credentials is None:
            raise NO_TOKEN
        scheme, token = credentials
        digest = token_digest(token)
        verified = await gate.authenticate(
            request, scheme, token, digest, method, reading, runtime, host, tls
        )
    except Refusal as refusal:
        gate.refuse(request, host, tls, refusal)
        return
    if request.finished or request.client_gone:
        return
    rules = gate.rules_for(reading)
    missing, failure, _ = gate.verdict(verified, rules, token)
    if missing:
        gate.refuse(request, host, tls, insufficient_scope(rules))
        return
    if failure is not None:
        send_json(request, 403, {"error": "forbidden"})
        return
    identity = gate.identity
    headers = identity.auth_request_headers(gate.as_session(verified, token))
    if verified.client_id is not None:
        encoded = identity.encoder.value(verified.client_id)
        if encoded is not None:
            headers.append((b"X-Auth-Request-Client-Id", encoded))
    if not (gate.bearer.forward_auth.pass_tokens and endpoints._trusted_peer(request, state)):
        # Tokens never go to the browser: a same-origin script could read them.
        headers = [
            (name, value) for name, value in headers if name.lower() not in endpoints._TOKEN_HEADERS
        ]
    send_json(request, 202, {"user": verified.user}, headers=headers)


def serve(
    gate: BearerGate,
    resource: Forwarder,
    request: GatewayRequest,
    state: GatewayView,
    runtime: RouteView,
    host: bytes,
) -> None:
    """A request the token gate takes: its endpoints here, everything else to the gate."""
    path = request.idgw_reading.text
    if path == WELL_KNOWN_RESOURCE:
        send_metadata(gate, request, host, secure_origin(resource, request, state))
    elif path == "/oauth2/auth":
        tls = secure_origin(resource, request, state)
        asked = defer.ensureDeferred(auth_request(gate, request, state, runtime, host, tls))
        asked.addErrback(gate.failed, request)
    else:
        gate.handle(resource, request, state, runtime, host)
