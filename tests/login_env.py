"""The two-tenant provider set-up shared by the login, browser and demo set-ups."""

from __future__ import annotations

from typing import Any

APP1_SECRET = "app1-client-secret"
APP2_SECRET = "app2-client-secret"


def registered_client(
    client_id: str, secret: str, host: str, port: int, auth_method: str
) -> dict[str, Any]:
    """A client as registered at the WSO2-shaped provider for an app behind the gateway."""
    origin = f"http://{host}:{port}"
    return {
        "client_id": client_id,
        "client_secret": secret,
        "redirect_uris": [f"{origin}/oauth2/callback"],
        "post_logout_redirect_uris": [f"{origin}/"],
        "backchannel_logout_uri": f"{origin}/oauth2/backchannel_logout",
        "token_endpoint_auth_method": auth_method,
    }


def two_tenant_config(port: int) -> dict[str, Any]:
    """app1 on the super tenant (basic auth), app2 on acme.com (post auth)."""
    return {
        "tenants": {
            "carbon.super": {
                "clients": [
                    registered_client(
                        "app1-client", APP1_SECRET, "app1.localhost", port, "client_secret_basic"
                    )
                ]
            },
            "acme.com": {
                "clients": [
                    registered_client(
                        "app2-client", APP2_SECRET, "app2.localhost", port, "client_secret_post"
                    )
                ]
            },
        }
    }
