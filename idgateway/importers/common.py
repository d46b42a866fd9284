"""What the two importers share.

The report, route and variable names, durations, the WSO2 provider block, and
the final check of the YAML they write.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import tempfile
from typing import Any

import attrs

from idgateway.config import values as value_syntax
from idgateway.config.schema import ConfigError
from idgateway.importers._yaml import (
    Block,
    ConfigText,
    UnrepresentableValue,
    quoted,
    reference,
    render,
    shown,
)

KINDS = ("oauth2-proxy", "mod_auth_openidc")


class ImporterError(Exception):
    """The input cannot be imported; the message says why and what is expected."""


@attrs.frozen
class ImportOptions:
    # Overrides the listener address (the configuration's own is kept in a comment).
    listen: str | None = None
    # Copy secrets into the output instead of ${NAME} references.
    keep_secrets: bool = False


@attrs.define
class Report:
    """What an importer found besides the YAML: variables to set, lines not imported."""

    kind: str
    source: str
    env: dict[str, str] = attrs.field(factory=dict)  # NAME -> what to set it to
    not_imported: list[str] = attrs.field(factory=list)
    # Directives read that need nothing: the gateway does the same by default.
    same: list[str] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)  # shown in the header
    # Values for ${NAME} when the result is checked here (session keys must be keys).
    sample_env: dict[str, str] = attrs.field(factory=dict)

    def skip(self, directive: str, why: str) -> None:
        self.not_imported.append(f"not imported: {directive} ({why})")

    def secret(self, name: str, description: str, *, key: bool = False) -> ConfigText:
        """A ${NAME} reference for a secret the user must provide."""
        self.env[name] = description
        self.sample_env[name] = (
            base64.b64encode(os.urandom(32)).decode() if key else "placeholder-secret"
        )
        return reference(name)


# ---- shared helpers ---------------------------------------------------------------------

_SECRET_WORDS = re.compile(r"secret|password|passphrase|passwd|token$|_key$|sharedkeys", re.I)
_NOT_SECRET = re.compile(r"_file$|_files$|path$|pass_|_url$|claim", re.I)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_WORDS.search(name)) and not _NOT_SECRET.search(name)


def hide_url_password(url: str) -> str:
    """redis://:s3cret@host -> redis://:<hidden>@host."""
    return re.sub(r"(?<=://)([^/@:]*):([^/@]+)@", r"\1:<hidden>@", url)


def env_prefix(name: str) -> str:
    prefix = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper()
    return prefix if prefix and not prefix[0].isdigit() else f"APP_{prefix}"


_MAX_NAME = 100  # a route or provider name is a YAML key too: keep it well below 1024


def route_name(host: str | None, fallback: str) -> str:
    if not host:
        return fallback
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", host.strip("[]")).strip("-.")
    return name[:_MAX_NAME].rstrip("-.") or fallback


def duration_text(seconds: float) -> str:
    return value_syntax.format_duration(seconds)


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds for a Go duration ("168h", "1h30m", "90s", "0"); ValueError otherwise."""
    value = text.strip()
    if value in ("0", ""):
        return 0.0
    if not re.fullmatch(rf"(?:{_GO_PART.pattern})+", value):
        raise ValueError(f"{text!r} is not a duration like 168h or 1h30m")
    return sum(float(number) * _GO_UNITS[unit] for number, unit in _GO_PART.findall(value))


def session_key_from(secret: str) -> str | None:
    """A gateway session key (base64 of 32 bytes) from a 32-byte secret, else None.

    Like oauth2-proxy: base64 (URL-safe or not, padded or not) that decodes to
    32 bytes is taken as is; 32 raw characters are the key's bytes.
    """
    text = secret.strip()
    try:
        padded = text + "=" * (-len(text) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except ValueError:
        raw = b""
    if len(raw) == 32:
        return text
    if len(text.encode()) == 32:
        return base64.b64encode(text.encode()).decode()
    return None


@attrs.frozen
class WSO2URL:
    """What a provider URL says about WSO2: tenant and the issuer to expect."""

    base: str  # https://host:9443[/t/tenant]
    tenant: str  # carbon.super for none
    kind: str  # "issuer" (/oauth2/token), "discovery", "discovery-base", "base"

    @property
    def issuer(self) -> str:
        return f"{self.base}/oauth2/token"

    @property
    def provider_name(self) -> str:
        # A name (and YAML key) of letters, digits, '_', '.' and '-', whatever the URL holds.
        return "wso2" if self.tenant == "carbon.super" else f"wso2-{route_name(self.tenant, 't')}"


_WSO2 = re.compile(
    r"\A(?P<base>https?://[^/]+(?:/t/(?P<tenant>[^/]+))?)"
    r"(?P<rest>/oauth2/token/?|/oauth2/token/\.well-known/openid-configuration"
    r"|/oauth2/oidcdiscovery/?|/oauth2/oidcdiscovery/\.well-known/openid-configuration|/?)\Z"
)


def wso2_url(url: str) -> WSO2URL | None:
    match = _WSO2.match(url.strip())
    if match is None:
        return None
    rest = match.group("rest").rstrip("/")
    kind = {
        "/oauth2/token": "issuer",
        "/oauth2/oidcdiscovery": "discovery-base",
        "": "base",
    }.get(rest, "discovery")
    if kind == "base" and not re.search(r":9443\Z|/t/", match.group("base")):
        return None  # a bare host says nothing about WSO2
    return WSO2URL(match.group("base"), match.group("tenant") or "carbon.super", kind)


def provider_block(url: str, *, discovery: bool, report: Report, source: str) -> tuple[str, Block]:
    """The providers entry for an issuer (oauth2-proxy) or discovery URL (Apache).

    ``source`` names the directive the URL came from, for the trailing comment.
    """
    provider = Block()
    wso2 = wso2_url(url)
    name = wso2.provider_name if wso2 else route_name(_host_of(url), "idp")
    if wso2 is None:
        provider.add("discovery_url" if discovery else "issuer", url, source)
        return name, provider
    if wso2.kind == "issuer":
        provider.note(
            f"WSO2's issuer is its token endpoint URL, {wso2.issuer}, as given: ID tokens "
            "must carry exactly this iss."
        )
        provider.add("discovery_url" if discovery else "issuer", url.rstrip("/"), source)
    elif wso2.kind == "discovery":
        provider.note(
            "WSO2's discovery document; ID tokens are then checked for "
            f"iss = {wso2.issuer} (WSO2's issuer is its token endpoint URL)."
        )
        provider.add("discovery_url", url, source)
    else:
        fixed = f"{wso2.base}/oauth2/oidcdiscovery/.well-known/openid-configuration"
        provider.note(
            f"{url} is not WSO2's issuer, which is its token endpoint URL ({wso2.issuer}); "
            f"the discovery document is at {fixed}, used here."
        )
        report.warnings.append(
            f"The provider URL {url} is not WSO2's issuer ({wso2.issuer}); "
            "the import uses WSO2's discovery URL instead."
        )
        provider.add("discovery_url", fixed, f"from {source}")
    if wso2.tenant != "carbon.super":
        provider.note(f"Tenant {wso2.tenant}: its own issuer, keys and users.")
    return name, provider


def _host_of(url: str) -> str | None:
    match = re.match(r"\A[a-z][a-z0-9+.-]*://(\[[^\]]+\]|[^/:?#]+)", url.strip(), re.I)
    return match.group(1).lower() if match else None


def split_url(url: str) -> tuple[str, str | None, int | None, str]:
    """(scheme, host, port, path) of an absolute URL; scheme "" for a bare path."""
    match = re.match(
        r"\A(?:(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[^\]]+\]|[^/:?#]*)(?::(?P<port>\d+))?)?"
        r"(?P<path>[^?#]*)",
        url.strip(),
        re.I,
    )
    if match is None:  # pragma: no cover - the pattern matches any string
        return "", None, None, url
    port = match.group("port")
    return (
        (match.group("scheme") or "").lower(),
        (match.group("host") or "").lower() or None,
        int(port) if port else None,
        match.group("path") or "",
    )


def tls_self_signed_hint(provider: Block, url: str) -> None:
    """WSO2's shipped certificate is self-signed: say how to trust it (verification on)."""
    wso2 = wso2_url(url)
    if wso2 is None or provider.get("ca_file") or provider.get("insecure_skip_verify"):
        return
    host = _host_of(url) or "localhost"
    provider.note(
        "WSO2 ships a self-signed certificate: unless yours comes from a CA the system "
        "trusts, export it (keytool -export -alias wso2carbon -rfc -keystore "
        "wso2carbon.jks) and trust it here; the URL's host name "
        f"({host}) must be on the certificate."
    )
    provider.note("ca_file: /etc/idgateway/wso2carbon.pem")


# ---- the document ---------------------------------------------------------------------


def finish(
    top: Block,
    report: Report,
    options: ImportOptions,
    next_steps: list[str],
) -> str:
    """Header, body, not-imported section; checked with load_config on the way."""
    try:
        body_only = render(top, [], [])
    except UnrepresentableValue as error:
        raise ImporterError(f"{report.source}: {error}") from None
    problems = check(body_only, report.sample_env)
    header = [
        f"gateway.yaml imported from the {report.kind} configuration {report.source}",
        f"by `idgateway import {report.kind}`. Read every comment before using it.",
        "",
    ]
    if report.warnings:
        header.append("Look at these first:")
        header.extend(f"  * {warning}" for warning in report.warnings)
        header.append("")
    steps: list[list[str]] = []  # each step: its first line, then its indented lines
    if report.env:
        lines = ["Set these environment variables for the gateway (never put them in the file):"]
        width = max(len(name) for name in report.env)
        lines.extend(f"    {name.ljust(width)}  {what}" for name, what in report.env.items())
        steps.append(lines)
    elif options.keep_secrets:
        steps.append(
            ["This file holds secrets (--keep-secrets): keep it readable by the gateway only."]
        )
    steps.extend([step] for step in next_steps)
    steps.append(
        [
            "Check the file (exit 0 means it will start): idgateway check gateway.yaml "
            "(or: twistd idgateway --config gateway.yaml --check)"
        ]
    )
    header.append("Next steps:")
    for number, (first, *rest) in enumerate(steps, 1):
        header.append(f"  {number}. {first}")
        header.extend(f"     {line}" for line in rest)
    if problems:
        header.append("")
        header.append("`idgateway check` reports on this file as it stands (fix these by hand):")
        header.extend(f"  * {problem}" for problem in problems)
    footer: list[str] = []
    if report.same:
        footer.append(
            f"Read from the {report.kind} configuration, and nothing to set: the gateway "
            "behaves so by default:"
        )
        footer.extend(f"  {line}" for line in report.same)
        footer.append("")
    if report.not_imported:
        footer.append(
            f"Directives of the {report.kind} configuration that have no equivalent here, and why:"
        )
        footer.extend(report.not_imported)
    return render(top, header, footer)


def check(text: str, environ: dict[str, str]) -> list[str]:
    """What load_config objects to in ``text`` (paths shown relative to gateway.yaml)."""
    from idgateway.config.load import load_config

    with tempfile.TemporaryDirectory(prefix="idgateway-import-") as directory:
        path = os.path.join(directory, "gateway.yaml")
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        # Stand-ins only: the check never sees this machine's environment (or its secrets).
        environment = {**environ}
        for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
            environment.setdefault(name, "placeholder")
        try:
            load_config(path, environment)
        except ConfigError as error:
            return [
                str(problem).replace(path, "gateway.yaml").replace(directory + os.sep, "")
                for problem in error.problems
            ]
    return []


MAX_FILE_BYTES = 1 << 20  # 1 MiB: far beyond any configuration; a bound on what is parsed


def read_source(path: str) -> str:
    """The text of a configuration file: UTF-8 (a BOM allowed), at most MAX_FILE_BYTES.

    Anything else is an ImporterError naming the file: a directory, a device or
    pipe (reading one could block or never end), a binary file, a file too large,
    bytes that are not UTF-8 (read as Latin-1 they would change the values quietly).
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ImporterError(f"{shown(path)} is a directory, not a configuration file")
        if not stat.S_ISREG(mode):
            raise ImporterError(f"{shown(path)} is not a regular file")
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ImporterError(f"cannot read {shown(path)}: {error.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ImporterError(
            f"{shown(path)} is larger than {MAX_FILE_BYTES // (1 << 20)} MiB: not a "
            "configuration file the importer reads"
        )
    if b"\0" in data:
        raise ImporterError(f"{shown(path)} is not a text file (it holds NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ImporterError(
            f"{shown(path)} is not UTF-8 text (line {line}: byte 0x{data[error.start]:02x}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None


def describe(value: Any) -> str:
    """A value as the source file would write it (for comments), on one line.

    Strings (also inside lists) are double-quoted by PyYAML's emitter: every line
    break and control character in them is escaped.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | list | tuple):
        return quoted(value)
    return shown(value)
