"""Header and log hygiene against the real gateway (issue 11 section 6, issue 18).

A user whose directory entry carries the list delimiter, CR/LF and control
characters logs in through the WSO2-shaped provider; the echo back end shows
that every identity header arrived as one printable-ASCII value that decodes
back to the claim, and that nothing from a claim added a header or a list
entry. Clients' URL-override headers never arrive. Hostile targets and
headers leave exactly one escaped access line in the gateway's log, whichever
way the log is written (twistd's log file, stdout, workers' relay, JSON).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.backends import BackendProcess
from tests.http_helpers import header_values, send_raw
from tests.login_env import Client, registered_client, session_key
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary

SECRET = "hygiene-client-secret"

MALLORY_GROUPS = [
    "engineering",
    "ops,admin",
    "ops;admin",
    "x\r\nX-Forwarded-User: root",
    "y\nX-Forwarded-Groups: admins",
    " admins",
    "admins ",
    "caf\u00e9",
    "nel\u0085nel",
    "ls\u2028ls",
    "esc\u001b[2J",
    "nul\u0000x",
    "del\u007fx",
    "tab\tx",
    "50%",
    "%2C",
]
MALLORY = {
    "username": "mallory",
    "password": "mallory123",
    "email": "mallory@example.com",
    "given_name": "Mal\r\nX-Injected: 1",
    "family_name": "Lory, Jr.",
    "groups": MALLORY_GROUPS,
    "roles": ["everyone"],
}
ALICE = {
    "username": "alice",
    "password": "alice123",
    "email": "alice@example.com",
    "groups": ["engineering"],
    "roles": ["admin"],
}


def printable(value: str) -> bool:
    return all(" " <= char <= "~" for char in value)


def decoded_items(value: str, delimiter: str) -> list[str]:
    """What an upstream that splits the list and percent-decodes each item reads."""
    return [unquote(item) for item in value.split(delimiter)]


@pytest.fixture(scope="module")
def logged_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if node_binary() is None:
        pytest.skip("node is not installed")
    tmp = tmp_path_factory.mktemp("hygiene")
    port = free_port()
    provider_config = {
        "tenants": {
            "carbon.super": {
                "users": [ALICE, MALLORY],
                "clients": [
                    registered_client(
                        client, SECRET, f"{client}.localhost", port, "client_secret_basic"
                    )
                    for client in ("app1", "app3")
                ],
            }
        }
    }
    with (
        ProviderProcess(tmp / "op", provider_config) as op,
        BackendProcess(name="echo") as backend,
    ):
        oidc = (
            "    oidc: {{provider: wso2, client_id: {client}, client_secret: " + SECRET + ", "
            "scopes: [openid, email, profile, groups], user_claim: username}}\n"
            "    session: {{keys: [" + session_key() + "]}}\n"
        )
        config = tmp / "gateway.yaml"
        config.write_text(
            f"""
listeners:
  - address: 127.0.0.1:{port}
providers:
  wso2:
    discovery_url: {op.discovery_url()}
    ca_file: {op.ca_file}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend.port}
{oidc.format(client="app1")}
    headers: oauth2-proxy
    authorize: {{groups: [engineering]}}
    paths:
      - prefix: /admin/
        upstream: http://127.0.0.1:{backend.port}
        authorize: {{groups: [admins]}}
  - name: app3
    hosts: [app3.localhost]
    upstream: http://127.0.0.1:{backend.port}
{oidc.format(client="app3")}
    headers: {{preset: mod_auth_openidc, list_delimiter: ";"}}
"""
        )
        gateway = GatewayProcess(config, tmp / "gateway.log").start([port])
        try:
            deadline = time.monotonic() + 20
            while Client(port, "app1.localhost").get("/")[0] != 302:
                assert time.monotonic() < deadline, gateway.output()
                time.sleep(0.2)
            clients = {}
            for app in ("app1", "app3"):
                client = Client(port, f"{app}.localhost")
                status, _ = client.login(op, "/echo", "mallory", "mallory123")
                assert status == 200, gateway.output()
                clients[app] = client
            yield {"port": port, "clients": clients, "gateway": gateway}
        finally:
            gateway.stop()


def echo_for(client: Client, path: str = "/echo", **headers: str) -> dict[str, Any]:
    status, _, body = client.get(path, {"Accept": "application/json", **headers})
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


IDENTITY_CASES = [
    pytest.param("app1", "x-forwarded-groups", ",", MALLORY_GROUPS, id="oauth2-proxy-groups"),
    pytest.param("app1", "x-auth-request-groups", ",", None, id="oauth2-proxy-no-auth-request"),
    pytest.param("app3", "oidc_claim_groups", ";", MALLORY_GROUPS, id="mod_auth_openidc-groups"),
    pytest.param(
        "app3", "oidc_claim_given_name", ";", [MALLORY["given_name"]], id="mod_auth_openidc-crlf"
    ),
    pytest.param(
        "app3", "oidc_claim_family_name", ";", [MALLORY["family_name"]], id="comma-not-delimiter"
    ),
    pytest.param("app3", "x-remote-user", ";", ["mallory"], id="remote-user"),
]


@pytest.mark.parametrize("app, header, delimiter, expected", IDENTITY_CASES)
def test_hostile_claims_arrive_as_one_printable_encoded_value(
    logged_in: dict[str, Any], app: str, header: str, delimiter: str, expected: list[str] | None
) -> None:
    echo = echo_for(logged_in["clients"][app])
    values = header_values(echo, header)
    if expected is None:
        assert values == []
        return
    assert len(values) == 1, values
    [value] = values
    assert printable(value), value
    assert value == value.strip(), "a parser would trim the edges"
    assert all(item == item.strip() for item in value.split(delimiter))
    assert decoded_items(value, delimiter) == expected


def test_nothing_from_a_claim_adds_a_header_or_a_list_entry(logged_in: dict[str, Any]) -> None:
    for app, delimiter in (("app1", ","), ("app3", ";")):
        echo = echo_for(logged_in["clients"][app])
        names = [name.lower() for name, _ in echo["headers"]]
        assert "x-injected" not in names
        assert len(names) == len(set(names)), names
        assert all(printable(name) and printable(value) for name, value in echo["headers"])
        for name, value in echo["headers"]:
            items = [item.strip() for item in value.split(delimiter)]
            assert "admin" not in items and "admins" not in items and "root" not in items, name
    app1 = echo_for(logged_in["clients"]["app1"])
    assert header_values(app1, "x-forwarded-user") == ["mallory"]


def test_the_gateways_own_group_check_is_not_fooled(logged_in: dict[str, Any]) -> None:
    status, _, _ = logged_in["clients"]["app1"].get("/admin/x", {"Accept": "application/json"})
    assert status == 403


def test_forged_identity_headers_with_hostile_values_are_replaced(
    logged_in: dict[str, Any],
) -> None:
    echo = echo_for(
        logged_in["clients"]["app1"],
        **{"X-Forwarded-Groups": "admins", "X_Forwarded_Groups": "admins", "X-Original-URL": "/x"},
    )
    groups = header_values(echo, "x-forwarded-groups")
    assert len(groups) == 1 and "admins" not in groups[0].split(",")


# ---- URL overrides and X-Forwarded-Prefix, on a route without login -------------------------

OVERRIDES = [
    pytest.param("X-Original-URL", id="x-original-url"),
    pytest.param("X-Rewrite-URL", id="x-rewrite-url"),
    pytest.param("x-original-url", id="lower-case"),
    pytest.param("X_Original_URL", id="underscores"),
    pytest.param("X_REWRITE_URL", id="underscores-upper"),
    pytest.param("X-Forwarded-Prefix", id="x-forwarded-prefix"),
    pytest.param("X_Forwarded_Prefix", id="x-forwarded-prefix-underscores"),
]


def plain_config(port: int, backend: int, trusted: bool) -> str:
    return f"""
listeners:
  - address: 127.0.0.1:{port}
{"trusted_proxies: [127.0.0.1/32]" if trusted else ""}
routes:
  - name: plain
    hosts: [plain.localhost]
    upstream: http://127.0.0.1:{backend}
"""


@pytest.fixture(scope="module", params=[False, True], ids=["untrusted-peer", "trusted-proxy"])
def plain_route(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, bool]]:
    tmp = tmp_path_factory.mktemp("plain")
    with BackendProcess(name="echo") as backend:
        port = free_port()
        config = tmp / "gateway.yaml"
        config.write_text(plain_config(port, backend.port, request.param))
        gateway = GatewayProcess(config, tmp / "gateway.log").start([port])
        try:
            yield port, request.param
        finally:
            gateway.stop()


@pytest.mark.parametrize("name", OVERRIDES)
@pytest.mark.parametrize("value", ["/admin", "/admin?x=1", "http://evil.example/admin"])
def test_forged_url_overrides_never_arrive(
    plain_route: tuple[int, bool], name: str, value: str
) -> None:
    port, trusted = plain_route
    echo = echo_for(Client(port, "plain.localhost"), "/public", **{name: value})
    names = {header.lower().replace("_", "-") for header, _ in echo["headers"]}
    assert "x-original-url" not in names and "x-rewrite-url" not in names
    if "prefix" in name.lower() and trusted:
        # Trusted proxies' X-Forwarded-* are believed; once, as it arrived.
        assert header_values(echo, "x-forwarded-prefix") == [value]
    else:
        assert "x-forwarded-prefix" not in names
        assert value not in json.dumps(echo["headers"])
    assert echo["path"] == "/public"


# ---- access lines ------------------------------------------------------------------------------

LOG_MODES = ["logfile", "stdout", "workers-logfile", "workers-stdout", "json-logfile"]


@pytest.fixture(scope="module", params=LOG_MODES)
def logging_gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, GatewayProcess, str]]:
    mode = request.param
    tmp = tmp_path_factory.mktemp(mode)
    with BackendProcess(name="echo") as backend:
        port = free_port()
        text = plain_config(port, backend.port, trusted=False)
        if mode.startswith("workers"):
            text = "workers: 2\n" + text
        if mode.startswith("json"):
            text = "logging: {format: json}\n" + text
        config = tmp / "gateway.yaml"
        config.write_text(text)
        gateway = GatewayProcess(
            config, tmp / "gateway.log", log_to_stdout=mode.endswith("stdout")
        ).start([port])
        try:
            yield port, gateway, mode
        finally:
            gateway.stop()


def raw_request(port: int, target: bytes, headers: bytes) -> int:
    """Send one request as raw bytes; its status, or 0 when the connection just closed."""
    answer = send_raw(
        port,
        b"GET " + target + b" HTTP/1.1\r\nHost: plain.localhost\r\n"
        b"Connection: close\r\n" + headers + b"\r\n",
    )
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(match[1]) if match else 0


FORGED = b"2026-01-01T00:00:00+0000 [idgateway.access#info] GET /FORGED 200 1B route=plain"
NEL, LS = "\u0085".encode(), "\u2028".encode()
ESC = b"\x1b]0;pwned\x07\x1b[2J"

# (target, extra request headers, what the text line shows for the target; None:
# twisted.web refuses the request with a 400, as it does bytes above 0xB0 in a
# target, controls in a target, and a bare CR or a NUL in a header; the bytes
# it lets through, DEL and 0x80-0xB0, the route refuses with a 400 that is
# logged)
LOG_VECTORS = [
    pytest.param(
        b"/a\x85" + FORGED.replace(b" ", b"+"),
        b"",
        r"/a\x85" + FORGED.replace(b" ", b"+").decode(),
        id="target-0x85",
    ),
    pytest.param(b"/a" + NEL + b"b", b"", None, id="target-u0085"),
    pytest.param(b"/a\xa8\xa9b", b"", r"/a\xA8\xA9b", id="target-high-bytes"),
    # (Encoded CR/LF in a path are refused as ambiguous before logging matters:
    # tests/security/test_paths.py.)
    pytest.param(b"/a%85%E2%80%A8", b"", "/a%85%E2%80%A8", id="target-encoded"),
    pytest.param(b'/a"b', b"", r"/a\x22b", id="target-quote"),
    # (A backslash in a path is refused as ambiguous: tests/security/test_paths.py.)
    pytest.param(b"/a\\x0A", b"", None, id="target-backslash"),
    pytest.param(b"/a" + LS + b"b", b"", None, id="target-u2028"),
    pytest.param(b"/a\rb", b"", None, id="target-cr"),
    pytest.param(b"/a\x1bb", b"", None, id="target-esc"),
    pytest.param(b"/a\x00b", b"", None, id="target-nul"),
    pytest.param(b"/ua", b"User-Agent: x\x85" + FORGED + b"\r\n", "/ua", id="ua-0x85"),
    pytest.param(b"/ua", b"User-Agent: x" + LS + FORGED + b"\r\n", "/ua", id="ua-u2028"),
    pytest.param(b"/ua", b"User-Agent: x" + ESC + b"\r\n", "/ua", id="ua-esc"),
    pytest.param(b"/ua", b"User-Agent: x\r" + FORGED + b"\r\n", None, id="ua-bare-cr"),
    pytest.param(b"/ua", b"User-Agent: x\x00" + FORGED + b"\r\n", None, id="ua-nul"),
    pytest.param(b"/ref", b"Referer: http://x/\x85" + FORGED + b"\r\n", "/ref", id="referer-0x85"),
    pytest.param(b"/ref", b"Referer: http://x/" + NEL + FORGED + b"\r\n", "/ref", id="referer-nel"),
    pytest.param(b"/ref", b"Referer: " + ESC + b"\r\n", "/ref", id="referer-esc"),
]


def access_lines(log: str) -> list[str]:
    return [line for line in log.split("\n") if "[idgateway.access#info]" in line]


@pytest.mark.parametrize("target, headers, shown", LOG_VECTORS)
def test_hostile_requests_leave_one_escaped_access_line(
    logging_gateway: tuple[int, GatewayProcess, str],
    target: bytes,
    headers: bytes,
    shown: str | None,
) -> None:
    port, gateway, mode = logging_gateway
    request_id = f"hyg-{os.urandom(6).hex()}"
    status = raw_request(port, target, headers + f"X-Request-Id: {request_id}\r\n".encode())
    log_path = Path(gateway.log_path)
    deadline = time.monotonic() + (10 if shown is not None else 0.5)
    while True:
        raw = log_path.read_bytes()
        ours = [line for line in access_lines(raw.decode("utf-8", "replace")) if request_id in line]
        if ours and shown is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if shown is None:
        # Refused before it was a request (400, or the connection closed).
        assert status in (0, 400), status
        assert len(ours) <= 1
    else:
        # (A target with DEL or a byte 0x80-0xB0 passes twisted.web's parser
        # and is refused by the route: a 400 with its access line.)
        expected = 400 if any(c == 0x7F or c >= 0x80 for c in target) else 200
        assert status == expected, (status, gateway.output()[-2000:])
        assert len(ours) == 1, gateway.output()[-2000:]
    # Whatever happened, no reader sees a forged line, and the file is plain ASCII
    # with no line breaks but its own.
    text = raw.decode("ascii")  # raises on any byte outside ASCII
    assert all(printable(line) for line in text.split("\n")), [
        line for line in text.split("\n") if not printable(line)
    ]
    assert len(text.splitlines()) == text.count("\n")
    assert "/FORGED" not in text or all(
        line.index("[idgateway.access#info]") < line.index("FORGED")
        for line in text.split("\n")
        if "FORGED" in line
    )
    assert "pwned" not in text or "\x1b" not in text
    if ours:
        [line] = ours
        if mode.startswith("json"):
            record = json.loads(line[line.index("{") :])
            assert record["path"] == target.decode("latin-1")
        elif shown is not None:
            assert f"] GET {shown} {status} " in line, line
