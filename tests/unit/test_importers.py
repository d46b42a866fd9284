"""``idgateway import``: oauth2-proxy.cfg and mod_auth_openidc configurations to gateway.yaml.

The fixtures are the configurations of WSO2's two guides (tests/fixtures). Each
import must load with ``load_config`` once the variables it names are set, map
each directive to the option the README's migration table gives, and leave a
comment for every directive it cannot map; secrets never reach the output
unless asked for.
"""

from __future__ import annotations

import base64
import os
import re
import tomllib
from pathlib import Path

import pytest

from idgateway.cli import main
from idgateway.config.load import load_config
from idgateway.config.model import ClaimRule, Config, PublicPath
from idgateway.gate.rules import compile_public_paths, is_public
from idgateway.importers import ImporterError, ImportOptions, import_file
from idgateway.importers._yaml import config_text, reference, scalar
from idgateway.importers.common import parse_go_duration, session_key_from, wso2_url
from tests.certs import make_ca

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
OAUTH2_PROXY_CFG = FIXTURES / "oauth2-proxy.cfg"
MOD_AUTH_OPENIDC_CONF = FIXTURES / "mod_auth_openidc.conf"

O2P_CLIENT_SECRET = "o2p-guide-client-secret-8f3a91c7d2"
O2P_COOKIE_SECRET = "dGhpcy1pcy1hLWd1aWRlLWNvb2tpZS1zZWNyZXQtMzI="
MOD_CLIENT_SECRET = "modauth-guide-client-secret-5c2e7b"
MOD_PASSPHRASE = "a-random-secret-value"


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def environment_for(text: str) -> dict[str, str]:
    """A value for every ${NAME} the output uses: keys for *_SESSION_KEY, else a secret."""
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    return {name: key() if name.endswith("SESSION_KEY") else f"secret-{name}" for name in names}


def load(text: str, tmp_path: Path, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_config(str(path), environment_for(text) if env is None else env)


def run_import(kind: str, path: Path, **options: object) -> str:
    """The output, its wrapped comments joined back into single lines (still valid YAML)."""
    text = import_file(kind, str(path), ImportOptions(**options))  # type: ignore[arg-type]
    return re.sub(r"\n *# {2,}", " ", text)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def body(text: str) -> str:
    """The YAML part of the output (the header's comments left out)."""
    return text.split("\n\n", 1)[1]


@pytest.fixture
def o2p_fixture(tmp_path: Path) -> Path:
    """The oauth2-proxy fixture with its TLS files made real (the guide's are /path/to/...)."""
    leaf = make_ca(tmp_path).issue(tmp_path, ["localhost"])
    text = OAUTH2_PROXY_CFG.read_text()
    text = text.replace("/path/to/cert.pem", str(leaf.cert_path))
    text = text.replace("/path/to/cert.key", str(leaf.key_path))
    return write(tmp_path, "oauth2-proxy.cfg", text)


# ---- the oauth2-proxy guide ---------------------------------------------------------------


def test_oauth2_proxy_guide_imports_to_a_loadable_config(o2p_fixture, tmp_path):
    text = run_import("oauth2-proxy", o2p_fixture)
    env = environment_for(text)
    assert set(env) == {"OAUTH2_PROXY_CLIENT_SECRET", "OAUTH2_PROXY_SESSION_KEY"}
    config = load(text, tmp_path, env)

    (listener,) = config.listeners
    # With tls_cert_file, oauth2-proxy serves HTTPS only, on https_address (default :443).
    assert (listener.host, listener.port) == ("0.0.0.0", 443)
    assert listener.tls is not None and listener.tls.min_version == "1.3"
    (pair,) = listener.tls.certificates  # tls_cert_file, tls_key_file
    assert pair.hostnames == ("localhost",) and Path(pair.cert).exists()

    (provider,) = config.providers
    assert provider.name == "wso2"
    assert provider.issuer == "https://localhost:9443/oauth2/token"
    assert provider.discovery_url is None
    assert provider.insecure_skip_verify is False

    (route,) = config.routes
    assert route.name == "localhost"
    assert route.hosts == ("localhost",)
    assert route.default is True
    assert route.upstream.url == "http://localhost:8080"
    assert route.paths == ()
    assert route.preserve_host is True  # oauth2-proxy's pass_host_header defaults to true
    auth = route.auth
    assert auth is not None
    assert auth.oidc.provider == "wso2"
    assert auth.oidc.client_id == "Xq7rZ0bNf3yWc2LkP9sTgH1vJ4ma"
    assert auth.oidc.client_secret == env["OAUTH2_PROXY_CLIENT_SECRET"]
    assert auth.oidc.client_auth == "client_secret_basic"
    assert auth.oidc.scopes == ("openid", "email", "profile")
    assert auth.oidc.redirect_path == "/oauth2/callback"
    assert auth.oidc.user_claim == "username"
    assert auth.oidc.email_claim == "email"
    assert auth.session.store == "redis"
    assert auth.session.redis is not None
    assert auth.session.redis.url == "redis://127.0.0.1:6379/1"
    assert auth.session.keys == (env["OAUTH2_PROXY_SESSION_KEY"],)
    # cookie_expire's default (168h), with no inactivity timeout as in oauth2-proxy.
    assert auth.session.max_duration == 168 * 3600
    assert auth.session.inactivity_timeout == 168 * 3600
    assert auth.session.same_site == "Lax"
    assert auth.headers.preset == "oauth2-proxy"
    assert auth.headers.pass_access_token is True
    assert auth.headers.pass_authorization_header is False
    assert auth.public_paths == ()
    assert auth.authorize.empty  # email_domains = ["*"]


def test_oauth2_proxy_guide_comments_every_directive(o2p_fixture):
    text = run_import("oauth2-proxy", o2p_fixture)
    for key in tomllib.loads(o2p_fixture.read_text()):
        assert re.search(rf"(?<![\w-]){key}(?![\w-])", text), f"{key} is not mentioned"
    assert "# not imported: oidc_jwks_url = " in text
    assert "# not imported: set_authorization_header = true" in text
    # What the gateway does by itself is said where it matters.
    assert 'code_challenge_method = "S256": the gateway always uses PKCE with S256' in text
    assert "set_xauthrequest = true: /oauth2/auth always answers" in text
    assert "cookie_csrf_per_request = false" in text
    assert 'http_address = "0.0.0.0:443" is not used' in text
    assert "skip_auth_preflight = false" in text
    assert "WSO2's issuer is its token endpoint URL" in text
    # The guide's slip: TLS on :443, redirect_url still http://localhost:4180.
    assert "browsers come back to https://localhost/oauth2/callback" in text
    # The header says what to set and how to check.
    assert "OAUTH2_PROXY_CLIENT_SECRET" in text.split("\n\n")[0]
    assert "openssl rand -base64 32" in text
    assert "idgateway check gateway.yaml" in text


def test_oauth2_proxy_guide_keeps_its_secrets_out(o2p_fixture):
    text = run_import("oauth2-proxy", o2p_fixture)
    assert O2P_CLIENT_SECRET not in text
    assert O2P_COOKIE_SECRET not in text


def test_oauth2_proxy_keep_secrets_copies_them(o2p_fixture, tmp_path):
    text = run_import("oauth2-proxy", o2p_fixture, keep_secrets=True)
    assert "${" not in body(text)
    config = load(text, tmp_path, {})
    auth = config.routes[0].auth
    assert auth is not None
    assert auth.oidc.client_secret == O2P_CLIENT_SECRET
    # A 32-byte base64 cookie_secret is a valid session key as it is.
    assert auth.session.keys == (O2P_COOKIE_SECRET,)


def test_oauth2_proxy_listen_overrides_the_address(o2p_fixture, tmp_path):
    text = run_import("oauth2-proxy", o2p_fixture, listen="127.0.0.1:8443")
    config = load(text, tmp_path)
    assert (config.listeners[0].host, config.listeners[0].port) == ("127.0.0.1", 8443)
    assert "--listen (the configuration: 0.0.0.0:443)" in text


OPTIONS_CFG = """
provider = "oidc"
oidc_issuer_url = "https://is.example.com:9443/t/acme.com/oauth2/token"
client_id = "app"
client_secret = "hunter2-client"
redirect_url = "https://app.example.com/auth/callback"
http_address = "http://0.0.0.0:4180"
upstreams = [
  "http://127.0.0.1:3000/",
  "http://127.0.0.1:3001/api/",
  "file:///var/www/static#/static/",
]
email_domains = ["example.com", "@example.org"]
allowed_groups = ["engineering"]
scope = "openid email profile groups"
oidc_email_claim = "mail"
oidc_groups_claim = "roles_and_groups"
prefer_email_to_user = true
prompt = "login"
api_routes = ["^/api/", "^/v[0-9]+/"]
skip_auth_routes = ["GET=^/static/", "^/healthz$"]
skip_auth_regex = ["^/metrics"]
skip_auth_preflight = true
ssl_insecure_skip_verify = true
pass_authorization_header = true
pass_host_header = false
upstream_timeout = "45s"
cookie_name = "_my_session"
cookie_domains = [".example.com"]
cookie_expire = "12h"
cookie_samesite = "strict"
session_cookie_minimal = true
session_store_type = "redis"
redis_connection_url = "redis://:hunter2-redis@10.0.0.5:6379/2"
reverse_proxy = true
request_logging = false
github_org = "acme"
made_up_option = "x"
"""


def test_oauth2_proxy_options_map_one_by_one(tmp_path):
    text = run_import("oauth2-proxy", write(tmp_path, "o.cfg", OPTIONS_CFG))
    env = environment_for(text)
    assert set(env) == {
        "OAUTH2_PROXY_CLIENT_SECRET",
        "OAUTH2_PROXY_SESSION_KEY",
        "OAUTH2_PROXY_REDIS_PASSWORD",
    }
    config = load(text, tmp_path, env)
    assert (config.listeners[0].host, config.listeners[0].port) == ("0.0.0.0", 4180)
    assert config.listeners[0].tls is None
    assert config.trusted_proxies == ("127.0.0.1/32",)  # reverse_proxy: a place to say whom
    (provider,) = config.providers
    assert provider.name == "wso2-acme.com"
    assert provider.issuer == "https://is.example.com:9443/t/acme.com/oauth2/token"
    assert provider.insecure_skip_verify is True
    assert any("insecure_skip_verify is on" in warning for warning in config.warnings)
    (route,) = config.routes
    assert route.name == "app.example.com"
    assert route.hosts == ("app.example.com",)
    assert route.upstream.url == "http://127.0.0.1:3000"
    assert [(p.prefix, p.upstream.url) for p in route.paths] == [("/api/", "http://127.0.0.1:3001")]
    assert route.preserve_host is False
    assert route.response_timeout == 45
    auth = route.auth
    assert auth is not None
    assert auth.oidc.scopes == ("openid", "email", "profile", "groups")
    assert auth.oidc.redirect_path == "/auth/callback"
    assert auth.oidc.email_claim == "mail"
    assert auth.oidc.user_claim == "mail"  # prefer_email_to_user
    assert auth.oidc.groups_claim == "roles_and_groups"
    assert auth.oidc.extra_params == (("prompt", "login"),)
    assert auth.oidc.api_paths == ("/api/",)
    assert auth.public_paths == (
        PublicPath(method="GET", regex="^/static/"),
        PublicPath(method=None, regex="^/healthz$"),
        PublicPath(method=None, regex="^/metrics"),
        PublicPath(method="OPTIONS", prefix="/"),
    )
    assert auth.authorize.email_domains == ("example.com", "example.org")
    assert auth.authorize.groups == ("engineering",)
    assert auth.headers.pass_authorization_header is True
    session = auth.session
    assert session.store == "redis" and session.redis is not None
    assert session.redis.url == f"redis://:{env['OAUTH2_PROXY_REDIS_PASSWORD']}@10.0.0.5:6379/2"
    assert session.cookie_name == "_my_session"
    assert session.cookie_domain == "example.com"
    assert (session.max_duration, session.inactivity_timeout) == (12 * 3600, 12 * 3600)
    assert session.same_site == "Strict"
    assert session.minimal is True
    # What could not be mapped is said, secrets not shown.
    assert '# not imported: upstreams item "file:///var/www/static#/static/"' in text
    assert '# not imported: api_routes item "^/v[0-9]+/"' in text
    assert "# not imported: request_logging = false (the gateway logs through twistd" in text
    assert '# not imported: github_org = "acme" (an option of another' in text
    assert '# not imported: made_up_option = "x" (an option this importer does not know' in text
    assert "pass_authorization_header" in text and "the gateway puts the access token" in text
    for secret in ("hunter2-client", "hunter2-redis"):
        assert secret not in text


def test_oauth2_proxy_keep_secrets_keeps_the_redis_password(tmp_path):
    text = run_import("oauth2-proxy", write(tmp_path, "o.cfg", OPTIONS_CFG), keep_secrets=True)
    assert "redis://:hunter2-redis@10.0.0.5:6379/2" in text
    assert "client_secret: hunter2-client" in text


def test_oauth2_proxy_file_that_is_not_toml_is_read_line_by_line(tmp_path):
    cfg = write(
        tmp_path,
        "o.cfg",
        'provider = "oidc"\n'
        'oidc_issuer_url = "https://localhost:9443/oauth2/token"\n'
        'client_id = "app"\n'
        'http_address = "127.0.0.1:4180"\n'
        'upstreams = [\n  "http://127.0.0.1:8080"  # the app\n]\n'
        'http_address = "127.0.0.1:4181"   # given twice: TOML refuses, last one counts\n',
    )
    text = run_import("oauth2-proxy", cfg)
    assert "is not valid TOML" in text and "oauth2-proxy would refuse it" in text
    config = load(text, tmp_path)
    assert config.listeners[0].port == 4181
    assert config.routes[0].upstream.url == "http://127.0.0.1:8080"


def test_oauth2_proxy_wso2_base_url_becomes_its_discovery_url(tmp_path):
    cfg = write(
        tmp_path,
        "o.cfg",
        'provider = "oidc"\noidc_issuer_url = "https://localhost:9443"\nclient_id = "a"\n'
        'upstreams = ["http://127.0.0.1:8080"]\n',
    )
    text = run_import("oauth2-proxy", cfg)
    config = load(text, tmp_path)
    assert config.providers[0].discovery_url == (
        "https://localhost:9443/oauth2/oidcdiscovery/.well-known/openid-configuration"
    )
    assert "is not WSO2's issuer" in text.split("\n\n")[0]


def test_oauth2_proxy_defaults_are_written_out(tmp_path):
    cfg = write(
        tmp_path,
        "o.cfg",
        'provider = "oidc"\noidc_issuer_url = "https://localhost:9443/oauth2/token"\n'
        'client_id = "a"\nclient_secret = "b"\nupstreams = ["http://127.0.0.1:8080"]\n',
    )
    config = load(run_import("oauth2-proxy", cfg), tmp_path)
    (listener,), (route,) = config.listeners, config.routes
    assert (listener.host, listener.port) == ("127.0.0.1", 4180)  # http_address's default
    assert route.name == "oauth2-proxy" and route.hosts == () and route.default
    assert route.auth is not None
    assert route.auth.oidc.user_claim == "email"  # user_id_claim's default
    assert route.auth.oidc.redirect_path == "/oauth2/callback"
    assert route.auth.session.store == "cookie"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'provider = "oidc"\noidc_issuer_url = "https://localhost:9443/oauth2/token"\n',
            "no client_id",
        ),
        ('provider = "oidc"\nclient_id = "a"\n', "no oidc_issuer_url"),
        ('provider = "github"\nclient_id = "a"\n', "only OpenID Connect providers"),
        ('client_id = "a"\n', "(oauth2-proxy's default)"),
        ("listeners:\n  - address: 127.0.0.1:8080\n", "not an oauth2-proxy configuration"),
        ("", "not an oauth2-proxy configuration"),
    ],
)
def test_oauth2_proxy_bad_input_is_a_clear_error(tmp_path, text, message):
    with pytest.raises(ImporterError, match=re.escape(message)):
        run_import("oauth2-proxy", write(tmp_path, "bad.cfg", text))


# ---- the mod_auth_openidc guide -----------------------------------------------------------


def test_mod_auth_openidc_guide_imports_to_a_loadable_config(tmp_path):
    text = run_import("mod_auth_openidc", MOD_AUTH_OPENIDC_CONF)
    env = environment_for(text)
    assert set(env) == {"LOCALHOST_CLIENT_SECRET", "LOCALHOST_SESSION_KEY"}
    config = load(text, tmp_path, env)

    (listener,) = config.listeners
    assert (listener.host, listener.port, listener.tls) == ("0.0.0.0", 8002, None)
    (provider,) = config.providers
    assert provider.name == "wso2"
    assert provider.discovery_url == (
        "https://localhost:9443/oauth2/oidcdiscovery/.well-known/openid-configuration"
    )
    assert provider.issuer is None
    assert provider.insecure_skip_verify is True  # OIDCSSLValidateServer Off
    assert any("insecure_skip_verify is on" in warning for warning in config.warnings)

    (route,) = config.routes
    assert (route.name, route.hosts, route.default) == ("localhost", ("localhost",), True)
    assert route.upstream.url == "http://localhost:8080"  # ProxyPass / http://localhost:8080/
    assert route.preserve_host is False  # Apache's ProxyPreserveHost defaults to Off
    auth = route.auth
    assert auth is not None
    assert auth.oidc.client_id == "Hn4sQ2wLx8vRt0bKp6yMz1cJfa3e"
    assert auth.oidc.client_secret == env["LOCALHOST_CLIENT_SECRET"]
    assert auth.oidc.scopes == ("openid",)  # mod_auth_openidc's default OIDCScope
    assert auth.oidc.redirect_path == "/callback"  # what the guide configures
    assert auth.oidc.user_claim == "sub"
    assert auth.oidc.userinfo is True
    assert auth.session.store == "cookie"
    assert auth.session.keys == (env["LOCALHOST_SESSION_KEY"],)
    assert auth.session.inactivity_timeout == 3600
    assert auth.session.max_duration == 86400
    assert auth.headers.preset == "mod_auth_openidc"
    assert auth.headers.claim_prefix == "OIDC_CLAIM_"
    assert auth.headers.list_delimiter == "_"
    assert auth.headers.pass_access_token is True
    assert auth.public_paths == ()
    assert auth.authorize.empty


def test_mod_auth_openidc_guide_comments_every_directive():
    text = run_import("mod_auth_openidc", MOD_AUTH_OPENIDC_CONF)
    directives = {
        line.split()[0]
        for line in MOD_AUTH_OPENIDC_CONF.read_text().splitlines()
        if line.strip() and not line.strip().startswith(("#", "<"))
    }
    for name in directives:
        assert name in text, f"{name} is not mentioned"
    assert "# not imported: OIDCCookieSecure Off (this directive does not exist" in text
    assert "a comment must be on a line of its own" in text
    assert "# not imported: ProxyPassReverse / http://localhost:8080/" in text
    assert "# not imported: LoadModule auth_openidc_module" in text
    # The guide's slips: the callback path, and TLS verification off.
    assert "registers http://localhost:8002/oauth2/callback but configures /callback" in text
    assert "!!! OIDCSSLValidateServer Off" in text and "# ca_file: /etc/idgateway/" in text
    assert "OIDCCryptoPassphrase is a passphrase, not a key" in text
    assert "<Location /> AuthType openid-connect" in text


def test_mod_auth_openidc_secrets_never_appear(tmp_path):
    plain = run_import("mod_auth_openidc", MOD_AUTH_OPENIDC_CONF)
    kept = run_import("mod_auth_openidc", MOD_AUTH_OPENIDC_CONF, keep_secrets=True)
    assert MOD_CLIENT_SECRET not in plain
    assert MOD_PASSPHRASE not in plain and MOD_PASSPHRASE not in kept
    assert f"client_secret: {MOD_CLIENT_SECRET}" in kept
    config = load(kept, tmp_path)
    assert config.routes[0].auth is not None
    assert config.routes[0].auth.oidc.client_secret == MOD_CLIENT_SECRET


ADVANCED_CONF = """
Listen 80
Listen 443 https
ServerName fallback.example.com
OIDCProviderMetadataURL https://is.example.com/t/acme.com/oauth2/oidcdiscovery/.well-known/openid-configuration
OIDCCABundlePath {ca}
<IfModule mod_auth_openidc.c>
    OIDCScope "openid email profile groups"
</IfModule>

<VirtualHost *:80>
    ServerName app.example.com
    Redirect permanent / https://app.example.com/
</VirtualHost>

<VirtualHost *:443>
    ServerName app.example.com
    ServerAlias www.app.example.com
    SSLEngine on
    SSLCertificateFile {cert}
    SSLCertificateKeyFile {key}
    SSLProtocol -all +TLSv1.3

    OIDCClientID app
    OIDCClientSecret ${{APP_CLIENT_SECRET}}
    OIDCCryptoPassphrase "exec:/usr/bin/cat /etc/secret"
    OIDCRedirectURI https://app.example.com/oauth2/callback
    OIDCRemoteUserClaim username
    OIDCProviderTokenEndpointAuth client_secret_post
    OIDCAuthRequestParams prompt=login&fidp=google
    OIDCCacheType redis
    OIDCRedisCacheServer 10.0.0.7:6380
    OIDCRedisCachePassword s3cret-redis
    OIDCRedisCacheDatabase 3
    OIDCCookie app_session
    OIDCCookieSameSite Strict
    OIDCAuthNHeader X-User
    OIDCPassIDTokenAs claims serialized
    OIDCDefaultLoggedOutURL https://app.example.com/bye
    OIDCOAuthVerifySharedKeys plain##s3cret-shared
    ProxyPreserveHost On
    ProxyPass /api/ http://127.0.0.1:9000/api/ timeout=30
    ProxyPass /files/ http://127.0.0.1:9100/
    ProxyPass /static !
    ProxyPass / http://127.0.0.1:8000/ timeout=20 connectiontimeout=3 retry=0

    <Location />
        AuthType openid-connect
        Require valid-user
    </Location>
    <Location /healthz>
        AuthType None
        Require all granted
    </Location>
    <Location /admin/>
        AuthType openid-connect
        Require claim groups:admins
        Require claim groups:ops
    </Location>
    <Location /api/>
        AuthType openid-connect
        OIDCUnAuthAction 401
        Require valid-user
    </Location>
    <Directory /var/www>
        Require all granted
    </Directory>
</VirtualHost>
"""


def test_mod_auth_openidc_advanced_directives_map(tmp_path):
    ca = make_ca(tmp_path)
    leaf = ca.issue(tmp_path, ["app.example.com"])
    conf = write(
        tmp_path,
        "httpd.conf",
        ADVANCED_CONF.format(ca=ca.cert_path, cert=leaf.cert_path, key=leaf.key_path),
    )
    text = run_import("mod_auth_openidc", conf)
    env = environment_for(text)
    assert set(env) == {
        "APP_CLIENT_SECRET",
        "APP_EXAMPLE_COM_SESSION_KEY",
        "APP_EXAMPLE_COM_REDIS_PASSWORD",
    }
    config = load(text, tmp_path, env)
    (listener,) = config.listeners
    assert (listener.host, listener.port) == ("0.0.0.0", 443)
    assert listener.tls is not None and listener.tls.min_version == "1.3"
    (provider,) = config.providers
    assert provider.name == "wso2-acme.com"
    assert provider.ca_file == str(ca.cert_path)
    assert provider.insecure_skip_verify is False
    (route,) = config.routes
    assert route.hosts == ("app.example.com", "www.app.example.com")
    assert route.upstream.url == "http://127.0.0.1:8000"
    assert (route.response_timeout, route.connect_timeout) == (20, 3)
    assert route.preserve_host is True
    paths = {p.prefix: p for p in route.paths}
    assert paths["/api/"].upstream.url == "http://127.0.0.1:9000"
    assert paths["/admin/"].authorize is not None
    assert paths["/admin/"].authorize.claims == (ClaimRule("groups", "(?:admins|ops)", regex=True),)
    assert "/files/" not in paths  # Apache stripped the prefix; the gateway does not
    auth = route.auth
    assert auth is not None
    assert auth.oidc.client_secret == env["APP_CLIENT_SECRET"]  # the Apache ${VAR} is kept
    assert auth.oidc.client_auth == "client_secret_post"
    assert auth.oidc.scopes == ("openid", "email", "profile", "groups")
    assert auth.oidc.extra_params == (("prompt", "login"), ("fidp", "google"))
    assert auth.oidc.user_claim == "username"
    assert auth.oidc.post_logout_redirect == "https://app.example.com/bye"
    assert auth.oidc.api_paths == ("/api/",)
    assert auth.public_paths == (PublicPath(method=None, prefix="/healthz"),)
    session = auth.session
    assert session.store == "redis" and session.redis is not None
    assert session.redis.url == (
        f"redis://:{env['APP_EXAMPLE_COM_REDIS_PASSWORD']}@10.0.0.7:6380/3"
    )
    assert (session.inactivity_timeout, session.max_duration) == (300, 8 * 3600)  # defaults
    assert session.cookie_name == "app_session"
    assert session.same_site == "Strict"
    assert auth.headers.remote_user_header == "X-User"
    assert auth.headers.pass_id_token is True
    assert "# not imported: ProxyPass /files/ http://127.0.0.1:9100/" in text
    assert "# not imported: ProxyPass /static !" in text
    assert "# not imported: ProxyPass option retry=0" in text
    assert "# not imported: <VirtualHost *:80> (line" in text
    assert "# not imported: <Directory /var/www>" in text
    assert "# not imported: OIDCOAuthVerifySharedKeys <hidden>" in text
    for secret in ("s3cret-redis", "s3cret-shared", "/etc/secret"):
        assert secret not in text


def test_mod_auth_openidc_protecting_one_path_makes_the_rest_public(tmp_path):
    conf = write(
        tmp_path,
        "a.conf",
        "OIDCProviderMetadataURL https://localhost:9443/oauth2/oidcdiscovery/.well-known/openid-configuration\n"
        "OIDCClientID a\nOIDCClientSecret b\nOIDCRedirectURI /secure/redirect_uri\n"
        "ProxyPass / http://127.0.0.1:8080/\n"
        "<Location /secure>\n  AuthType openid-connect\n"
        "  Require claim org_name:Super\n</Location>\n",
    )
    text = run_import("mod_auth_openidc", conf)
    config = load(text, tmp_path)
    (route,) = config.routes
    assert route.name == "default" and route.default
    assert (config.listeners[0].host, config.listeners[0].port) == ("0.0.0.0", 80)
    assert route.auth is not None
    # Every path not under /secure is public (an RE2 pattern: no lookahead).
    (public,) = route.auth.public_paths
    rules = compile_public_paths(route.auth.public_paths)
    assert public.regex is not None and public.method is None
    for path in ("/", "/app", "/secur", "/securx", "/s", "/other/secure"):
        assert is_public(rules, b"GET", path), path
    for path in ("/secure", "/secure/", "/secure/x", "/securex"):
        assert not is_public(rules, b"GET", path), path
    assert route.auth.oidc.redirect_path == "/secure/redirect_uri"
    (path,) = route.paths
    assert path.prefix == "/secure" and path.authorize is not None
    assert path.authorize.claims == (ClaimRule("org_name", "Super"),)


def test_mod_auth_openidc_include_is_followed(tmp_path):
    write(
        tmp_path,
        "oidc.conf",
        "OIDCClientID a\nOIDCClientSecret b\nOIDCRedirectURI http://localhost/oauth2/callback\n",
    )
    conf = write(
        tmp_path,
        "httpd.conf",
        "OIDCProviderMetadataURL https://localhost:9443/oauth2/oidcdiscovery/.well-known/openid-configuration\n"
        "Include oidc.conf\nIncludeOptional conf.d/*.conf\nProxyPass / http://127.0.0.1:8080/\n",
    )
    text = run_import("mod_auth_openidc", conf)
    config = load(text, tmp_path)
    assert config.routes[0].auth is not None
    assert config.routes[0].auth.oidc.client_id == "a"
    assert "# not imported: IncludeOptional conf.d/*.conf" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "<VirtualHost *:80>\nProxyPass / http://127.0.0.1:8080/\n</VirtualHost>\n",
            "no OIDC... directive",
        ),
        (
            "OIDCProviderMetadataURL https://x/.well-known/openid-configuration\n"
            "OIDCRedirectURI /cb\nProxyPass / http://127.0.0.1:8080/\n",
            "no OIDCClientID",
        ),
        (
            "OIDCClientID a\nOIDCRedirectURI /cb\nProxyPass / http://127.0.0.1:8080/\n",
            "no OIDCProviderMetadataURL",
        ),
        (
            "OIDCProviderMetadataURL https://x/.well-known/openid-configuration\nOIDCClientID a\n"
            "ProxyPass / http://127.0.0.1:8080/\n",
            "no OIDCRedirectURI",
        ),
        ("OIDCClientID a\n<VirtualHost *:80>\nServerName x\n", "is never closed"),
        ("OIDCClientID a\n</Location>\n", "closes no open"),
        ("OIDCClientID a\nServerName x\n", "no virtual host proxies"),
    ],
)
def test_mod_auth_openidc_bad_input_is_a_clear_error(tmp_path, text, message):
    with pytest.raises(ImporterError, match=re.escape(message)):
        run_import("mod_auth_openidc", write(tmp_path, "bad.conf", text))


# ---- the command --------------------------------------------------------------------------


def test_cli_import_prints_yaml(capsys):
    assert main(["import", "mod_auth_openidc", str(MOD_AUTH_OPENIDC_CONF)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("# gateway.yaml imported from the mod_auth_openidc configuration")
    assert "\nroutes:\n" in out and err == ""


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["oauth2-proxy", "/nonexistent/oauth2-proxy.cfg"],
            "cannot read /nonexistent/oauth2-proxy.cfg",
        ),
        (["mod_auth_openidc", "/"], "is a directory"),
        (["oauth2-proxy", str(MOD_AUTH_OPENIDC_CONF)], "not an oauth2-proxy configuration"),
        (["mod_auth_openidc", str(OAUTH2_PROXY_CFG)], "not a mod_auth_openidc configuration"),
        (["oauth2-proxy", str(OAUTH2_PROXY_CFG), "--listen", "nowhere"], "--listen:"),
    ],
)
def test_cli_import_errors_exit_1(capsys, arguments, message):
    assert main(["import", *arguments]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err


def test_cli_import_refuses_a_binary_file(tmp_path, capsys):
    path = write(tmp_path, "x.cfg", "")
    path.write_bytes(b"\x7fELF\x00\x01")
    assert main(["import", "oauth2-proxy", str(path)]) == 1
    assert "is not a text file" in capsys.readouterr().err


def test_cli_check_still_works(tmp_path, capsys):
    path = write(
        tmp_path,
        "g.yaml",
        "listeners: [{address: 127.0.0.1:8080}]\nroutes: [{name: a, default: true, upstream: http://127.0.0.1:1}]\n",
    )
    assert main(["check", str(path)]) == 0
    assert "Routes:" in capsys.readouterr().out


# ---- helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("168h", 604800), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400), ("300ms", 0.3), ("0", 0)],
)
def test_go_durations(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


def test_go_duration_refuses_garbage():
    with pytest.raises(ValueError):
        parse_go_duration("a week")


def test_session_key_from_secrets():
    assert session_key_from(O2P_COOKIE_SECRET) == O2P_COOKIE_SECRET
    raw = "abcdefghijklmnopqrstuvwxyz012345"
    assert base64.b64decode(session_key_from(raw) or "") == raw.encode()
    assert session_key_from("sixteen-byte-key") is None


@pytest.mark.parametrize(
    ("url", "tenant", "kind"),
    [
        ("https://localhost:9443/oauth2/token", "carbon.super", "issuer"),
        ("https://h/t/acme.com/oauth2/token/", "acme.com", "issuer"),
        (
            "https://h:9443/oauth2/oidcdiscovery/.well-known/openid-configuration",
            "carbon.super",
            "discovery",
        ),
        ("https://h:9443/oauth2/oidcdiscovery", "carbon.super", "discovery-base"),
        ("https://localhost:9443", "carbon.super", "base"),
    ],
)
def test_wso2_urls_are_recognised(url, tenant, kind):
    found = wso2_url(url)
    assert found is not None and (found.tenant, found.kind) == (tenant, kind)


def test_other_urls_are_not_wso2():
    assert wso2_url("https://accounts.google.com") is None
    assert wso2_url("https://login.example.com/realms/x") is None


@pytest.mark.parametrize(
    "value",
    ["plain", "a: b", "# x", "[x]", "yes", "123", "", " lead", "~ ^/x", "ü", "a,b", "a\u2028b"],
)
def test_scalars_read_back(value):
    import yaml

    assert yaml.safe_load(f"k: {scalar(value)}") == {"k": value}
    assert yaml.safe_load(f"k: [{scalar(value, flow=True)}]") == {"k": [value]}


def test_scalars_keep_dollar_literal_and_references_meant(tmp_path):
    """Input text is literal for the loader ($${), a reference() is a ${NAME} it expands."""
    import yaml

    assert yaml.safe_load(f"k: {scalar('${APP_SECRET}')}") == {"k": "$${APP_SECRET}"}
    assert scalar(reference("APP_SECRET")) == "${APP_SECRET}"
    url = scalar(config_text("redis://:", reference("P"), "@h${x}:1"))
    assert yaml.safe_load(f"k: {url}") == {"k": "redis://:${P}@h$${x}:1"}


def test_comments_never_break_a_line_of_their_own():
    """Comment text is one line; every YAML line break in it (an input value's) is escaped."""
    import yaml

    from idgateway.importers._yaml import Block, render

    top = Block()
    top.note("a\nb\rc\x85d\u2028e\u2029f: 1")
    top.add("k", "v", "why\u2028x: 1")
    text = render(top, ["head\u2028y: 2"], ["foot\nz: 3"])
    assert yaml.safe_load(text) == {"k": "v"}
    assert not re.search("[\r\x85\u2028\u2029]", text)
    assert "# a\\nb\\rc\\Nd\\Le\\Pf: 1" in text


def test_values_in_comments_are_quoted_by_the_emitter():
    from idgateway.importers import describe
    from idgateway.importers._yaml import shown
    from idgateway.importers.mod_auth_openidc import Directive, Section

    assert describe("a\u2028b") == '"a\\Lb"'
    assert describe(["x", "y\nz"]) == '["x", "y\\nz"]'
    assert shown("plain text") == "plain text" and shown("a\rb") == '"a\\rb"'
    assert Directive("OIDCScope", ["openid email", "x#y", "ok"], 1).show() == (
        'OIDCScope "openid email" "x#y" ok'
    )
    assert Section("Location", ["/a b"], 1).show() == '<Location "/a b">'


def test_source_files_must_be_utf8(tmp_path):
    path = tmp_path / "x.cfg"
    path.write_bytes(b'\xef\xbb\xbfclient_id = "a"\n')  # a BOM is fine
    with pytest.raises(ImporterError, match="provider"):
        import_file("oauth2-proxy", str(path))
    path.write_bytes(b'client_id = "caf\xe9"\n')
    with pytest.raises(ImporterError, match=r"x.cfg is not UTF-8 text \(line 1: byte 0xe9\)"):
        import_file("oauth2-proxy", str(path))


@pytest.mark.parametrize("encoding", ["latin1", "base64url", "none"])
def test_mod_auth_openidc_claim_encoding_is_explained(tmp_path, encoding):
    text = MOD_AUTH_OPENIDC_CONF.read_text().replace(
        'OIDCClaimDelimiter "_"', f'OIDCClaimDelimiter "_"\n    OIDCPassClaimsAs headers {encoding}'
    )
    output = run_import("mod_auth_openidc", write(tmp_path, "httpd.conf", text))
    assert f"OIDCPassClaimsAs ... {encoding}: the gateway sends values as printable ASCII" in output
    assert "percent-encoding" in output
