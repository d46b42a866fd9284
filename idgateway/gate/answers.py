"""The answers the gate gives itself: JSON documents and redirects.

Both end the response before any request body arrived (``end_response_early``):
the gate never reads a body it answers without.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from idgateway.server.channel import GatewayRequest


def origin(host: bytes, tls: bool) -> str:
    return ("https://" if tls else "http://") + host.decode("latin-1")


def start_url(request: GatewayRequest, host: bytes, tls: bool) -> str:
    return f"{origin(host, tls)}/oauth2/start?rd={quote(request.uri.decode('latin-1'), safe='')}"


def send_json(
    request: GatewayRequest,
    status: int,
    payload: dict[str, Any],
    *,
    set_cookies: list[bytes] = (),  # type: ignore[assignment]
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> None:
    body = json.dumps(payload).encode()
    request.setResponseCode(status)
    out = request.responseHeaders
    out.setRawHeaders(b"content-type", [b"application/json"])
    out.setRawHeaders(b"content-length", [b"%d" % len(body)])
    out.setRawHeaders(b"cache-control", [b"no-store"])
    for value in set_cookies:
        out.addRawHeader(b"set-cookie", value)
    for name, value in headers:
        out.addRawHeader(name, value)
    request.end_response_early()
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def send_redirect(request: GatewayRequest, location: str, set_cookies: list[bytes] = ()) -> None:  # type: ignore[assignment]
    request.setResponseCode(302)
    out = request.responseHeaders
    out.setRawHeaders(b"location", [location.encode("latin-1", "replace")])
    out.setRawHeaders(b"cache-control", [b"no-store"])
    out.setRawHeaders(b"content-length", [b"0"])
    for value in set_cookies:
        out.addRawHeader(b"set-cookie", value)
    request.end_response_early()
    request.finish()
