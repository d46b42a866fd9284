"""``assertion_keys`` and a route's ``assertion``: the accepted forms, and each bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from idgateway.config.load import ConfigError, Problem, load_config
from idgateway.config.model import AssertionSettings, Config
from idgateway.config.signing_keys import generate_key_file

TEMPLATE = """\
listeners:
  - address: 127.0.0.1:8080
providers:
  wso2: {{issuer: http://127.0.0.1:9443/oauth2/token}}
{keys}
routes:
  - name: app1
    hosts: [app1.example.com]
    upstream: http://127.0.0.1:3000
    oidc: {{provider: wso2, client_id: app1, client_secret: s3cret}}
    session: {{keys: [q3F1K2x0cUxZbU5PcFFyU3RVdld4WXphYmNkZWZnaGk=]}}
{route}
  - name: app2
    hosts: [app2.example.com]
    upstream: http://127.0.0.1:3001
{route2}
"""


def load(tmp_path: Path, keys: str = "", route: str = "", route2: str = "") -> Config:
    path = tmp_path / "gateway.yaml"
    path.write_text(TEMPLATE.format(keys=keys, route=route, route2=route2))
    return load_config(str(path), {})


def problems(tmp_path: Path, keys: str = "", route: str = "", route2: str = "") -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, keys, route, route2)
    return caught.value.problems


def only_problem(tmp_path: Path, keys: str = "", route: str = "", route2: str = "") -> Problem:
    found = problems(tmp_path, keys, route, route2)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def ec_key(tmp_path: Path) -> Path:
    path = tmp_path / "assertion-ec.pem"
    generate_key_file(str(path), "ec")
    return path


def keys_line(*paths: Path | str) -> str:
    return "assertion_keys: [" + ", ".join(str(p) for p in paths) + "]"


ON = "    assertion: {header: X-Idgateway-Assertion, lifetime: 60s}"


def test_the_contract_form_is_accepted(tmp_path: Path, ec_key: Path) -> None:
    ed = tmp_path / "assertion-ed.pem"
    generate_key_file(str(ed), "ed25519")
    config = load(tmp_path, keys_line(ec_key, ed), ON)
    assert [k.alg for k in config.assertion_keys] == ["ES256", "EdDSA"]
    app1, app2 = config.routes
    assert app1.assertion == AssertionSettings("X-Idgateway-Assertion", 60.0, None)
    assert app2.assertion is None  # off unless set


def test_defaults_and_audience(tmp_path: Path, ec_key: Path) -> None:
    config = load(tmp_path, keys_line(ec_key), "    assertion: {audience: orders}")
    assert config.routes[0].assertion == AssertionSettings(audience="orders")


def test_relative_key_paths_are_relative_to_the_file(tmp_path: Path, ec_key: Path) -> None:
    config = load(tmp_path, keys_line(ec_key.name), ON)
    assert config.assertion_keys[0].path == str(ec_key)


def write_pem(path: Path, key: object, *, encrypted: bool = False) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(b"pass")
        if encrypted
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


BAD_KEYS = {
    "missing": ("cannot read", "No such file"),
    "directory": ("is a directory", ""),
    "not-pem": ("is not a PEM private key", "idgateway keygen"),
    "rsa": ("is an RSA key", "only EC P-256"),
    "p384": ("is an EC key on secp384r1", "only P-256"),
    "encrypted": ("is encrypted", "unencrypted"),
    "public": ("holds a public key", "give the private key"),
    "empty": ("is not a PEM private key", ""),
}


def make_bad_key(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pem"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "not-pem":
        path.write_text("this is not a key\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "rsa":
        write_pem(path, rsa.generate_private_key(65537, 2048))
    elif kind == "p384":
        write_pem(path, ec.generate_private_key(ec.SECP384R1()))
    elif kind == "encrypted":
        write_pem(path, ec.generate_private_key(ec.SECP256R1()), encrypted=True)
    elif kind == "public":
        public = ed25519.Ed25519PrivateKey.generate().public_key()
        path.write_bytes(
            public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return path


@pytest.mark.parametrize("kind", sorted(BAD_KEYS))
def test_bad_key_files(tmp_path: Path, kind: str) -> None:
    path = make_bad_key(tmp_path, kind)
    problem = only_problem(tmp_path, keys_line(path))
    assert problem.key == "assertion_keys[0]"
    assert problem.line == 5
    assert problem.file.endswith("gateway.yaml")
    for part in BAD_KEYS[kind]:
        assert part in problem.message, problem.message


def test_unreadable_key_file(tmp_path: Path, ec_key: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    ec_key.chmod(0)
    problem = only_problem(tmp_path, keys_line(ec_key))
    assert "Permission denied" in problem.message


def test_every_bad_key_is_reported(tmp_path: Path, ec_key: Path) -> None:
    rsa_key = make_bad_key(tmp_path, "rsa")
    found = problems(tmp_path, keys_line(ec_key, rsa_key, tmp_path / "nope.pem"))
    assert [p.key for p in found] == ["assertion_keys[1]", "assertion_keys[2]"]


def test_a_key_listed_twice(tmp_path: Path, ec_key: Path) -> None:
    copy = tmp_path / "copy.pem"
    copy.write_bytes(ec_key.read_bytes())
    problem = only_problem(tmp_path, keys_line(ec_key, copy), ON)
    assert problem.key == "assertion_keys[1]"
    assert "same key as assertion_keys[0]" in problem.message


def test_assertion_without_keys(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "", ON)
    assert problem.key == "routes[0].assertion"
    assert problem.line == 12
    assert "no key to sign with" in problem.message
    assert "assertion_keys" in problem.message and "idgateway keygen" in problem.message


def test_assertion_with_an_empty_key_list(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "assertion_keys: []", ON)
    assert "no key to sign with" in problem.message


def test_assertion_on_a_route_without_login(tmp_path: Path, ec_key: Path) -> None:
    problem = only_problem(tmp_path, keys_line(ec_key), "", ON)
    assert problem.key == "routes[1].assertion"
    assert "'oidc'" in problem.message


@pytest.mark.parametrize(
    ("lifetime", "message"),
    [
        ("0", "from 1s to 1h"),
        ("0s", "from 1s to 1h"),
        ("500ms", "from 1s to 1h"),
        ("61m", "from 1s to 1h"),
        ("2h", "from 1s to 1h"),
        ("-5s", ""),
        ("soon", ""),
    ],
)
def test_bad_lifetimes(tmp_path: Path, ec_key: Path, lifetime: str, message: str) -> None:
    problem = only_problem(tmp_path, keys_line(ec_key), f"    assertion: {{lifetime: {lifetime}}}")
    assert problem.key == "routes[0].assertion.lifetime"
    assert message in problem.message


@pytest.mark.parametrize("lifetime", ["1s", "60s", "1h"])
def test_lifetime_bounds_are_inclusive(tmp_path: Path, ec_key: Path, lifetime: str) -> None:
    load(tmp_path, keys_line(ec_key), f"    assertion: {{lifetime: {lifetime}}}")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ('"X Assertion"', "not a valid header name"),
        ('"X-Assertion:"', "not a valid header name"),
        ('""', "not a valid header name"),
        ("X-Forwarded-For", "the gateway sets or strips it"),
        ("Host", "the gateway sets or strips it"),
        ("Cookie", "the gateway sets or strips it"),
        ("x_request_id", "the gateway sets or strips it"),
        ("X-Forwarded-User", "identity header"),
        ("x_forwarded_email", "identity header"),
        ("OIDC_CLAIM_assertion", "identity header"),
        ("X-Remote-User", "identity header"),
        ("Remote-User", "identity header"),
    ],
)
def test_bad_header_names(tmp_path: Path, ec_key: Path, header: str, message: str) -> None:
    problem = only_problem(tmp_path, keys_line(ec_key), f"    assertion: {{header: {header}}}")
    assert problem.key == "routes[0].assertion.header"
    assert message in problem.message, problem.message


def test_header_of_another_routes_custom_mapping(tmp_path: Path, ec_key: Path) -> None:
    # app2 logs in too, and injects X-Proof from a claim: app1 may not sign into it.
    other = (
        "    oidc: {provider: wso2, client_id: app2, client_secret: s3cret}\n"
        "    headers: {X-Proof: sub}"
    )
    problem = only_problem(tmp_path, keys_line(ec_key), "    assertion: {header: X-Proof}", other)
    assert problem.key == "routes[0].assertion.header"


@pytest.mark.parametrize("audience", ['""', '"  "', "[a, b]"])
def test_bad_audience(tmp_path: Path, ec_key: Path, audience: str) -> None:
    problem = only_problem(tmp_path, keys_line(ec_key), f"    assertion: {{audience: {audience}}}")
    assert problem.key == "routes[0].assertion.audience"


def test_assertion_must_be_a_mapping(tmp_path: Path, ec_key: Path) -> None:
    problem = only_problem(tmp_path, keys_line(ec_key), "    assertion: yes-please")
    assert problem.key == "routes[0].assertion"
    assert "a mapping like" in problem.message


def test_unknown_assertion_key(tmp_path: Path, ec_key: Path) -> None:
    problem = only_problem(tmp_path, keys_line(ec_key), "    assertion: {lifetme: 60s}")
    assert "lifetime" in problem.message  # the suggestion


def test_check_summary_names_the_keys_and_the_header(tmp_path: Path, ec_key: Path) -> None:
    from idgateway.config.load import summarize

    config = load(tmp_path, keys_line(ec_key), ON)
    text = summarize(config)
    assert f"{ec_key}: ES256, kid {config.assertion_keys[0].kid}" in text
    assert "assertion in X-Idgateway-Assertion" in text


def test_a_key_readable_by_others_is_warned_about(tmp_path: Path, ec_key: Path) -> None:
    assert not any(str(ec_key) in w for w in load(tmp_path, keys_line(ec_key), ON).warnings)
    ec_key.chmod(0o644)
    warnings = load(tmp_path, keys_line(ec_key), ON).warnings
    assert any(str(ec_key) in w and "chmod 600" in w for w in warnings), warnings
