"""The ``bearer:`` block and the ``scopes`` rule: defaults from the model, and one
clear error (file:line:key and the fix) per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from idgateway.config.load import load_config
from idgateway.config.model import BearerSettings, Config, IntrospectionSettings
from idgateway.config.schema import ConfigError, Problem

HEAD = """\
listeners:
  - address: 127.0.0.1:8080
providers:
  wso2: {issuer: https://localhost:9443/oauth2/token}
routes:
  - name: orders-api
    hosts: [api.example.com]
    upstream: http://127.0.0.1:4000
"""

GOOD_BEARER = """\
    bearer:
      provider: wso2
      tokens: [jwt, opaque]
      audiences: [orders]
      introspection: {client_id: gw, client_secret: s3cret}
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_config(str(path), {})


def problem(tmp_path: Path, text: str) -> Problem:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    found = caught.value.problems
    assert len(found) == 1, found
    return found[0]


def test_defaults_come_from_the_model(tmp_path: Path) -> None:
    config = load(tmp_path, HEAD + "    bearer: {provider: wso2, audiences: [orders]}\n")
    bearer = config.routes[0].bearer
    assert bearer is not None and config.routes[0].auth is None
    assert bearer.settings == BearerSettings(provider="wso2", audiences=("orders",))
    assert bearer.settings.tokens == ("jwt",) and bearer.settings.dpop == "off"
    assert bearer.user_claim == "sub"


def test_the_issue_contract_loads(tmp_path: Path) -> None:
    text = HEAD + (
        "    bearer:\n"
        "      provider: wso2\n"
        "      tokens: [jwt, opaque]\n"
        "      audiences: [orders]\n"
        "      clients: [spa-client, billing-service]\n"
        "      introspection:\n"
        "        client_id: gw-introspect\n"
        "        client_secret: pw\n"
        "        cache: 5m\n"
        "        negative_cache: 10s\n"
        "      dpop: optional\n"
        "      realm: orders\n"
        "    authorize:\n"
        "      scopes: [orders:read]\n"
        "    public_paths: [/healthz]\n"
        "    paths:\n"
        "      - {prefix: /admin/, upstream: http://127.0.0.1:4001,"
        " authorize: {scopes: [orders:admin]}}\n"
    )
    route = load(tmp_path, text).routes[0]
    assert route.bearer is not None
    settings = route.bearer.settings
    assert settings.introspection == IntrospectionSettings(
        client_id="gw-introspect", client_secret="pw", cache=300.0, negative_cache=10.0
    )
    assert (settings.dpop, settings.realm) == ("optional", "orders")
    assert settings.clients == ("spa-client", "billing-service")
    assert route.bearer.authorize.scopes == ("orders:read",)
    assert route.paths[0].authorize is not None
    assert route.paths[0].authorize.scopes == ("orders:admin",)


@pytest.mark.parametrize("value", ["off", "false", "'off'"])
def test_dpop_off_however_yaml_reads_it(tmp_path: Path, value: str) -> None:
    text = HEAD + f"    bearer: {{provider: wso2, audiences: [orders], dpop: {value}}}\n"
    route = load(tmp_path, text).routes[0]
    assert route.bearer is not None and route.bearer.settings.dpop == "off"


def test_with_oidc_the_route_shares_headers_rules_and_user_claim(tmp_path: Path) -> None:
    text = HEAD + (
        "    oidc: {provider: wso2, client_id: app, client_secret: s, user_claim: username}\n"
        "    bearer: {provider: wso2, audiences: [orders]}\n"
        "    headers: mod_auth_openidc\n"
        "    authorize: {groups: [eng], scopes: [orders:read]}\n"
    )
    route = load(tmp_path, text).routes[0]
    assert route.auth is not None and route.bearer is not None
    assert route.bearer.headers is route.auth.headers
    assert route.bearer.authorize is route.auth.authorize
    assert route.bearer.user_claim == "username"


BAD = {
    "unknown-provider": (
        "    bearer: {provider: nope, audiences: [orders]}\n",
        "routes[0].bearer.provider",
        "unknown provider 'nope'; known providers: wso2",
    ),
    "no-provider": (
        "    bearer: {audiences: [orders]}\n",
        "routes[0].bearer.provider",
        "missing required key 'provider'",
    ),
    "jwt-without-audiences": (
        "    bearer: {provider: wso2}\n",
        "routes[0].bearer.audiences",
        "required when tokens has jwt",
    ),
    "opaque-without-introspection": (
        "    bearer: {provider: wso2, tokens: [opaque]}\n",
        "routes[0].bearer.introspection",
        "required when tokens has opaque",
    ),
    "unknown-token-kind": (
        "    bearer: {provider: wso2, tokens: [saml], audiences: [a]}\n",
        "routes[0].bearer.tokens[0]",
        "'saml' is not a token kind",
    ),
    "no-token-kind": (
        "    bearer: {provider: wso2, tokens: [], audiences: [a]}\n",
        "routes[0].bearer.tokens",
        "",
    ),
    "token-kind-twice": (
        "    bearer: {provider: wso2, tokens: [jwt, jwt], audiences: [a]}\n",
        "routes[0].bearer.tokens",
        "listed twice",
    ),
    "bad-dpop": (
        "    bearer: {provider: wso2, audiences: [a], dpop: maybe}\n",
        "routes[0].bearer.dpop",
        "'maybe' is not one of: off, optional, required",
    ),
    "dpop-true": (
        "    bearer: {provider: wso2, audiences: [a], dpop: true}\n",
        "routes[0].bearer.dpop",
        "expected off, optional or required",
    ),
    "realm-with-a-quote": (
        "    bearer: {provider: wso2, audiences: [a], realm: 'a\"b'}\n",
        "routes[0].bearer.realm",
        'without " or \\',
    ),
    "unknown-key": (
        "    bearer: {provider: wso2, audiences: [a], audience: [b]}\n",
        "routes[0].bearer.audience",
        "did you mean 'audiences'?",
    ),
    "introspection-without-secret": (
        "    bearer: {provider: wso2, tokens: [opaque], introspection: {client_id: gw}}\n",
        "routes[0].bearer.introspection.client_secret",
        "missing required key 'client_secret' (or 'client_secret_file')",
    ),
    "bad-cache": (
        "    bearer: {provider: wso2, tokens: [opaque],"
        " introspection: {client_id: g, client_secret: s, cache: soon}}\n",
        "routes[0].bearer.introspection.cache",
        "duration",
    ),
    "bad-negative-cache": (
        "    bearer: {provider: wso2, tokens: [opaque],"
        " introspection: {client_id: g, client_secret: s, negative_cache: -1s}}\n",
        "routes[0].bearer.introspection.negative_cache",
        "",
    ),
    "zero-timeout": (
        "    bearer: {provider: wso2, tokens: [opaque],"
        " introspection: {client_id: g, client_secret: s, timeout: 0}}\n",
        "routes[0].bearer.introspection.timeout",
        "longer than zero",
    ),
    "bad-scope": (
        "    bearer: {provider: wso2, audiences: [a]}\n    authorize: {scopes: ['orders read']}\n",
        "routes[0].authorize.scopes[0]",
        "is not an OAuth scope",
    ),
    "scope-with-a-quote": (
        "    bearer: {provider: wso2, audiences: [a]}\n    authorize: {scopes: ['a\"b']}\n",
        "routes[0].authorize.scopes[0]",
        "is not an OAuth scope",
    ),
    "scopes-without-bearer": (
        "    oidc: {provider: wso2, client_id: app, client_secret: s}\n"
        "    authorize: {scopes: [orders:read]}\n",
        "routes[0].authorize.scopes",
        "applies to bearer tokens only",
    ),
    "session-without-oidc": (
        "    bearer: {provider: wso2, audiences: [a]}\n    session: {store: cookie}\n",
        "routes[0].session",
        "only applies to a route with an 'oidc'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_value_is_one_clear_problem(tmp_path: Path, case: str) -> None:
    snippet, key, message = BAD[case]
    found = problem(tmp_path, HEAD + snippet)
    assert found.key == key, found
    assert message in found.message, found
    assert found.line is not None and found.line >= 9
    assert str(found).startswith(f"{tmp_path / 'gateway.yaml'}:{found.line}: {key}: ")


def test_path_authorize_needs_oidc_or_bearer(tmp_path: Path) -> None:
    text = HEAD + (
        "    paths:\n"
        "      - {prefix: /admin/, upstream: http://127.0.0.1:4001,"
        " authorize: {groups: [admins]}}\n"
    )
    found = problem(tmp_path, text)
    assert "'oidc' block or a 'bearer' block" in found.message
