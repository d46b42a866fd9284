"""Sessions kept in the browser: sealed, route-bound, chunked cookies.

The cookie value is ``KeyRing.seal`` of an envelope::

    flags (1) | [expires-at, uint64 seconds, if FLAG_EXPIRES] | JSON, zlib'd if FLAG_ZLIB

with associated data naming the route, the cookie and the route's provider
and client id, so a cookie minted for one route (or for this route before a
reload moved it to another provider or client) is refused even when the
keys are the same. A token
longer than ``max_chunk`` is split over ``name``, ``name_1``, ``name_2``...;
the first chunk then starts with ``"<count>."`` (``.`` never occurs in a
token), so stale chunks left behind by a larger session are ignored rather
than glued on.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from idgateway.http.numbers import parse_decimal
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.model import Session
from idgateway.sessions.recent import RecentlyUsed

HOST_PREFIX = "__Host-"

FLAG_ZLIB = 0x01
FLAG_EXPIRES = 0x02
_KNOWN_FLAGS = FLAG_ZLIB | FLAG_EXPIRES
_EXPIRES = struct.Struct(">Q")

# Below this, zlib rarely pays for its header.
_COMPRESS_FROM = 128
# The envelope is authenticated, so only we could have made a zlib bomb; the
# cap is for a future bug, not an attacker.
_MAX_INFLATED = 1 << 20

# Recently opened cookies, so a browser's next request with the same cookie
# skips AES, zlib and JSON (about 20 us -> 1 us). Only tokens that opened are
# kept, compared in full, and the cache lives and dies with its codec (a key
# change builds a new one). Bounded to a few MB, and to the cookies used in
# the last one to two minutes (sessions/recent.py: a refreshed or re-issued
# cookie is never sent again, so it must not stay until the bound pushes it out).
_CACHE_ENTRIES = 1024
_CACHE_PERIOD = 60.0
_CACHE_TOKEN_BYTES = 4096

_SAME_SITE = ("Lax", "Strict", "None")
# RFC 9110 token characters: what a cookie name may contain.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_EPOCH = b"Thu, 01 Jan 1970 00:00:00 GMT"


class SessionTooLarge(Exception):
    """The session needs more cookies than allowed; store a smaller one."""


# The signed-out marker cookie: its name after the session cookie's, and how
# long a sign-out at the provider may take before the browser comes back.
SIGNED_OUT_SUFFIX = b"_signed_out"
SIGNED_OUT_FOR = 600


def _check_cookie_name(instance: Any, attribute: Any, value: str) -> None:
    if not value or not set(value) <= _TOKEN_CHARS:
        raise ValueError(
            f"cookie {attribute.name} {value!r} must be non-empty and use only letters, "
            "digits and !#$%&'*+-.^_`|~"
        )


def _check_attribute_text(instance: Any, attribute: Any, value: str | None) -> None:
    if value is None:
        return
    if not value or any(c in value for c in ";, \t\r\n") or not value.isascii():
        raise ValueError(
            f"cookie {attribute.name} {value!r} must be non-empty ASCII without ';', ',' or spaces"
        )


def _check_path(instance: Any, attribute: Any, value: str) -> None:
    _check_attribute_text(instance, attribute, value)
    if not value.startswith("/"):
        raise ValueError(f"cookie path {value!r} must start with '/'")


def _check_same_site(instance: Any, attribute: Any, value: str) -> None:
    if value not in _SAME_SITE:
        raise ValueError(f"same_site {value!r} must be one of Lax, Strict, None")


def _check_positive(instance: Any, attribute: Any, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


def _check_chunk(instance: Any, attribute: Any, value: int) -> None:
    if value < 64:
        raise ValueError(f"max_chunk must be at least 64 bytes, not {value}")


@attrs.frozen
class CookieSettings:
    """How a route's session cookie looks to the browser."""

    name: str = attrs.field(validator=_check_cookie_name)
    secure: bool
    domain: str | None = attrs.field(default=None, validator=_check_attribute_text)
    path: str = attrs.field(default="/", validator=_check_path)
    same_site: str = attrs.field(default="Lax", validator=_check_same_site)
    max_chunk: int = attrs.field(default=3800, validator=_check_chunk)
    max_chunks: int = attrs.field(default=8, validator=_check_positive)
    host_prefix: bool = True

    @property
    def effective_name(self) -> str:
        """``__Host-`` + name where the browser would accept it, else name."""
        if self.host_prefix and self.secure and self.domain is None and self.path == "/":
            return HOST_PREFIX + self.name
        return self.name


def cookie_attributes(
    *,
    path: str,
    secure: bool,
    same_site: str,
    domain: str | None = None,
    http_only: bool = True,
) -> bytes:
    """The fixed part of a Set-Cookie value (everything but name, value, Max-Age).

    SameSite=None without Secure becomes Lax: browsers drop such cookies,
    which would turn every login into a loop.
    """
    if same_site == "None" and not secure:
        same_site = "Lax"
    parts = [f"; Path={path}"]
    if domain is not None:
        parts.append(f"; Domain={domain}")
    if secure:
        parts.append("; Secure")
    if http_only:
        parts.append("; HttpOnly")
    parts.append(f"; SameSite={same_site}")
    return "".join(parts).encode("ascii")


def set_cookie_value(name: bytes, value: bytes, attributes: bytes, max_age: int | None) -> bytes:
    """A Set-Cookie header value; ``max_age=None`` makes a browser-session cookie."""
    if max_age is None:
        return b"%s=%s%s" % (name, value, attributes)
    return b"%s=%s; Max-Age=%d%s" % (name, value, max_age, attributes)


def deletion_value(name: bytes, attributes: bytes) -> bytes:
    """A Set-Cookie header value that makes the browser drop ``name``.

    It repeats the cookie's Path/Domain/Secure: a deletion only matches a
    cookie with the same scope, and ``__Host-`` cookies must be Secure.
    """
    return b"%s=; Max-Age=0; Expires=%s%s" % (name, _EPOCH, attributes)


class CookieSessionCodec:
    """Turns a route's ``Session`` into Set-Cookie values and back.

    ``binding`` (``sessions.binding.session_binding``: the provider and
    client id) is sealed in as associated data along with the route and
    cookie name, so a cookie made under another provider or client does not
    open. ``clock`` gives the time for the expiry sealed inside cookies that have
    a Max-Age (pass a test clock's ``seconds``; the default is fine otherwise).
    """

    def __init__(
        self,
        route_id: str,
        keyring: KeyRing,
        settings: CookieSettings,
        *,
        clock: Callable[[], float] = time.time,
        binding: bytes = b"",
    ) -> None:
        self.route_id = route_id
        self.settings = settings
        self.cookie_name = settings.effective_name
        self._keyring = keyring
        self._clock = clock
        self._recent: RecentlyUsed[bytes, tuple[Session, int | None]] = RecentlyUsed(
            clock, _CACHE_PERIOD, _CACHE_ENTRIES
        )
        name = self.cookie_name.encode("ascii")
        self._names = [name] + [b"%s_%d" % (name, i) for i in range(1, settings.max_chunks)]
        # Cookie name -> one more than its chunk index.
        self._chunk_numbers = {chunk: i + 1 for i, chunk in enumerate(self._names)}
        self._associated_data = b"idgateway session\x00%s\x00%s\x00%s" % (
            route_id.encode("utf-8"),
            name,
            binding,
        )
        self._attributes = cookie_attributes(
            path=settings.path,
            secure=settings.secure,
            same_site=settings.same_site,
            domain=settings.domain,
        )
        # Both the prefixed and the plain family are ours: a listener that
        # changed between TLS and plain leaves the other kind in browsers.
        bases = {self.cookie_name, settings.name}
        self._own_bases = tuple(base.encode("ascii") + b"_" for base in bases)
        # Set by sign-out, read once when the provider sends the browser back:
        # the gateway then shows its signed-out page instead of a new login.
        self.signed_out_name = name + SIGNED_OUT_SUFFIX
        self._own_names = (
            frozenset(
                b"%s%d" % (base, i)
                for base in self._own_bases
                for i in range(1, settings.max_chunks)
            )
            | frozenset(base.encode("ascii") for base in bases)
            | frozenset(base.encode("ascii") + SIGNED_OUT_SUFFIX for base in bases)
        )

    # -- encoding ----------------------------------------------------------

    def _envelope(self, session: Session, max_age: int | None) -> bytes:
        payload = json.dumps(
            session.to_json_dict(), separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        flags = 0
        if len(payload) >= _COMPRESS_FROM:
            packed = zlib.compress(payload)
            if len(packed) < len(payload):
                payload = packed
                flags |= FLAG_ZLIB
        if max_age is None:
            return bytes([flags]) + payload
        expires = max(0, int(self._clock()) + max_age)
        return bytes([flags | FLAG_EXPIRES]) + _EXPIRES.pack(expires) + payload

    def _split(self, token: bytes) -> list[bytes]:
        size = self.settings.max_chunk
        if len(token) <= size:
            return [token]
        for count in range(2, self.settings.max_chunks + 1):
            head = b"%d." % count
            if len(token) + len(head) <= count * size:
                first = size - len(head)
                rest = token[first:]
                return [head + token[:first]] + [
                    rest[i : i + size] for i in range(0, len(rest), size)
                ]
        raise SessionTooLarge(
            f"session for route {self.route_id!r} needs {len(token)} bytes of cookie, more than "
            f"{self.settings.max_chunks} cookies of {size} bytes"
        )

    def encode(
        self, session: Session, previous_chunks: int = 0, max_age: int | None = None
    ) -> list[bytes]:
        """Set-Cookie values for ``session``, plus deletions of chunks no longer used.

        ``previous_chunks`` is what ``decode`` reported for this request.
        Raises ``SessionTooLarge`` when more than ``max_chunks`` are needed.
        """
        token = self._keyring.seal(self._envelope(session, max_age), self._associated_data)
        chunks = self._split(token)
        headers = [
            set_cookie_value(name, chunk, self._attributes, max_age)
            for name, chunk in zip(self._names, chunks, strict=False)
        ]
        stale_end = min(previous_chunks, len(self._names))
        headers.extend(
            deletion_value(self._names[i], self._attributes) for i in range(len(chunks), stale_end)
        )
        return headers

    # -- decoding ----------------------------------------------------------

    def chunks_present(self, cookies: Mapping[bytes, bytes]) -> int:
        """One more than the highest chunk index in ``cookies`` (0 if none)."""
        # Over the request's cookies (a few) rather than every possible chunk name.
        present = 0
        chunk_numbers = self._chunk_numbers
        for name in cookies:
            number = chunk_numbers.get(name)
            if number is not None and number > present:
                present = number
        return present

    def decode(self, cookies: Mapping[bytes, bytes]) -> tuple[Session | None, int]:
        """The session in ``cookies`` (None if absent or invalid), and the chunk count.

        Never raises: anything missing, tampered, foreign or expired is None.
        The returned ``Session`` may be shared with other requests carrying
        the same cookie: treat it (and its claims) as read-only.
        """
        session, present, _ = self.decode_with_expiry(cookies)
        return session, present

    def decode_with_expiry(
        self, cookies: Mapping[bytes, bytes]
    ) -> tuple[Session | None, int, int | None]:
        """``decode``, and the expiry sealed in the cookie (None: none; see
        ``cookie_alive``), for callers that remember what a cookie opened to."""
        present = self.chunks_present(cookies)
        if not present:
            return None, 0, None
        first = cookies.get(self._names[0])
        if first is None:
            return None, present, None
        if b"." in first:
            head, _, first = first.partition(b".")
            count = parse_decimal(head)
            if count is None or not 2 <= count <= present:
                return None, present, None
            parts = [first]
            for name in self._names[1:count]:
                part = cookies.get(name)
                if part is None:
                    return None, present, None
                parts.append(part)
            token = b"".join(parts)
        else:
            token = first
        cached = self._recent.get(token)
        if cached is None:
            envelope = self._keyring.open(token, self._associated_data)
            if envelope is None:
                return None, present, None
            cached = self._parse_envelope(envelope)
            if cached is None:
                return None, present, None
            self._remember(token, cached)
        session, expires = cached
        if expires is not None and expires <= self._clock():
            return None, present, None
        return session, present, expires

    def cookie_alive(self, expires: int | None) -> bool:
        """Whether a cookie sealed with ``expires`` (``decode_with_expiry``)
        would still open now."""
        return expires is None or expires > self._clock()

    def _remember(self, token: bytes, opened: tuple[Session, int | None]) -> None:
        if len(token) > _CACHE_TOKEN_BYTES:
            return
        self._recent.put(token, opened)

    def _parse_envelope(self, envelope: bytes) -> tuple[Session, int | None] | None:
        if not envelope:
            return None
        flags = envelope[0]
        if flags & ~_KNOWN_FLAGS:
            return None
        offset = 1
        expires: int | None = None
        if flags & FLAG_EXPIRES:
            if len(envelope) < 1 + _EXPIRES.size:
                return None
            (expires,) = _EXPIRES.unpack_from(envelope, 1)
            offset += _EXPIRES.size
        payload = envelope[offset:]
        try:
            if flags & FLAG_ZLIB:
                inflater = zlib.decompressobj()
                payload = inflater.decompress(payload, _MAX_INFLATED)
                if inflater.unconsumed_tail or not inflater.eof:
                    return None
            data = json.loads(payload)
            if not isinstance(data, dict):
                return None
            return Session.from_json_dict(data), expires
        except (ValueError, TypeError, KeyError, zlib.error, RecursionError):
            return None

    # -- removal -----------------------------------------------------------

    def plain_cookie(self, value: bytes) -> bytes:
        """A Set-Cookie for an opaque value under this codec's name and attributes
        (the Redis store's session id: nothing to seal, nothing to chunk)."""
        return set_cookie_value(self._names[0], value, self._attributes, None)

    def signed_out_marker(self) -> bytes:
        """A Set-Cookie telling the next unauthenticated visit to show the signed-out page."""
        return set_cookie_value(self.signed_out_name, b"1", self._attributes, SIGNED_OUT_FOR)

    def signed_out_marker_clear(self) -> bytes:
        return deletion_value(self.signed_out_name, self._attributes)

    def clear(self, chunks_present: int) -> list[bytes]:
        """Set-Cookie values deleting every chunk ``decode`` reported (at least the first).

        Never more than ``max_chunks``: only the names this codec could have
        set are counted, so a request with hundreds of forged ``name_N``
        cookies gets at most ``max_chunks`` deletions (the rest are not ours).
        """
        count = min(max(chunks_present, 1), len(self._names))
        return [deletion_value(self._names[i], self._attributes) for i in range(count)]

    def is_own_cookie(self, name: bytes) -> bool:
        """True for the session cookie and its chunks (never sent upstream)."""
        if name in self._own_names:
            return True
        for base in self._own_bases:
            if name.startswith(base) and name[len(base) :].isdigit():
                return True
        return False


def parse_cookie_header(values: Sequence[bytes]) -> dict[bytes, bytes]:
    """Cookie header values -> {name: value}; the first occurrence of a name wins.

    Browsers send the most specific cookie first, so the first one is the
    one set for this host. Pairs without ``=`` or with an empty name are
    skipped; spaces and tabs around names and values are dropped.
    """
    cookies: dict[bytes, bytes] = {}
    for header in values:
        for pair in header.split(b";"):
            name, sep, value = pair.partition(b"=")
            if not sep:
                continue
            name = name.strip(b" \t")
            if name and name not in cookies:
                cookies[name] = value.strip(b" \t")
    return cookies


class CookieHeaderReader:
    """Cookie headers read before: what goes upstream, and the cookies by name.

    A browser sends the same Cookie header with every request until one of
    its cookies changes, so a header is split, stripped and parsed once and
    the result reused (a ~2 KB session cookie made that a third of the
    gate's work). Results are shared: treat the dict as read-only.

    Bounded, since the headers are the clients' to choose: only headers of at
    most ``max_bytes`` and ``max_pairs`` cookies are kept, and the memo starts
    again when it holds ``limit`` headers or about ``max_total_bytes`` (the
    headers, their parsed copies and the dicts). ``is_own`` is part of the
    answer, so a new one empties the memo.
    """

    def __init__(
        self,
        limit: int = 1024,
        max_bytes: int = 8192,
        max_pairs: int = 64,
        max_total_bytes: int = 4 << 20,
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.max_pairs = max_pairs
        self.max_total_bytes = max_total_bytes
        self._known: dict[bytes, tuple[bytes | None, dict[bytes, bytes]]] = {}
        self._bytes = 0
        self._is_own: Callable[[bytes], bool] | None = None
        # Counts the times the memo started again: what callers keep beside
        # the answers (by their identity) is to start again with it.
        self.generation = 0

    def read(
        self, values: Sequence[bytes], is_own: Callable[[bytes], bool]
    ) -> tuple[bytes | None, dict[bytes, bytes]]:
        """(the Cookie header for the upstream or None, {name: value})."""
        if is_own is not self._is_own:
            self._forget()
            self._is_own = is_own
        # (A header value holds no LF: joined by one, distinct lists stay distinct.)
        key = values[0] if len(values) == 1 else b"\n".join(values)
        found = self._known.get(key)
        if found is None:
            found = (strip_cookies(values, is_own), parse_cookie_header(values))
            if len(key) <= self.max_bytes and len(found[1]) <= self.max_pairs:
                # The key, the parsed copies of its bytes, ~100 bytes a pair.
                size = 2 * len(key) + 100 * len(found[1])
                if len(self._known) >= self.limit or self._bytes + size > self.max_total_bytes:
                    self._forget()
                self._known[key] = found
                self._bytes += size
        return found

    def remembers(self, values: Sequence[bytes]) -> bool:
        """Whether ``read`` keeps its answer for these values (the same
        objects come back for them until the memo starts again)."""
        key = values[0] if len(values) == 1 else b"\n".join(values)
        return key in self._known

    def _forget(self) -> None:
        self._known.clear()
        self._bytes = 0
        self.generation += 1


def strip_cookies(values: Sequence[bytes], is_own: Callable[[bytes], bool]) -> bytes | None:
    """The Cookie header to send upstream: every cookie but the gateway's.

    Other cookies keep their order and exact bytes; a header with nothing of
    ours in it comes back unchanged. None when nothing is left.
    """
    kept: list[bytes] = []
    removed = False
    for header in values:
        for pair in header.split(b";"):
            pair = pair.strip(b" \t")
            if not pair:
                continue
            name, sep, _ = pair.partition(b"=")
            if sep and is_own(name.rstrip(b" \t")):
                removed = True
                continue
            kept.append(pair)
    if not kept:
        return None
    if not removed and len(values) == 1:
        return values[0]
    return b"; ".join(kept)
