"""``idgateway import`` treats its input as hostile.

An importer reads a file somebody else wrote and writes the gateway's
configuration, which decides who gets past the gateway. So:

* a value from the input reaches the output only through PyYAML's emitter:
  whatever it holds (line breaks of every kind YAML knows, ``#``, ``: ``, flow
  brackets, anchors, tags, quotes, NUL...), ``yaml.safe_load`` of the output
  gives exactly the structure the importer meant, with the value only where it
  was meant to go (``test_*_value_lands_only_where_meant``);
* a ``${NAME}`` in the input stays literal text: the gateway's loader must not
  expand it from its environment (``APP_SECRET`` is set while loading here);
* ``Include`` is followed within limits (depth, file count, size, cycles), and
  an included file contributes only directives the importer knows: a netrc
  caught by a glob never reaches the output, not even a comment;
* every bad input is a clear ``ImporterError`` (exit 1 from the command), never
  a traceback.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from idgateway.cli import main
from idgateway.config.load import ConfigError, load_config
from idgateway.importers import MAX_FILE_BYTES, ImporterError, ImportOptions, import_file
from idgateway.importers._includes import MAX_INCLUDE_DEPTH, MAX_INCLUDED_FILES

MARK = "INJECTED"
SECRET_IN_ENV = "leaked-app-secret-value"

# name -> a hostile value; each carries MARK so that where it lands can be found.
HOSTILE: dict[str, str] = {
    "lf": f"x\ntrusted_proxies: [0.0.0.0/0]\n{MARK}: 1",
    "cr": f"x\r{MARK}: 1",
    "crlf": f"x\r\n{MARK}: 1",
    "nel-u0085": f"x\x85{MARK}: 1",
    "line-separator-u2028": f"x\u2028trusted_proxies: [0.0.0.0/0]\u2028{MARK}: 1",
    "paragraph-separator-u2029": f"x\u2029{MARK}: 1",
    "vt-ff-tab": f"x\v\f\t{MARK}: 1",
    "document-marker": f"x\n---\n{MARK}: 1\n...",
    "comment": f"x # {MARK}: 1",
    "colon": f"{MARK}: 1",
    "flow-mapping": f"{{{MARK}: 1}}",
    "flow-sequence": f"[{MARK}, 1]",
    "anchor": f"&{MARK} x",
    "alias": f"*{MARK}",
    "python-tag": f"!!python/object/apply:os.system ['{MARK}']",
    "env-reference": f"${{APP_SECRET}}{MARK}",
    "env-escape": f"$${{APP_SECRET}}{MARK}",
    "env-dollars": f"$$$${{APP_SECRET}}{MARK}$",
    "env-malformed": f"${{APP SECRET}}{MARK}",
    "quotes": f'\'"{MARK}"\' \\" \\',
    "bom-u+feff": f"\ufeff{MARK}",
    "nul": f"x\0{MARK}",
    "long": MARK + "x" * 20_000,
    "leading-blank": f" {MARK} ",
    "yaml-null": f"~{MARK}",
    "percent-directive": f"%YAML 1.1 {MARK}",
}
# The configuration loader turns U+E000/U+E001 into "${"/"}" after parsing: no
# spelling reads back literally, so the importer refuses such a value.
REFUSED = {"loader-reserved-ue000": f"\ue000APP_SECRET\ue001{MARK}"}

YAML_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
KEY_LINE = re.compile(r" *(?:- )?([A-Za-z0-9_.-]+):(?: |$)")


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, for the BMP)."""
    return json.dumps(value)


def apache_word(value: str) -> str:
    """An Apache argument in double quotes ('\\' escapes '"' and '\\')."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def yaml_lines(text: str) -> list[str]:
    return YAML_LINE_BREAK.split(text)


def leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) for every key and scalar of a loaded document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, "<key>"), key
            yield from leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaves(value, (*path, index))
    else:
        yield path, node


def assert_structure(
    text: str, meant: tuple[Any, ...] | None, *, issuer: bool = False
) -> dict[str, Any]:
    """The output is the importer's structure, MARK only at ``meant`` (None: only in comments;
    ``issuer``: only in the provider's URL and in the route's reference to the provider)."""
    for line in yaml_lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key = KEY_LINE.match(line)
        assert key is not None, f"a line the importer does not write: {line[:120]!r}"
        assert issuer or MARK not in key.group(1), line[:120]  # a tenant names the provider
        assert key.group(1) != "trusted_proxies", line[:120]
    document = yaml.safe_load(text)
    assert set(document) == {"listeners", "providers", "routes"}
    found = [path for path, value in leaves(document) if MARK in str(value)]
    if issuer:
        allowed = {("providers", "<key>"), ("routes", 0, "oidc", "provider")}
        assert all(
            path in allowed
            or path[:1] == ("providers",)
            and path[-1] in ("issuer", "discovery_url")
            for path in found
        ), found
        return dict(document)
    assert found == ([] if meant is None else [meant]), found
    return dict(document)


def unescaped(value: str) -> str:
    """What the gateway's loader makes of a literal the importer wrote ($${ -> ${)."""
    return re.sub(r"\$\$\{", "${", value)


def loaded(text: str, tmp_path: Path) -> Any:
    """load_config of the output, APP_SECRET set; None when the loader refuses the values."""
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    environ = {name: base64.b64encode(b"k" * 32).decode() for name in names}
    environ["APP_SECRET"] = SECRET_IN_ENV
    try:
        config = load_config(str(path), environ)
    except ConfigError:
        return None
    assert SECRET_IN_ENV not in repr(config)
    return config


def get(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


# ---- oauth2-proxy ---------------------------------------------------------------------

O2P_BASE = {
    "provider": "oidc",
    "oidc_issuer_url": "https://localhost:9443/oauth2/token",
    "client_id": "app",
    "client_secret": "s",
    "cookie_secret": "0123456789abcdef0123456789abcdef",
    "upstreams": ["http://127.0.0.1:8080/"],
    "http_address": "127.0.0.1:4180",
}
ROUTE = ("routes", 0)
# option -> (the value as the file gives it, where it lands, what it becomes); None: comments only.
O2P_TARGETS: dict[str, tuple[Any, tuple[Any, ...] | None, Any]] = {
    "client_id": ("{v}", (*ROUTE, "oidc", "client_id"), lambda v: v),
    "user_id_claim": ("{v}", (*ROUTE, "oidc", "user_claim"), lambda v: v),
    "oidc_groups_claim": ("{v}", (*ROUTE, "oidc", "groups_claim"), lambda v: v),
    "oidc_email_claim": ("{v}", (*ROUTE, "oidc", "email_claim"), lambda v: v),
    "cookie_path": ("{v}", (*ROUTE, "session", "cookie_path"), lambda v: v),
    "prompt": ("{v}", (*ROUTE, "oidc", "extra_params", "prompt"), lambda v: v),
    "allowed_groups": (["{v}"], (*ROUTE, "authorize", "groups", 0), lambda v: v),
    "allowed_roles": (["{v}"], (*ROUTE, "authorize", "roles", 0), lambda v: v),
    "provider_ca_files": (["{v}"], ("providers", "wso2", "ca_file"), lambda v: v),
    "scope": (["openid", "{v}"], (*ROUTE, "oidc", "scopes", 1), lambda v: v),
    "upstreams": (["{v}"], None, None),
    # Only a valid cookie name is taken; anything else is left in a comment.
    "cookie_name": ("{v}", (*ROUTE, "session", "cookie_name"), lambda v: v),
    "unknown_option": ("{v}", None, None),
    "footer": ("{v}", None, None),
    "approval_prompt": ("{v}", None, None),
    "cookie_samesite": ("{v}", None, None),
    "redirect_url": ("https://app.example.com/oauth2/callback?{v}", None, None),
    # A WSO2 tenant names the provider: the name is cleaned, the URL kept as it is.
    "oidc_issuer_url": ("https://localhost:9443/t/{v}/oauth2/token", None, None),
}


def o2p_file(tmp_path: Path, option: str, value: str) -> Path:
    template, _, _ = O2P_TARGETS[option]
    given = (
        [item.format(v=value) for item in template]
        if isinstance(template, list)
        else (template.format(v=value))
    )
    options = {**O2P_BASE, option: given}
    lines = [
        f"{key} = [{', '.join(toml_string(v) for v in item)}]"
        if isinstance(item, list)
        else f"{key} = {toml_string(item)}"
        for key, item in options.items()
    ]
    path = tmp_path / "oauth2-proxy.cfg"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("option", sorted(O2P_TARGETS))
@pytest.mark.parametrize("vector", sorted(HOSTILE))
def test_oauth2_proxy_value_lands_only_where_meant(tmp_path, option, vector):
    value = HOSTILE[vector]
    _, meant, becomes = O2P_TARGETS[option]
    if option == "cookie_name" and not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        meant = None
    if option == "oidc_issuer_url":
        meant = ("providers", "<only>", "issuer")
    text = import_file("oauth2-proxy", str(o2p_file(tmp_path, option, value)))
    if option == "oidc_issuer_url":
        document = assert_structure(text, None, issuer=True)
        ((name, provider),) = document["providers"].items()
        assert re.fullmatch(r"wso2-[A-Za-z0-9_.-]+|idp|localhost", name)
        assert unescaped(provider.get("issuer") or provider["discovery_url"]).startswith(
            "https://localhost:9443/"
        )
        return
    document = assert_structure(text, meant)
    if meant is not None:
        assert unescaped(get(document, meant)) == becomes(value)
        config = loaded(text, tmp_path)
        if option == "client_id" and config is not None:
            assert config.routes[0].auth.oidc.client_id == value


@pytest.mark.parametrize("vector", sorted(HOSTILE))
def test_oauth2_proxy_hostile_option_name_stays_in_a_comment(tmp_path, vector):
    path = o2p_file(tmp_path, "client_id", "app")
    with path.open("a", encoding="utf-8") as stream:
        stream.write(f"{toml_string(HOSTILE[vector])} = {toml_string(HOSTILE[vector])}\n")
    assert_structure(import_file("oauth2-proxy", str(path)), None)


def test_oauth2_proxy_u2028_no_longer_injects_trusted_proxies(tmp_path):
    """The issue's example: a U+2028 in a value started a new YAML line."""
    value = "app\u2028trusted_proxies: [0.0.0.0/0]"
    text = import_file("oauth2-proxy", str(o2p_file(tmp_path, "client_id", value)))
    document = yaml.safe_load(text)
    assert "trusted_proxies" not in document
    assert document["routes"][0]["oidc"]["client_id"] == value
    config = loaded(text, tmp_path)
    assert config is not None and config.trusted_proxies == ()


@pytest.mark.parametrize(
    "value", ["${APP_SECRET}", "$${APP_SECRET}", "a$${APP_SECRET}$", "$", "${", "$$"]
)
def test_oauth2_proxy_dollar_text_is_never_expanded(tmp_path, value):
    """oauth2-proxy expands nothing: the gateway must read the same characters."""
    text = import_file("oauth2-proxy", str(o2p_file(tmp_path, "client_id", value)))
    config = loaded(text, tmp_path)
    assert config is not None
    assert config.routes[0].auth.oidc.client_id == value


def test_oauth2_proxy_kept_secret_with_dollar_is_literal(tmp_path):
    path = o2p_file(tmp_path, "client_id", "app")
    text = path.read_text().replace('client_secret = "s"', 'client_secret = "p${APP_SECRET}q"')
    path.write_text(text)
    output = import_file("oauth2-proxy", str(path), ImportOptions(keep_secrets=True))
    config = loaded(output, tmp_path)
    assert config is not None and config.routes[0].auth.oidc.client_secret == "p${APP_SECRET}q"


@pytest.mark.parametrize("vector", sorted(REFUSED))
def test_oauth2_proxy_value_the_loader_cannot_hold_is_refused(tmp_path, vector):
    path = o2p_file(tmp_path, "client_id", REFUSED[vector])
    with pytest.raises(ImporterError, match="U\\+E000"):
        import_file("oauth2-proxy", str(path))


# ---- mod_auth_openidc -----------------------------------------------------------------

MOD_BASE = {
    "OIDCProviderMetadataURL": (
        "https://localhost:9443/oauth2/oidcdiscovery/.well-known/openid-configuration"
    ),
    "OIDCClientID": "app",
    "OIDCClientSecret": "s",
    "OIDCRedirectURI": "http://localhost:8002/oauth2/callback",
    "OIDCCryptoPassphrase": "p",
}
MOD_TARGETS: dict[str, tuple[str, tuple[Any, ...] | None]] = {
    "OIDCClientID": ("{v}", (*ROUTE, "oidc", "client_id")),
    "OIDCClaimPrefix": ("{v}", (*ROUTE, "headers", "claim_prefix")),
    "OIDCClaimDelimiter": ("{v}", (*ROUTE, "headers", "list_delimiter")),
    "OIDCAuthNHeader": ("{v}", (*ROUTE, "headers", "remote_user_header")),
    "OIDCCookiePath": ("{v}", (*ROUTE, "session", "cookie_path")),
    "OIDCDefaultLoggedOutURL": ("{v}", (*ROUTE, "oidc", "post_logout_redirect")),
    "OIDCCABundlePath": ("{v}", ("providers", "wso2", "ca_file")),
    "Require": ("claim role:{v}", (*ROUTE, "authorize", "claims", "role")),
    "OIDCUnknownDirective": ("{v}", None),
    "SetEnv": ("{v}", None),
    "ServerAlias": ("{v}", None),
    "OIDCCookie": ("{v}", None),
    "SSLCipherSuite": ("{v}", None),
    "OIDCProviderTokenEndpointAuth": ("{v}", None),
}


def mod_file(tmp_path: Path, directive: str, value: str) -> Path:
    template, _ = MOD_TARGETS[directive]
    lines = [f"{name} {apache_word(item)}" for name, item in MOD_BASE.items()]
    lines.append("<VirtualHost *:8002>")
    lines.append("ServerName app.example.com")
    lines.append("ProxyPass / http://127.0.0.1:8080/")
    line = template.format(v=value)
    if directive == "Require":
        lines.append(
            f"<Location />\nAuthType openid-connect\nRequire claim {apache_word(line[6:])}"
        )
        lines.append("</Location>")
    else:
        lines.append(f"{directive} {apache_word(line)}")
        lines.append("<Location />\nAuthType openid-connect\nRequire valid-user\n</Location>")
    lines.append("</VirtualHost>")
    path = tmp_path / "httpd-oidc.conf"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("directive", sorted(MOD_TARGETS))
@pytest.mark.parametrize("vector", sorted(HOSTILE))
def test_mod_auth_openidc_value_lands_only_where_meant(tmp_path, directive, vector):
    value = HOSTILE[vector]
    _, meant = MOD_TARGETS[directive]
    if directive == "OIDCCookie" and re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        meant = (*ROUTE, "session", "cookie_name")  # a valid cookie name is taken
    path = mod_file(tmp_path, directive, value)
    if "\0" in value:  # Apache reads text: a NUL byte makes the whole file refused
        with pytest.raises(ImporterError, match="not a text file"):
            import_file("mod_auth_openidc", str(path))
        return
    text = import_file("mod_auth_openidc", str(path))
    if "\n" in value:
        # LF ends an Apache line: what follows is another (unknown) directive, so the
        # value is cut there and the rest is only ever mentioned in a comment.
        document = assert_structure(text, None)
        if meant is not None:
            assert unescaped(get(document, meant)) == value.split("\n")[0].rstrip("\r")
        return
    document = assert_structure(text, meant)
    if meant is not None:
        if directive == "Require" and value.startswith("~"):
            # A literal claim value starting with "~" would read as a regular expression.
            assert unescaped(get(document, meant)) == f"~ (?:{re.escape(value)})"
        else:
            assert unescaped(get(document, meant)) == value
        config = loaded(text, tmp_path)
        if directive == "OIDCClientID" and config is not None:
            assert config.routes[0].auth.oidc.client_id == value


@pytest.mark.parametrize("vector", ["env-reference", "env-escape", "colon", "line-separator-u2028"])
def test_mod_auth_openidc_hostile_claim_name(tmp_path, vector):
    """A claim name becomes a YAML key: written by the emitter, or refused when it holds ${."""
    path = mod_file(tmp_path, "Require", "x")
    text = path.read_text().replace('"role:x"', apache_word(HOSTILE[vector] + ":x"))
    path.write_text(text)
    try:
        output = import_file("mod_auth_openidc", str(path))
    except ImporterError as error:
        assert "${" in HOSTILE[vector] and "cannot hold" in str(error)
        return
    name, _, value = f"{HOSTILE[vector]}:x".partition(":")  # name:value, at the first ':'
    document = yaml.safe_load(output)
    assert document["routes"][0]["authorize"]["claims"] == {name: value}


def test_mod_auth_openidc_apache_reference_stays_a_reference_for_secrets_only(tmp_path):
    """Apache expanded ${X}: a secret given so stays a ${X}; any other value is literal."""
    # (Not OIDCClaimPrefix: braces are never in a header name, so that is refused.)
    path = mod_file(tmp_path, "OIDCDefaultLoggedOutURL", "/p${APP_SECRET}")
    text = path.read_text().replace('OIDCClientSecret "s"', 'OIDCClientSecret "${MY_SECRET}"')
    path.write_text(text)
    output = import_file("mod_auth_openidc", str(path))
    config = loaded(output, tmp_path)
    assert config is not None
    assert config.routes[0].auth.oidc.client_secret != "${MY_SECRET}"  # expanded, as meant
    assert "${MY_SECRET}" in output
    assert config.routes[0].auth.oidc.post_logout_redirect == "/p${APP_SECRET}"


# ---- Include --------------------------------------------------------------------------


def mod_with_include(tmp_path: Path, include_line: str, name: str = "httpd.conf") -> Path:
    lines = [f"{key} {apache_word(value)}" for key, value in MOD_BASE.items()]
    lines += [include_line, "ProxyPass / http://127.0.0.1:8080/"]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


NETRC_PASSWORD = "Hunter2-netrc-PASSWORD-7f3a"


@pytest.mark.parametrize(
    "include", ["Include secrets/*", "IncludeOptional secrets/*", "Include secrets/"]
)
def test_included_netrc_never_reaches_the_output(tmp_path, include):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "netrc").write_text(
        f"machine wso2.example.com\n  login admin\n  password {NETRC_PASSWORD}\n"
        f"machine other login bob password {NETRC_PASSWORD}\n"
        f"<Proxy *>\nSecret {NETRC_PASSWORD}\n</Proxy>\n"
    )
    (secrets / "oidc.conf").write_text(f'OIDCScope "openid email"\nFoo {NETRC_PASSWORD}\n')
    text = import_file("mod_auth_openidc", str(mod_with_include(tmp_path, include)))
    assert NETRC_PASSWORD not in text
    assert "Hunter2" not in text and "admin" not in text.replace("administrator", "")
    assert yaml.safe_load(text)["routes"][0]["oidc"]["scopes"] == ["openid", "email"]
    assert "6 lines of the included file" in text and "1 line of the included file" in text


def test_included_secret_directives_become_references(tmp_path):
    (tmp_path / "secret.conf").write_text(
        f"OIDCClientSecret {NETRC_PASSWORD}\nOIDCCryptoPassphrase {NETRC_PASSWORD}\n"
    )
    text = import_file("mod_auth_openidc", str(mod_with_include(tmp_path, "Include secret.conf")))
    assert NETRC_PASSWORD not in text
    assert yaml.safe_load(text)["routes"][0]["oidc"]["client_secret"].startswith("${")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.conf": "Include a.conf\n"}, "Include cycle"),
        ({"a.conf": "Include b.conf\n", "b.conf": "Include a.conf\n"}, "Include cycle"),
        ({"a.conf": "Include httpd.conf\n"}, "Include cycle"),
        ({"a.conf": "Include ./sub/../a.conf\n", "sub/x": ""}, "Include cycle"),
    ],
    ids=["self", "two-files", "back-to-main", "via-dot-dot"],
)
def test_include_cycles_are_refused(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    with pytest.raises(ImporterError, match=message):
        import_file("mod_auth_openidc", str(mod_with_include(tmp_path, "Include a.conf")))


def test_include_symlink_cycle_is_refused(tmp_path):
    (tmp_path / "real.conf").write_text("Include link.conf\n")
    os.symlink(tmp_path / "real.conf", tmp_path / "link.conf")
    with pytest.raises(ImporterError, match="Include cycle"):
        import_file("mod_auth_openidc", str(mod_with_include(tmp_path, "Include real.conf")))


def chain(tmp_path: Path, depth: int) -> Path:
    for level in range(depth):
        nxt = f"Include d{level + 1}.conf\n" if level + 1 < depth else "OIDCScope openid\n"
        (tmp_path / f"d{level}.conf").write_text(nxt)
    return mod_with_include(tmp_path, "Include d0.conf")


def test_include_depth_up_to_the_limit_is_followed(tmp_path):
    text = import_file("mod_auth_openidc", str(chain(tmp_path, MAX_INCLUDE_DEPTH)))
    assert "scopes: [openid]" in text


@pytest.mark.parametrize("depth", [MAX_INCLUDE_DEPTH + 1, 200])
def test_include_depth_bomb_is_refused(tmp_path, depth):
    with pytest.raises(ImporterError, match=f"nested more than {MAX_INCLUDE_DEPTH} files deep"):
        import_file("mod_auth_openidc", str(chain(tmp_path, depth)))


@pytest.mark.parametrize(
    "include", ["Include many/*.conf", "IncludeOptional many/", "Include many"]
)
def test_include_glob_of_1000_files_is_refused(tmp_path, include):
    many = tmp_path / "many"
    many.mkdir()
    for number in range(1000):
        (many / f"{number:04}.conf").write_text("OIDCScope openid\n")
    with pytest.raises(ImporterError, match=f"more than {MAX_INCLUDED_FILES}"):
        import_file("mod_auth_openidc", str(mod_with_include(tmp_path, include)))


def test_include_fan_out_counts_every_file(tmp_path):
    """8 files that each include the same 8: 64 reads in all, plus the 8 -> over the limit."""
    (tmp_path / "leaf").mkdir()
    for number in range(8):
        (tmp_path / "leaf" / f"{number}.conf").write_text("OIDCScope openid\n")
        (tmp_path / f"mid{number}.conf").write_text("Include leaf/*.conf\n")
    with pytest.raises(ImporterError, match=f"more than {MAX_INCLUDED_FILES}"):
        import_file("mod_auth_openidc", str(mod_with_include(tmp_path, "Include mid*.conf")))


def test_include_glob_within_the_limit_is_followed_in_order(tmp_path):
    (tmp_path / "conf.d").mkdir()
    for number in range(MAX_INCLUDED_FILES):
        scope = f'OIDCScope "openid s{number}"\n'
        (tmp_path / "conf.d" / f"{number:03}.conf").write_text(scope)
    (tmp_path / "conf.d" / ".hidden.conf").write_text("OIDCScope hidden\n")
    text = import_file("mod_auth_openidc", str(mod_with_include(tmp_path, "Include conf.d/*")))
    last = f"s{MAX_INCLUDED_FILES - 1}"
    assert yaml.safe_load(text)["routes"][0]["oidc"]["scopes"] == ["openid", last]


def test_missing_include_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ImporterError, match=r"httpd.conf:6: Include .*nothere.conf.*no such file"):
        import_file("mod_auth_openidc", str(mod_with_include(tmp_path, "Include nothere.conf")))
    with pytest.raises(ImporterError, match=r"no\*such.*no such file"):
        import_file("mod_auth_openidc", str(mod_with_include(tmp_path, "Include no*such")))


def test_missing_include_optional_is_a_note(tmp_path):
    conf = mod_with_include(tmp_path, "IncludeOptional nothere/*.conf")
    text = import_file("mod_auth_openidc", str(conf))
    assert "# not imported: IncludeOptional nothere/*.conf (no file matches it here" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"OIDCScope openid\n" + b"#" * MAX_FILE_BYTES, "larger than 1 MiB"),
        (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), "not a text file"),
        (b"OIDCScope op\xe9nid\n", r"not UTF-8 text \(line 1: byte 0xe9\)"),
        (b"OIDCScope openid\n\xff\xfe", r"not UTF-8 text \(line 2: byte 0xff\)"),
    ],
    ids=["oversized", "binary", "latin-1", "utf-16-bom"],
)
@pytest.mark.parametrize("where", ["main", "included"])
def test_bad_files_are_refused_by_name(tmp_path, content, message, where):
    if where == "main":
        path = tmp_path / "httpd.conf"
        path.write_bytes(content)
    else:
        (tmp_path / "bad.conf").write_bytes(content)
        path = mod_with_include(tmp_path, "Include bad.conf")
    expected = "httpd.conf" if where == "main" else "bad.conf"
    with pytest.raises(ImporterError, match=f"{expected}.* {message}"):
        import_file("mod_auth_openidc", str(path))
    with pytest.raises(ImporterError, match=message):
        import_file(
            "oauth2-proxy", str(tmp_path / ("httpd.conf" if where == "main" else "bad.conf"))
        )


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo"])
def test_include_of_a_device_or_pipe_is_refused_without_blocking(tmp_path, special):
    if special == "fifo":
        os.mkfifo(tmp_path / "fifo")
        special = str(tmp_path / "fifo")
    with pytest.raises(ImporterError, match="not a regular file"):
        import_file("mod_auth_openidc", str(mod_with_include(tmp_path, f"Include {special}")))


@pytest.mark.parametrize("vector", ["lf", "line-separator-u2028", "nel-u0085", "cr", "comment"])
def test_hostile_included_file_names_are_escaped(tmp_path, vector):
    """A file name is input too: it appears in notes, escaped by the emitter."""
    name = HOSTILE[vector].replace("/", "_")[:200] + ".conf"
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / name).write_text("Unknown directive\nOIDCScope openid\n")
    text = import_file("mod_auth_openidc", str(mod_with_include(tmp_path, "Include conf.d/*")))
    assert_structure(text, None)
    assert "1 line of the included file" in text


# ---- bounds on parsing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "content", "message"),
    [
        ("mod_auth_openidc", "OIDCClientID a\n" + "<IfModule x>\n" * 5000, "nested more than"),
        ("mod_auth_openidc", "OIDCClientID a\n" + "A x\n" * 120_000, "directives"),
        ("mod_auth_openidc", "OIDCClientID a\n" + "x \\\n" * 200_000, "no virtual host"),
        (
            "mod_auth_openidc",
            "OIDCClientID a\n" + "<Location /a>\nRequire valid-user\n</Location>\n" * 1000,
            "more than 500 <Location> sections",
        ),
        (
            "mod_auth_openidc",
            "OIDCClientID a\n"
            + "".join(
                f"<VirtualHost *:{n}>\nProxyPass / http://a/\n</VirtualHost>\n" for n in range(300)
            ),
            "more than 200 virtual hosts",
        ),
        ("oauth2-proxy", "a = " + "[" * 50_000 + "]" * 50_000 + "\n", "nested"),
        ("oauth2-proxy", "a = " + "[" * 50_000 + "\n", "nested"),
        ("oauth2-proxy", "".join(f"k{n} = 1\n" for n in range(60_000)), "options"),
        ("oauth2-proxy", 'client_id = "a"\nupstreams = [\n' + '"x",\n' * 150_000, "provider"),
    ],
    ids=[
        "apache-section-depth",
        "apache-directive-count",
        "apache-continuation-lines",
        "apache-location-count",
        "apache-virtual-host-count",
        "toml-array-depth",
        "toml-unclosed-arrays",
        "toml-option-count",
        "toml-unclosed-long-list",
    ],
)
def test_parsing_is_bounded_and_fails_cleanly(tmp_path, kind, content, message):
    path = tmp_path / "input.conf"
    path.write_text(content)
    with pytest.raises(ImporterError, match=message):
        import_file(kind, str(path))


@pytest.mark.parametrize("vector", ["lf", "line-separator-u2028", "nul"])
def test_command_reports_bad_input_without_a_traceback(tmp_path, capsys, vector):
    (tmp_path / "a.conf").write_text("Include a.conf\n")
    path = mod_with_include(tmp_path, "Include a.conf")
    assert main(["import", "mod_auth_openidc", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Include cycle" in err and "Traceback" not in err
    refused = o2p_file(tmp_path, "client_id", REFUSED["loader-reserved-ue000"] + HOSTILE[vector])
    assert main(["import", "oauth2-proxy", str(refused)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "cannot be imported" in err
    assert "\u2028" not in err and "\0" not in err
