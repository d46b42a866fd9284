"""The two-tenant set-up shared by the login, browser, security and demo set-ups: the
provider's registered clients, the gateway's configuration for them, and a
cookie-keeping client for scripted logins."""

from __future__ import annotations

import base64
import http.client
import json
import os
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.http_helpers import header_values

if TYPE_CHECKING:
    from tests.provider_process import ProviderProcess

APP1_SECRET = "app1-client-secret"
APP2_SECRET = "app2-client-secret"


def registered_client(
    client_id: str, secret: str, host: str, port: int, auth_method: str, *, logout: bool = True
) -> dict[str, Any]:
    """A client as registered at the WSO2-shaped provider for an app behind the gateway
    (``logout``: with its post-logout redirect and back-channel logout URIs)."""
    origin = f"http://{host}:{port}"
    client = {
        "client_id": client_id,
        "client_secret": secret,
        "redirect_uris": [f"{origin}/oauth2/callback"],
        "post_logout_redirect_uris": [f"{origin}/"],
        "backchannel_logout_uri": f"{origin}/oauth2/backchannel_logout",
        "token_endpoint_auth_method": auth_method,
    }
    if not logout:
        del client["post_logout_redirect_uris"], client["backchannel_logout_uri"]
    return client


def app1_provider_config(
    port: int, secret: str, *, access_ttl: int | None = None, logout: bool = False
) -> dict[str, Any]:
    """The provider with one client, app1-client on the super tenant (basic auth)
    for app1.localhost on ``port``; ``access_ttl``: access token seconds."""
    client = registered_client(
        "app1-client", secret, "app1.localhost", port, "client_secret_basic", logout=logout
    )
    return {
        **({"ttl": {"AccessToken": access_ttl}} if access_ttl else {}),
        "tenants": {"carbon.super": {"clients": [client]}},
    }


def refreshing_app1_yaml(
    port: int,
    op: ProviderProcess,
    backend_port: int,
    secret: str,
    *,
    providers: str = "",
    routes: str = "",
) -> str:
    """The gateway in front of app1_provider_config()'s client: cookie sessions
    refreshed a second before the access token expires, the access token passed
    upstream (oauth2-proxy headers). ``providers``, ``routes``: more YAML lines
    for each (indented by two)."""
    return f"""
listeners:
  - address: 127.0.0.1:{port}
providers:
  wso2: {{discovery_url: {op.discovery_url()}, ca_file: {op.ca_file}}}
{providers}routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend_port}
    oidc: {{provider: wso2, client_id: app1-client, client_secret: {secret},
            user_claim: username}}
    session: {{keys: [{session_key()}], refresh_leeway: 1s}}
    headers: {{preset: oauth2-proxy, pass_access_token: true}}
{routes}"""


def two_gateways_config(port_a: int, port_b: int, ttl: int | None = None) -> dict[str, Any]:
    """app1 served by two gateway processes (ports a and b) sharing its sessions;
    the provider's back-channel logouts go to b. ``ttl``: access token seconds."""
    return {
        "ttl": {"AccessToken": ttl} if ttl else {},
        "tenants": {
            "carbon.super": {
                "clients": [
                    {
                        "client_id": "app1-client",
                        "client_secret": "s3cret",
                        "redirect_uris": [
                            f"http://app1.localhost:{port_a}/oauth2/callback",
                            f"http://app1.localhost:{port_b}/oauth2/callback",
                        ],
                        "backchannel_logout_uri": (
                            f"http://app1.localhost:{port_b}/oauth2/backchannel_logout"
                        ),
                        "token_endpoint_auth_method": "client_secret_basic",
                    }
                ]
            }
        },
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


def session_key() -> str:
    """A fresh session key, as the config takes it (base64 of 32 random bytes)."""
    return base64.b64encode(os.urandom(32)).decode()


def two_tenant_gateway_yaml(
    port: int,
    op: ProviderProcess,
    backend_port: int,
    app2_secret_file: os.PathLike[str] | str,
    app2_session_key: str,
    *,
    app1_provider: str = "wso2",
    app1_client_id: str = "app1-client",
    app1_scopes: str | None = None,
    app1_session: str = "{keys: [${APP1_SESSION_KEY}]}",
    app1_headers: str | None = None,
    app1_more: str = "",
    app2_headers: str | None = None,
    app1_oidc_more: str = "",
) -> str:
    """The gateway in front of two_tenant_config()'s clients: app1 on the super tenant
    (provider ``wso2``, found by discovery; client secret and session key from
    $APP1_CLIENT_SECRET and $APP1_SESSION_KEY), app2 on acme.com (provider ``acme``,
    client secret from a file). ``app1_more``: more YAML lines for app1's route,
    indented by four spaces. ``app1_oidc_more``: more lines for app1's oidc
    block, indented by six."""
    app1_options = ""
    if app1_scopes is not None:
        app1_options += f"      scopes: {app1_scopes}\n"
    app1_route = f"    session: {app1_session}\n"
    if app1_headers is not None:
        app1_route += f"    headers: {app1_headers}\n"
    app2_route = "" if app2_headers is None else f"    headers: {app2_headers}\n"
    return f"""
listeners:
  - address: 127.0.0.1:{port}
providers:
  wso2:
    discovery_url: {op.discovery_url()}
    ca_file: {op.ca_file}
  acme:
    issuer: {op.issuer("acme.com")}
    ca_file: {op.ca_file}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend_port}
    oidc:
      provider: {app1_provider}
      client_id: {app1_client_id}
      client_secret: ${{APP1_CLIENT_SECRET}}
      client_auth: client_secret_basic
{app1_options}{app1_oidc_more}      user_claim: username
{app1_route}{app1_more}  - name: app2
    hosts: [app2.localhost]
    upstream: http://127.0.0.1:{backend_port}
    oidc:
      provider: acme
      client_id: app2-client
      client_secret_file: {app2_secret_file}
      client_auth: client_secret_post
      user_claim: username
    session: {{keys: [{app2_session_key}]}}
{app2_route}"""


class Client:
    """A cookie-keeping HTTP client for one gateway host (no redirects followed)."""

    def __init__(self, port: int, host: str) -> None:
        self.port = port
        # As a browser sends it: with the port.
        self.host = f"{host}:{port}"
        self.cookies: dict[str, str] = {}

    def connection(self) -> http.client.HTTPConnection:
        """A new connection to the gateway (the benchmark's TLS client overrides it)."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = self.connection()
        try:
            all_headers = {"Host": self.host, **(headers or {})}
            if self.cookies:
                all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request("GET", path, headers=all_headers)
            response = conn.getresponse()
            body = response.read()
            for value in response.headers.get_all("Set-Cookie") or []:
                cookie = SimpleCookie()
                cookie.load(value)
                for name, morsel in cookie.items():
                    if morsel["max-age"] == "0" or morsel.value == "":
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
            return response.status, response.headers, body
        finally:
            conn.close()

    def login(
        self, op: ProviderProcess, path: str, username: str, password: str
    ) -> tuple[int, bytes]:
        status, headers, _ = self.get(path)
        assert status == 302, f"expected a login redirect, got {status}"
        authorize = headers["Location"]
        query = parse_qs(urlsplit(authorize).query)
        if "request_uri" in query:
            # Pushed (oidc.par): state, nonce and PKCE went to the provider directly.
            assert set(query) == {"client_id", "request_uri"}, query
        else:
            assert query["code_challenge_method"] == ["S256"]
            assert query["state"] and query["nonce"]
        callback = op.scripted_login(authorize, username, password)
        parts = urlsplit(callback)
        assert parts.netloc == self.host
        status, headers, _ = self.get(f"{parts.path}?{parts.query}")
        assert status == 302, f"callback answered {status}"
        assert headers["Location"] == path
        status, _, body = self.get(path, {"Accept": "application/json"})
        return status, body


def forwarded_access_token(client: Client) -> str:
    """The access token the gateway passes upstream on the client's /echo request
    (routes with ``pass_access_token: true``, oauth2-proxy header names)."""
    status, _, body = client.get("/echo", {"Accept": "application/json"})
    assert status == 200, body
    return header_values(json.loads(body), "x-forwarded-access-token")[0]


def wait_until_login_offered(
    port: int,
    hosts: tuple[str, ...] = ("app1.localhost", "app2.localhost"),
    log: Callable[[], str] | None = None,
) -> None:
    """Discovery runs in the background: wait until every route offers a login
    redirect. ``log``: the gateway's log, whose end the failure shows."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(Client(port, host).get("/")[0] == 302 for host in hosts):
            return
        time.sleep(0.2)
    raise AssertionError(
        "providers were not discovered in time" + ("" if log is None else "\n" + log()[-2000:])
    )
