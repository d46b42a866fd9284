"""Sign-out from another site, and the pages logout endpoints answer with.

A link or a form on another site must not sign users out by itself (a
"logout CSRF"): such a request gets a small confirmation page whose POST form
carries a token sealed with the route's keys and bound to the session, and
only that POST signs out. A request is cross-site when the browser says so
(``Sec-Fetch-Site: cross-site``, or any value other than same-origin,
same-site and none) or, from browsers that do not send Sec-Fetch-Site, when
its ``Origin`` or ``Referer`` names another origin. A request with none of
them (curl, scripts, very old browsers) counts as same-site, as in
mod_auth_openidc and oauth2-proxy: every browser an attacker's page could
drive today sends Sec-Fetch-Site.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from twisted.web.iweb import IRequest

from idgateway.sessions.keys import KeyRing

if TYPE_CHECKING:
    from idgateway.server.channel import GatewayRequest

# How long a confirmation page's form stays usable.
FORM_LIFETIME = 600.0
# The form holds one short field; anything much larger is not ours.
FORM_MAX_BYTES = 4096
FORM_FIELD = "csrf"

_SAME_SITE = frozenset({b"same-origin", b"same-site", b"none"})

# Framing the page would let another site trick a click on its button.
_PAGE_HEADERS = (
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    ),
    (b"referrer-policy", b"same-origin"),
)

_STYLE = (
    "<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;"
    "padding:0 1rem;color:#222}h1{font-size:1.5rem}button{font-size:1rem;"
    "padding:.4rem 1rem}</style>"
)

_CONFIRM_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign out?</title>'
    '<meta name="viewport" content="width=device-width, initial-scale=1">' + _STYLE + "</head>"
    "<body><h1>Sign out?</h1><p>Another site sent you here to sign out of this "
    "application.</p>"
    '<form method="post" action="/oauth2/sign_out">'
    '<input type="hidden" name="' + FORM_FIELD + '" value="{token}">'
    '<button type="submit">Sign out</button></form></body></html>'
)

_REFUSED_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>403 Forbidden</title>'
    '<meta name="viewport" content="width=device-width, initial-scale=1">' + _STYLE + "</head>"
    "<body><h1>403 Forbidden</h1><p>This sign-out could not be confirmed: the form has "
    "expired or did not come from this application. You are still signed in. "
    '<a href="/oauth2/sign_out">Sign out</a> from here to try again.</p></body></html>'
).encode()

_SIGNED_OUT_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Signed out</title>'
    '<meta name="viewport" content="width=device-width, initial-scale=1">' + _STYLE + "</head>"
    "<body><h1>You are signed out</h1><p>You are signed out of {app}.</p>"
    '<p><a href="{sign_in}">Sign in again</a></p></body></html>'
)

FRONTCHANNEL_PAGE = (
    b"<!doctype html><html><head><meta charset=utf-8><title>Signed out</title></head>"
    b"<body>Signed out.</body></html>"
)


def is_cross_site(request: IRequest, origin: str) -> bool:
    """Whether a browser made this request on behalf of another site."""
    headers = request.requestHeaders
    site = headers.getRawHeaders(b"sec-fetch-site")
    if site:
        # One value, one of the three same-site ones; anything else is suspect.
        if len(site) != 1 or site[0].strip().lower() not in _SAME_SITE:
            return True
        if site[0].strip().lower() != b"same-site":
            return False  # same-origin, or none (typed, bookmarked)
        # "same-site" covers every subdomain of the site: another route, user
        # content. Only a request from this route's own origin signs out at once.
        for name in (b"origin", b"referer"):
            values = headers.getRawHeaders(name)
            if values:
                return len(values) != 1 or _origin_of(values[0]) != origin.lower()
        return True
    for name in (b"origin", b"referer"):
        values = headers.getRawHeaders(name)
        if values:
            return len(values) != 1 or _origin_of(values[0]) != origin.lower()
    return False


def _origin_of(url: bytes) -> str | None:
    """scheme://host[:port] of a URL as browsers send it in Origin and Referer."""
    text = url.strip().decode("latin-1").lower()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("http", "https"):
        return None  # includes Origin: null (sandboxed frames, data: URLs)
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if not host or "@" in host:
        return None
    return f"{scheme}://{host}"


def _binding(route: str, session_id: str | None) -> bytes:
    return b"idgw sign-out\0" + route.encode() + b"\0" + (session_id or "-").encode()


def form_token(keyring: KeyRing, route: str, session_id: str | None, now: float) -> str:
    """A token for the confirmation form: sealed with the route's keys, bound to
    the route and session, stamped with the time."""
    return keyring.seal(b"%d" % int(now), _binding(route, session_id)).decode("ascii")


def token_valid(
    keyring: KeyRing, route: str, session_id: str | None, token: str | None, now: float
) -> bool:
    if not token or len(token) > 512 or not token.isascii():
        return False
    opened = keyring.open(token.encode("ascii"), _binding(route, session_id))
    if opened is None or not opened.isdigit():
        return False
    issued = int(opened)
    return issued - 60 <= now <= issued + FORM_LIFETIME


async def posted_token(request: GatewayRequest) -> str | None:
    """The form's one token field, or None (absent, repeated, too large, not a form)."""
    if request.body is None:
        return None
    try:
        raw = await request.body.collect(FORM_MAX_BYTES)
    except Exception:
        return None
    values = parse_qs(raw.decode("latin-1"), keep_blank_values=True).get(FORM_FIELD, [])
    return values[0] if len(values) == 1 else None


def send_page(
    request: GatewayRequest,
    status: int,
    body: bytes,
    set_cookies: list[bytes] = (),  # type: ignore[assignment]
) -> None:
    request.setResponseCode(status)
    out = request.responseHeaders
    for name, value in _PAGE_HEADERS:
        out.setRawHeaders(name, [value])
    out.setRawHeaders(b"content-length", [b"%d" % len(body)])
    for value in set_cookies:
        out.addRawHeader(b"set-cookie", value)
    request.end_response_early()
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def send_confirmation(request: GatewayRequest, token: str) -> None:
    send_page(request, 200, _CONFIRM_PAGE.replace("{token}", token).encode("ascii"))


def send_refused(request: GatewayRequest) -> None:
    send_page(request, 403, _REFUSED_PAGE)


def send_signed_out(
    request: GatewayRequest, app: str, sign_in_url: str, set_cookies: list[bytes]
) -> None:
    """The page a browser sees when the provider sends it back after sign-out."""
    # (replace, not format: the style sheet has braces of its own)
    body = _SIGNED_OUT_PAGE.replace("{app}", html.escape(app)).replace(
        "{sign_in}", html.escape(sign_in_url, True)
    )
    send_page(request, 200, body.encode("utf-8"), set_cookies)
