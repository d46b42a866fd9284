"""Provider traffic is HTTPS, always, unless the provider is marked insecure_http
(or runs on loopback): the configured URL and every endpoint discovery advertises."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from idgateway.config.load import ConfigError, load_config
from idgateway.config.provider_urls import (
    InsecureTransport,
    check_configured_url,
    check_endpoint,
    is_loopback_host,
)
from tests.unit.test_oidc_provider import FakeWSO2, make_provider

LOOPBACK_DISCOVERY = "http://127.0.0.1:9763/oauth2/oidcdiscovery/.well-known/openid-configuration"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("wso2.localhost", False),  # resolved by DNS, not surely loopback
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("wso2.example.com", False),
        ("localhost.example.com", False),
        ("10.0.0.5", False),
        ("0.0.0.0", False),
        ("::ffff:10.0.0.1", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_hosts(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_configured_https_is_silent() -> None:
    assert (
        check_configured_url("https://wso2.example.com/oauth2/token", insecure_http=False) is None
    )


@pytest.mark.parametrize(
    "url",
    ["http://localhost:9763/oauth2/token", "http://127.0.0.1:9763/oauth2/token", "http://[::1]/x"],
)
def test_configured_http_on_loopback_is_allowed_with_a_warning(url: str) -> None:
    warning = check_configured_url(url, insecure_http=False)
    assert warning is not None and "plain HTTP" in warning


@pytest.mark.parametrize(
    "url",
    [
        "http://wso2.example.com/oauth2/token",
        "http://10.0.0.5:9763/oauth2/token",
        "http://localhost.evil.example/oauth2/token",
        "http://127.0.0.1.nip.io/oauth2/token",
    ],
)
def test_configured_http_elsewhere_needs_insecure_http(url: str) -> None:
    with pytest.raises(InsecureTransport, match="insecure_http: true"):
        check_configured_url(url, insecure_http=False)
    warning = check_configured_url(url, insecure_http=True)
    assert warning is not None and "insecure_http is on" in warning


HTTPS_DISCOVERY = "https://wso2.example.com/oauth2/oidcdiscovery/.well-known/openid-configuration"


@pytest.mark.parametrize(
    ("url", "discovery"),
    [
        pytest.param("http://wso2.example.com/oauth2/jwks", HTTPS_DISCOVERY, id="http-same-host"),
        pytest.param("http://127.0.0.1/oauth2/jwks", HTTPS_DISCOVERY, id="https-op-http-loopback"),
        pytest.param(
            "http://evil.example/oauth2/jwks", LOOPBACK_DISCOVERY, id="loopback-op-elsewhere"
        ),
        pytest.param("ftp://wso2.example.com/jwks", HTTPS_DISCOVERY, id="other-scheme"),
        pytest.param("//wso2.example.com/jwks", HTTPS_DISCOVERY, id="scheme-relative"),
        pytest.param("/oauth2/jwks", HTTPS_DISCOVERY, id="relative"),
        pytest.param("https://wso2.example.com:99999/jwks", HTTPS_DISCOVERY, id="bad-port"),
        pytest.param("https:///jwks", HTTPS_DISCOVERY, id="no-host"),
    ],
)
def test_advertised_endpoints_that_are_refused(url: str, discovery: str) -> None:
    with pytest.raises(InsecureTransport):
        check_endpoint("jwks_uri", url, discovery_url=discovery, insecure_http=False)


def test_advertised_endpoints_that_are_allowed() -> None:
    same = "https://wso2.example.com/oauth2/jwks"
    assert (
        check_endpoint("jwks_uri", same, discovery_url=HTTPS_DISCOVERY, insecure_http=False)
        is False
    )
    # WSO2 behind a proxy: another HTTPS host is allowed (the caller logs it).
    other = "https://keys.example.net/oauth2/jwks"
    assert check_endpoint("jwks_uri", other, discovery_url=HTTPS_DISCOVERY, insecure_http=False)
    local = "http://localhost:9763/oauth2/jwks"
    assert check_endpoint("jwks_uri", local, discovery_url=LOOPBACK_DISCOVERY, insecure_http=False)
    plain = "http://wso2.example.com/oauth2/jwks"
    assert not check_endpoint("jwks_uri", plain, discovery_url=HTTPS_DISCOVERY, insecure_http=True)


# ---------------------------------------------------------------------------
# ProviderClient: a discovery document that advertises plain HTTP is refused


@pytest.mark.parametrize(
    "field",
    [
        "jwks_uri",
        "token_endpoint",
        "userinfo_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "end_session_endpoint",
        "authorization_endpoint",
    ],
)
def test_discovered_http_endpoint_makes_the_provider_not_ready(field: str) -> None:
    fake = FakeWSO2()
    fake.discovery[field] = fake.discovery[field].replace("https://", "http://")
    provider = make_provider(fake, Clock(), discovery_url=fake.url("discovery"))
    provider.start()
    assert not provider.ready
    assert provider.last_error is not None
    assert field in provider.last_error and "insecure_http" in provider.last_error
    # Refused before any request to it: the JWKS was never fetched.
    assert fake.hits[fake.paths["jwks"]] == 0


def test_insecure_http_allows_a_discovered_http_endpoint() -> None:
    fake = FakeWSO2()
    # StubTreq answers whatever the scheme.
    fake.discovery["jwks_uri"] = fake.url("jwks").replace("https://", "http://")
    provider = make_provider(fake, Clock(), discovery_url=fake.url("discovery"), insecure_http=True)
    provider.start()
    assert provider.ready, provider.last_error


def test_loopback_provider_over_http_needs_no_flag() -> None:
    fake = FakeWSO2(base="http://127.0.0.1:9763")
    provider = make_provider(fake, Clock(), discovery_url=fake.url("discovery"))
    provider.start()
    assert provider.ready, provider.last_error


def test_endpoint_on_another_https_host_is_allowed_and_logged_once() -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        fake = FakeWSO2()
        fake.discovery["userinfo_endpoint"] = "https://api.example.net/oauth2/userinfo"
        clock = Clock()
        provider = make_provider(
            fake, clock, discovery_url=fake.url("discovery"), refresh_interval=10
        )
        provider.start()
        assert provider.ready, provider.last_error
        clock.advance(10)  # a periodic refresh reads the same document again
        clock.advance(10)
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = [e for e in events if e.get("field") == "userinfo_endpoint"]
    assert len(logged) == 1
    assert fake.hits[fake.paths["discovery"]] == 3


def test_configured_plain_http_elsewhere_is_refused_by_the_client_too() -> None:
    with pytest.raises(ValueError, match="insecure_http"):
        make_provider(FakeWSO2(), Clock(), issuer="http://wso2.example.com/oauth2/token")


# ---------------------------------------------------------------------------
# Configuration: insecure_http, and plain-HTTP provider URLs


def load(tmp_path: Path, providers: str) -> tuple[object, str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listeners: [{address: 127.0.0.1:8080}]\n"
        "providers:\n"
        + providers
        + "routes: [{name: a, default: true, upstream: http://127.0.0.1:1}]\n"
    )
    try:
        return load_config(str(path), {}), ""
    except ConfigError as error:
        return None, str(error)


def test_http_provider_elsewhere_is_a_config_error_naming_line_key_and_fix(tmp_path: Path) -> None:
    config, error = load(tmp_path, "  wso2:\n    issuer: http://wso2.example.com/oauth2/token\n")
    assert config is None
    assert "gateway.yaml:4: providers.wso2.issuer" in error
    assert "insecure_http: true" in error


def test_http_discovery_url_elsewhere_is_a_config_error(tmp_path: Path) -> None:
    config, error = load(
        tmp_path, "  wso2: {discovery_url: 'http://10.1.2.3/.well-known/openid-configuration'}\n"
    )
    assert config is None and "providers.wso2.discovery_url" in error


def test_insecure_http_allows_it_with_a_loud_warning(tmp_path: Path) -> None:
    config, error = load(
        tmp_path,
        "  wso2:\n    issuer: http://wso2.example.com/oauth2/token\n    insecure_http: true\n",
    )
    assert config is not None, error
    assert config.providers[0].insecure_http  # type: ignore[attr-defined]
    assert any("insecure_http is on" in w for w in config.warnings)  # type: ignore[attr-defined]


def test_loopback_http_provider_loads_with_a_warning(tmp_path: Path) -> None:
    config, error = load(tmp_path, "  wso2: {issuer: 'http://localhost:9763/oauth2/token'}\n")
    assert config is not None, error
    assert not config.providers[0].insecure_http  # type: ignore[attr-defined]
    assert any("plain HTTP" in w for w in config.warnings)  # type: ignore[attr-defined]


def test_insecure_http_on_an_https_provider_still_warns(tmp_path: Path) -> None:
    config, error = load(
        tmp_path, "  wso2: {issuer: 'https://wso2.example.com/oauth2/token', insecure_http: true}\n"
    )
    assert config is not None, error
    assert any("insecure_http is on" in w for w in config.warnings)  # type: ignore[attr-defined]


def test_https_provider_has_no_transport_warning(tmp_path: Path) -> None:
    config, error = load(tmp_path, "  wso2: {issuer: 'https://wso2.example.com/oauth2/token'}\n")
    assert config is not None, error
    assert not config.providers[0].insecure_http  # type: ignore[attr-defined]
    assert not any("HTTP" in w for w in config.warnings)  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["yes please", "1", "[true]", "{a: b}"])
def test_insecure_http_must_be_a_boolean(tmp_path: Path, value: str) -> None:
    config, error = load(
        tmp_path,
        f"  wso2:\n    issuer: https://wso2.example.com/oauth2/token\n    insecure_http: {value}\n",
    )
    assert config is None
    assert "gateway.yaml:5: providers.wso2.insecure_http" in error
