"""What a route's sessions are bound to, beyond the route itself.

A session is bound to what made it: the route, the provider and the OIDC
client. The binding goes into the associated data of every seal (session
cookies, Redis values, login-flow cookies), so a reload that moves a route
to another provider or client id ends its old sessions: they no longer
open and the browser is sent to log in again.

The provider is named as the config names it, its ``issuer`` or its
``discovery_url`` (whichever is given, the text as written), not the issuer
found by discovery: the binding must be known when the route is built, and
discovery may not have answered yet. Changing either spelling ends the
route's sessions; renaming the provider's key under ``providers:``, its CA
file or the client secret does not.
"""

from __future__ import annotations

import json

from idgateway.config.model import ProviderSettings


def session_binding(provider: ProviderSettings, client_id: str) -> bytes:
    """The binding for a route's seals: JSON, so no two configs share one."""
    if provider.issuer is not None:
        named_by = ["issuer", provider.issuer]
    else:
        named_by = ["discovery_url", provider.discovery_url or ""]
    return json.dumps([*named_by, client_id], separators=(",", ":")).encode("ascii")
