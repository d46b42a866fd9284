"""``forward_auth: {pass_tokens: ...}`` on a route: default off, and a clear error
(file:line:key) for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from idgateway.config.load import ConfigError, load_config
from idgateway.config.model import ForwardAuthSettings

OIDC = "    oidc: {provider: wso2, client_id: c, client_secret: s}\n"


def config_text(block: str, oidc: str = OIDC) -> str:
    return (
        "listeners: [{address: 127.0.0.1:8080}]\n"
        "providers:\n  wso2: {issuer: https://localhost:9443/oauth2/token}\n"
        "routes:\n  - name: app1\n    hosts: [app1.example.com]\n"
        "    upstream: http://127.0.0.1:3000\n" + oidc + block
    )


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_config(str(path), {})


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return str(caught.value)


def test_default_is_no_tokens(tmp_path: Path) -> None:
    config = load(tmp_path, config_text(""))
    auth = config.routes[0].auth  # type: ignore[attr-defined]
    assert auth.forward_auth == ForwardAuthSettings(pass_tokens=False)


def test_pass_tokens_true(tmp_path: Path) -> None:
    config = load(tmp_path, config_text("    forward_auth: {pass_tokens: true}\n"))
    assert config.routes[0].auth.forward_auth.pass_tokens  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        pytest.param(
            "    forward_auth: {pass_tokens: sure}\n",
            "gateway.yaml:9: routes[0].forward_auth.pass_tokens",
            id="not-a-boolean",
        ),
        pytest.param(
            "    forward_auth: {pass_tokens: [true]}\n",
            "gateway.yaml:9: routes[0].forward_auth.pass_tokens",
            id="a-list",
        ),
        pytest.param(
            "    forward_auth: true\n",
            "gateway.yaml:9: routes[0].forward_auth: expected a mapping like {pass_tokens: false}",
            id="not-a-mapping",
        ),
        pytest.param(
            "    forward_auth: {pass_token: true}\n",
            "routes[0].forward_auth.pass_token",
            id="misspelt-key",
        ),
        pytest.param(
            "    forward_auth: {pass_tokens: true, pass_tokens: false}\n",
            "duplicate key",
            id="duplicate-key",
        ),
    ],
)
def test_bad_values_are_clear_errors(tmp_path: Path, block: str, expected: str) -> None:
    assert expected in problems(tmp_path, config_text(block))


def test_forward_auth_needs_a_login_route(tmp_path: Path) -> None:
    text = problems(tmp_path, config_text("    forward_auth: {pass_tokens: true}\n", oidc=""))
    assert "'forward_auth' only applies to a route with an 'oidc' block" in text
