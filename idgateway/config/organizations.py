"""WSO2 IS 7 organizations (B2B): a sub-organization's issuer, from its root's.

A root organization (a tenant; Asgardeo: an organization) at
``https://HOST/t/ROOT/oauth2/token`` has sub-organizations, each with its own
endpoints and issuer under ``https://HOST/t/ROOT/o/ORG-ID/oauth2/...``; the
super tenant's root is ``carbon.super``. The gateway reaches a route's
organization by discovery below that issuer, like any other provider.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from idgateway.config.model import ProviderSettings

SUPER_TENANT = "carbon.super"
# An organization id (WSO2: a UUID) or handle: a single path segment.
ORGANIZATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TENANT_PREFIX = re.compile(r"(?:/t/(?P<root>[^/]+))?")
_SUFFIXES = (
    "/oauth2/token/.well-known/openid-configuration",
    "/oauth2/oidcdiscovery/.well-known/openid-configuration",
    "/oauth2/token",
)


class NotAnOrganizationRoot(ValueError):
    """The provider's URL is not a WSO2 root organization's: say why and the fix."""


def parse_organization(value: str) -> str:
    if not ORGANIZATION.fullmatch(value):
        raise ValueError(
            "expected an organization id (WSO2 IS 7: a UUID such as "
            "a6b3c9d2-1e2f-4a5b-8c7d-0e1f2a3b4c5d) or handle: letters, digits, '.', '_', '-'"
        )
    return value


def organization_issuer(provider: ProviderSettings, organization: str) -> str:
    """``https://HOST/t/ROOT/o/ORG/oauth2/token`` for ``provider``'s root."""
    url = provider.issuer or provider.discovery_url or ""
    scheme, netloc, path, _, _ = urlsplit(url)
    trimmed = path.rstrip("/")
    for suffix in _SUFFIXES:
        if trimmed.endswith(suffix):
            prefix = trimmed[: -len(suffix)]
            break
    else:
        raise NotAnOrganizationRoot(
            f"provider {provider.name!r} is not named by a WSO2 issuer "
            "(https://HOST/t/ROOT/oauth2/token) or discovery URL, so its organizations' "
            "URLs cannot be derived; declare the organization as a provider of its own "
            "(issuer: https://HOST/t/ROOT/o/ORG-ID/oauth2/token)"
        )
    match = _TENANT_PREFIX.fullmatch(prefix)
    if match is None:
        raise NotAnOrganizationRoot(
            f"provider {provider.name!r} ({url}) is not a root organization (its path "
            f"has {prefix!r} before /oauth2/); name the root's issuer, e.g. "
            "https://HOST/t/ROOT/oauth2/token"
        )
    root = match.group("root") or SUPER_TENANT
    return urlunsplit((scheme, netloc, f"/t/{root}/o/{organization}/oauth2/token", "", ""))


def organization_provider(provider: ProviderSettings, organization: str) -> ProviderSettings:
    """The organization as a provider of its own: its issuer, the root's TLS settings."""
    return ProviderSettings(
        name=f"{provider.name}/o/{organization}",
        issuer=organization_issuer(provider, organization),
        ca_file=provider.ca_file,
        insecure_skip_verify=provider.insecure_skip_verify,
        insecure_http=provider.insecure_http,
    )
