import pytest

from idgateway.proxy.headers import (
    TrustedProxies,
    build_request_head,
    header_key,
    is_websocket_upgrade,
    request_id_from,
    response_headers_to_forward,
)


def head(headers, trusted=False, strip=frozenset(), **kw):
    args = dict(
        method=b"GET",
        target=b"/p?q=1",
        headers=headers,
        host_header=b"127.0.0.1:3000",
        client_ip=b"10.1.2.3",
        proto=b"https",
        port=b"8443",
        original_host=b"app1.example.com",
        request_id=b"rid-1",
        trusted_peer=trusted,
        strip=strip,
    )
    args.update(kw)
    return build_request_head(**args)


def parse(raw):
    lines = raw.split(b"\r\n")
    assert lines[-2:] == [b"", b""]
    pairs = [tuple(line.split(b": ", 1)) for line in lines[1:-2]]
    return lines[0], pairs


def test_hop_by_hop_and_connection_named_headers_are_dropped():
    start, pairs = parse(
        head(
            [
                (b"Connection", [b"keep-alive, X-Secret"]),
                (b"X-Secret", [b"1"]),
                (b"Keep-Alive", [b"timeout=5"]),
                (b"Te", [b"trailers"]),
                (b"Proxy-Authorization", [b"Basic x"]),
                (b"Accept", [b"*/*"]),
                (b"Host", [b"app1.example.com"]),
            ]
        )
    )
    assert start == b"GET /p?q=1 HTTP/1.1"
    names = [n.lower() for n, _ in pairs]
    for gone in (b"connection", b"x-secret", b"keep-alive", b"te", b"proxy-authorization"):
        assert gone not in names
    assert (b"Accept", b"*/*") in pairs
    assert pairs[0] == (b"Host", b"127.0.0.1:3000")
    assert names.count(b"host") == 1


def test_untrusted_forwarding_headers_are_overwritten():
    _, pairs = parse(
        head(
            [
                (b"X-Forwarded-For", [b"6.6.6.6"]),
                (b"X-Forwarded-Proto", [b"http"]),
                (b"X-Forwarded-Host", [b"evil.com"]),
                (b"Forwarded", [b"for=6.6.6.6"]),
                (b"X-Real-Ip", [b"6.6.6.6"]),
            ]
        )
    )
    d = dict(pairs)
    assert d[b"X-Forwarded-For"] == b"10.1.2.3"
    assert d[b"X-Forwarded-Proto"] == b"https"
    assert d[b"X-Forwarded-Host"] == b"app1.example.com"
    assert d[b"X-Forwarded-Port"] == b"8443"
    assert b"Forwarded" not in d and b"X-Real-Ip" not in d
    assert [n for n, _ in pairs].count(b"X-Forwarded-For") == 1


def test_trusted_proxy_headers_are_extended():
    _, pairs = parse(
        head(
            [(b"X-Forwarded-For", [b"1.1.1.1"]), (b"X-Forwarded-Proto", [b"https"])],
            trusted=True,
            proto=b"http",
        )
    )
    d = dict(pairs)
    assert d[b"X-Forwarded-For"] == b"1.1.1.1, 10.1.2.3"
    assert d[b"X-Forwarded-Proto"] == b"https"


def test_strip_matches_underscore_and_case_spellings():
    strip = frozenset({header_key(b"X-Forwarded-User")})
    _, pairs = parse(
        head(
            [
                (b"X-Forwarded-User", [b"mallory"]),
                (b"X_Forwarded_User", [b"m"]),
                (b"x-forwarded-user", [b"m"]),
            ],
            strip=strip,
        )
    )
    assert all(header_key(n) != b"x-forwarded-user" for n, _ in pairs)


def test_repeated_headers_keep_order_and_body_framing():
    _, pairs = parse(
        head([(b"X-Multi", [b"a", b"b"]), (b"Content-Length", [b"99"])], body_length=5)
    )
    assert [v for n, v in pairs if n == b"X-Multi"] == [b"a", b"b"]
    assert [v for n, v in pairs if n == b"Content-Length"] == [b"5"]
    _, pairs = parse(head([(b"Transfer-Encoding", [b"chunked"])], chunked_body=True))
    assert [v for n, v in pairs if n == b"Transfer-Encoding"] == [b"chunked"]


def test_request_id_kept_when_safe_else_minted():
    assert request_id_from([b"abc-123"]) == b"abc-123"
    minted = request_id_from([b"bad\x00id"])
    assert len(minted) == 32 and minted != b"bad\x00id"
    assert len(request_id_from(None)) == 32


def test_response_headers_drop_hop_by_hop_keep_set_cookie_order():
    kept = response_headers_to_forward(
        [
            (b"Connection", b"X-Hop, keep-alive"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Set-Cookie", b"a=1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Set-Cookie", b"b=2"),
            (b"Content-Length", b"10"),
        ]
    )
    assert kept == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def test_websocket_upgrade_detection():
    assert is_websocket_upgrade([b"keep-alive, Upgrade"], [b"websocket"])
    assert not is_websocket_upgrade([b"keep-alive"], [b"websocket"])
    assert not is_websocket_upgrade([b"upgrade"], [b"h2c"])


def test_trusted_proxies():
    trusted = TrustedProxies(["10.0.0.0/8", "::1"])
    assert trusted.trusts("10.9.9.9")
    assert trusted.trusts("::1")
    assert not trusted.trusts("11.0.0.1")
    assert not trusted.trusts("not-an-ip")
    assert not TrustedProxies([]).trusts("10.0.0.1")


URL_OVERRIDES = [
    (b"X-Original-URL", b"/admin"),
    (b"X-Rewrite-URL", b"/admin"),
    (b"x-original-url", b"/admin"),
    (b"X_Original_URL", b"/admin"),
    (b"X-REWRITE-URL", b"/admin"),
    (b"X_Rewrite-Url", b"/admin"),
]


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
@pytest.mark.parametrize("name, value", URL_OVERRIDES)
def test_url_override_headers_never_reach_the_upstream(name, value, trusted):
    raw = head([(name, [value]), (b"Accept", [b"*/*"])], trusted=trusted)
    _, pairs = parse(raw)
    assert b"/admin" not in raw
    assert all(header_key(n) not in (b"x-original-url", b"x-rewrite-url") for n, _ in pairs)
    assert (b"Accept", b"*/*") in pairs


@pytest.mark.parametrize(
    "name", [b"X-Forwarded-Prefix", b"x-forwarded-prefix", b"X_Forwarded_Prefix"]
)
def test_forwarded_prefix_from_an_untrusted_peer_is_dropped(name):
    raw = head([(name, [b"/evil"]), (name, [b"/evil2"])])
    assert b"/evil" not in raw
    assert b"prefix" not in raw.lower()


def test_forwarded_prefix_from_a_trusted_proxy_is_kept_once():
    _, pairs = parse(head([(b"X_Forwarded_Prefix", [b"/app"])], trusted=True))
    assert [v for n, v in pairs if header_key(n) == b"x-forwarded-prefix"] == [b"/app"]
    _, pairs = parse(head([], trusted=True))
    assert all(header_key(n) != b"x-forwarded-prefix" for n, _ in pairs)


@pytest.mark.parametrize(
    "spelling",
    [
        b"X-Forwarded-User",
        b"x_forwarded_user",
        b"X.Forwarded.User",
        b"X-Forwarded.User",
        b"X+Forwarded~User",
        b"X!Forwarded|User",
        b"x`forwarded'user",
    ],
)
def test_every_punctuation_spelling_of_a_header_has_the_same_key(spelling: bytes) -> None:
    # (Servers that fold punctuation into '_' for CGI-style names read these
    # all as HTTP_X_FORWARDED_USER.)
    assert header_key(spelling) == b"x-forwarded-user"


def test_letters_and_digits_keep_their_place_in_a_key() -> None:
    assert header_key(b"X-Api-Key2") == b"x-api-key2"
    assert header_key(b"XAPIKEY") != header_key(b"X-API-KEY")


def test_forward_gives_request_head_each_argument_in_its_place(monkeypatch):
    """GatewayResource.forward calls request_head with its nineteen arguments
    in order (a keyword call cost more): each lands under its own name."""
    import inspect

    from idgateway.proxy import headers as headers_module
    from idgateway.routing import resource as resource_module
    from idgateway.routing.resource import GatewayResource, StateHolder
    from tests.unit.gate_decisions import HOST
    from tests.unit.test_gate_admitted_memo import Gate

    named: list[dict] = []
    signature = inspect.signature(headers_module.request_head)

    def recording(*args):
        named.append(dict(signature.bind(*args).arguments))
        return headers_module.request_head(*args)

    monkeypatch.setattr(resource_module, "request_head", recording)
    gate = Gate()
    submitted: list = []
    for pool in gate.state.pools.values():
        pool.submit = submitted.append
    resource = GatewayResource(StateHolder(gate.state), tls=False, port=8443)
    line = b"a=1; " + gate.cookie(gate.session()) + b"; b=2"
    for _ in range(2):  # the full checks, then the memo
        request = gate.request([line], b"/projects/1")
        request.requestHeaders.setRawHeaders(b"X-Request-Id", [b"fixed-id"])
        request.requestHeaders.setRawHeaders(b"Connection", [b"keep-alive"])
        resource.render(request)
    runtime = gate.runtime
    for args in named:
        assert args["method"] == b"GET" and args["target"] == b"/projects/1"
        assert args["connection"] == [b"keep-alive"]
        assert args["host_header"] == b"127.0.0.1:9" and args["original_host"] == HOST
        assert args["client_ip"] == b"192.168.1.1" and args["trusted_peer"] is False
        assert args["proto"] == b"http" and args["port"] == b"8443"
        assert args["request_id"] == b"fixed-id"
        assert args["strip"] is runtime.strip_headers_and_cookie
        assert args["strip_prefixes"] is runtime.strip_prefixes
        assert args["cookie"] == b"a=1; b=2"
        assert (
            b"X-Forwarded-User: alice"
            in headers_module.header_lines(args["extra"]) + args["extra_lines"]
        )
        assert args["body_length"] is None and args["chunked_body"] is False
        assert args["upgrade"] is None
    assert len(named) == 2 and named[0]["extra_lines"] == b"" and named[1]["extra"] == []
    assert bytes(submitted[0].head) == bytes(submitted[1].head)
