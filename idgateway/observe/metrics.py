"""Prometheus metrics, served by the admin listener at ``/metrics``.

Everything lives in the gateway's own ``CollectorRegistry`` (never
prometheus_client's global one). ``METRICS`` is the process's instance, like
the loggers in ``idgateway.observe.access_log``; code that can be handed an instance
takes one (``admin_site(holder, metrics=...)``, the tests).

Hot path: one call per finished request (``request_finished``, from the access
log hook): a dict lookup and a few additions to plain numbers per route
(``_RouteRequests``), turned into Prometheus families only when scraped. A Redis session
store times each of its calls with one pair of clock readings and one
``observe`` on a child it fetched when it was made (``session_store_timers``).

Label values are bounded: route names come from the config, status classes
are 1xx..5xx, and login failure reasons are the gateway's own codes: a
callback's ``?error=`` (anyone can forge one) counts as ``provider_error``,
with the provider's code in the audit log, and a token endpoint's error code outside
the OAuth list as ``token_provider_error`` (past a limit, any other reason is
counted as ``other``). Provider names come from the config; provider calls
and error kinds are the fixed lists below. Provider calls are reported by the
provider's HTTP client (``oidc.http.send``), which ``routing.state.StateBuilder``
makes with ``provider_calls(name)``.

With ``workers:`` > 1 every process keeps its own registry; the admin listener
(worker 0) shows every worker's, each sample labelled with its ``worker``
(``idgateway.workers.metrics`` says how).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from idgateway.proxy.upstream import DISCARD_REASONS

# Route label for requests that matched no route (unknown host).
NO_ROUTE = "-"

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

# Seconds: a gateway adds milliseconds; upstreams may take seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# OAuth 2.0 / OpenID Connect error codes a provider may send to the callback.
_OAUTH_ERRORS = frozenset(
    {
        "access_denied",
        "invalid_request",
        "unauthorized_client",
        "unsupported_response_type",
        "invalid_scope",
        "server_error",
        "temporarily_unavailable",
        "interaction_required",
        "login_required",
        "account_selection_required",
        "consent_required",
        "invalid_request_uri",
        "invalid_request_object",
        "request_not_supported",
        "request_uri_not_supported",
        "registration_not_supported",
    }
)
# The OAuth error codes as a public name (endpoints keep others out of labels).
OAUTH_ERRORS = _OAUTH_ERRORS
# How many other distinct failure reasons get their own label value.
_MAX_OTHER_REASONS = 64

LOGOUT_KINDS = ("sign_out", "backchannel", "frontchannel")
# What a Redis session store does: read, write and end one session, end every
# session of a provider session or user (back-channel logout), and take or
# release the refresh lock.
SESSION_STORE_OPERATIONS = ("load", "save", "delete", "delete_indexed", "lock", "unlock")
# The calls the gateway makes to a provider (idgateway.oidc) ...
PROVIDER_CALLS = ("discovery", "jwks", "token", "refresh", "userinfo", "par")
# ... and how one can fail: no connection (or TLS), no complete answer in
# time, a body over the size limit, an HTTP error status, or an answer the
# gateway could not use (not JSON, missing fields, a wrong issuer).
PROVIDER_ERROR_KINDS = ("connect", "timeout", "too_large", "http_4xx", "http_5xx", "invalid")
REFRESH_RESULTS = ("ok", "failed", "unavailable")


class _Timings:
    """A histogram as plain numbers: one count per bucket (the last one +Inf) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # Buckets are "less than or equal": the first bound >= seconds.
        self.counts[bisect_left(_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        buckets, running = [], 0
        for bound, count in zip((*_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            buckets.append((floatToGoString(bound), float(running)))
        return buckets


class _RouteRequests:
    """One route's finished requests: counts by status class and two timings.

    The hot path (a call per request) adds to plain numbers here; the
    Prometheus families are built from them when /metrics is scraped.
    prometheus_client's own children take a lock per increment and scan
    their buckets, which was a twentieth of a proxied request's Python time.
    Only the reactor thread touches these (requests and scrapes alike).
    """

    __slots__ = ("by_class", "gateway", "upstream", "created")

    def __init__(self) -> None:
        self.by_class = [0, 0, 0, 0, 0]
        self.gateway = _Timings()
        self.upstream = _Timings()
        self.created = time.time()


class _RequestCollector:
    """idgateway_requests_total, idgateway_request_seconds, idgateway_upstream_seconds."""

    def __init__(self, routes: dict[str, _RouteRequests]) -> None:
        self.routes = routes

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "idgateway_requests",
            "Finished requests by route and status class",
            labels=["route", "status_class"],
        )
        gateway = HistogramMetricFamily(
            "idgateway_request_seconds",
            "Time from the request head to the finished response, by route",
            labels=["route"],
        )
        upstream = HistogramMetricFamily(
            "idgateway_upstream_seconds",
            "Time from sending upstream to the upstream's response head, by route",
            labels=["route"],
        )
        for route, tally in list(self.routes.items()):
            for status_class, count in zip(_STATUS_CLASSES, tally.by_class, strict=True):
                requests.add_metric([route, status_class], float(count), created=tally.created)
            for family, timings in ((gateway, tally.gateway), (upstream, tally.upstream)):
                family.add_metric([route], timings.cumulative(), timings.sum)
                # (prometheus_client's own histograms say when each child began.)
                family.samples.append(
                    Sample(family.name + "_created", {"route": route}, tally.created)
                )
        yield requests
        yield gateway
        yield upstream


class _UpstreamDiscardCollector:
    """idgateway_upstream_connections_discarded_total: pooled upstream
    connections closed instead of reused because bytes arrived that no
    response accounts for (a desync attempt, or a broken upstream)."""

    def __init__(self, counts: dict[str, dict[str, int]]) -> None:
        self.counts = counts

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "idgateway_upstream_connections_discarded",
            "Upstream connections closed instead of reused, by upstream and reason "
            "(body_after_no_body_response, bytes_after_content_length, data_while_idle)",
            labels=["upstream", "reason"],
        )
        for upstream, by_reason in sorted(self.counts.items()):
            for reason, count in by_reason.items():
                family.add_metric([upstream, reason], float(count))
        yield family


class _ScrapeCollector:
    """Values read at scrape time: provider readiness, open connections and WebSockets."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "idgateway_provider_ready",
            "1 when the provider's discovery succeeded, else 0",
            labels=["provider"],
        )
        holder = self.metrics.holder
        if holder is not None:
            for settings, handle in holder.current.providers.items():
                ready.add_metric([settings.name], 1.0 if handle.client.ready else 0.0)
        yield ready
        connections = self.metrics.connections
        if connections is not None:
            yield GaugeMetricFamily(
                "idgateway_open_connections",
                "Client connections open on this process's listeners",
                value=float(connections()),
            )
        websockets = self.metrics.websockets
        if websockets is not None:
            tunnels = GaugeMetricFamily(
                "idgateway_websockets_open",
                "WebSocket tunnels open on this process, by route",
                labels=["route"],
            )
            counts = websockets()
            # Every configured route, open tunnels or not.
            routes = list(holder.current.runtimes) if holder is not None else []
            for route in routes:
                tunnels.add_metric([route], float(counts.get(route, 0)))
            for route, count in sorted(counts.items()):
                if route not in routes:
                    # A route removed by a reload whose tunnels are still open.
                    tunnels.add_metric([route], float(count))
            yield tunnels


class GatewayMetrics:
    """The gateway's metrics in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # route -> its finished requests (the hot path's plain numbers).
        self._routes: dict[str, _RouteRequests] = {}
        r.register(_RequestCollector(self._routes))  # type: ignore[arg-type]
        self.logins = Counter(
            "idgateway_logins",
            "Logins started, succeeded and failed (with the reason), by route",
            ["route", "result", "reason"],
            registry=r,
        )
        self.refreshes = Counter(
            "idgateway_refreshes",
            "Token refreshes asked of the provider: ok, failed (refused), unavailable",
            ["route", "result"],
            registry=r,
        )
        self.bearer_refusals = Counter(
            "idgateway_bearer_refusals",
            "Bearer-token requests refused (401, 403, 503), by route and reason code",
            ["route", "reason"],
            registry=r,
        )
        self.logouts = Counter(
            "idgateway_logouts",
            "Logouts: sign_out, backchannel, frontchannel",
            ["route", "kind"],
            registry=r,
        )
        self.session_store_errors = Counter(
            "idgateway_session_store_errors",
            "Session store (Redis) operations that failed",
            ["route"],
            registry=r,
        )
        self.session_store_seconds = Histogram(
            "idgateway_session_store_seconds",
            "Time a session store (Redis) operation took, answered or failed, "
            "by route and operation",
            ["route", "operation"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.provider_request_seconds = Histogram(
            "idgateway_provider_request_seconds",
            "Time of an HTTP call to a provider (to the whole answer, or the failure), "
            "by provider and call",
            ["provider", "call"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.provider_errors = Counter(
            "idgateway_provider_errors",
            "Failed provider calls by provider, call and kind "
            "(connect, timeout, too_large, http_4xx, http_5xx, invalid)",
            ["provider", "call", "kind"],
            registry=r,
        )
        # Set by admin_site: where scrape-time values come from.
        self.holder: Any = None
        self.connections: Callable[[], int] | None = None
        self.websockets: Callable[[], dict[str, int]] | None = None
        r.register(_ScrapeCollector(self))  # type: ignore[arg-type]
        # upstream URL -> reason -> connections discarded (plain numbers).
        self._upstream_discards: dict[str, dict[str, int]] = {}
        r.register(_UpstreamDiscardCollector(self._upstream_discards))  # type: ignore[arg-type]
        self._reasons: set[str] = set()

    def bind(
        self,
        holder: Any,
        connections: Callable[[], int] | None = None,
        websockets: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        """Read provider readiness from ``holder.current`` (and connections, and
        WebSocket tunnels by route) when scraped."""
        self.holder = holder
        self.connections = connections
        self.websockets = websockets

    # ---- requests (hot path) -------------------------------------------------------

    def observe_request(
        self, route: str | None, status: int, gateway_s: float | None, upstream_s: float | None
    ) -> None:
        route = route or NO_ROUTE
        tally = self._routes.get(route)
        if tally is None:
            tally = self._routes[route] = _RouteRequests()
        index = status // 100 - 1
        tally.by_class[index if 0 <= index < 5 else 4] += 1
        if gateway_s is not None:
            tally.gateway.observe(gateway_s)
        if upstream_s is not None:
            tally.upstream.observe(upstream_s)

    def request_finished(self, request: Any, now: float) -> None:
        """A finished GatewayRequest (observe.log_access calls this).

        What ``observe_request`` does, spelled out: one call per request
        instead of four.
        """
        route = request.idgw_route or NO_ROUTE
        tally = self._routes.get(route)
        if tally is None:
            tally = self._routes[route] = _RouteRequests()
        index = request.code // 100 - 1
        tally.by_class[index if 0 <= index < 5 else 4] += 1
        started = request.idgw_started
        if started is not None:
            timings = tally.gateway
            seconds = now - started
            timings.counts[bisect_left(_BUCKETS, seconds)] += 1
            timings.sum += seconds
        upstream_ms = request.idgw_upstream_ms
        if upstream_ms is not None:
            timings = tally.upstream
            seconds = upstream_ms / 1000.0
            timings.counts[bisect_left(_BUCKETS, seconds)] += 1
            timings.sum += seconds

    # ---- login, refresh, logout, store -----------------------------------------------

    def login_started(self, route: str) -> None:
        self.logins.labels(route, "started", "").inc()

    def login_succeeded(self, route: str) -> None:
        self.logins.labels(route, "succeeded", "").inc()

    def login_failed(self, route: str, reason: str) -> None:
        self.logins.labels(route, "failed", self._bounded_reason(reason)).inc()

    def _bounded_reason(self, reason: str) -> str:
        if reason in _OAUTH_ERRORS or reason in self._reasons:
            return reason
        if len(self._reasons) >= _MAX_OTHER_REASONS:
            return "other"
        self._reasons.add(reason)
        return reason

    def refresh(self, route: str, result: str) -> None:
        self.refreshes.labels(route, result).inc()

    def bearer_refused(self, route: str, reason: str) -> None:
        """``reason``: the gate's own codes (idgateway.gate.bearer), a bounded set."""
        self.bearer_refusals.labels(route, reason).inc()

    def logout(self, route: str, kind: str) -> None:
        self.logouts.labels(route, kind).inc()

    def session_store_error(self, route: str) -> None:
        self.session_store_errors.labels(route).inc()

    def upstream_discards(self, upstream: str) -> Callable[[str], None]:
        """What an upstream's pool calls with the reason when it closes a
        connection instead of reusing it (every reason shows, from 0)."""
        counts = self._upstream_discards.setdefault(upstream, dict.fromkeys(DISCARD_REASONS, 0))

        def discarded(reason: str) -> None:
            counts[reason] = counts.get(reason, 0) + 1

        return discarded

    def provider_calls(self, provider: str) -> ProviderCallMetrics:
        """What a provider's HTTP client reports its calls to (``oidc.http.send``)."""
        return ProviderCallMetrics(self, provider)

    def session_store_timers(self, route: str) -> dict[str, Any]:
        """The route's session-store histogram children, by operation.

        A store fetches these once, when it is made, so that timing a Redis
        call costs one ``observe`` and no label lookup.
        """
        return {
            operation: self.session_store_seconds.labels(route, operation)
            for operation in SESSION_STORE_OPERATIONS
        }


class ProviderCallMetrics:
    """One provider's call latency and errors; label children made once each."""

    def __init__(self, metrics: GatewayMetrics, provider: str) -> None:
        self.provider = provider
        self._metrics = metrics
        self._seconds: dict[str, Any] = {}
        self._errors: dict[tuple[str, str], Any] = {}

    def observe(self, call: str, seconds: float) -> None:
        child = self._seconds.get(call)
        if child is None:
            child = self._metrics.provider_request_seconds.labels(self.provider, call)
            self._seconds[call] = child
        child.observe(seconds)

    def error(self, call: str, kind: str) -> None:
        child = self._errors.get((call, kind))
        if child is None:
            child = self._metrics.provider_errors.labels(self.provider, call, kind)
            self._errors[(call, kind)] = child
        child.inc()


# The process's metrics (the registry is process-local, like the loggers).
METRICS = GatewayMetrics()
