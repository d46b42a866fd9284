"""Which ways a provider can end a route's sessions, from its discovery document;
and which of a route's settings the document shows cannot work.

For ``/status`` and the start-up log: back-channel (the provider POSTs a logout
token to ``/oauth2/backchannel_logout``), front-channel (it loads
``/oauth2/frontchannel_logout`` in an iframe: needs ``oidc.frontchannel_logout``)
and RP-initiated (``/oauth2/sign_out`` sends the browser to its
``end_session_endpoint``). What the document says is what the provider claims;
the application must still be registered for each (WSO2: its logout URLs).
"""

from __future__ import annotations

from idgateway.config.model import OIDCSettings
from idgateway.oidc.provider import ProviderMetadata

BACK_CHANNEL = "back-channel"
FRONT_CHANNEL = "front-channel"
RP_INITIATED = "RP-initiated"


def logout_paths(metadata: ProviderMetadata | None, oidc: OIDCSettings) -> dict[str, str]:
    """Each logout path -> "works", or why not (for people)."""
    if metadata is None:
        unknown = "unknown until the provider's discovery document is fetched"
        return {BACK_CHANNEL: unknown, FRONT_CHANNEL: unknown, RP_INITIATED: unknown}
    paths: dict[str, str] = {}
    paths[BACK_CHANNEL] = (
        "works (by sid, or by sub when the provider's tokens have no sid)"
        if metadata.backchannel_logout_supported
        else "not advertised (backchannel_logout_supported is not true)"
    )
    if not oidc.frontchannel_logout:
        paths[FRONT_CHANNEL] = "off (oidc.frontchannel_logout: false)"
    elif metadata.frontchannel_logout_supported:
        paths[FRONT_CHANNEL] = (
            "works where the browser sends the session cookie in the provider's iframe"
        )
    else:
        paths[FRONT_CHANNEL] = "not advertised (frontchannel_logout_supported is not true)"
    paths[RP_INITIATED] = (
        "works (end_session_endpoint)"
        if metadata.end_session_endpoint is not None
        else "no end_session_endpoint: sign-out ends the gateway's session only"
    )
    return paths


def unhonoured_settings(oidc: OIDCSettings, metadata: ProviderMetadata) -> list[str]:
    """The route's settings this provider's discovery document cannot honour,
    as warnings for people (the caller names the route and provider)."""
    found: list[str] = []
    if oidc.post_logout_redirect is not None and metadata.end_session_endpoint is None:
        found.append(
            "post_logout_redirect is set but the provider has no end_session_endpoint: "
            "sign-out ends the gateway's session only, the provider's stays, and the "
            f"browser goes straight to {oidc.post_logout_redirect}"
        )
    if oidc.par == "required" and metadata.pushed_authorization_request_endpoint is None:
        found.append(
            "par: required but the provider advertises no "
            "pushed_authorization_request_endpoint: no login can start"
        )
    if oidc.par == "off" and metadata.require_pushed_authorization_requests:
        found.append(
            "par: off but the provider requires pushed authorization requests; set par: auto"
        )
    return found
