"""Identity headers: presets, custom mappings, stripping and unsafe values."""

from __future__ import annotations

from idgateway.forwarding import build_request_head, header_key
from idgateway.identity import IdentityHeaders
from idgateway.model import HeaderSettings
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
    assert b"OIDC_CLAIM_evil" not in headers, "a claim with CR/LF is never written"
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
