"""The login blocks of gateway.yaml: providers, oidc, session, headers, public_paths, authorize."""

from __future__ import annotations

from pathlib import Path

import pytest

from idgateway.config.load import ConfigError, load_config
from idgateway.config.model import ClaimRule, PublicPath

KEY = "q3F1K2x0cUxZbU5PcFFyU3RVdld4WXphYmNkZWZnaGk="  # 32 bytes
CA_PEM = "ca.pem"

CONTRACT = """
listeners:
  - address: 127.0.0.1:8080
providers:
  wso2:
    discovery_url: https://localhost:9443/oauth2/oidcdiscovery/.well-known/openid-configuration
    ca_file: {ca}
  acme:
    issuer: https://localhost:9443/t/acme.com/oauth2/token
    insecure_skip_verify: true               # logs a warning at start
routes:
  - name: app1
    hosts: [app1.example.com]
    upstream: http://127.0.0.1:3000
    oidc:
      provider: wso2
      client_id: mod-auth-app
      client_secret: ${{APP1_CLIENT_SECRET}}
      client_auth: client_secret_basic        # or client_secret_post
      scopes: [openid, email, profile, groups]
      user_claim: username
    session:
      store: cookie
      keys: [${{APP1_SESSION_KEY}}]             # first encrypts, all decrypt
      inactivity_timeout: 1h
      max_duration: 24h
    headers: oauth2-proxy                     # or mod_auth_openidc, or a mapping
    public_paths: [/healthz, "GET /static/"]
    authorize:
      email_domains: [example.com]
      groups: [engineering]
  - name: app2
    hosts: [app2.example.com]
    upstream: http://127.0.0.1:3001
    oidc: {{provider: acme, client_id: gw-app2, client_secret_file: {secret}}}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def contract(tmp_path: Path) -> str:
    from tests.certs import make_ca

    ca = make_ca(tmp_path / "pki")
    (tmp_path / CA_PEM).write_bytes(ca.cert_path.read_bytes())
    secret = tmp_path / "app2-secret"
    secret.write_text("app2-s3cret\n")
    return CONTRACT.format(ca=tmp_path / CA_PEM, secret=secret)


ENV = {"APP1_CLIENT_SECRET": "app1-s3cret", "APP1_SESSION_KEY": KEY}


def test_the_contract_example_is_accepted(tmp_path: Path, contract: str) -> None:
    config = load_config(write(tmp_path, contract), ENV)
    assert [p.name for p in config.providers] == ["wso2", "acme"]
    wso2, acme = config.providers
    assert wso2.discovery_url and wso2.issuer is None and wso2.ca_file
    assert acme.issuer == "https://localhost:9443/t/acme.com/oauth2/token"
    assert acme.insecure_skip_verify
    app1, app2 = config.routes
    assert app1.auth is not None and app2.auth is not None
    assert app1.auth.oidc.client_secret == "app1-s3cret"
    assert app1.auth.oidc.user_claim == "username"
    assert app1.auth.oidc.scopes == ("openid", "email", "profile", "groups")
    assert app1.auth.session.keys == (KEY,)
    assert app1.auth.session.inactivity_timeout == 3600
    assert app1.auth.session.max_duration == 86400
    assert app1.auth.headers.preset == "oauth2-proxy"
    assert app1.auth.public_paths == (
        PublicPath(method=None, prefix="/healthz"),
        PublicPath(method="GET", prefix="/static/"),
    )
    assert app1.auth.authorize.email_domains == ("example.com",)
    assert app1.auth.authorize.groups == ("engineering",)
    assert app2.auth.oidc.client_secret == "app2-s3cret"
    assert app2.auth.oidc.client_auth == "client_secret_basic"
    assert any("insecure_skip_verify" in w for w in config.warnings)
    assert any("app2" in w and "no session keys" in w for w in config.warnings)


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), {**ENV, **(env or {})})
    return str(caught.value)


def route_with(block: str) -> str:
    return (
        "listeners: [{address: 127.0.0.1:8080}]\n"
        "providers:\n  wso2: {issuer: https://localhost:9443/oauth2/token}\n"
        "routes:\n  - name: app1\n    hosts: [app1.example.com]\n"
        "    upstream: http://127.0.0.1:3000\n" + block
    )


OIDC = "    oidc: {provider: wso2, client_id: c, client_secret: s}\n"


def test_unknown_provider_names_the_known_ones(tmp_path: Path) -> None:
    text = problems(
        tmp_path, route_with("    oidc: {provider: wos2, client_id: c, client_secret: s}\n")
    )
    assert "unknown provider 'wos2'" in text and "wso2" in text
    assert "gateway.yaml:8: routes[0].oidc.provider" in text


def test_a_bad_session_key_does_not_hide_an_unknown_provider(tmp_path: Path) -> None:
    text = problems(
        tmp_path,
        route_with(
            "    oidc: {provider: wos2, client_id: c, client_secret: s}\n"
            "    session: {keys: [short]}\n"
        ),
    )
    assert "routes[0].session.keys[0]: is not base64" in text
    assert "routes[0].oidc.provider: unknown provider 'wos2'" in text


@pytest.mark.parametrize(
    "broken",
    [
        "{issuer: https://localhost:9443/oauth2/token, ca_file: /nonexistent/ca.pem}",
        "{ca_file: /etc/hostname}",  # neither discovery_url nor issuer
        "{issuer: 'not a url'}",
    ],
)
def test_a_broken_provider_is_reported_once_not_as_unknown_on_its_routes(
    tmp_path: Path, broken: str
) -> None:
    text = problems(
        tmp_path,
        "listeners: [{address: 127.0.0.1:8080}]\n"
        f"providers:\n  wso2: {broken}\n"
        "routes:\n"
        "  - {name: a, hosts: [a.example.com], upstream: 'http://127.0.0.1:3000',\n"
        "     oidc: {provider: wso2, client_id: c, client_secret: s}}\n"
        "  - {name: b, hosts: [b.example.com], upstream: 'http://127.0.0.1:3000',\n"
        "     oidc: {provider: nope, client_id: c, client_secret: s}}\n",
    )
    assert "providers.wso2" in text
    assert "unknown provider 'wso2'" not in text
    # A truly unknown name is still reported, with the declared names.
    assert "unknown provider 'nope'; known providers: wso2" in text


def test_provider_needs_exactly_one_of_discovery_url_and_issuer(tmp_path: Path) -> None:
    text = problems(
        tmp_path,
        "listeners: [{address: 127.0.0.1:8080}]\n"
        "providers:\n  wso2: {insecure_skip_verify: false}\n"
        "routes: [{name: a, default: true, upstream: http://127.0.0.1:1}]\n",
    )
    assert "exactly one of 'discovery_url' or 'issuer'" in text
    text = problems(
        tmp_path,
        "listeners: [{address: 127.0.0.1:8080}]\nproviders:\n  wso2: {issuer: ftp://x}\n"
        "routes: [{name: a, default: true, upstream: http://127.0.0.1:1}]\n",
    )
    assert "not an http(s) URL" in text


def test_missing_client_secret_and_its_file_form(tmp_path: Path) -> None:
    text = problems(tmp_path, route_with("    oidc: {provider: wso2, client_id: c}\n"))
    assert "missing required key 'client_secret' (or 'client_secret_file')" in text
    text = problems(
        tmp_path,
        route_with("    oidc: {provider: wso2, client_id: c, client_secret_file: /nonexistent}\n"),
    )
    assert "cannot read /nonexistent" in text


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("not*base64!", "is not base64"),
        ("c2hvcnQ=", "decodes to 5 bytes, not 32"),
    ],
)
def test_bad_session_keys(tmp_path: Path, key: str, message: str) -> None:
    text = problems(tmp_path, route_with(OIDC + f"    session: {{keys: ['{key}']}}\n"))
    assert message in text and "openssl rand -base64 32" in text


def test_session_key_error_does_not_echo_the_key(tmp_path: Path) -> None:
    text = problems(tmp_path, route_with(OIDC + "    session: {keys: ['c2VjcmV0LXNob3J0']}\n"))
    assert "c2VjcmV0LXNob3J0" not in text


def test_undefined_session_key_variable(tmp_path: Path) -> None:
    text = problems(tmp_path, route_with(OIDC + "    session: {keys: [${NOPE_KEY}]}\n"))
    assert "environment variable 'NOPE_KEY' is not set" in text


def test_session_without_oidc_is_an_error(tmp_path: Path) -> None:
    text = problems(tmp_path, route_with(f"    session: {{keys: ['{KEY}']}}\n"))
    assert "'session' only applies to a route with an 'oidc' block" in text


def test_scopes_need_openid(tmp_path: Path) -> None:
    block = "    oidc: {provider: wso2, client_id: c, client_secret: s, scopes: [email]}\n"
    assert "scopes must include 'openid'" in problems(tmp_path, route_with(block))


def test_client_auth_and_same_site_choices(tmp_path: Path) -> None:
    block = "    oidc: {provider: wso2, client_id: c, client_secret: s, client_auth: jwt}\n"
    assert "'jwt' is not one of: client_secret_basic, client_secret_post" in problems(
        tmp_path, route_with(block)
    )
    text = problems(tmp_path, route_with(OIDC + "    session: {same_site: lax}\n"))
    assert "'lax' is not one of: Lax, Strict, None" in text


def test_redis_store_settings(tmp_path: Path) -> None:
    block = OIDC + (
        "    session: {store: redis, url: 'redis://:s3cret@127.0.0.1:6379/1', "
        f"keys: [{KEY}], inactivity_timeout: 1h, max_duration: 24h}}\n"
    )
    config = load_config(write(tmp_path, route_with(block)), ENV)
    session = config.routes[0].auth.session
    assert session.store == "redis"
    assert session.redis.url == "redis://:s3cret@127.0.0.1:6379/1"
    assert "store: redis needs 'url'" in problems(
        tmp_path, route_with(OIDC + "    session: {store: redis}\n")
    )
    for bad, message in (
        ("http://x", "is not a Redis URL"),
        ("redis://:pw@127.0.0.1:99999/1", "bad port"),
        ("redis://127.0.0.1:6379/one", "must be a number"),
    ):
        text = problems(
            tmp_path, route_with(OIDC + f"    session: {{store: redis, url: '{bad}'}}\n")
        )
        assert message in text, text
    sentinel = OIDC + (
        "    session: {store: redis, sentinels: [10.0.0.5:26379, '10.0.0.6:26379'], "
        "master_name: gw}\n"
    )
    config = load_config(write(tmp_path, route_with(sentinel)), ENV)
    assert config.routes[0].auth.session.redis.sentinels == (
        ("10.0.0.5", 26379),
        ("10.0.0.6", 26379),
    )
    assert "'sentinels' and 'master_name'" in problems(
        tmp_path,
        route_with(OIDC + "    session: {store: redis, sentinels: [10.0.0.5:26379]}\n"),
    )


def test_workers_and_top_level_redis(tmp_path: Path) -> None:
    import os

    text = route_with(OIDC).replace(
        "listeners:", "workers: auto\nredis: {url: 'redis://127.0.0.1:6379/0'}\nlisteners:"
    )
    config = load_config(write(tmp_path, text), ENV)
    assert config.workers == (os.cpu_count() or 1)
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    assert load_config(write(tmp_path, route_with(OIDC)), ENV).workers == 1
    assert "expected auto or a number of processes" in problems(
        tmp_path, "workers: many\n" + route_with(OIDC)
    )


def test_header_presets_and_custom_mapping(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, route_with(OIDC + "    headers: {X-User: username, X-Mail: email}\n")),
        ENV,
    )
    assert config.routes[0].auth.headers.preset == "custom"
    assert config.routes[0].auth.headers.mapping == (("X-User", "username"), ("X-Mail", "email"))
    config = load_config(
        write(
            tmp_path,
            route_with(OIDC + "    headers: {preset: mod_auth_openidc, claim_prefix: X-Claim-}\n"),
        ),
        ENV,
    )
    assert config.routes[0].auth.headers.preset == "mod_auth_openidc"
    assert config.routes[0].auth.headers.claim_prefix == "X-Claim-"
    assert "unknown header preset 'oauth2proxy'" in problems(
        tmp_path, route_with(OIDC + "    headers: oauth2proxy\n")
    )
    assert "not a valid header name" in problems(
        tmp_path, route_with(OIDC + "    headers: {'X User': username}\n")
    )


def test_public_paths_forms(tmp_path: Path) -> None:
    block = OIDC + "    public_paths: [/a, 'POST /b/', '~ ^/c/.*[.]css$', 'GET ~ ^/d']\n"
    config = load_config(write(tmp_path, route_with(block)), ENV)
    assert config.routes[0].auth.public_paths == (
        PublicPath(None, prefix="/a"),
        PublicPath("POST", prefix="/b/"),
        PublicPath(None, regex="^/c/.*[.]css$"),
        PublicPath("GET", regex="^/d"),
    )
    assert "is not a public path" in problems(
        tmp_path, route_with(OIDC + "    public_paths: [healthz]\n")
    )
    assert "bad regular expression" in problems(
        tmp_path, route_with(OIDC + "    public_paths: ['~ ([']\n")
    )


def test_authorize_claim_rules(tmp_path: Path) -> None:
    block = OIDC + "    authorize: {claims: {department: sales, level: '~ ^[0-9]+$'}}\n"
    config = load_config(write(tmp_path, route_with(block)), ENV)
    assert config.routes[0].auth.authorize.claims == (
        ClaimRule("department", "sales"),
        ClaimRule("level", "^[0-9]+$", regex=True),
    )
    assert "unknown key 'email_domain'" in problems(
        tmp_path, route_with(OIDC + "    authorize: {email_domain: [x.com]}\n")
    )


def test_extra_params_cannot_override_security_parameters(tmp_path: Path) -> None:
    block = "    oidc: {provider: wso2, client_id: c, client_secret: s, extra_params: {state: x}}\n"
    assert "'state' is set by the gateway itself" in problems(tmp_path, route_with(block))


def test_provider_ca_file_must_be_a_readable_pem(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("junk")
    for ca, message in (("/nonexistent.pem", "cannot read"), (tmp_path / "junk.pem", "is not PEM")):
        text = problems(
            tmp_path,
            f"listeners: [{{address: 127.0.0.1:8080}}]\nproviders:\n  wso2: "
            f"{{issuer: https://localhost/oauth2/token, ca_file: {ca}}}\n"
            "routes: [{name: a, default: true, upstream: http://127.0.0.1:1}]\n",
        )
        assert message in text and "providers.wso2.ca_file" in text


def test_path_authorize_rules(tmp_path: Path) -> None:
    block = OIDC + (
        "    paths:\n      - {prefix: /admin/, upstream: http://127.0.0.1:3001, "
        "authorize: {groups: [admins]}}\n"
    )
    config = load_config(write(tmp_path, route_with(block)), ENV)
    assert config.routes[0].paths[0].authorize.groups == ("admins",)
    open_route = (
        "    paths:\n      - {prefix: /admin/, upstream: http://127.0.0.1:3001, "
        "authorize: {groups: [admins]}}\n"
    )
    assert "only applies on a route with an 'oidc' block" in problems(
        tmp_path, route_with(open_route)
    )


def test_frontchannel_logout_is_off_unless_asked_for(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, route_with(OIDC)), ENV)
    assert config.routes[0].auth is not None
    assert config.routes[0].auth.oidc.frontchannel_logout is False
    block = (
        "    oidc: {provider: wso2, client_id: c, client_secret: s, frontchannel_logout: true}\n"
    )
    config = load_config(write(tmp_path, route_with(block)), ENV)
    assert config.routes[0].auth is not None
    assert config.routes[0].auth.oidc.frontchannel_logout is True


@pytest.mark.parametrize("value", ["'yes'", "1", "on-ish", "[true]", "null"])
def test_bad_frontchannel_logout_values(tmp_path: Path, value: str) -> None:
    block = (
        "    oidc: {provider: wso2, client_id: c, client_secret: s, "
        f"frontchannel_logout: {value}}}\n"
    )
    text = problems(tmp_path, route_with(block))
    assert "gateway.yaml:8: routes[0].oidc.frontchannel_logout" in text
    assert "expected true or false" in text


def header_options(text: str) -> str:
    return route_with(OIDC + "    headers: {preset: mod_auth_openidc, " + text + "}\n")


@pytest.mark.parametrize(
    "option, message",
    [
        pytest.param(
            'remote_user_header: "X-User\\r\\nX-Admin: 1"', "not a valid header name", id="crlf"
        ),
        pytest.param('remote_user_header: "X-User\\n"', "not a valid header name", id="lf"),
        pytest.param("remote_user_header: 'X User'", "not a valid header name", id="space"),
        pytest.param("remote_user_header: 'X-User:'", "not a valid header name", id="colon"),
        pytest.param('remote_user_header: "X-\\0User"', "not a valid header name", id="nul"),
        pytest.param("remote_user_header: 'X-Üser'", "not a valid header name", id="non-ascii"),
        pytest.param("remote_user_header: ''", "not a valid header name", id="empty"),
        pytest.param("remote_user_header: Content-Length", "cannot be an identity header", id="cl"),
        pytest.param(
            "remote_user_header: transfer_encoding", "cannot be an identity header", id="te"
        ),
        pytest.param("remote_user_header: Host", "cannot be an identity header", id="host"),
        pytest.param(
            "remote_user_header: X-Forwarded-For", "cannot be an identity header", id="xff"
        ),
        pytest.param(
            "remote_user_header: X-Original-URL", "cannot be an identity header", id="xou"
        ),
        pytest.param("remote_user_header: X-Request-Id", "cannot be an identity header", id="rid"),
        pytest.param("remote_user_header: Cookie", "cannot be an identity header", id="cookie"),
        pytest.param("claim_prefix: 'OIDC CLAIM '", "not a valid header prefix", id="prefix-space"),
        pytest.param('claim_prefix: "X-\\r\\nY-"', "not a valid header prefix", id="prefix-crlf"),
        pytest.param("claim_prefix: 'X:'", "not a valid header prefix", id="prefix-colon"),
        pytest.param("claim_prefix: ''", "not a valid header prefix", id="prefix-empty"),
        pytest.param('list_delimiter: "\\n"', "not a usable list delimiter", id="delim-lf"),
        pytest.param('list_delimiter: ",\\r\\n"', "not a usable list delimiter", id="delim-crlf"),
        pytest.param('list_delimiter: "\\t"', "not a usable list delimiter", id="delim-tab"),
        pytest.param("list_delimiter: '%'", "not a usable list delimiter", id="delim-percent"),
        pytest.param("list_delimiter: 'a'", "not a usable list delimiter", id="delim-letter"),
        pytest.param("list_delimiter: '1'", "not a usable list delimiter", id="delim-digit"),
        pytest.param("list_delimiter: '·'", "not a usable list delimiter", id="delim-non-ascii"),
        pytest.param("list_delimiter: ''", "must not be empty", id="delim-empty"),
    ],
)
def test_bad_header_options_name_file_line_key_and_fix(
    tmp_path: Path, option: str, message: str
) -> None:
    key = option.split(":", 1)[0]
    text = problems(tmp_path, header_options(option))
    assert message in text, text
    assert f"gateway.yaml:9: routes[0].headers.{key}" in text, text
    assert "e.g." in text, text


@pytest.mark.parametrize(
    "header, message",
    [
        ("'X User'", "not a valid header name"),
        ("'X-User:'", "not a valid header name"),
        ('"X-User\\r\\nX-Admin"', "not a valid header name"),
        ("Content-Length", "cannot be an identity header"),
        ("X_Forwarded_Host", "cannot be an identity header"),
        ("X-Rewrite-URL", "cannot be an identity header"),
    ],
)
def test_bad_custom_header_names(tmp_path: Path, header: str, message: str) -> None:
    text = problems(tmp_path, route_with(OIDC + "    headers: {" + header + ": username}\n"))
    assert message in text and "gateway.yaml:9: routes[0].headers." in text, text


def test_good_header_options(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            header_options(
                "remote_user_header: X-Remote.User, claim_prefix: X-Claim_, list_delimiter: '; '"
            ),
        ),
        ENV,
    )
    headers = config.routes[0].auth.headers
    assert (headers.remote_user_header, headers.claim_prefix, headers.list_delimiter) == (
        "X-Remote.User",
        "X-Claim_",
        "; ",
    )
    custom = load_config(
        write(tmp_path, route_with(OIDC + "    headers: {X-User.Id: username, X-Team: team}\n")),
        ENV,
    )
    assert custom.routes[0].auth.headers.mapping == (("X-User.Id", "username"), ("X-Team", "team"))
