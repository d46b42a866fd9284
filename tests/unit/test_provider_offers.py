"""What a provider's discovery document offers a route (issue 15 §1): its logout
paths (for /status and the start-up log) and the warnings about settings it
cannot honour; the logout line of ``idgateway check``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from idgateway.config.load import summarize
from idgateway.config.model import OIDCSettings
from idgateway.oidc.logout_paths import BACK_CHANNEL, FRONT_CHANNEL, RP_INITIATED, logout_paths
from idgateway.oidc.provider import ProviderMetadata
from tests.unit.test_config_providers import SECRET, load, login_file
from tests.unit.test_par import make_login

OIDC = OIDCSettings(provider="op", client_id="c", client_secret="s")
WSO2_LIKE = ProviderMetadata(
    issuer="https://op/oauth2/token",
    authorization_endpoint="https://op/oauth2/authorize",
    token_endpoint="https://op/oauth2/token",
    jwks_uri="https://op/oauth2/jwks",
    end_session_endpoint="https://op/oidc/logout",
    backchannel_logout_supported=True,
    frontchannel_logout_supported=True,
)


def test_a_wso2_like_provider_offers_every_path():
    paths = logout_paths(WSO2_LIKE, attrs.evolve(OIDC, frontchannel_logout=True))
    assert paths[BACK_CHANNEL].startswith("works")
    assert paths[FRONT_CHANNEL].startswith("works")
    assert paths[RP_INITIATED].startswith("works")


def test_a_generic_provider_front_channel_only_without_end_session():
    generic = attrs.evolve(WSO2_LIKE, backchannel_logout_supported=False, end_session_endpoint=None)
    paths = logout_paths(generic, OIDC)
    assert paths[BACK_CHANNEL].startswith("not advertised")
    assert paths[FRONT_CHANNEL] == "off (oidc.frontchannel_logout: false)"
    assert paths[RP_INITIATED].startswith("no end_session_endpoint")


def test_unknown_before_discovery():
    assert all(v.startswith("unknown") for v in logout_paths(None, OIDC).values())


def logged(work: Any) -> list[tuple[Any, str]]:
    events: list[tuple[Any, str]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_format" in event:
            events.append((event.get("log_level"), formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    try:
        work()
    finally:
        globalLogPublisher.removeObserver(observe)
    return events


@pytest.mark.parametrize(
    ("oidc", "metadata", "warning"),
    [
        (
            {"post_logout_redirect": "/bye"},
            attrs.evolve(WSO2_LIKE, end_session_endpoint=None),
            "post_logout_redirect is set but the provider has no end_session_endpoint",
        ),
        ({"par": "required"}, WSO2_LIKE, "par: required but the provider advertises no"),
        (
            {"par": "off"},
            attrs.evolve(WSO2_LIKE, require_pushed_authorization_requests=True),
            "par: off but the provider requires pushed authorization requests",
        ),
    ],
)
def test_settings_the_provider_cannot_honour_are_warned(oidc, metadata, warning):
    login = make_login("auto", metadata=metadata)
    login.oidc = attrs.evolve(login.oidc, **oidc)
    events = logged(lambda: login.check_provider_offers(metadata))
    warnings = [text for level, text in events if level == LogLevel.warn]
    assert any(warning in w for w in warnings), warnings
    assert any("provider logout paths" in text for _, text in events)


def test_a_provider_that_honours_everything_gives_no_warning():
    login = make_login("auto", metadata=WSO2_LIKE)
    events = logged(lambda: login.check_provider_offers(WSO2_LIKE))
    assert [t for level, t in events if level == LogLevel.warn] == []


def test_the_check_is_run_when_the_provider_becomes_ready():
    class Pending:
        metadata = None
        last_error = None

        def __init__(self) -> None:
            self.when_ready: list[Any] = []

    login = make_login("auto")
    pending = Pending()
    login.provider.client = pending  # type: ignore[assignment]
    type(login).__init__(
        login, login.route, login.auth, login.provider, login.clock, revocation=login.revocation
    )
    assert pending.when_ready == [login.check_provider_offers]


def test_check_lists_the_logout_paths_per_route(tmp_path: Path):
    summary = summarize(load(tmp_path, login_file(f"client_secret: {SECRET}")))
    assert "    provider logout: back-channel (by sid, or by sub), no front-channel" in summary
    assert "see /status" in summary
