"""HTTP/1.1 syntax shared by the request and response parsers."""

# RFC 9110 5.6.2: the characters of a token (a method, a header name).
TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def is_token(text: bytes) -> bool:
    return bool(text) and not text.translate(None, TOKEN_CHARS)
