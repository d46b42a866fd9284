"""Tests for idgateway.config.values: the syntax of single configuration values."""

from __future__ import annotations

import pytest

from idgateway.config import values as value_syntax


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        ("1.5s", 1.5),
        ("10", 10.0),
        ("0.5", 0.5),
        ("0", 0.0),
        (" 7s ", 7.0),
        (12, 12.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert value_syntax.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5 minutes", "1y", "5M", "-1s", "1h-5m", "ms5", "1e3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number of seconds or a number with a unit"):
        value_syntax.parse_duration(text)


@pytest.mark.parametrize("value", [-1, True, float("nan"), float("inf")])
def test_parse_duration_rejects_odd_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        value_syntax.parse_duration(value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("512B", 512),
        ("10KB", 10240),
        ("10kb", 10240),
        ("10K", 10240),
        ("10KiB", 10240),
        ("10MB", 10 * 1024**2),
        ("10MiB", 10 * 1024**2),
        ("1GB", 1024**3),
        ("1GiB", 1024**3),
        ("1.5MB", 1572864),
        ("16 KB", 16384),
        ("0", 0),
        (4096, 4096),
        (4096.0, 4096),
    ],
)
def test_parse_size(text: str | int | float, size: int) -> None:
    assert value_syntax.parse_size(text) == size


@pytest.mark.parametrize(
    "value", ["", "MB", "10 parsecs", "10TB", "-1", "1.5", "1.5B", 1.5, -1, False]
)
def test_parse_size_rejects(value: str | int | float) -> None:
    with pytest.raises(ValueError, match="size|bytes"):
        value_syntax.parse_size(value)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (30, "30s"), (300, "5m"), (7200, "2h"), (86400, "1d")]
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert value_syntax.format_duration(seconds) == text
    assert value_syntax.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("size", "text"), [(100, "100B"), (16384, "16KB"), (100 * 1024**2, "100MB")]
)
def test_format_size_round_trips(size: int, text: str) -> None:
    assert value_syntax.format_size(size) == text
    assert value_syntax.parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("App1.Example.com", "app1.example.com"),
        ("*.Example.com", "*.example.com"),
        ("localhost", "localhost"),
        ("my_host.internal", "my_host.internal"),
        ("192.0.2.1", "192.0.2.1"),
        ("[2001:DB8:0::1]", "[2001:db8::1]"),
    ],
)
def test_parse_host_pattern(text: str, pattern: str) -> None:
    assert value_syntax.parse_host_pattern(text) == pattern


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app1.example.com:443", "leave out the port"),
        ("*", "'*' may only be the whole first label"),
        ("a*.example.com", "'*' may only be the whole first label"),
        ("*.*.example.com", "'*' may only be the whole first label"),
        ("-bad.example.com", "not a valid host name"),
        ("a..b", "not a valid host name"),
        ("example.com.", "not a valid host name"),
        ("bücher.example", "write international names in ASCII, e.g. xn--bcher-kva.example"),
        ("a" * 64 + ".com", "not a valid host name"),
        ("[nope]", "is not an IPv6 address"),
    ],
)
def test_parse_host_pattern_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace(".", r"\.")):
        value_syntax.parse_host_pattern(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8443", ("::1", 8443)),
        ("[::]:80", ("::", 80)),
        (":8080", ("0.0.0.0", 8080)),
        ("8080", ("0.0.0.0", 8080)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_listen_address(text: str, address: tuple[str, int]) -> None:
    assert value_syntax.parse_listen_address(text) == address


@pytest.mark.parametrize(
    "text", ["127.0.0.1", "::1:80", "host:port", "1.2.3.4:99999", "[::1]80", "999.0.0.1:80", ""]
)
def test_parse_listen_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        value_syntax.parse_listen_address(text)


@pytest.mark.parametrize(
    ("text", "kind", "host", "port", "base_path"),
    [
        ("http://127.0.0.1:3000", "http", "127.0.0.1", 3000, ""),
        ("http://app", "http", "app", 80, ""),
        ("https://App.Internal/base/", "https", "app.internal", 443, "/base"),
        ("HTTPS://[::1]:8443/a/b", "https", "::1", 8443, "/a/b"),
    ],
)
def test_parse_upstream_url(text: str, kind: str, host: str, port: int, base_path: str) -> None:
    upstream = value_syntax.parse_upstream_url(text)
    assert (upstream.url, upstream.kind, upstream.host) == (text, kind, host)
    assert (upstream.port, upstream.base_path) == (port, base_path)
    assert upstream.ca_file is None and upstream.pool_size == 64


@pytest.mark.parametrize("text", ["unix:/run/app.sock", "unix:///run/app.sock"])
def test_parse_unix_upstream(text: str) -> None:
    upstream = value_syntax.parse_upstream_url(text)
    assert (upstream.kind, upstream.socket_path, upstream.host_header) == (
        "unix",
        "/run/app.sock",
        "localhost",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://a", "unsupported scheme 'ftp'"),
        ("http://a:0", "bad port"),
        ("http://a:65536", "bad port"),
        ("http://a:", "bad port"),
        ("http://", "has no host"),
        ("http://a/#frag", "must not have a query or fragment"),
        ("http://a b/", "is not a URL"),
        ("http://bad_host!/", "not a valid host name"),
        ("unix://host/run/app.sock", "socket path must be absolute"),
        ("unix:relative.sock", "socket path must be absolute"),
        ("http://[zz]:80", "is not a valid URL"),
    ],
)
def test_parse_upstream_url_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        value_syntax.parse_upstream_url(text)


def test_forms_are_shown_when_a_url_is_wrong() -> None:
    with pytest.raises(ValueError) as caught:
        value_syntax.parse_upstream_url("ws://a")
    assert "http://host[:port][/path], https://host[:port][/path] or unix:" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "network"),
    [("10.0.0.0/8", "10.0.0.0/8"), ("192.0.2.7", "192.0.2.7/32"), ("10.1.2.3/16", "10.1.0.0/16")],
)
def test_parse_network(text: str, network: str) -> None:
    assert value_syntax.parse_network(text) == network


@pytest.mark.parametrize("text", ["10.0.0.0/33", "example.com", ""])
def test_parse_network_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address or network"):
        value_syntax.parse_network(text)


@pytest.mark.parametrize(("text", "version"), [("1.2", "1.2"), ("1.3", "1.3"), ("TLSv1.3", "1.3")])
def test_parse_tls_version(text: str, version: str) -> None:
    assert value_syntax.parse_tls_version(text) == version


@pytest.mark.parametrize("text", ["1.1", "1.0", "1.20", "2"])
def test_parse_tls_version_rejects(text: str) -> None:
    with pytest.raises(ValueError, match='expected "1.2" or "1.3"'):
        value_syntax.parse_tls_version(text)


def test_parse_ciphers() -> None:
    assert value_syntax.parse_ciphers("ECDHE+AESGCM") == "ECDHE+AESGCM"
    with pytest.raises(ValueError, match="no cipher matches"):
        value_syntax.parse_ciphers("NOTHING-AT-ALL")


@pytest.mark.parametrize("text", ["app1", "App_1.v2-beta"])
def test_parse_route_name(text: str) -> None:
    assert value_syntax.parse_route_name(text) == text


@pytest.mark.parametrize("text", ["", "has space", "a/b", "ü"])
def test_parse_route_name_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a route name"):
        value_syntax.parse_route_name(text)


def test_parse_path_prefix() -> None:
    assert value_syntax.parse_path_prefix("/api/") == "/api/"
    for text in ("api/", "/a?b", ""):
        with pytest.raises(ValueError, match="must start with '/'"):
            value_syntax.parse_path_prefix(text)
