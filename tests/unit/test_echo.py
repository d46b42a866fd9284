"""The demo echo back end, and the test back ends in ``tests/backends.py``."""

from __future__ import annotations

import html
import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from idgateway.demo.echo import make_site, parse_listen
from tests.backends import ListenAddress
from tests.backends import parse_listen as parse_backend_listen


class Response:
    def __init__(self, raw: bytes) -> None:
        head, separator, self.body = raw.partition(b"\r\n\r\n")
        assert separator, f"no complete response in {raw!r}"
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        self.headers: list[tuple[str, str]] = []
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers.append((name.lower(), value.strip()))

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def exchange(raw_request: bytes) -> Response:
    """Feed one raw HTTP request to the echo ``Site`` in memory; parse the answer."""
    site = make_site(reactor=Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(raw_request)
    channel.connectionLost(Failure(ConnectionDone()))
    return Response(transport.value())


def http_request(
    *header_lines: str, method: str = "GET", target: str = "/", body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: app.example", *header_lines]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


# ---------------------------------------------------------------------------
# The demo echo resource, in memory


def test_hostile_header_values_are_escaped() -> None:
    response = exchange(
        http_request(
            "X-Forwarded-User: <script>alert(1)</script>",
            'X-Other: "><img src=x onerror=alert(2)>',
            "Cookie: sid=<b>bold</b>",
            target="/page?q=<svg>",
        )
    )

    assert response.status == 200
    assert response.header("content-type") == "text/html; charset=utf-8"
    page = response.text
    assert "<script>" not in page
    assert "<img" not in page and "<svg>" not in page and "<b>" not in page
    assert html.escape("<script>alert(1)</script>") in page
    assert html.escape('"><img src=x onerror=alert(2)>') in page
    assert html.escape("/page?q=<svg>") in page
    assert "idgateway demo back end" in page


def test_identity_headers_are_shown_first() -> None:
    response = exchange(
        http_request(
            "Accept: text/html",
            "X-Forwarded-User: alice",
            "X-Forwarded-Email: alice@example.org",
            "OIDC_CLAIM_name: Alice Liddell",
        )
    )

    page = response.text
    identity_section = page[page.index("Identity headers") : page.index("<h2>Request</h2>")]
    assert "Signed in as <strong>alice</strong> (alice@example.org)" in identity_section
    for shown in ("x-forwarded-user", "x-forwarded-email", "oidc_claim_name", "Alice Liddell"):
        assert shown in identity_section
    assert "accept" not in identity_section


def test_page_without_identity_says_so() -> None:
    page = exchange(http_request()).text
    identity_section = page[page.index("Identity headers") : page.index("<h2>Request</h2>")]
    assert "None: this request did not come through the gateway" in identity_section


def test_json_form_when_json_is_accepted() -> None:
    response = exchange(
        http_request(
            "Accept: text/html;q=0.5, application/json",
            "Cookie: sid=abc; theme=dark",
            method="POST",
            target="/api/items?limit=5&sort=name",
            body=b"name=widget&colour=blue",
        )
    )

    assert response.status == 200
    assert response.header("content-type") == "application/json"
    assert response.header("cache-control") == "no-store"
    document = json.loads(response.body)
    assert document["method"] == "POST"
    assert document["path"] == "/api/items"
    assert document["query"] == "limit=5&sort=name"
    assert document["body_length"] == len(b"name=widget&colour=blue")
    assert document["cookies"] == {"sid": "abc", "theme": "dark"}
    assert ["accept", "text/html;q=0.5, application/json"] in document["headers"]
    assert set(document) == {"method", "path", "query", "headers", "cookies", "body_length"}


def test_repeated_headers_keep_their_arrival_order() -> None:
    raw = http_request(
        "Accept: application/json",
        "X-Trace: first",
        "X-Between: middle",
        "X-Trace: second",
        "X-Trace: third",
    )

    headers = json.loads(exchange(raw).body)["headers"]

    assert headers == [
        ["host", "app.example"],
        ["accept", "application/json"],
        ["x-trace", "first"],
        ["x-between", "middle"],
        ["x-trace", "second"],
        ["x-trace", "third"],
    ]
    page = exchange(raw.replace(b"Accept: application/json", b"Accept: */*")).text
    positions = [page.index(value) for value in ("first", "middle", "second", "third")]
    assert positions == sorted(positions)


def test_cookies_are_parsed_into_a_table() -> None:
    page = exchange(http_request("Cookie: sid=abc123; theme=dark")).text
    cookies_section = page[page.index("<h2>Cookies</h2>") : page.index("All headers")]
    assert '<th class="name">sid</th><td>abc123</td>' in cookies_section
    assert '<th class="name">theme</th><td>dark</td>' in cookies_section


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_any_method_on_any_path(method: str) -> None:
    response = exchange(
        http_request("Accept: application/json", method=method, target="/x/y/z", body=b"12345")
    )
    assert response.status == 200
    document = json.loads(response.body)
    assert (document["method"], document["path"], document["body_length"]) == (
        method,
        "/x/y/z",
        5,
    )


def test_head_gets_headers_only() -> None:
    response = exchange(http_request(method="HEAD"))
    assert response.status == 200
    assert response.body == b""
    assert int(response.header("content-length") or 0) > 0


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8081") == ("tcp4", "127.0.0.1", 8081)
    assert parse_listen("8081") == ("tcp4", "127.0.0.1", 8081)
    assert parse_listen("[::1]:9000") == ("tcp6", "::1", 9000)
    assert parse_listen("unix:/run/echo.sock") == ("unix", "/run/echo.sock", 0)
    for wrong in ("127.0.0.1:http", "unix:", "[::1]9000", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_listen(wrong)


# ---------------------------------------------------------------------------
# tests/backends.py's listen addresses (its processes: tests/integration/test_echo_programs.py)


def test_backend_listen_addresses() -> None:
    assert parse_backend_listen("127.0.0.1:0") == ListenAddress("tcp", "127.0.0.1", 0)
    assert parse_backend_listen("[::1]:80") == ListenAddress("tcp", "::1", 80)
    assert parse_backend_listen("unix:/tmp/b.sock") == ListenAddress("unix", path="/tmp/b.sock")
    assert parse_backend_listen("tls:127.0.0.1:0:/c.pem:/k.pem") == ListenAddress(
        "tls", "127.0.0.1", 0, "", "/c.pem", "/k.pem"
    )
    for wrong in ("0.0.0.0:80", "10.0.0.1:80", "localhost:80", "tls:127.0.0.1:0", "unix:"):
        with pytest.raises(ValueError):
            parse_backend_listen(wrong)
