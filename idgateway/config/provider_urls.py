"""Which provider URLs the gateway will talk to: HTTPS, always, with two exceptions.

Tokens, client secrets and signing keys travel on these connections, so plain
HTTP is refused unless the provider is explicitly marked ``insecure_http: true``
(logged as a warning at start and by ``idgateway check``), or the provider
runs on this machine (``localhost``, 127.0.0.0/8, ``::1``), where nobody else is
on the path. The loopback exception covers a discovery URL on loopback and the
loopback endpoints it advertises; an HTTPS provider that advertises an
``http://`` endpoint (its JWKS, its token endpoint) is refused whatever the host.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

INSECURE_HTTP_HINT = "set insecure_http: true on the provider to allow plain HTTP"


class InsecureTransport(ValueError):
    """A provider URL the gateway must not use (message for people)."""


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (a URL's host name, brackets removed) is this machine."""
    if not host:
        return False
    name = host.lower().rstrip(".")
    if name == "localhost":
        # (Not "*.localhost": the C library may ask DNS for those, and DNS can
        # answer with any address.)
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def plain_http_allowed(url: str) -> bool:
    """Whether ``url`` may be plain HTTP without ``insecure_http`` (loopback only)."""
    parts = urlsplit(url)
    return parts.scheme == "http" and is_loopback_host(parts.hostname)


def check_configured_url(url: str, *, insecure_http: bool) -> str | None:
    """Check a configured discovery URL or issuer; a warning to log, or None.

    InsecureTransport for ``http://`` on another machine without ``insecure_http``.
    """
    parts = urlsplit(url)
    if parts.scheme == "https":
        return None
    if parts.scheme != "http":
        raise InsecureTransport(f"{url!r} is not an https URL")
    if insecure_http:
        return (
            f"insecure_http is on: {url} is plain HTTP; tokens and the client secret "
            "cross the network unencrypted"
        )
    if is_loopback_host(parts.hostname):
        return f"{url} is plain HTTP (allowed on loopback only); use https in production"
    raise InsecureTransport(
        f"{url} is plain HTTP on another machine: provider traffic must be HTTPS; "
        + INSECURE_HTTP_HINT
    )


def check_endpoint(name: str, url: str, *, discovery_url: str, insecure_http: bool) -> bool:
    """Check an endpoint URL a discovery document advertises.

    True when it is on another host than the discovery document (allowed over
    HTTPS: WSO2 behind a proxy does that; the caller logs it once).
    InsecureTransport when it is not HTTPS and neither ``insecure_http`` nor
    the loopback exception (both URLs on loopback) allows plain HTTP.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = urlsplit("")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InsecureTransport(f"the discovery document's {name} {url!r} is not an https URL")
    if parts.scheme == "http" and not insecure_http:
        if not (plain_http_allowed(discovery_url) and is_loopback_host(parts.hostname)):
            raise InsecureTransport(
                f"the discovery document's {name} {url} is plain HTTP: provider traffic "
                "must be HTTPS; " + INSECURE_HTTP_HINT
            )
    home = urlsplit(discovery_url)
    return (parts.hostname, port) != (home.hostname, home.port)
