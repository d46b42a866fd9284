"""server.h2_headers: the one-pass check of request blocks (RFC 9113 8.2, 8.3)."""

from __future__ import annotations

import pytest

from idgateway.server.h2_headers import (
    MalformedHeaders,
    check_trailers,
    read_request_block,
)

GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"app.example"),
    (b":path", b"/a?b"),
]


def test_a_request_block_is_taken_apart_with_cookie_crumbs_joined_last() -> None:
    block = read_request_block(
        GET
        + [
            (b"cookie", b"a=1"),
            (b"accept", b"*/*"),
            (b"cookie", b"b=2"),
            (b"content-length", b"0"),
            (b"te", b"Trailers"),
            (b"x-empty", b""),
        ]
    )
    assert (block.method, block.scheme, block.authority, block.path) == (
        b"GET",
        b"https",
        b"app.example",
        b"/a?b",
    )
    assert block.length == b"0"
    assert block.host is None
    assert block.fields == [
        (b"accept", b"*/*"),
        (b"content-length", b"0"),
        (b"te", b"Trailers"),
        (b"x-empty", b""),
        (b"cookie", b"a=1; b=2"),
    ]
    assert block.size == sum(len(n) + len(v) + 4 for n, v in GET) + sum(
        len(n) + len(v) + 4
        for n, v in [
            (b"cookie", b"a=1"),
            (b"accept", b"*/*"),
            (b"cookie", b"b=2"),
            (b"content-length", b"0"),
            (b"te", b"Trailers"),
            (b"x-empty", b""),
        ]
    )


def test_host_alone_or_equal_to_authority_is_accepted() -> None:
    assert read_request_block(GET + [(b"host", b"app.example")]).host == b"app.example"
    without_authority = [h for h in GET if h[0] != b":authority"] + [(b"host", b"h.example")]
    block = read_request_block(without_authority)
    assert block.authority is None and block.host == b"h.example"


def test_a_connect_block_is_well_formed_and_extended_connect_is_not_enabled() -> None:
    # (A plain CONNECT is well-formed; the route answers it 405.)
    read_request_block([(b":method", b"CONNECT"), (b":authority", b"a.example:443")])
    with pytest.raises(MalformedHeaders, match="extended CONNECT"):
        read_request_block(
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"https"),
                (b":path", b"/ws"),
                (b":authority", b"a.example"),
            ]
        )


MALFORMED = {
    "uppercase-name": GET + [(b"X-Upper", b"1")],
    "space-in-name": GET + [(b"x y", b"1")],
    "colon-in-name": GET + [(b"x:y", b"1")],
    "non-token-name": GET + [(b"x(y", b"1")],
    "non-ascii-name": GET + [("é".encode(), b"1")],
    "empty-name": GET + [(b"", b"1")],
    "nul-in-value": GET + [(b"x", b"a\x00b")],
    "cr-in-value": GET + [(b"x", b"a\rb")],
    "lf-in-value": GET + [(b"x", b"a\nb")],
    "crlf-smuggled-header": GET + [(b"x", b"a\r\nx-auth-user: admin")],
    "vt-in-value": GET + [(b"transfer-x", b"chunked\x0b")],
    "ff-in-value": GET + [(b"x", b"a\x0cb")],
    "vt-in-cookie": GET + [(b"cookie", b"a=1\x0bb")],
    "leading-space": GET + [(b"x", b" a")],
    "trailing-tab": GET + [(b"x", b"a\t")],
    "lf-in-cookie": GET + [(b"cookie", b"a=1\nb")],
    "lf-in-path": [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"a"),
        (b":path", b"/\n"),
    ],
    # (each pseudo-header's value, checked inline by read_request_block)
    "cr-in-authority": [GET[0], GET[1], (b":authority", b"a\rb"), GET[3]],
    "nul-in-method": [(b":method", b"GE\x00T")] + GET[1:],
    "vt-in-path": GET[:3] + [(b":path", b"/\x0b")],
    "ff-in-scheme": [GET[0], (b":scheme", b"https\x0c"), *GET[2:]],
    "leading-space-authority": [GET[0], GET[1], (b":authority", b" a"), GET[3]],
    "trailing-tab-path": GET[:3] + [(b":path", b"/\t")],
    "connection": GET + [(b"connection", b"close")],
    "keep-alive": GET + [(b"keep-alive", b"5")],
    "proxy-connection": GET + [(b"proxy-connection", b"close")],
    "transfer-encoding": GET + [(b"transfer-encoding", b"chunked")],
    "upgrade": GET + [(b"upgrade", b"websocket")],
    "te-gzip": GET + [(b"te", b"gzip")],
    "te-trailers-and-more": GET + [(b"te", b"trailers, gzip")],
    "unknown-pseudo": GET + [(b":evil", b"1")],
    "status-in-request": GET + [(b":status", b"200")],
    "pseudo-after-regular": GET[:2] + [(b"x", b"1")] + GET[2:],
    "duplicate-path": GET + [(b":path", b"/other")],
    "duplicate-method": [(b":method", b"GET")] + GET,
    "duplicate-authority": GET + [(b":authority", b"other.example")],
    "empty-path": GET[:3] + [(b":path", b"")],
    "no-method": GET[1:],
    "no-path": GET[:3],
    "no-scheme": [GET[0]] + GET[2:],
    "no-authority-no-host": [h for h in GET if h[0] != b":authority"],
    "host-differs": GET + [(b"host", b"other.example")],
    "two-hosts": GET + [(b"host", b"app.example"), (b"host", b"app.example")],
    "connect-with-path": [
        (b":method", b"CONNECT"),
        (b":authority", b"a.example:443"),
        (b":path", b"/"),
    ],
    "protocol-without-connect": GET + [(b":protocol", b"websocket")],
}


def _with(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, value if n == name else v) for n, v in GET]


# Bytes that would change the upstream's HTTP/1.1 request line.
for _label, _method in {
    "space": b"GET /smuggled",
    "tab": b"GET\t/x",
    "separator": b"G(T",
    "vertical-tab": b"GET\x0b",
    "del": b"\x7fGET",
    "utf-8": "GÉT".encode(),
    "empty": b"",
}.items():
    MALFORMED[f"method-{_label}"] = _with(b":method", _method)
for _label, _path in {
    "space-in-query": b"/echo?a b",
    "space-in-path": b"/a b",
    "tab": b"/echo?a\tb",
    "control": b"/echo?a\x01b",
    "del": b"/echo?a\x7fb",
    "nel": b"/echo?a\x85b",
    "high-byte": b"/echo?a\xb0b",
    "utf-8": "/echo?café".encode(),
    "request-line-in-query": b"/echo?x HTTP/1.1\x0bGET /admin",
}.items():
    MALFORMED[f"path-{_label}"] = _with(b":path", _path)


@pytest.mark.parametrize("block", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_request_block_is_refused(block: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(MalformedHeaders):
        read_request_block(block)


@pytest.mark.parametrize(
    "trailers",
    [
        [(b":path", b"/")],
        [(b"X-Upper", b"1")],
        [(b"x", b"a\r\nb")],
        [(b"connection", b"close")],
        [(b"te", b"gzip")],
    ],
    ids=["pseudo-header", "uppercase", "crlf", "connection", "te"],
)
def test_malformed_trailers_are_refused(trailers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(MalformedHeaders):
        check_trailers(trailers)
    check_trailers([(b"x-checksum", b"abc")])


@pytest.mark.parametrize("raw_headers", [True, False], ids=["seam", "fallback"])
def test_checked_fields_fill_a_request_headers_as_add_raw_header_would(
    raw_headers: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twisted.web.http_headers import Headers

    from idgateway._twisted import http_headers as seam

    if not raw_headers:
        monkeypatch.setattr(seam, "RAW_HEADERS", False)
    fields = [
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"www-authenticate", b"x"),
        (b"x-forwarded-for", b"5.6.7.8"),
        (b"cookie", b"a=1; b=2"),
    ]
    filled, added = Headers(), Headers()
    seam.fill_headers(filled, fields)
    for name, value in fields:
        added.addRawHeader(name, value)
    assert list(filled.getAllRawHeaders()) == list(added.getAllRawHeaders())
    assert filled.getRawHeaders(b"X-Forwarded-For") == [b"1.2.3.4", b"5.6.7.8"]
