"""WSO2 IS 7 organizations (issue 15 §4) in memory: the organization's issuer from
its root's, the configuration's errors, org claims in rules and headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from idgateway.config.model import AuthorizeRules, ClaimRule, HeaderSettings, ProviderSettings
from idgateway.config.organizations import (
    NotAnOrganizationRoot,
    organization_issuer,
    organization_provider,
)
from idgateway.gate.identity_headers import IdentityHeaders
from idgateway.gate.rules import authorization_failure
from idgateway.http.header_names import header_key
from idgateway.sessions.model import Session
from tests.unit.test_config_providers import SECRET, load, login_file, only_problem

ORG = "6f1c2b7e-0a51-4d2e-9a8b-1c2d3e4f5a6b"


@pytest.mark.parametrize(
    ("root", "issuer"),
    [
        (
            {"issuer": "https://is.example.com:9443/oauth2/token"},
            f"https://is.example.com:9443/t/carbon.super/o/{ORG}/oauth2/token",
        ),
        (
            {"issuer": "https://is.example.com/t/acme.com/oauth2/token/"},
            f"https://is.example.com/t/acme.com/o/{ORG}/oauth2/token",
        ),
        (
            {"discovery_url": "https://h/oauth2/oidcdiscovery/.well-known/openid-configuration"},
            f"https://h/t/carbon.super/o/{ORG}/oauth2/token",
        ),
        (
            {
                "discovery_url": (
                    "https://h/t/acme.com/oauth2/token/.well-known/openid-configuration"
                )
            },
            f"https://h/t/acme.com/o/{ORG}/oauth2/token",
        ),
        (
            {"issuer": "https://api.asgardeo.io/t/myorg/oauth2/token"},
            f"https://api.asgardeo.io/t/myorg/o/{ORG}/oauth2/token",
        ),
    ],
)
def test_the_organization_issuer(root: dict[str, str], issuer: str) -> None:
    settings = ProviderSettings(name="wso2", ca_file="/ca.pem", **root)
    assert organization_issuer(settings, ORG) == issuer
    derived = organization_provider(settings, ORG)
    assert (derived.issuer, derived.ca_file, derived.name) == (issuer, "/ca.pem", f"wso2/o/{ORG}")


@pytest.mark.parametrize(
    "url",
    [
        "https://keycloak.example.com/realms/main",
        f"https://h/t/acme.com/o/{ORG}/oauth2/token",  # already an organization
        "https://h/t/acme.com/extra/oauth2/token",
    ],
)
def test_a_provider_that_is_not_a_wso2_root(url: str) -> None:
    with pytest.raises(NotAnOrganizationRoot):
        organization_issuer(ProviderSettings(name="op", issuer=url), ORG)


def test_organization_configuration(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        login_file(f"client_secret: {SECRET}", f"organization: {ORG}"),
    )
    assert config.routes[0].auth.oidc.organization == ORG  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("provider", "value", "message"),
    [
        ("issuer: https://op.example.com/oauth2/token", "a/b", "expected an organization id"),
        ("issuer: https://op.example.com/oauth2/token", "'../x'", "expected an organization id"),
        ("issuer: https://op.example.com/oauth2/token", "''", "expected an organization id"),
        ("issuer: https://op.example.com/realms/main", ORG, "not named by a WSO2 issuer"),
        (f"issuer: https://op.example.com/t/a/o/{ORG}/oauth2/token", ORG, "not a root"),
    ],
)
def test_bad_organizations(tmp_path: Path, provider: str, value: str, message: str) -> None:
    text = login_file(f"client_secret: {SECRET}", f"organization: {value}", provider=provider)
    problem = only_problem(tmp_path, text)
    assert problem.key == "routes[0].oidc.organization", problem
    assert message in problem.message


ORG_CLAIMS = {"sub": "u", "org_id": ORG, "org_name": "Customer A"}


@pytest.mark.parametrize(
    ("rule", "allowed"),
    [
        (ClaimRule("org_id", "", any_of=(ORG, "another")), True),
        (ClaimRule("org_id", "", any_of=("another",)), False),
        (ClaimRule("org_name", "Customer A"), True),
        (ClaimRule("org_name", "Customer"), False),
        (ClaimRule("org_id", "", any_of=(ORG.upper(),)), False),
    ],
)
def test_org_claims_in_rules(rule: ClaimRule, allowed: bool) -> None:
    failure = authorization_failure(
        AuthorizeRules(claims=(rule,)), ORG_CLAIMS, email_claim="email", groups_claim="groups"
    )
    assert (failure is None) is allowed


def test_a_list_of_values_in_the_configuration(tmp_path: Path) -> None:
    text = (
        login_file(f"client_secret: {SECRET}")
        + f"    authorize: {{claims: {{org_id: [{ORG}, b]}}}}\n"
    )
    rules = load(tmp_path, text).routes[0].auth.authorize  # type: ignore[union-attr]
    assert rules.claims == (ClaimRule("org_id", "", any_of=(ORG, "b")),)
    bad = login_file(f"client_secret: {SECRET}") + "    authorize: {claims: {org_id: []}}\n"
    problem = only_problem(tmp_path, bad)
    assert problem.key == "routes[0].authorize.claims.org_id"


def test_the_org_header_of_each_preset_and_its_stripping() -> None:
    session = Session(
        id="s", route="r", sub="u", user="carol", claims=ORG_CLAIMS, created_at=0, last_seen=0
    )
    proxy = IdentityHeaders.for_route(
        HeaderSettings(), user_claim="sub", email_claim="email", groups_claim="groups"
    )
    assert (b"X-Forwarded-Org", ORG.encode()) in proxy.headers_for(session)
    apache = IdentityHeaders.for_route(
        HeaderSettings(preset="mod_auth_openidc"),
        user_claim="sub",
        email_claim="email",
        groups_claim="groups",
    )
    headers = dict(apache.headers_for(session))
    assert headers[b"OIDC_CLAIM_org_id"] == ORG.encode()
    assert headers[b"OIDC_CLAIM_org_name"] == b"Customer A"
    # A client cannot send its own, in any spelling, on any route.
    for spelling in (b"X-Forwarded-Org", b"x_forwarded_org", b"X-FORWARDED-ORG"):
        assert header_key(spelling) in proxy.strip and header_key(spelling) in apache.strip
