"""idgateway.observe.metrics: counters and histograms move when the hooks are called."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import REGISTRY, generate_latest

from idgateway.config.model import ProviderSettings
from idgateway.observe.metrics import GatewayMetrics


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_requests_by_route_and_status_class() -> None:
    m = GatewayMetrics()
    m.observe_request("app", 200, 0.003, 0.002)
    m.observe_request("app", 204, 0.004, None)
    m.observe_request("app", 502, 0.010, None)
    m.observe_request(None, 404, 0.0001, None)
    assert value(m, "idgateway_requests_total", route="app", status_class="2xx") == 2
    assert value(m, "idgateway_requests_total", route="app", status_class="5xx") == 1
    assert value(m, "idgateway_requests_total", route="-", status_class="4xx") == 1
    assert value(m, "idgateway_request_seconds_count", route="app") == 3
    assert abs(value(m, "idgateway_request_seconds_sum", route="app") - 0.017) < 1e-9
    assert value(m, "idgateway_upstream_seconds_count", route="app") == 1
    assert value(m, "idgateway_request_seconds_bucket", route="app", le="0.005") == 2


def test_request_finished_reads_the_access_log_fields() -> None:
    m = GatewayMetrics()
    request = SimpleNamespace(idgw_route="r", code=302, idgw_started=10.0, idgw_upstream_ms=250.0)
    m.request_finished(request, 10.5)
    assert value(m, "idgateway_requests_total", route="r", status_class="3xx") == 1
    assert value(m, "idgateway_request_seconds_sum", route="r") == 0.5
    assert value(m, "idgateway_upstream_seconds_sum", route="r") == 0.25


def test_observe_hook_counts_even_without_an_access_log() -> None:
    from idgateway.config.model import LoggingSettings
    from idgateway.observe import access_log as observe
    from idgateway.observe import metrics

    before = value(metrics.METRICS, "idgateway_requests_total", route="hook", status_class="2xx")
    request = SimpleNamespace(
        idgw_route="hook",
        code=200,
        idgw_started=observe.now(),
        idgw_upstream_ms=None,
        idgw_logging=LoggingSettings(access_log=False),
    )
    observe.log_access(request)
    after = value(metrics.METRICS, "idgateway_requests_total", route="hook", status_class="2xx")
    assert after == before + 1


def test_logins_refreshes_logouts_store_errors() -> None:
    m = GatewayMetrics()
    m.login_started("app")
    m.login_started("app")
    m.login_succeeded("app")
    m.login_failed("app", "access_denied")
    m.refresh("app", "ok")
    m.refresh("app", "unavailable")
    m.logout("app", "sign_out")
    m.logout("app", "backchannel")
    m.session_store_error("app")
    logins = "idgateway_logins_total"
    assert value(m, logins, route="app", result="started", reason="") == 2
    assert value(m, logins, route="app", result="succeeded", reason="") == 1
    assert value(m, logins, route="app", result="failed", reason="access_denied") == 1
    assert value(m, "idgateway_refreshes_total", route="app", result="ok") == 1
    assert value(m, "idgateway_refreshes_total", route="app", result="unavailable") == 1
    assert value(m, "idgateway_logouts_total", route="app", kind="backchannel") == 1
    assert value(m, "idgateway_session_store_errors_total", route="app") == 1


def test_failure_reasons_from_browsers_are_bounded() -> None:
    m = GatewayMetrics()
    for n in range(200):
        m.login_failed("app", f"made_up_{n}")
    m.login_failed("app", "access_denied")  # a known OAuth code keeps its label
    text = generate_latest(m.registry).decode()
    assert text.count("idgateway_logins_total{") <= 66
    assert value(m, "idgateway_logins_total", route="app", result="failed", reason="other") > 0
    assert value(m, "idgateway_logins_total", route="app", result="failed", reason="access_denied")


def test_scrape_time_gauges_and_own_registry() -> None:
    m = GatewayMetrics()
    ready = SimpleNamespace(client=SimpleNamespace(ready=True))
    down = SimpleNamespace(client=SimpleNamespace(ready=False))
    state = SimpleNamespace(
        providers={
            ProviderSettings(name="wso2", issuer="https://a/"): ready,
            ProviderSettings(name="down", issuer="https://b/"): down,
        }
    )
    m.bind(SimpleNamespace(current=state), lambda: 3)
    assert value(m, "idgateway_provider_ready", provider="wso2") == 1
    assert value(m, "idgateway_provider_ready", provider="down") == 0
    assert value(m, "idgateway_open_connections") == 3
    text = generate_latest(m.registry).decode()
    for name in (
        "idgateway_requests_total",
        "idgateway_request_seconds",
        "idgateway_upstream_seconds",
        "idgateway_logins_total",
        "idgateway_refreshes_total",
        "idgateway_logouts_total",
        "idgateway_session_store_errors_total",
        "idgateway_provider_ready",
        "idgateway_open_connections",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    # Nothing lands in prometheus_client's global registry.
    assert REGISTRY.get_sample_value("idgateway_open_connections") is None


def test_request_families_say_when_each_route_began_as_prometheus_client_does() -> None:
    m = GatewayMetrics()
    m.observe_request("app", 200, 0.003, 0.002)
    for name in (
        "idgateway_requests_created",
        "idgateway_request_seconds_created",
        "idgateway_upstream_seconds_created",
    ):
        labels = {"route": "app"}
        if name == "idgateway_requests_created":
            labels["status_class"] = "2xx"
        assert value(m, name, **labels) > 1.7e9, name
    # le buckets are "less than or equal", the last is +Inf.
    m.observe_request("app", 200, 0.005, None)
    assert value(m, "idgateway_request_seconds_bucket", route="app", le="0.005") == 2
    m.observe_request("app", 200, 99.0, None)
    assert value(m, "idgateway_request_seconds_bucket", route="app", le="30.0") == 2
    assert value(m, "idgateway_request_seconds_bucket", route="app", le="+Inf") == 3
