"""idgateway_provider_request_seconds and idgateway_provider_errors_total.

In memory: the fake WSO2 tenant of test_oidc_provider behind treq's
RequestTraversalAgent, answering after a delay on a ``Clock`` that the test
advances, so the observed durations are exact.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from treq.testing import RequestTraversalAgent, _SynchronousProducer
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.web.server import NOT_DONE_YET, Request

from idgateway.config.model import ProviderSettings
from idgateway.observe.metrics import GatewayMetrics
from idgateway.oidc.client import (
    ClientCredentials,
    TokenEndpointError,
    UserinfoError,
    exchange_code,
    fetch_userinfo,
    refresh_tokens,
)
from idgateway.oidc.http import ProviderHTTPClient
from idgateway.oidc.provider import ProviderClient
from idgateway.routing.state import StateBuilder
from tests.unit.test_oidc_provider import CLIENT_ID, CLIENT_SECRET, FakeWSO2, resolve

CREDS = ClientCredentials(CLIENT_ID, CLIENT_SECRET, "client_secret_basic")


class SlowWSO2(FakeWSO2):
    """Answers each request ``delay`` seconds later on ``clock``."""

    def __init__(self, clock: Clock, delay: float) -> None:
        super().__init__()
        self.clock = clock
        self.delay = delay
        self.agent: RequestTraversalAgent | None = None

    def render(self, request: Request) -> bytes | int:
        body = super().render(request)
        if self.delay == 0 or body is NOT_DONE_YET:
            return body

        def answer() -> None:
            assert isinstance(body, bytes)
            request.write(body)
            request.finish()
            assert self.agent is not None
            self.agent.flush()

        self.clock.callLater(self.delay, answer)
        return NOT_DONE_YET


def client_for(
    fake: FakeWSO2, metrics: GatewayMetrics, provider: str = "wso2"
) -> ProviderHTTPClient:
    agent = RequestTraversalAgent(fake)
    if isinstance(fake, SlowWSO2):
        fake.agent = agent
    return ProviderHTTPClient(
        agent,
        calls=metrics.provider_calls(provider),
        data_to_body_producer=_SynchronousProducer,
    )


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def errors(metrics: GatewayMetrics, call: str, kind: str, provider: str = "wso2") -> float:
    return sample(
        metrics, "idgateway_provider_errors_total", provider=provider, call=call, kind=kind
    )


def seconds(metrics: GatewayMetrics, suffix: str, call: str, provider: str = "wso2") -> float:
    return sample(
        metrics, "idgateway_provider_request_seconds" + suffix, provider=provider, call=call
    )


def provider_for(fake: FakeWSO2, clock: Clock, metrics: GatewayMetrics, **options: Any) -> Any:
    return ProviderClient(
        "wso2",
        discovery_url=fake.url("discovery"),
        http=client_for(fake, metrics),
        clock=clock,
        **options,
    )


def test_discovery_and_jwks_are_timed() -> None:
    clock = Clock()
    metrics = GatewayMetrics()
    fake = SlowWSO2(clock, 0.2)
    provider = provider_for(fake, clock, metrics)
    provider.start()
    clock.advance(0.2)  # the discovery document arrives; the JWKS is asked for
    assert not provider.ready
    assert seconds(metrics, "_count", "discovery") == 1
    assert seconds(metrics, "_count", "jwks") == 0
    clock.advance(0.2)
    assert provider.ready
    assert seconds(metrics, "_sum", "discovery") == pytest.approx(0.2)
    assert seconds(metrics, "_count", "jwks") == 1
    assert seconds(metrics, "_sum", "jwks") == pytest.approx(0.2)
    text = generate_latest(metrics.registry).decode()
    bucket = "idgateway_provider_request_seconds_bucket"
    assert f'{bucket}{{call="jwks",le="0.25",provider="wso2"}} 1.0' in text
    assert f'{bucket}{{call="jwks",le="0.1",provider="wso2"}} 0.0' in text
    assert "idgateway_provider_errors_total{" not in text
    provider.stop()


def started(provider: ProviderClient) -> None:
    """Start (its first fetch fails at once here) and stop before any retry."""
    provider.start()
    provider.stop()


def test_provider_errors_by_kind() -> None:
    clock = Clock()
    metrics = GatewayMetrics()

    down = FakeWSO2()
    down.status = 503
    started(provider_for(down, clock, metrics))
    assert errors(metrics, "discovery", "http_5xx") == 1

    gone = FakeWSO2()
    gone.status = 404
    started(provider_for(gone, clock, metrics))
    assert errors(metrics, "discovery", "http_4xx") == 1

    hung = FakeWSO2()
    hung.hang = True
    hanging = provider_for(hung, clock, metrics, timeout=5)
    hanging.start()
    clock.advance(5)
    hanging.stop()
    assert errors(metrics, "discovery", "timeout") == 1
    assert seconds(metrics, "_sum", "discovery") == pytest.approx(5.0)

    wrong = FakeWSO2()
    wrong.discovery["issuer"] = "https://elsewhere.example.com/oauth2/token"
    started(provider_for(wrong, clock, metrics, issuer=wrong.issuer))
    assert errors(metrics, "discovery", "invalid") == 1

    no_keys = FakeWSO2()
    no_keys.keys = []
    started(provider_for(no_keys, clock, metrics))
    assert errors(metrics, "jwks", "invalid") == 1

    class Refused:
        def request(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            return defer.fail(ConnectionRefusedError("connection refused"))

    provider = ProviderClient(
        "wso2",
        discovery_url=FakeWSO2().url("discovery"),
        http=ProviderHTTPClient(Refused(), calls=metrics.provider_calls("wso2")),
        clock=clock,
    )
    started(provider)
    assert errors(metrics, "discovery", "connect") == 1
    text = generate_latest(metrics.registry).decode()
    assert (
        'idgateway_provider_errors_total{call="discovery",kind="http_5xx",provider="wso2"} 1.0'
        in text
    )
    # Nothing else was counted as an error.
    assert text.count("idgateway_provider_errors_total{") == 6


def test_token_refresh_and_userinfo_calls() -> None:
    clock = Clock()
    metrics = GatewayMetrics()
    fake = FakeWSO2()
    provider = provider_for(fake, clock, metrics)
    provider.start()
    assert provider.ready
    metadata = provider.metadata
    http = client_for(fake, metrics)

    def exchange() -> Any:
        return resolve(
            exchange_code(
                http,
                metadata,
                CREDS,
                code="code",
                redirect_uri="https://app.example.com/oauth2/callback",
                code_verifier="v" * 43,
                clock=clock,
            )
        )

    exchange()
    resolve(refresh_tokens(http, metadata, CREDS, refresh_token="r", clock=clock))
    resolve(fetch_userinfo(http, metadata, access_token="a", clock=clock))
    assert seconds(metrics, "_count", "token") == 1
    assert seconds(metrics, "_count", "refresh") == 1
    assert seconds(metrics, "_count", "userinfo") == 1

    fake.token_reply = (400, {}, {"error": "invalid_grant"})
    with pytest.raises(TokenEndpointError):
        resolve(refresh_tokens(http, metadata, CREDS, refresh_token="r", clock=clock))
    assert errors(metrics, "refresh", "http_4xx") == 1

    fake.token_reply = (200, {}, {"token_type": "Bearer"})  # no access_token
    with pytest.raises(TokenEndpointError):
        exchange()
    assert errors(metrics, "token", "invalid") == 1

    fake.userinfo_reply = (200, {}, b"<html>login</html>")
    with pytest.raises(UserinfoError):
        resolve(fetch_userinfo(http, metadata, access_token="a", clock=clock))
    assert errors(metrics, "userinfo", "invalid") == 1

    fake.userinfo_reply = (502, {}, b"bad gateway")
    with pytest.raises(UserinfoError):
        resolve(fetch_userinfo(http, metadata, access_token="a", clock=clock))
    assert errors(metrics, "userinfo", "http_5xx") == 1
    assert errors(metrics, "userinfo", "invalid") == 1
    assert seconds(metrics, "_count", "userinfo") == 3


def test_clients_without_an_observer_count_nothing() -> None:
    from treq.testing import StubTreq

    metrics = GatewayMetrics()
    fake = FakeWSO2()
    provider = ProviderClient(
        "wso2",
        discovery_url=fake.url("discovery"),
        http=StubTreq(fake),  # type: ignore[arg-type]
        clock=Clock(),
    )
    provider.start()
    assert provider.ready
    assert "idgateway_provider_request_seconds_count{" not in (
        generate_latest(metrics.registry).decode()
    )


def test_state_builder_gives_each_provider_its_own_labels() -> None:
    metrics = GatewayMetrics()
    builder = StateBuilder(MemoryReactorClock(), metrics=metrics)
    handle = builder.provider_handle(
        ProviderSettings(
            name="tenant-a",
            discovery_url="https://127.0.0.1:9443/oauth2/oidcdiscovery/.well-known/openid-configuration",
        )
    )
    try:
        assert isinstance(handle.http, ProviderHTTPClient)
        assert handle.http.calls is not None
        handle.http.calls.error("discovery", "timeout")
        assert errors(metrics, "discovery", "timeout", provider="tenant-a") == 1
    finally:
        handle.client.stop()
