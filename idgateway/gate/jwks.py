"""The gateway's JWKS endpoint: the public keys an upstream verifies assertions with.

Answered by the gateway itself at ``JWKS_PATH`` on every route's hosts (before
any login, public path or upstream could answer in its place) and on the admin
listener. The document is made once per configuration
(``config.signing_keys.AssertionKeySet``).
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from idgateway.config.signing_keys import JWKS_PATH, AssertionKeySet

__all__ = ["JWKS_PATH", "JwksResource", "send_jwks"]

JWKS_CONTENT_TYPE = b"application/jwk-set+json"
# Verifiers may cache the key set this long. A rollover publishes the new key
# before it signs (see the module docstring), so caching cannot break it.
JWKS_CACHE_CONTROL = b"public, max-age=300"


def send_jwks(request: Any, keys: AssertionKeySet) -> None:
    """Answer a request for the JWKS (GET or HEAD; anything else is 405)."""
    if request.method not in (b"GET", b"HEAD"):
        body = b'{"error": "method_not_allowed"}\n'
        request.setResponseCode(405)
        request.responseHeaders.setRawHeaders(b"allow", [b"GET, HEAD"])
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    else:
        body = keys.jwks_body
        request.setResponseCode(200)
        request.responseHeaders.setRawHeaders(b"content-type", [JWKS_CONTENT_TYPE])
        request.responseHeaders.setRawHeaders(b"cache-control", [JWKS_CACHE_CONTROL])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
    request.responseHeaders.setRawHeaders(b"x-content-type-options", [b"nosniff"])
    end_early = getattr(request, "end_response_early", None)
    if end_early is not None:
        end_early()  # a gateway request: an unread body must not become the next request
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


class JwksResource(Resource):
    """``/.well-known/`` on the admin listener: ``idgateway/jwks.json`` and nothing else."""

    isLeaf = True

    def __init__(self, current_keys: Any) -> None:
        super().__init__()
        # Called per request: the key set of the configuration running now.
        self.current_keys = current_keys

    def render(self, request: Request) -> bytes | int:
        if request.postpath != [b"idgateway", b"jwks.json"]:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain")
            return b"not found\n"
        send_jwks(request, self.current_keys())
        return NOT_DONE_YET  # (send_jwks has finished it)
