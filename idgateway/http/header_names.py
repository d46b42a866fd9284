"""Header names with a fixed meaning to a proxy: hop-by-hop, forwarding, never accepted.

Shared by the config (an identity header may not be one of these) and the
data path (the proxy drops or rewrites them).
"""

# Response hop-by-hop headers (RFC 9110 7.6.1), lower case.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Request headers that describe the client's hop, not the request.
REQUEST_HOP_BY_HOP = HOP_BY_HOP | {b"host", b"content-length"}

FORWARDING_HEADERS = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        # Where the app is mounted (Spring, Symfony, ASP.NET build links and
        # redirects with it): believed from trusted proxies, like the others.
        b"x-forwarded-prefix",
        b"forwarded",
        b"x-real-ip",
        # Other spellings of the same facts that frameworks and CDNs read
        # (Rack prefers X-Forwarded-Scheme to -Proto; IIS Front-End-Https):
        # believed from trusted proxies only, like the others.
        b"x-forwarded-scheme",
        b"x-forwarded-ssl",
        b"x-forwarded-server",
        b"x-forwarded-path",
        b"x-forwarded-uri",
        b"x-original-uri",
        b"x-url-scheme",
        b"front-end-https",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
    }
)

# Dropped from every request, trusted proxies' too: IIS-era URL overrides that
# frameworks (Symfony, Zend/Laminas, Drupal) read in place of the request
# line, so a path the gateway checked would not be the path the app serves.
ALWAYS_STRIPPED = frozenset({b"x-original-url", b"x-rewrite-url"})


# Every byte but a letter or a digit reads as '-' in a header key.
_KEY_FOLD = bytes(
    c + 32 if 0x41 <= c <= 0x5A else c if (0x30 <= c <= 0x39 or 0x61 <= c <= 0x7A) else 0x2D
    for c in range(256)
)


def header_key(name: bytes) -> bytes:
    """The spelling-insensitive form of a header name: ``X_Forwarded-User`` -> ``x-forwarded-user``.

    Some servers (CGI, PHP, mod_wsgi) turn ``-`` into ``_``, and some fold other
    punctuation as well (PHP's built-in server reads ``X.Forwarded.User`` as
    ``HTTP_X_FORWARDED_USER``): a header an attacker spells with underscores,
    dots or any other token character in place of ``-`` must be stripped like
    the real one.
    """
    return name.translate(_KEY_FOLD)
