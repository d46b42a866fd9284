"""WebSocket tunnels per route, against the route's ``max_websockets``.

A slot is taken when an upgrade is forwarded (so a burst of upgrades still on
their way to the upstream counts too) and given back exactly once: when the
request ends without becoming a tunnel, or when the tunnel closes. Counts are
by route name, so they outlive reloads, which rebuild the routes.
"""

from __future__ import annotations

from idgateway.config.model import Route


class WebSocketSlot:
    """One route's claim on a tunnel; ``release`` is safe to call more than once."""

    __slots__ = ("_counts", "route")

    def __init__(self, counts: dict[str, int] | None, route: str) -> None:
        self._counts = counts
        self.route = route

    def release(self) -> None:
        counts, self._counts = self._counts, None
        if counts is not None:
            counts[self.route] -= 1


class WebSocketSlots:
    """This process's open tunnels per route.

    With ``workers`` processes each admits its share, ``max_websockets //
    workers`` (at least 1 unless the limit is 0), so that the route as a whole
    stays within its limit.
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.open: dict[str, int] = {}

    def limit_for(self, route: Route) -> int:
        limit = route.max_websockets
        if limit == 0 or self.workers <= 1:
            return limit
        return max(1, limit // self.workers)

    def take(self, route: Route) -> WebSocketSlot | None:
        """A slot on ``route``, or None when its tunnels are at the limit."""
        counts = self.open
        name = route.name
        current = counts.get(name, 0)
        if current >= self.limit_for(route):
            return None
        counts[name] = current + 1
        return WebSocketSlot(counts, name)
