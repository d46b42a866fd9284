"""HTTP/1.1 syntax shared by the request and response parsers."""

# RFC 9110 5.6.2: the characters of a token (a method, a header name).
TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def is_token(text: bytes) -> bool:
    return bool(text) and not text.translate(None, TOKEN_CHARS)


# The bytes a request target may hold: visible ASCII (RFC 9112 3.2 and RFC
# 3986; anything else is percent-encoded). Not twisted.web's check, which
# also lets DEL and 0x80-0xB0 through (``c > 176``, meant as octal 0o176):
# forwarded verbatim, a byte such as 0x85 (NEL) is whitespace to some
# upstream parsers, which would then read another request line.
REQUEST_TARGET_CHARS = bytes(range(0x21, 0x7F))


def is_request_target(target: bytes) -> bool:
    return bool(target) and not target.translate(None, REQUEST_TARGET_CHARS)
