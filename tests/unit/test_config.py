"""Tests for idgateway.config.load: the accepted file, and every way a file can be wrong."""

from __future__ import annotations

import datetime
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from idgateway.config.assertion import ASSERTION_FIELDS
from idgateway.config.auth import (
    AUTHORIZE_FIELDS,
    FORWARD_AUTH_FIELDS,
    HEADER_OPTION_FIELDS,
    OIDC_FIELDS,
    PROVIDER_FIELDS,
    SESSION_FIELDS,
)
from idgateway.config.bearer import BEARER_FIELDS, INTROSPECTION_FIELDS
from idgateway.config.load import (
    CERTIFICATE_FIELDS,
    HSTS_FIELDS,
    INVALID,
    LISTENER_FIELDS,
    PATH_FIELDS,
    RELOAD_FIELDS,
    ROUTE_FIELDS,
    TLS_FIELDS,
    TOP_FIELDS,
    ConfigError,
    Field,
    Problem,
    Reader,
    load_config,
    parsed,
    read_section,
    summarize,
)
from idgateway.config.model import Config
from idgateway.config.signing_keys import generate_key_file
from idgateway.routing.state import path_judge

UTC = datetime.UTC


def make_certificate(
    directory: Path,
    name: str,
    hostnames: tuple[str, ...] = (),
    *,
    common_name: str | None = None,
    valid_days: int = 365,
    expired_on: datetime.datetime | None = None,
    mismatched_key: bool = False,
) -> tuple[Path, Path]:
    """A self-signed certificate and its key as PEM files ``<name>.pem`` and ``<name>.key``.

    ``expired_on`` makes a certificate that ended then; ``mismatched_key`` writes a key
    other than the one the certificate was issued for.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name or (hostnames or ("test",))[0])]
    )
    now = datetime.datetime.now(UTC)
    not_after = expired_on or now + datetime.timedelta(days=valid_days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - datetime.timedelta(days=30))
        .not_valid_after(not_after)
    )
    if hostnames:
        sans = x509.SubjectAlternativeName([x509.DNSName(host) for host in hostnames])
        builder = builder.add_extension(sans, critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    written_key = ec.generate_private_key(ec.SECP256R1()) if mismatched_key else key
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        written_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


CONTRACT_EXAMPLE = """\
listeners:
  - address: 127.0.0.1:8080                  # plain HTTP
  - address: 127.0.0.1:8443
    tls:
      certificates:                           # host names come from each cert's SANs
        - {cert: /etc/idgateway/app1.pem, key: /etc/idgateway/app1.key}
        - {cert: /etc/idgateway/star.example.pem, key: /etc/idgateway/star.example.key}
      min_version: "1.2"
routes:
  - name: app1
    hosts: [app1.example.com]
    upstream: http://127.0.0.1:3000
    paths:
      - {prefix: /api/, upstream: http://127.0.0.1:3001}
  - name: wild
    hosts: ["*.example.com"]
    upstream: unix:/run/wild.sock
  - name: fallback
    default: true
    upstream: https://127.0.0.1:8444
    upstream_ca_file: /etc/idgateway/internal-ca.pem
"""


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """The contract example's files, in a temporary directory instead of /etc/idgateway."""
    directory = tmp_path / "certs"
    directory.mkdir()
    make_certificate(directory, "app1", ("App1.Example.com",))
    make_certificate(directory, "star.example", ("*.example.com", "example.com"))
    make_certificate(directory, "internal-ca", ("internal-ca",))
    make_certificate(directory, "wso2carbon", ("localhost",))
    generate_key_file(str(directory / "assertion-2026.pem"))
    return directory


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def contract_file(tmp_path: Path, certs: Path) -> str:
    return write(tmp_path, CONTRACT_EXAMPLE.replace("/etc/idgateway", str(certs)))


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ or {})


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, environ)
    return caught.value.problems


def only_problem(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Problem:
    found = problems(tmp_path, text, environ)
    assert len(found) == 1, found
    return found[0]


# A valid file to break one piece at a time: {route} is spliced in as a route's extra keys.
MINIMAL = """\
listeners:
  - address: 127.0.0.1:8080
routes:
  - name: app1
    hosts: [app1.example.com]
    upstream: http://127.0.0.1:3000
"""


def route_with(*extra_lines: str) -> str:
    return MINIMAL + "".join(f"    {line}\n" for line in extra_lines)


# ---- the accepted file ------------------------------------------------------------------


def test_contract_example_loads(tmp_path: Path, certs: Path) -> None:
    path = contract_file(tmp_path, certs)
    config = load_config(path, {})

    assert config.source == path
    plain, secure = config.listeners
    assert (plain.host, plain.port, plain.tls) == ("127.0.0.1", 8080, None)
    assert (secure.host, secure.port) == ("127.0.0.1", 8443)
    assert secure.tls is not None and secure.tls.min_version == "1.2"
    assert secure.tls.ciphers is None
    app1_pair, star_pair = secure.tls.certificates
    assert app1_pair.cert == str(certs / "app1.pem")
    assert app1_pair.key == str(certs / "app1.key")
    assert app1_pair.hostnames == ("app1.example.com",)
    assert star_pair.hostnames == ("*.example.com", "example.com")

    app1, wild, fallback = config.routes
    assert (app1.name, app1.hosts, app1.default) == ("app1", ("app1.example.com",), False)
    assert (app1.upstream.kind, app1.upstream.host, app1.upstream.port) == (
        "http",
        "127.0.0.1",
        3000,
    )
    assert app1.upstream.pool_size == 64 and app1.upstream.ca_file is None
    (api,) = app1.paths
    assert api.prefix == "/api/" and api.upstream.port == 3001
    assert path_judge(app1).read(b"/api/users").sub_route == 0  # paths[0]: /api/
    assert wild.hosts == ("*.example.com",)
    assert (wild.upstream.kind, wild.upstream.socket_path) == ("unix", "/run/wild.sock")
    assert fallback.default and fallback.hosts == ()
    assert fallback.upstream.kind == "https" and fallback.upstream.port == 8444
    assert fallback.upstream.ca_file == str(certs / "internal-ca.pem")
    assert config.trusted_proxies == () and config.warnings == ()


def test_route_defaults_come_from_the_model(tmp_path: Path) -> None:
    (route,) = load(tmp_path, MINIMAL).routes
    assert route.connect_timeout == 5.0
    assert route.response_timeout == 60.0
    assert route.idle_timeout == 300.0
    assert route.max_body_size == 100 * 1024 * 1024
    assert route.max_header_size == 16 * 1024
    assert not route.preserve_host and not route.https_redirect
    assert route.hsts_max_age is None and not route.hsts_include_subdomains


def test_every_route_option(tmp_path: Path, certs: Path) -> None:
    text = route_with(
        f"upstream_ca_file: {certs}/internal-ca.pem",
        "upstream_pool_size: 8",
        "preserve_host: yes",
        "connect_timeout: 250ms",
        "response_timeout: 1m30s",
        "idle_timeout: 2",
        "max_body_size: 10MB",
        "max_header_size: 32KiB",
        "https_redirect: true",
        "hsts: {max_age: 1d, include_subdomains: true}",
        "paths:",
        "  - {prefix: /api/, upstream: https://api.internal:8443/v1/}",
        "  - {prefix: /raw/, upstream: 'http://[::1]:9000'}",
    ).replace("http://127.0.0.1:3000", "https://app1.internal/base/")
    (route,) = load(tmp_path, text).routes
    assert route.upstream.base_path == "/base"
    assert (route.upstream.host, route.upstream.port) == ("app1.internal", 443)
    assert route.upstream.pool_size == 8
    assert route.preserve_host and route.https_redirect
    assert (
        route.connect_timeout == 0.25 and route.response_timeout == 90 and route.idle_timeout == 2
    )
    assert route.max_body_size == 10 * 1024 * 1024 and route.max_header_size == 32 * 1024
    assert route.hsts_max_age == 86400 and route.hsts_include_subdomains
    api, raw = route.paths
    # Path upstreams inherit the route's pool size, and its CA file when they are https.
    assert api.upstream.base_path == "/v1" and api.upstream.pool_size == 8
    assert api.upstream.ca_file == str(certs / "internal-ca.pem")
    assert (raw.upstream.host, raw.upstream.ca_file) == ("::1", None)


@pytest.mark.parametrize(
    ("setting", "expected"), [("hsts: true", 365 * 86400), ("hsts: false", None), ("hsts:", None)]
)
def test_hsts_switch(tmp_path: Path, setting: str, expected: int | None) -> None:
    assert load(tmp_path, route_with(setting)).routes[0].hsts_max_age == expected


@pytest.mark.parametrize("setting", ["max_body_size: 0", "max_body_size: null", "max_body_size:"])
def test_unlimited_body(tmp_path: Path, setting: str) -> None:
    assert load(tmp_path, route_with(setting)).routes[0].max_body_size is None


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("'[::1]:8443'", "::1", 8443),
        ("':8080'", "0.0.0.0", 8080),
        ("8080", "0.0.0.0", 8080),
        ("localhost:0", "localhost", 0),
    ],
)
def test_listen_addresses(tmp_path: Path, address: str, host: str, port: int) -> None:
    text = MINIMAL.replace("127.0.0.1:8080", address)
    (listener,) = load(tmp_path, text).listeners
    assert (listener.host, listener.port) == (host, port)


@pytest.mark.parametrize(("written", "version"), [("1.2", "1.2"), ("1.3", "1.3"), ('"1.3"', "1.3")])
def test_min_version_accepts_numbers(
    tmp_path: Path, certs: Path, written: str, version: str
) -> None:
    text = CONTRACT_EXAMPLE.replace('"1.2"', written).replace("/etc/idgateway", str(certs))
    config = load(tmp_path, text)
    assert config.listeners[1].tls is not None
    assert config.listeners[1].tls.min_version == version


def test_trusted_proxies_are_normalised(tmp_path: Path) -> None:
    text = MINIMAL + "trusted_proxies: [10.0.0.0/8, 192.0.2.7, '2001:db8::/32', 10.1.2.3/16]\n"
    assert load(tmp_path, text).trusted_proxies == (
        "10.0.0.0/8",
        "192.0.2.7/32",
        "2001:db8::/32",
        "10.1.0.0/16",
    )


def test_hosts_are_lower_cased(tmp_path: Path) -> None:
    text = MINIMAL.replace("[app1.example.com]", "[App1.Example.COM, '*.Apps.Example.com']")
    assert load(tmp_path, text).routes[0].hosts == ("app1.example.com", "*.apps.example.com")


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, certs: Path) -> None:
    text = route_with("upstream_ca_file: certs/internal-ca.pem").replace("http:", "https:")
    assert load(tmp_path, text).routes[0].upstream.ca_file == str(certs / "internal-ca.pem")


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    # Keys starting with "x-" are ignored, so that shared settings can hold an anchor.
    text = """\
    x-defaults: &defaults {upstream: http://127.0.0.1:3000, connect_timeout: 2s}
    listeners: [{address: 127.0.0.1:8080}]
    routes:
      - {<<: *defaults, name: a, hosts: [a.example.com]}
      - {<<: *defaults, name: b, hosts: [b.example.com], connect_timeout: 9s}
      - &third {name: c, hosts: [c.example.com], upstream: http://127.0.0.1:3001}
      - {<<: [*third, *defaults], name: d, hosts: [d.example.com]}
    """
    a, b, c, d = load(tmp_path, text).routes
    assert a.upstream == b.upstream and a.upstream.port == 3000
    assert (a.connect_timeout, b.connect_timeout) == (2, 9)
    # An earlier merge source wins over a later one.
    assert d.upstream == c.upstream and d.connect_timeout == 2


def test_merging_a_non_mapping(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, route_with("<<: [1]"))
    assert (problem.line, problem.key) == (7, "routes[0]")
    assert "<< must merge a mapping or a list of mappings" in problem.message


# ---- environment variables --------------------------------------------------------------


def test_environment_variables_are_substituted(tmp_path: Path) -> None:
    text = route_with(
        "upstream_pool_size: ${POOL}",
        "preserve_host: ${PRESERVE}",
        "paths: [{prefix: '/$${literal}/', upstream: 'http://${UPSTREAM_HOST}:3001/x'}]",
    ).replace("app1.example.com", "'${APP_HOST}'")
    environ = {"POOL": "12", "PRESERVE": "true", "UPSTREAM_HOST": "api", "APP_HOST": "A.example"}
    (route,) = load(tmp_path, text, environ).routes
    assert route.hosts == ("a.example",)
    assert route.upstream.pool_size == 12 and route.preserve_host is True
    # "$${" is a literal "${"; braces are not bare path characters, so the
    # prefix is kept in the canonical form request paths are matched in.
    assert route.paths[0].prefix == "/$%7Bliteral%7D/"
    assert route.paths[0].upstream.url == "http://api:3001/x"


def test_undefined_environment_variable(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL.replace("3000", "${APP_PORT}"))
    assert (problem.line, problem.key) == (6, "routes[0].upstream")
    assert "environment variable 'APP_PORT' is not set" in problem.message


def test_malformed_environment_reference(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL.replace("3000", "${APP-PORT}"))
    assert "'${APP-PORT}' is not a ${NAME} reference" in problem.message


def test_environment_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDGATEWAY_TEST_PORT", "3999")
    path = write(tmp_path, MINIMAL.replace("3000", "${IDGATEWAY_TEST_PORT}"))
    assert load_config(path).routes[0].upstream.port == 3999


# ---- secret keys and <key>_file ---------------------------------------------------------

SECRET_FIELDS = (Field("client_secret", parsed(str, "a string"), required=True, secret=True),)


def read_secret(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Any:
    reader = Reader(str(tmp_path / "gateway.yaml"), environ or {})
    node = yaml.compose(textwrap.dedent(text), Loader=yaml.SafeLoader)
    found = read_section(reader, node, "oidc", SECRET_FIELDS, "a mapping")
    assert found is not INVALID
    return found.values["client_secret"], reader.problems


def test_secret_given_inline(tmp_path: Path) -> None:
    assert read_secret(tmp_path, "client_secret: ${S}", {"S": "s3cret"}) == ("s3cret", [])


def test_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-${file}\n")
    value, found = read_secret(tmp_path, "client_secret_file: secret")
    # Trailing newline stripped; file contents are taken literally, never ${}-expanded.
    assert (value, found) == ("from-${file}", [])


def test_secret_file_unreadable(tmp_path: Path) -> None:
    value, (problem,) = read_secret(tmp_path, "client_secret_file: /nonexistent/secret")
    assert value is INVALID
    assert (problem.line, problem.key) == (1, "oidc.client_secret_file")
    assert "cannot read /nonexistent/secret: No such file or directory" in problem.message


def test_secret_given_twice(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x")
    value, (problem,) = read_secret(tmp_path, "client_secret: a\nclient_secret_file: secret\n")
    assert value is INVALID and problem.line == 2
    assert "give either 'client_secret' or 'client_secret_file', not both" in problem.message


def test_secret_missing_names_both_keys(tmp_path: Path) -> None:
    _, (problem,) = read_secret(tmp_path, "{}")
    assert problem.key == "oidc.client_secret"
    assert "missing required key 'client_secret' (or 'client_secret_file')" in problem.message


def test_secret_file_key_is_suggested(tmp_path: Path) -> None:
    _, found = read_secret(tmp_path, "client_secret: a\nclient_secret_fil: b\n")
    assert "did you mean 'client_secret_file'?" in found[0].message


# ---- errors: each names file, line and key ----------------------------------------------


def test_problem_and_error_formatting() -> None:
    first = Problem("gw.yaml", 3, "routes[0].upstream", "bad")
    second = Problem("gw.yaml", None, "", "empty")
    assert str(first) == "gw.yaml:3: routes[0].upstream: bad"
    assert str(second) == "gw.yaml: empty"
    assert str(ConfigError([first, second])) == "gw.yaml:3: routes[0].upstream: bad\ngw.yaml: empty"


def test_unknown_key_suggests_the_known_one(tmp_path: Path) -> None:
    missing, unknown = problems(tmp_path, MINIMAL.replace("upstream:", "upstrem:"))
    assert unknown.file == str(tmp_path / "gateway.yaml")
    assert (unknown.line, unknown.key) == (6, "routes[0].upstrem")
    assert unknown.message == "unknown key 'upstrem'; did you mean 'upstream'?"
    # The key it was meant to be is then missing too: reported where its mapping starts.
    assert (missing.line, missing.key) == (4, "routes[0].upstream")


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "frobnicate: 1\n")
    assert problem.message.startswith("unknown key 'frobnicate'; known keys: listeners, routes")


def test_missing_required_key(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL.replace("    upstream: http://127.0.0.1:3000\n", ""))
    assert [(p.line, p.key) for p in found] == [(4, "routes[0].upstream")]
    assert "missing required key 'upstream', e.g. upstream: http://127.0.0.1:3000" in str(found[0])


def test_missing_top_level_keys(tmp_path: Path) -> None:
    found = problems(tmp_path, "trusted_proxies: []\n")
    assert [p.key for p in found] == ["listeners", "routes"]


def test_hosts_given_as_a_string(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL.replace("[app1.example.com]", "app1"))
    assert (problem.line, problem.key) == (5, "routes[0].hosts")
    assert problem.message == (
        "expected a list of strings, e.g. [app1.example.com]; got the string 'app1'"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("preserve_host: 'yes'", "expected true or false; got the string 'yes'"),
        ("upstream_pool_size: 0", "expected a whole number of at least 1, e.g. 64; got 0"),
        ("upstream_pool_size: true", "expected a whole number of at least 1, e.g. 64; got true"),
        ("paths: {prefix: /api/}", "expected a list like [{prefix: /api/"),
        ("paths: [{prefix: api/, upstream: http://a:1}]", "'api/' is not a path prefix"),
        ("hsts: {max_age: 1y}", "'1y' is not a duration"),
        ("hsts: 3", "expected false, true or a mapping"),
        ("name: [x]", "expected a name, e.g. app1; got a list"),
        ("name: 'has space'", "'has space' is not a route name"),
    ],
)
def test_wrong_types(tmp_path: Path, line: str, message: str) -> None:
    text = route_with(line)
    if line.startswith("name:"):
        text = MINIMAL.replace("name: app1", line)
    problem = only_problem(tmp_path, text)
    assert problem.line == (4 if line.startswith("name:") else 7)
    assert message in problem.message


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1:3000", "unsupported scheme 'ftp'"),
        ("http://127.0.0.1:99999", "has a bad port; expected 1-65535"),
        ("http://127.0.0.1:http", "has a bad port"),
        ("http://:3000", "has no host; expected e.g. http://127.0.0.1:3000"),
        ("http:/app", "has no host"),
        ("http://a/?x=1", "must not have a query or fragment"),
        ("http://user:pw@a/", "must not contain a user name or password"),
        ("unix:run/x.sock", "the socket path must be absolute, e.g. unix:/run/app.sock"),
        ("127.0.0.1:3000", "unsupported scheme '127.0.0.1'"),
        ("localhost", "is not a URL; expected http://host[:port][/path]"),
    ],
)
def test_bad_upstream_urls(tmp_path: Path, url: str, message: str) -> None:
    problem = only_problem(tmp_path, MINIMAL.replace("http://127.0.0.1:3000", f"'{url}'"))
    assert (problem.line, problem.key) == (6, "routes[0].upstream")
    assert message in problem.message


def test_ca_file_with_plain_http_upstream(tmp_path: Path, certs: Path) -> None:
    problem = only_problem(tmp_path, route_with("upstream_ca_file: certs/internal-ca.pem"))
    assert (problem.line, problem.key) == (7, "routes[0].upstream_ca_file")
    assert "only used with https:// upstreams" in problem.message


def test_ca_file_that_is_not_pem(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    text = route_with("upstream_ca_file: ca.pem").replace("http:", "https:")
    problem = only_problem(tmp_path, text)
    assert "ca.pem is not PEM (-----BEGIN CERTIFICATE-----)" in problem.message


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1", "is not a listen address; expected host:port"),
        ("'::1:8080'", "is not a listen address"),
        ("127.0.0.1:70000", "port 70000 is out of range"),
        ("300.0.0.1:80", "'300.0.0.1' is not an IPv4 address"),
        ("'[nope]:80'", "'nope' is not an IPv6 address"),
    ],
)
def test_bad_listen_addresses(tmp_path: Path, address: str, message: str) -> None:
    problem = only_problem(tmp_path, MINIMAL.replace("127.0.0.1:8080", address))
    assert (problem.line, problem.key) == (2, "listeners[0].address")
    assert message in problem.message


def test_duplicate_listener_address(tmp_path: Path) -> None:
    text = MINIMAL.replace("listeners:\n", "listeners:\n  - address: 127.0.0.1:8080\n")
    problem = only_problem(tmp_path, text)
    assert (problem.line, problem.key) == (3, "listeners[1].address")
    assert "127.0.0.1:8080 is already used on line 2" in problem.message


def test_empty_lists_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, "listeners: []\nroutes: []\n")
    assert [(p.line, p.key) for p in found] == [(1, "listeners"), (2, "routes")]
    assert all("must not be empty" in p.message for p in found)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("connect_timeout: soon", "'soon' is not a duration; expected a number of seconds"),
        ("connect_timeout: 0", "must be longer than zero"),
        ("connect_timeout: -1", "is not a duration"),
        ("idle_timeout: 5 minutes", "is not a duration"),
        ("max_body_size: 10 parsecs", "'10 parsecs' is not a size"),
        ("max_header_size: 0", "must be more than zero"),
        ("max_header_size: 1.5", "not a whole number of bytes"),
    ],
)
def test_bad_durations_and_sizes(tmp_path: Path, text: str, message: str) -> None:
    problem = only_problem(tmp_path, route_with(text))
    assert problem.line == 7 and message in problem.message


def test_bad_hosts(tmp_path: Path) -> None:
    text = MINIMAL.replace("[app1.example.com]", "['app1.example.com:443', 'a.*.com', '-x.com']")
    found = problems(tmp_path, text)
    assert [p.key for p in found] == [
        "routes[0].hosts[0]",
        "routes[0].hosts[1]",
        "routes[0].hosts[2]",
    ]
    assert "leave out the port" in found[0].message
    assert "'*' may only be the whole first label" in found[1].message
    assert "is not a valid host name" in found[2].message


def test_bad_trusted_proxy(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "trusted_proxies: [10.0.0.0/33]\n")
    assert (problem.line, problem.key) == (7, "trusted_proxies[0]")
    assert "is not an IP address or network; expected e.g. 10.0.0.0/8" in problem.message


SECOND_ROUTE = """\
  - name: other
    hosts: [other.example.com, APP1.example.com]
    upstream: http://127.0.0.1:3001
"""


def test_same_host_on_two_routes(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + SECOND_ROUTE)
    assert (problem.line, problem.key) == (8, "routes[1].hosts[1]")
    assert problem.message == (
        "host 'app1.example.com' is on both route 'app1' (line 5) and route 'other' (line 8);"
        " a host may be on one route"
    )


def test_duplicate_route_names(tmp_path: Path) -> None:
    text = MINIMAL + SECOND_ROUTE.replace("name: other", "name: app1").replace(
        ", APP1.example.com", ""
    )
    problem = only_problem(tmp_path, text)
    assert (problem.line, problem.key) == (7, "routes[1].name")
    assert "route name 'app1' is already used on line 4" in problem.message


def test_two_default_routes(tmp_path: Path) -> None:
    text = route_with("default: true") + SECOND_ROUTE.replace(", APP1.example.com", "")
    text += "    default: true\n"
    problem = only_problem(tmp_path, text)
    assert (problem.line, problem.key) == (11, "routes[1].default")
    assert "only one route may be default: true, and route 'app1' (line 7) already is" in str(
        problem
    )


def test_route_without_hosts_must_be_default(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL.replace("    hosts: [app1.example.com]\n", ""))
    assert (problem.line, problem.key) == (4, "routes[0].hosts")
    assert "a route without hosts must be default: true" in problem.message


def test_duplicate_path_prefix(tmp_path: Path) -> None:
    text = route_with(
        "paths: [{prefix: /a/, upstream: http://a:1}, {prefix: /a/, upstream: http://b:1}]"
    )
    problem = only_problem(tmp_path, text)
    assert problem.key == "routes[0].paths[1].prefix"
    assert "'/a/' is listed twice" in problem.message


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, route_with("upstream: http://127.0.0.1:4000"))
    assert (problem.line, problem.key) == (7, "routes[0].upstream")
    assert problem.message == "duplicate key (first given on line 6)"


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    text = """\
    listeners:
      - address: nowhere
    routes:
      - name: a
        hosts: x.example.com
        upstream: gopher://x
        connect_timeout: later
      - name: b
        upstrem: http://127.0.0.1:1
    """
    found = problems(tmp_path, text)
    assert [(p.line, p.key) for p in found] == [
        (2, "listeners[0].address"),
        (5, "routes[0].hosts"),
        (6, "routes[0].upstream"),
        (7, "routes[0].connect_timeout"),
        (8, "routes[1].upstream"),  # missing, reported at the start of its mapping
        (8, "routes[1].hosts"),  # no hosts, and not default: true
        (9, "routes[1].upstrem"),
    ]


# ---- certificates -----------------------------------------------------------------------


def tls_file(tmp_path: Path, cert: Path | str, key: Path | str, extra: str = "") -> str:
    return MINIMAL.replace(
        "  - address: 127.0.0.1:8080\n",
        f"  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n"
        f"        - cert: {cert}\n          key: {key}\n{extra}",
    )


def test_unreadable_certificate_and_key(tmp_path: Path) -> None:
    found = problems(tmp_path, tls_file(tmp_path, "missing.pem", "/nonexistent/missing.key"))
    assert [(p.line, p.key) for p in found] == [
        (5, "listeners[0].tls.certificates[0].cert"),
        (6, "listeners[0].tls.certificates[0].key"),
    ]
    assert f"cannot read {tmp_path}/missing.pem: No such file or directory" in found[0].message
    assert "cannot read /nonexistent/missing.key: No such file or directory" in found[1].message


def test_certificate_that_is_not_pem(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "app1", ("app1.example.com",))
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    cert.write_bytes(der)
    problem = only_problem(tmp_path, tls_file(tmp_path, cert, key))
    assert problem.key == "listeners[0].tls.certificates[0].cert"
    assert f"{cert} is not PEM (-----BEGIN CERTIFICATE-----)" in problem.message


def test_key_that_is_not_pem(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "app1", ("app1.example.com",))
    key.write_text("garbage")
    problem = only_problem(tmp_path, tls_file(tmp_path, cert, key))
    assert problem.key == "listeners[0].tls.certificates[0].key"
    assert "is not a PEM private key" in problem.message


def test_encrypted_key(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "app1", ("app1.example.com",))
    private_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    problem = only_problem(tmp_path, tls_file(tmp_path, cert, key))
    assert "is encrypted; give an unencrypted PEM key" in problem.message


def test_key_that_does_not_match_its_certificate(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "app1", ("app1.example.com",), mismatched_key=True)
    problem = only_problem(tmp_path, tls_file(tmp_path, cert, key))
    assert (problem.line, problem.key) == (6, "listeners[0].tls.certificates[0].key")
    assert problem.message == (
        f"{key} does not match certificate {cert} (CN=app1.example.com);"
        " give the key the certificate was issued for"
    )


def test_expired_certificate_is_a_warning(tmp_path: Path) -> None:
    ended = datetime.datetime(2024, 1, 1, tzinfo=UTC)
    cert, key = make_certificate(tmp_path, "old", ("old.example.com",), expired_on=ended)
    config = load(tmp_path, tls_file(tmp_path, cert, key))
    assert config.warnings == (f"certificate {cert} (CN=old.example.com) expired on 2024-01-01",)
    assert "expired 2024-01-01" in summarize(config)


def test_certificate_expiring_soon_is_a_warning(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "soon", ("soon.example.com",), valid_days=5)
    (warning,) = load(tmp_path, tls_file(tmp_path, cert, key)).warnings
    assert warning.startswith(f"certificate {cert} (CN=soon.example.com) expires soon, on ")


def test_certificate_without_sans_falls_back_to_cn(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "legacy", common_name="Legacy.Example.com")
    config = load(tmp_path, tls_file(tmp_path, cert, key))
    assert config.listeners[0].tls is not None
    assert config.listeners[0].tls.certificates[0].hostnames == ("legacy.example.com",)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("      min_version: 1.1\n", 'unsupported TLS version \'1.1\'; expected "1.2" or "1.3"'),
        ("      ciphers: NOPE-NOTHING\n", "no cipher matches 'NOPE-NOTHING'"),
    ],
)
def test_bad_tls_settings(tmp_path: Path, extra: str, message: str) -> None:
    cert, key = make_certificate(tmp_path, "app1", ("app1.example.com",))
    problem = only_problem(tmp_path, tls_file(tmp_path, cert, key, extra))
    assert problem.line == 7 and message in problem.message


def test_tls_without_certificates(tmp_path: Path) -> None:
    text = MINIMAL.replace("8080\n", "8443\n    tls: {min_version: '1.3'}\n")
    problem = only_problem(tmp_path, text)
    assert (problem.line, problem.key) == (3, "listeners[0].tls.certificates")
    assert "missing required key 'certificates', e.g. certificates: [{cert:" in problem.message


# ---- whole-file problems ----------------------------------------------------------------


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path / "nope.yaml"))
    assert str(caught.value) == (
        f"{tmp_path}/nope.yaml: cannot read {tmp_path}/nope.yaml: No such file or directory"
    )


def test_yaml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + "  - name: [unclosed\n    upstream: x\n")
    assert problem.line is not None and problem.line >= 7
    assert problem.message.startswith("YAML syntax error:")


def test_empty_file(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "# nothing here\n")
    assert (problem.line, problem.key) == (None, "")
    assert "the file is empty" in problem.message


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "- listeners\n- routes\n")
    assert problem.line == 1
    assert problem.message == (
        "expected a mapping with 'listeners' and 'routes' at the top level; got a list"
    )


def test_unsafe_yaml_tag_is_refused(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, route_with("preserve_host: !!python/name:os.system x"))
    assert problem.message == "unsupported YAML tag '!!python/name:os.system'; remove the tag"


# ---- summary ----------------------------------------------------------------------------


def test_summarize(tmp_path: Path, certs: Path) -> None:
    text = CONTRACT_EXAMPLE.replace("/etc/idgateway", str(certs))
    text += "    hsts: {max_age: 2d, include_subdomains: yes}\ntrusted_proxies: [10.0.0.0/8]\n"
    summary = summarize(load(tmp_path, text))
    expires = f"{datetime.datetime.now(UTC) + datetime.timedelta(days=365):%Y-%m-%d}"
    for expected in [
        "  127.0.0.1:8080  plain HTTP",
        "  127.0.0.1:8443  TLS 1.2+",
        f"    app1.example.com: {certs}/app1.pem, expires ",
        f"    *.example.com, example.com: {certs}/star.example.pem, expires ",
        "  app1: app1.example.com -> http://127.0.0.1:3000",
        "    /api/ -> http://127.0.0.1:3001",
        "  wild: *.example.com -> unix:/run/wild.sock",
        "  fallback: (default) -> https://127.0.0.1:8444  [hsts 2d +subdomains]",
        "Trusted proxies: 10.0.0.0/8",
        "No warnings.",
    ]:
        assert expected in summary, (expected, summary)
    assert expires[:4] in summary


def test_merge_diamond_and_cycle(tmp_path: Path) -> None:
    text = """\
    x-base: &base {upstream: http://127.0.0.1:3000}
    x-slow: &slow {<<: *base, idle_timeout: 1h}
    x-fast: &fast {<<: *base, connect_timeout: 1s}
    listeners: [{address: 127.0.0.1:8080}]
    routes:
      - {<<: [*slow, *fast], name: a, hosts: [a.example.com]}
    """
    (route,) = load(tmp_path, text).routes
    assert (route.upstream.port, route.idle_timeout, route.connect_timeout) == (3000, 3600, 1)
    looped = text.replace("- {<<: [*slow, *fast],", "- &loop {<<: [*slow, *loop],")
    problem = only_problem(tmp_path, looped)
    assert "<< must merge a mapping" in problem.message


def test_the_example_file_in_etc_loads(tmp_path: Path, certs: Path) -> None:
    """etc/gateway.yaml documents every option; it must stay a valid configuration."""
    example = Path(__file__).resolve().parents[2] / "etc" / "gateway.yaml"
    text = example.read_text().replace("/etc/idgateway", str(certs))
    env = {"BILLING_HOST": "billing.internal", "APP1_CLIENT_SECRET": "s3cret"}
    env["APP1_SESSION_KEY"] = "a" * 43 + "="
    env["INTROSPECT_SECRET"] = "s3cret"
    config = load(tmp_path, text, env)
    names = [route.name for route in config.routes]
    assert names == ["app1", "billing", "wild", "fallback", "orders-api"]
    billing = config.routes[1]
    assert billing.upstream.host == "billing.internal" and billing.connect_timeout == 2
    assert billing.max_body_size is None and billing.hsts_max_age == 365 * 86400
    every_spec = (TOP_FIELDS, LISTENER_FIELDS, TLS_FIELDS, CERTIFICATE_FIELDS, ROUTE_FIELDS)
    every_spec += (PATH_FIELDS, HSTS_FIELDS, PROVIDER_FIELDS, OIDC_FIELDS, SESSION_FIELDS)
    every_spec += (HEADER_OPTION_FIELDS, AUTHORIZE_FIELDS, RELOAD_FIELDS, FORWARD_AUTH_FIELDS)
    every_spec += (ASSERTION_FIELDS,)
    every_spec += (BEARER_FIELDS, INTROSPECTION_FIELDS)
    unused = [field.name for spec in every_spec for field in spec if f"{field.name}:" not in text]
    assert unused == []
