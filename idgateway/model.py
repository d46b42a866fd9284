"""The parsed configuration: immutable values, built by ``config.load_config``.

Routes are values: a reload builds a complete new set of these and swaps it in
one assignment. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

import attrs

UpstreamKind = Literal["http", "https", "unix"]


@attrs.frozen
class CertificatePair:
    """One certificate chain and its private key, both PEM files."""

    cert: str
    key: str
    # Host names the certificate covers (its DNS SANs, lower case), read at load.
    hostnames: tuple[str, ...] = ()


@attrs.frozen
class TLSSettings:
    certificates: tuple[CertificatePair, ...]
    # "1.2" or "1.3".
    min_version: str = "1.2"
    # OpenSSL cipher list for TLS <= 1.2; None keeps OpenSSL's secure default.
    ciphers: str | None = None


@attrs.frozen
class Listener:
    host: str
    port: int
    tls: TLSSettings | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class Upstream:
    """Where a route sends its requests."""

    url: str
    kind: UpstreamKind
    # For http/https: host and port; for unix: socket_path.
    host: str = ""
    port: int = 0
    socket_path: str = ""
    # Path prefix from the URL (without trailing slash), prepended upstream.
    base_path: str = ""
    # For https: PEM bundle to trust instead of the system store.
    ca_file: str | None = None
    # Maximum connections held open to this upstream (busy + idle).
    pool_size: int = 64

    @property
    def host_header(self) -> str:
        """The Host header to send when the route does not preserve the client's."""
        if self.kind == "unix":
            return "localhost"
        default_port = 443 if self.kind == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default_port else f"{host}:{self.port}"


@attrs.frozen
class PathRoute:
    """A path prefix within a route's hosts with its own upstream."""

    prefix: str
    upstream: Upstream


@attrs.frozen
class Route:
    name: str
    hosts: tuple[str, ...]
    upstream: Upstream
    default: bool = False
    paths: tuple[PathRoute, ...] = ()
    preserve_host: bool = False
    connect_timeout: float = 5.0
    # Time allowed for the upstream to start answering (status line + headers).
    response_timeout: float = 60.0
    # Longest silence in either direction once the exchange has started.
    idle_timeout: float = 300.0
    # Bytes; None means unlimited.
    max_body_size: int | None = 100 * 1024 * 1024
    max_header_size: int = 16 * 1024
    https_redirect: bool = False
    # Seconds for Strict-Transport-Security max-age; None sends no HSTS header.
    hsts_max_age: int | None = None
    hsts_include_subdomains: bool = False

    def upstream_for(self, path: bytes) -> Upstream:
        """The upstream for a request path: longest matching prefix, else the route's."""
        best: PathRoute | None = None
        text = path.decode("latin-1")
        for sub in self.paths:
            if text.startswith(sub.prefix) and (best is None or len(sub.prefix) > len(best.prefix)):
                best = sub
        return best.upstream if best is not None else self.upstream


@attrs.frozen
class Config:
    source: str
    listeners: tuple[Listener, ...]
    routes: tuple[Route, ...]
    # CIDR strings whose X-Forwarded-* headers are believed.
    trusted_proxies: tuple[str, ...] = ()
    # Non-fatal findings (expired certificates, insecure settings) to log at start.
    warnings: tuple[str, ...] = ()
