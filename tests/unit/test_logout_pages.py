"""Cross-site sign-out detection and the confirmation form's token."""

from __future__ import annotations

import base64
import os

import pytest
from twisted.web.http_headers import Headers

from idgateway.gate.logout_pages import FORM_LIFETIME, form_token, is_cross_site, token_valid
from idgateway.sessions.keys import KeyRing

ORIGIN = "https://app1.example.com"


class _Request:
    def __init__(self, headers: dict[bytes, list[bytes]]) -> None:
        self.requestHeaders = Headers(headers)


@pytest.mark.parametrize(
    "headers",
    [
        {b"sec-fetch-site": [b"cross-site"]},
        {b"sec-fetch-site": [b"CROSS-SITE"]},
        {b"sec-fetch-site": [b"same-origin", b"cross-site"]},  # repeated: suspect
        {b"sec-fetch-site": [b""]},
        {b"sec-fetch-site": [b"cross-site"], b"origin": [ORIGIN.encode()]},
        {b"origin": [b"https://evil.example.com"]},
        {b"origin": [b"null"]},
        {b"origin": [b"http://app1.example.com"]},  # same host, other scheme
        {b"origin": [b"https://app1.example.com:8443"]},  # other port
        {b"origin": [ORIGIN.encode(), ORIGIN.encode()]},
        {b"referer": [b"https://app1.example.com.evil.com/"]},
        {b"referer": [b"https://app1.example.com@evil.com/"]},
        {b"referer": [b"https://evil.com/?https://app1.example.com"]},
        {b"referer": [b"//app1.example.com/"]},
        {b"referer": [b"javascript:alert(1)"]},
    ],
)
def test_cross_site(headers: dict[bytes, list[bytes]]) -> None:
    assert is_cross_site(_Request(headers), ORIGIN)


@pytest.mark.parametrize(
    "headers",
    [
        {b"sec-fetch-site": [b"same-site"]},  # a sibling subdomain, no Origin
        {b"sec-fetch-site": [b"same-site"], b"referer": [b"https://app2.example.com/"]},
        {b"sec-fetch-site": [b"same-site"], b"origin": [b"https://user.example.com"]},
    ],
    ids=["no-origin", "sibling-referer", "sibling-origin"],
)
def test_same_site_but_another_origin_is_cross_site(headers: dict[bytes, list[bytes]]) -> None:
    assert is_cross_site(_Request(headers), ORIGIN)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {b"sec-fetch-site": [b"same-origin"]},
        {b"sec-fetch-site": [b"same-site"], b"origin": [ORIGIN.encode()]},
        {b"sec-fetch-site": [b"same-site"], b"referer": [b"https://app1.example.com/x"]},
        {b"sec-fetch-site": [b"none"]},
        {b"sec-fetch-site": [b" Same-Origin "]},
        {b"origin": [ORIGIN.encode()]},
        {b"origin": [b"HTTPS://APP1.EXAMPLE.COM"]},
        {b"referer": [b"https://app1.example.com/page?x=1#y"]},
        {b"referer": [b"https://app1.example.com"]},
    ],
)
def test_same_site(headers: dict[bytes, list[bytes]]) -> None:
    assert not is_cross_site(_Request(headers), ORIGIN)


def _keyring() -> KeyRing:
    return KeyRing.from_strings([base64.b64encode(os.urandom(32)).decode()])


def test_the_token_is_bound_to_route_session_keys_and_time() -> None:
    keys = _keyring()
    now = 1_800_000_000.0
    token = form_token(keys, "app1", "session-1", now)
    assert token_valid(keys, "app1", "session-1", token, now)
    assert token_valid(keys, "app1", "session-1", token, now + FORM_LIFETIME)
    assert not token_valid(keys, "app1", "session-1", token, now + FORM_LIFETIME + 1)
    assert not token_valid(keys, "app1", "session-1", token, now - 120)  # from the future
    assert not token_valid(keys, "app1", "session-2", token, now)
    assert not token_valid(keys, "app1", None, token, now)
    assert not token_valid(keys, "app2", "session-1", token, now)
    assert not token_valid(_keyring(), "app1", "session-1", token, now)
    # Without a session the token is bound to "no session".
    anonymous = form_token(keys, "app1", None, now)
    assert token_valid(keys, "app1", None, anonymous, now)
    assert not token_valid(keys, "app1", "session-1", anonymous, now)


@pytest.mark.parametrize(
    "token", [None, "", "x", "é" * 10, "A" * 513, "a.b.c", "\x00" * 40], ids=repr
)
def test_bad_tokens(token: str | None) -> None:
    assert not token_valid(_keyring(), "app1", "session-1", token, 1_800_000_000.0)


class _Answer:
    """What send_page writes: status, headers, body."""

    method = b"GET"

    def __init__(self) -> None:
        self.responseHeaders = Headers()
        self.status = 0
        self.body = b""
        self.finished = False

    def setResponseCode(self, status: int) -> None:
        self.status = status

    def end_response_early(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> None:
        self.finished = True


def test_the_signed_out_page_escapes_what_it_shows_and_sets_its_cookies() -> None:
    from idgateway.gate.logout_pages import send_signed_out

    answer = _Answer()
    send_signed_out(
        answer,  # type: ignore[arg-type]
        app='<script>alert(1)</script>"',
        sign_in_url='/oauth2/start?rd=/"><script>',
        set_cookies=[b"a=; Max-Age=0", b"b=; Max-Age=0"],
    )
    assert answer.status == 200 and answer.finished
    assert b"<script>" not in answer.body
    assert b"You are signed out of &lt;script&gt;" in answer.body
    assert b'href="/oauth2/start?rd=/&quot;&gt;&lt;script&gt;"' in answer.body
    assert answer.responseHeaders.getRawHeaders(b"set-cookie") == [
        b"a=; Max-Age=0",
        b"b=; Max-Age=0",
    ]
    assert answer.responseHeaders.getRawHeaders(b"x-frame-options") == [b"DENY"]
