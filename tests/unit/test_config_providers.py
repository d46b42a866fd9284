"""Configuration of providers beyond the happy path (issue 15): userinfo modes,
client authentication, PAR, and the warnings ``idgateway check`` gives."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from idgateway.config.load import load_config
from idgateway.config.model import Config
from idgateway.config.schema import ConfigError, Problem

SECRET = "a-secret-of-20-chars"


def login_file(
    *oidc_lines: str, provider: str = "issuer: https://op.example.com/oauth2/token"
) -> str:
    oidc = "".join(f"      {line}\n" for line in oidc_lines)
    return (
        textwrap.dedent(
            f"""\
            listeners:
              - address: 127.0.0.1:8080
            providers:
              op:
                {provider}
            routes:
              - name: app1
                hosts: [app1.example.com]
                upstream: http://127.0.0.1:3000
                oidc:
                  provider: op
                  client_id: app1
            """
        )
        + oidc
    )


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_config(str(path), {})


def only_problem(tmp_path: Path, text: str) -> Problem:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert len(caught.value.problems) == 1, caught.value.problems
    return caught.value.problems[0]


def oidc_of(config: Config):  # noqa: ANN201 - the route's OIDCSettings
    auth = config.routes[0].auth
    assert auth is not None
    return auth.oidc


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (None, "auto"),
        ("userinfo: auto", "auto"),
        ("userinfo: true", True),
        ("userinfo: false", False),
    ],
)
def test_userinfo_modes(tmp_path: Path, line: str | None, expected: object) -> None:
    lines = [f"client_secret: {SECRET}"] + ([line] if line else [])
    assert oidc_of(load(tmp_path, login_file(*lines))).userinfo == expected


@pytest.mark.parametrize("value", ["maybe", "1", "[auto]", "Auto"])
def test_userinfo_bad_values(tmp_path: Path, value: str) -> None:
    problem = only_problem(tmp_path, login_file(f"client_secret: {SECRET}", f"userinfo: {value}"))
    assert problem.key == "routes[0].oidc.userinfo"
    assert "expected auto, true or false" in problem.message
    assert problem.line == 14


@pytest.mark.parametrize(
    "provider",
    [
        "issuer: http://localhost:9763/oauth2/token",
        "discovery_url: http://127.0.0.1:9763/oauth2/oidcdiscovery/.well-known/openid-configuration",
        "{issuer: http://wso2.internal:9763/oauth2/token, insecure_http: true}",
    ],
)
def test_a_plain_http_provider_is_never_silent(tmp_path: Path, provider: str) -> None:
    """Issue 15: an http:// issuer passed ``idgateway check`` with "No warnings"."""
    from idgateway.config.load import summarize

    text = login_file(f"client_secret: {SECRET}", provider=provider)
    if provider.startswith("{"):
        text = text.replace("  op:\n    {", "  op: {")
    summary = summarize(load(tmp_path, text))
    assert "No warnings." not in summary
    assert "plain HTTP" in summary


def test_a_plain_http_provider_elsewhere_needs_insecure_http(tmp_path: Path) -> None:
    problem = only_problem(
        tmp_path,
        login_file(
            f"client_secret: {SECRET}", provider="issuer: http://wso2.internal/oauth2/token"
        ),
    )
    assert problem.key == "providers.op.issuer" and "insecure_http" in problem.message
