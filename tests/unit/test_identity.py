"""Identity headers: presets, custom mappings, stripping and unsafe values."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import pytest

from idgateway.config.model import HeaderSettings
from idgateway.gate.identity_headers import ClaimEncoder, IdentityHeaders
from idgateway.proxy.headers import build_request_head, header_key
from idgateway.sessions.model import Session

SESSION = Session(
    id="s1",
    route="app1",
    sub="0b1c-uuid",
    user="alice",
    claims={
        "email": "alice@example.com",
        "username": "alice",
        "groups": ["engineering", "ops"],
        "org_name": "Super",
        "evil": "x\r\nInjected: 1",
    },
    created_at=0,
    last_seen=0,
    access_token="at-123",
    id_token="id.token.jwt",
)


def make(settings: HeaderSettings) -> IdentityHeaders:
    return IdentityHeaders.for_route(
        settings, user_claim="username", email_claim="email", groups_claim="groups"
    )


def test_oauth2_proxy_preset() -> None:
    headers = dict(make(HeaderSettings(pass_access_token=True)).headers_for(SESSION))
    assert headers[b"X-Forwarded-User"] == b"alice"
    assert headers[b"X-Forwarded-Email"] == b"alice@example.com"
    assert headers[b"X-Forwarded-Preferred-Username"] == b"alice"
    assert headers[b"X-Forwarded-Groups"] == b"engineering,ops"
    assert headers[b"X-Forwarded-Access-Token"] == b"at-123"
    assert b"Authorization" not in headers


def test_mod_auth_openidc_preset_and_control_characters() -> None:
    identity = make(
        HeaderSettings(preset="mod_auth_openidc", list_delimiter=";", pass_id_token=True)
    )
    headers = dict(identity.headers_for(SESSION))
    assert headers[b"X-Remote-User"] == b"alice"
    assert headers[b"OIDC_CLAIM_groups"] == b"engineering;ops"
    assert headers[b"OIDC_CLAIM_org_name"] == b"Super"
    assert headers[b"OIDC_id_token"] == b"id.token.jwt"
    assert headers[b"OIDC_CLAIM_evil"] == b"x%0D%0AInjected: 1", "CR/LF never reach a header"
    assert header_key(b"OIDC-CLAIM-") in identity.strip_prefixes


def test_custom_mapping_and_authorization_header() -> None:
    identity = make(
        HeaderSettings(
            preset="custom",
            mapping=(("X-User", "username"), ("X-Org", "org_name")),
            pass_authorization_header=True,
        )
    )
    assert identity.headers_for(SESSION) == [
        (b"X-User", b"alice"),
        (b"X-Org", b"Super"),
        (b"Authorization", b"Bearer at-123"),
    ]
    assert header_key(b"authorization") in identity.strip


def test_incoming_identity_headers_are_stripped_in_every_spelling() -> None:
    for settings in (HeaderSettings(), HeaderSettings(preset="mod_auth_openidc")):
        identity = make(settings)
        head = build_request_head(
            method=b"GET",
            target=b"/",
            headers=[
                (b"X-Forwarded-User", [b"mallory"]),
                (b"X_Forwarded_Email", [b"m@evil"]),
                (b"Oidc_Claim_Email", [b"m@evil"]),
                (b"OIDC-CLAIM-sub", [b"root"]),
                (b"X-Remote-User", [b"root"]),
                (b"X-Auth-Request-User", [b"root"]),
                (b"Accept", [b"*/*"]),
            ],
            host_header=b"up",
            client_ip=b"127.0.0.1",
            proto=b"http",
            port=b"80",
            original_host=b"app1",
            request_id=b"r",
            trusted_peer=False,
            strip=identity.strip,
            strip_prefixes=identity.strip_prefixes,
            extra=identity.headers_for(SESSION),
        )
        for forged in (b"mallory", b"m@evil", b"root"):
            assert forged not in head
        assert b"Accept: */*" in head


def session_with(claims: dict[str, Any], user: str = "alice", **tokens: str) -> Session:
    return Session(
        id="s1",
        route="app1",
        sub="0b1c-uuid",
        user=user,
        claims=claims,
        created_at=0,
        last_seen=0,
        access_token=tokens.get("access_token", "at-123"),
        id_token=tokens.get("id_token", "id.token.jwt"),
    )


def items(header: bytes, delimiter: bytes = b",") -> list[str]:
    """What an upstream that splits on the delimiter and percent-decodes sees."""
    return [
        unquote(part.decode("ascii"), errors="surrogatepass") for part in header.split(delimiter)
    ]


# (group name an attacker got into the directory, why it is dangerous)
HOSTILE_GROUPS = [
    pytest.param("ops,admin", id="delimiter"),
    pytest.param("ops, admin", id="delimiter-and-space"),
    pytest.param("ops;admin", id="other-delimiter"),
    pytest.param("x\r\nX-Forwarded-User: root", id="crlf-header-injection"),
    pytest.param("x\nX-Forwarded-User: root", id="bare-lf"),
    pytest.param("x\rX-Forwarded-User: root", id="bare-cr"),
    pytest.param("ad\x00min", id="nul"),
    pytest.param("ad\tmin", id="tab"),
    pytest.param("\x1b[2Jadmin", id="terminal-escape"),
    pytest.param("ad\x7fmin", id="del"),
    pytest.param("ad\x85min", id="nel-u0085"),
    pytest.param("ad\u2028min", id="line-separator-u2028"),
    pytest.param("ａｄｍｉｎ", id="fullwidth"),
    pytest.param("admin%2Cops", id="already-percent-encoded"),
    pytest.param("%", id="lone-percent"),
    pytest.param(" admin", id="leading-space"),
    pytest.param("admin ", id="trailing-space"),
    pytest.param("   ", id="only-spaces"),
    pytest.param("ad\ud800min", id="lone-surrogate"),
    pytest.param("Domain Users", id="inner-space-is-kept"),
]


@pytest.mark.parametrize("group", HOSTILE_GROUPS)
@pytest.mark.parametrize("delimiter", [",", ";", ", ", "|"])
def test_a_hostile_group_stays_one_printable_item(group: str, delimiter: str) -> None:
    identity = make(HeaderSettings(list_delimiter=delimiter))
    header = dict(identity.headers_for(session_with({"groups": ["eng", group, "ops"]})))[
        b"X-Forwarded-Groups"
    ]
    assert all(0x20 <= byte <= 0x7E for byte in header), header
    assert header == header.strip(), "HTTP parsers trim a value's edges"
    parts = header.split(delimiter.encode())
    assert len(parts) == 3, parts
    assert all(part == part.strip() for part in parts), "list splitters trim items"
    assert items(header, delimiter.encode()) == ["eng", group, "ops"], "reversible"


def test_encoding_examples() -> None:
    encoder = ClaimEncoder(",")
    assert encoder.value(["a,b", "c"]) == b"a%2Cb,c"
    assert encoder.value("50%") == b"50%25"
    assert encoder.value("x\r\ny") == b"x%0D%0Ay"
    assert encoder.value("josé") == b"jos%C3%A9"
    assert encoder.value(" a b ") == b"%20a b%20"
    assert encoder.value("Domain Users") == b"Domain Users"
    assert encoder.value("alice@example.com") == b"alice@example.com"
    assert ClaimEncoder(";").value("a,b;c") == b"a,b%3Bc"
    assert ClaimEncoder(", ").value(["a, b", "c d"]) == b"a%2C%20b, c%20d"


@pytest.mark.parametrize(
    "claim, header",
    [
        pytest.param(True, b"true", id="bool"),
        pytest.param(42, b"42", id="int"),
        pytest.param(1.5, b"1.5", id="float"),
        pytest.param("", b"", id="empty-string"),
        pytest.param([], b"", id="empty-list"),
        pytest.param(["a", None, "b"], b"a,b", id="null-item-left-out"),
        pytest.param(["a", {"x": "y"}, "b"], b"a,b", id="object-item-left-out"),
        pytest.param(["a", ["b,c", "d"]], b"a", id="nested-list-left-out"),
        pytest.param([True, 3, "x"], b"true,3,x", id="scalar-items"),
        pytest.param(("a", "b"), b"a,b", id="tuple"),
        pytest.param({"role": "admin"}, None, id="object-no-header"),
        pytest.param(None, None, id="null-no-header"),
    ],
)
def test_claim_shapes(claim: Any, header: bytes | None) -> None:
    identity = make(HeaderSettings(preset="custom", mapping=(("X-Thing", "thing"),)))
    got = dict(identity.headers_for(session_with({"thing": claim}))).get(b"X-Thing")
    assert got == header


def test_user_and_email_are_encoded_like_any_claim() -> None:
    identity = make(HeaderSettings())
    headers = dict(
        identity.headers_for(
            session_with({"email": "a@b.c\r\nX-Forwarded-User: root"}, user="eve,root")
        )
    )
    assert headers[b"X-Forwarded-User"] == b"eve%2Croot"
    assert headers[b"X-Forwarded-Email"] == b"a@b.c%0D%0AX-Forwarded-User: root"
    auth = dict(identity.auth_request_headers(session_with({"groups": ["a,b"]}, user="x\ny")))
    assert auth[b"X-Auth-Request-User"] == b"x%0Ay"
    assert auth[b"X-Auth-Request-Groups"] == b"a%2Cb"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("at\r\nX-Forwarded-User: root", id="crlf"),
        pytest.param("at 123", id="space"),
        pytest.param("at\x85", id="nel"),
        pytest.param("", id="empty"),
    ],
)
def test_a_token_that_is_not_visible_ascii_is_not_passed(token: str) -> None:
    for settings, name in (
        (HeaderSettings(pass_access_token=True), b"X-Forwarded-Access-Token"),
        (HeaderSettings(preset="mod_auth_openidc", pass_access_token=True), b"OIDC_access_token"),
        (HeaderSettings(preset="mod_auth_openidc", pass_id_token=True), b"OIDC_id_token"),
        (HeaderSettings(pass_authorization_header=True), b"Authorization"),
    ):
        session = session_with({}, access_token=token, id_token=token)
        assert name not in dict(make(settings).headers_for(session))


def test_tokens_pass_verbatim() -> None:
    settings = HeaderSettings(pass_access_token=True, pass_authorization_header=True)
    headers = dict(make(settings).headers_for(session_with({}, access_token="a.b-c_d%2F=")))
    assert headers[b"X-Forwarded-Access-Token"] == b"a.b-c_d%2F="
    assert headers[b"Authorization"] == b"Bearer a.b-c_d%2F="


@pytest.mark.parametrize(
    "prefix, claim",
    [
        ("X-Forwarded-", "For"),
        ("X-Forwarded-", "Host"),
        ("X-Forwarded-", "Prefix"),
        ("X-", "Request-Id"),
        ("X-", "Real-IP"),
        ("X-", "Original-URL"),
        ("X-", "Remote-User"),
        ("Content-", "Length"),
        ("Transfer-", "Encoding"),
        ("Proxy-", "Authorization"),
        ("OIDC_", "access_token"),
        ("OIDC_", "id_token"),
    ],
)
def test_a_claim_never_becomes_a_header_the_gateway_vouches_for(prefix: str, claim: str) -> None:
    identity = make(HeaderSettings(preset="mod_auth_openidc", claim_prefix=prefix))
    headers = identity.headers_for(session_with({claim: "forged", "fine": "ok"}))
    assert all(value != b"forged" for _, value in headers), headers
    assert (prefix.encode() + b"fine", b"ok") in headers


def test_a_claim_cannot_add_an_entry_to_a_list_header_upstream() -> None:
    identity = make(HeaderSettings())
    session = session_with({"groups": ["eng", "x\r\nX-Forwarded-Groups: admin", "a,admin"]})
    head = build_request_head(
        method=b"GET",
        target=b"/",
        headers=[(b"X-Forwarded-Groups", [b"admin"]), (b"X_Forwarded_Groups", [b"admin"])],
        host_header=b"up",
        client_ip=b"127.0.0.1",
        proto=b"http",
        port=b"80",
        original_host=b"app1",
        request_id=b"r",
        trusted_peer=True,
        strip=identity.strip,
        strip_prefixes=identity.strip_prefixes,
        extra=identity.headers_for(session),
    )
    lines = head.split(b"\r\n")
    groups = [line for line in lines if line.lower().startswith(b"x-forwarded-groups:")]
    assert groups == [b"X-Forwarded-Groups: eng,x%0D%0AX-Forwarded-Groups: admin,a%2Cadmin"]
    assert b"admin" not in [item.strip() for item in groups[0].split(b": ", 1)[1].split(b",")]
