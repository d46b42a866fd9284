"""Error answers for people (HTML) and for programs (JSON)."""

from __future__ import annotations

import html
import json

from twisted.web.http import RESPONSES
from twisted.web.iweb import IRequest


def wants_json(request: IRequest) -> bool:
    """API clients: XHR, JSON in Accept ahead of HTML, or a non-navigation fetch."""
    headers = request.requestHeaders
    if headers.getRawHeaders(b"x-requested-with", [b""])[0].lower() == b"xmlhttprequest":
        return True
    mode = headers.getRawHeaders(b"sec-fetch-mode")
    if mode and mode[0].lower() != b"navigate":
        return True
    accept = b",".join(headers.getRawHeaders(b"accept", [])).lower()
    if b"application/json" in accept:
        html_at = accept.find(b"text/html")
        return html_at == -1 or accept.find(b"application/json") < html_at
    return False


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{status} {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;
padding:0 1rem;color:#222}}
h1{{font-size:1.5rem}}code{{background:#f3f3f3;padding:.1rem .3rem}}</style></head>
<body><h1>{status} {title}</h1><p>{detail}</p>
<p><small>Reference: <code>{request_id}</code></small></p></body></html>
"""


# Status names twisted.web does not know (it would send "421 Unknown Status").
EXTRA_REASONS = {421: b"Misdirected Request", 431: b"Request Header Fields Too Large"}


def send_error(
    request: IRequest,
    status: int,
    detail: str,
    *,
    error: str | None = None,
    request_id: bytes = b"",
    extra_headers: dict[bytes, bytes] | None = None,
) -> None:
    """Answer with an error page and finish the request."""
    reason = RESPONSES.get(status) or EXTRA_REASONS.get(status, b"Error")
    title = reason.decode("latin-1")
    rid = request_id.decode("ascii", "replace")
    request.setResponseCode(status, reason)
    if wants_json(request):
        body = json.dumps(
            {
                "error": error or title.lower().replace(" ", "_"),
                "message": detail,
                "request_id": rid,
            }
        ).encode()
        content_type = b"application/json"
    else:
        body = _PAGE.format(
            status=status,
            title=html.escape(title),
            detail=html.escape(detail),
            request_id=html.escape(rid),
        ).encode()
        content_type = b"text/html; charset=utf-8"
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [content_type])
    headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    if request_id:
        headers.setRawHeaders(b"x-request-id", [request_id])
    for name, value in (extra_headers or {}).items():
        headers.setRawHeaders(name, [value])
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def send_provider_unavailable(request: IRequest, detail: str, request_id: bytes) -> None:
    """503 when the identity provider cannot be reached (login or token renewal)."""
    send_error(
        request,
        503,
        detail + " Please try again in a minute.",
        error="provider_unavailable",
        request_id=request_id,
        extra_headers={b"retry-after": b"30"},
    )


def send_sessions_unavailable(request: IRequest, request_id: bytes) -> None:
    """503 when the session store (Redis) cannot answer: the one answer for it."""
    send_error(
        request,
        503,
        "Sessions are unavailable right now. Please try again in a moment.",
        error="session_store_unavailable",
        request_id=request_id,
        extra_headers={b"retry-after": b"5"},
    )
