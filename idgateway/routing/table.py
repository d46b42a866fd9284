"""Host -> Route: exact name, then the longest matching wildcard, then the default."""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from idgateway.config.model import Route

# A Host header the gateway accepts: a DNS-style name (letters, digits, "-",
# "_" and dots; no percent-escapes or sub-delims: no real host name has them)
# or a bracketed IPv6 literal, then an optional port of digits. Anything else
# ("app1.example.com:80@evil.example", spaces, "/", "\\") is a 400: the host
# goes into redirect_uri, login and logout URLs and X-Forwarded-Host.
_HOST_HEADER = re.compile(
    rb"(?P<name>[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])"
    rb"(?::(?P<port>[0-9]{0,5}))?"
)


def normalised_host_header(raw: bytes) -> bytes | None:
    """``name[:port]`` in lower case without a trailing dot, or None if invalid.

    Every URL the gateway builds uses this, never the raw header.
    """
    match = _HOST_HEADER.fullmatch(raw)
    if match is None:
        return None
    name = match.group("name").lower().rstrip(b".")
    if not name or b".." in name:
        return None
    port = match.group("port")
    if not port:
        return name
    number = int(port)
    if number > 65535:
        return None
    return b"%s:%d" % (name, number)


def normalise_host(host: bytes | str | None) -> str:
    """Lower-case a Host header or SNI name and drop its port and trailing dot."""
    if host is None:
        return ""
    text = host.decode("latin-1") if isinstance(host, bytes) else host
    text = text.strip().lower()
    if text.startswith("["):
        # IPv6 literal: "[::1]:8443" -> "[::1]"
        end = text.find("]")
        return text[: end + 1] if end != -1 else text
    colon = text.rfind(":")
    if colon != -1:
        text = text[:colon]
    return text.rstrip(".")


@attrs.frozen
class RouteTable:
    """An immutable lookup built once per configuration.

    Lookups are dictionary probes: the exact-name dict first, then the
    parent domains of the name against the wildcard dict (longest first,
    which is the most specific wildcard), then the default route.
    """

    exact: dict[str, Route]
    wildcards: dict[str, Route]  # "example.com" for "*.example.com"
    default: Route | None
    # Cache of names already resolved; bounded so a flood of random Host
    # headers cannot grow it without limit.
    _cache: dict[bytes, Route | None] = attrs.field(factory=dict, eq=False)
    # Host headers already read: raw -> (route, normalised host), or None when
    # the header is not a valid host[:port].
    _hosts: dict[bytes, tuple[Route | None, bytes] | None] = attrs.field(factory=dict, eq=False)
    # TLS server names already resolved: a TLS listener checks every request's
    # Host against its connection's SNI name, which the client chose.
    _names: dict[str, Route | None] = attrs.field(factory=dict, eq=False)

    @classmethod
    def build(cls, routes: Iterable[Route]) -> RouteTable:
        exact: dict[str, Route] = {}
        wildcards: dict[str, Route] = {}
        default: Route | None = None
        for route in routes:
            if route.default:
                default = route
            for host in route.hosts:
                if host.startswith("*."):
                    wildcards[host[2:]] = route
                else:
                    exact[host] = route
        return cls(exact=exact, wildcards=wildcards, default=default)

    def route_for(self, host: bytes | str | None) -> Route | None:
        """The route serving this Host header (or SNI name), or None."""
        if isinstance(host, bytes):
            try:
                return self._cache[host]
            except KeyError:
                pass
            route = self._lookup(normalise_host(host))
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[host] = route
            return route
        return self._lookup(normalise_host(host))

    def resolve_host_header(self, raw: bytes) -> tuple[Route | None, bytes] | None:
        """(the route, the normalised host) for a Host header; None if it is invalid."""
        try:
            return self._hosts[raw]
        except KeyError:
            pass
        host = normalised_host_header(raw) if raw else b""
        found = None if host is None else (self.route_for(host), host)
        if len(self._hosts) > 4096:
            self._hosts.clear()
        self._hosts[raw] = found
        return found

    def route_for_name(self, name: str) -> Route | None:
        try:
            return self._names[name]
        except KeyError:
            pass
        route = self._lookup(normalise_host(name))
        if len(self._names) > 4096:
            self._names.clear()
        self._names[name] = route
        return route

    def _lookup(self, name: str) -> Route | None:
        route = self.exact.get(name)
        if route is not None:
            return route
        # Unlike a TLS wildcard, a routing wildcard "*.example.com" covers
        # every subdomain depth, as nginx's server_name does; the longest
        # matching suffix wins.
        dot = name.find(".")
        while dot != -1:
            suffix = name[dot + 1 :]
            route = self.wildcards.get(suffix)
            if route is not None:
                return route
            dot = name.find(".", dot + 1)
        return self.default
