"""Host -> Route: exact name, then the longest matching wildcard, then the default."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from idgateway.model import Route


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

    def route_for_name(self, name: str) -> Route | None:
        return self._lookup(normalise_host(name))

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
