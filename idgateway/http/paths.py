"""One reading of a request path, for the gate and the upstream alike.

A gateway is bypassed when it judges one path and the upstream serves another:
the gate once decoded ``%252e`` twice and read ``\\`` as ``/`` while the
upstream got the raw target. Here the target's path is parsed once into a
canonical path (RFC 3986: dot segments removed, percent-encoded unreserved
characters decoded, every other escape upper-cased). Public paths, authorization
rules, path sub-routes and forward-auth all match on it, and the upstream
receives exactly it.

What cannot be made canonical without guessing how the upstream reads it is
refused (``AmbiguousPath``, answered with 400): a dot segment carrying
``;params``, an encoded dot that forms a dot segment, ``%2F``/``%5C`` and a
literal ``\\`` (unless the route passes them), encoded control characters,
double encoding, overlong UTF-8 forms and invalid escapes.

Upstreams still read a canonical path in different ways: nginx merges ``//``,
servlet containers drop ``;params`` and read ``\\`` as ``/``, IIS ignores case
and trailing dots. The judge therefore also matches those readings, and a path
is public only when every reading is, and is refused when readings select
different sub-routes or rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar
from urllib.parse import unquote

import attrs

PassOrRefuse = Literal["refuse", "pass"]

_ALPHA_DIGIT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_UNRESERVED = frozenset(_ALPHA_DIGIT + b"-._~")
# Bytes that stay as they are in a canonical path: unreserved, sub-delims
# (";" included: it is a parameter only to some readers), ":", "@" and "/".
_LITERAL = frozenset(_ALPHA_DIGIT + b"-._~!$&'()*+,;=:@/")
# A path made of these only, with no "//" and no "/." in it, is its own
# canonical path and reads the same to every upstream: the common case.
_PLAIN = bytes(sorted(_LITERAL - {ord(";")}))
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_SLASH_RUNS = re.compile(r"/{2,}")
# "%25" then what another decoding pass would read as an escape: "%252e", and
# IIS's "%25u002e".
_DOUBLE_ENCODED = re.compile(rb"%25(?:[0-9A-Fa-f]{2}|[uU][0-9A-Fa-f]{4})")
# Escapes that are never UTF-8 but that old decoders read as ASCII: the
# overlong forms of "/" and "." ("%c0%af", "%e0%80%ae") that once walked past
# IIS and Tomcat.
_OVERLONG_UTF8 = re.compile(rb"%C[01]|%E0%[89]|%F0%8|%F[8-F]%[89AB]", re.IGNORECASE)
# Characters whose Unicode case mapping or Windows "best fit" is ASCII: on a
# case-insensitive route "/adm%C4%B1n/" (dotless i) or a fullwidth "ａdmin"
# could be "/admin/" to the upstream. Refused there.
_FOLDS_TO_ASCII = re.compile(
    rb"%C4%B[01]|%C5%BF|%E2%84%AA|%E2%84%AB|%EF%BC%[89AB][0-9A-F]|%EF%BD%[89][0-9A-F]|%EF%BD%A0"
)
# A segment of dots and spaces only ("...", ".. ") that Windows would trim
# into a dot segment.
_WINDOWS_DOTS = re.compile(r"(?:^|/)[. ]*(?:%20[. ]*)*(?=/|$)")


class AmbiguousPath(ValueError):
    """The path cannot be read one way only; ``str(error)`` says why, for people."""


@attrs.frozen
class PathPolicy:
    """How a route reads paths: its ``path_rules`` and ``case_insensitive_paths``."""

    encoded_slashes: PassOrRefuse = "refuse"
    backslashes: PassOrRefuse = "refuse"
    case_insensitive: bool = False


DEFAULT_POLICY = PathPolicy()


def canonical_path(raw: bytes, policy: PathPolicy = DEFAULT_POLICY) -> bytes:
    """The canonical form of a request target's path (no query), or AmbiguousPath."""
    if not raw.startswith(b"/"):
        raise AmbiguousPath("the request target must start with /")
    if not raw.translate(None, _PLAIN) and b"//" not in raw and b"/." not in raw:
        return raw
    pass_encoded = policy.encoded_slashes == "pass"
    pass_backslash = policy.backslashes == "pass"
    segments: list[bytes] = []
    # Whether each segment got a "." from an escape (%2e): such a segment may
    # not be a dot segment, since an upstream decoding again would resolve it.
    for piece in raw[1:].split(b"/"):
        segment, encoded_dot = _canonical_segment(piece, pass_encoded, pass_backslash)
        name = segment.split(b";", 1)[0]
        if name in (b".", b".."):
            if encoded_dot:
                raise AmbiguousPath("an encoded dot forms a dot segment (%2e)")
            if name != segment:
                raise AmbiguousPath("a dot segment carries ;parameters (..;)")
        segments.append(segment)
    canonical = b"/" + b"/".join(_remove_dot_segments(segments, b".", b"..", b""))
    if policy.case_insensitive:
        if _FOLDS_TO_ASCII.search(canonical):
            raise AmbiguousPath("a character that case-insensitive servers read as ASCII")
        text = canonical.decode("latin-1")
        for match in _WINDOWS_DOTS.finditer(text):
            if match.group().strip("/"):
                raise AmbiguousPath("a segment of dots and spaces (Windows trims it)")
    return canonical


def _canonical_segment(
    piece: bytes, pass_encoded: bool, pass_backslash: bool
) -> tuple[bytes, bool]:
    out = bytearray()
    encoded_dot = False
    i, end = 0, len(piece)
    while i < end:
        byte = piece[i]
        if byte == 0x25:  # "%"
            high, low = piece[i + 1 : i + 2], piece[i + 2 : i + 3]
            if not high or not low or high[0] not in _HEX or low[0] not in _HEX:
                raise AmbiguousPath("an invalid percent-escape (% without two hex digits)")
            value = int(piece[i + 1 : i + 3], 16)
            i += 3
            if value in _UNRESERVED:
                out.append(value)
                encoded_dot = encoded_dot or value == 0x2E
            elif value < 0x20 or value == 0x7F:
                raise AmbiguousPath(f"an encoded control character (%{value:02X})")
            elif value in (0x2F, 0x5C):
                if not pass_encoded:
                    raise AmbiguousPath(f"an encoded {'slash' if value == 0x2F else 'backslash'}")
                out += b"%%%02X" % value
            elif value == 0x25:
                out += b"%25"  # (what follows is checked once the segment is whole)
            else:
                out += b"%%%02X" % value
            continue
        if byte == 0x5C:  # "\"
            if not pass_backslash:
                raise AmbiguousPath("a backslash in the path")
            out.append(byte)
        elif byte <= 0x20 or byte == 0x7F:
            raise AmbiguousPath("a control character or space in the path")
        elif byte in _LITERAL:
            out.append(byte)
        else:  # not allowed bare in a path (non-ASCII, quotes, braces...): encode it
            out += b"%%%02X" % byte
        i += 1
    if _OVERLONG_UTF8.search(out):
        raise AmbiguousPath("an overlong UTF-8 sequence (%C0%AF and the like)")
    if _DOUBLE_ENCODED.search(out):
        # "%252e", or "%25%32%65" whose unreserved escapes decode to "%252e": a
        # server decoding twice would read an escape the gate never saw.
        raise AmbiguousPath("double percent-encoding (%25 followed by an escape)")
    return bytes(out), encoded_dot


_S = TypeVar("_S", bytes, str)


def _remove_dot_segments(segments: Sequence[_S], dot: _S, dotdot: _S, empty: _S) -> list[_S]:
    """RFC 3986 5.2.4 over a path's segments (those after its leading /)."""
    output: list[_S] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == dot or segment == dotdot:
            if segment == dotdot and output:
                output.pop()
            if index == last:
                output.append(empty)  # "/a/b/.." is "/a/", with its slash
            continue
        output.append(segment)
    return output


def readings(canonical: str, policy: PathPolicy = DEFAULT_POLICY) -> tuple[str, ...]:
    """The canonical path as the upstreams a gateway fronts may read it.

    The first is the canonical path itself (what an RFC 3986 server or nginx
    without merge_slashes reads); then nginx's merged slashes; then a servlet
    container's (``;params`` dropped, ``\\`` and, where passed, ``%2F``/``%5C``
    read as ``/``); then, on case-insensitive routes, IIS's (trailing dots and
    spaces of a segment ignored). Case itself is folded by the matcher.
    """
    found = [canonical]
    merged = _SLASH_RUNS.sub("/", canonical)
    if merged != canonical:
        found.append(merged)
    servlet = _servlet_reading(canonical, policy)
    if servlet not in found:
        found.append(servlet)
    if policy.case_insensitive:
        windows = "/".join(part.rstrip(". ") for part in servlet.replace("%20", " ").split("/"))
        windows = _SLASH_RUNS.sub("/", windows).replace(" ", "%20")
        if windows not in found:
            found.append(windows)
    return tuple(found)


def _servlet_reading(canonical: str, policy: PathPolicy) -> str:
    text = canonical.replace("%3B", ";")
    separators = False
    if policy.backslashes == "pass" and "\\" in text:
        text, separators = text.replace("\\", "/"), True
    if policy.encoded_slashes == "pass" and ("%2F" in text or "%5C" in text):
        text, separators = text.replace("%2F", "/").replace("%5C", "/"), True
    # Drop the parameters first: "/;x/admin/" is "//admin/", then "/admin/".
    stripped = "/".join(part.split(";", 1)[0] for part in text.split("/"))
    parts = _SLASH_RUNS.sub("/", stripped)[1:].split("/")
    if separators and any(part in (".", "..") for part in parts):
        # A passed \ or %2F would form a dot segment upstream: "/public/..\admin".
        raise AmbiguousPath("a backslash or encoded slash forms a dot segment")
    return "/" + "/".join(_remove_dot_segments(parts, ".", "..", ""))


@attrs.frozen
class PathReading:
    """A request path as the gate judges it and the upstream receives it."""

    # The canonical path, sent upstream (plus the unchanged query).
    canonical: bytes
    # Every reading of it (the canonical path first, as text).
    texts: tuple[str, ...]
    # The index of the path sub-route serving it (longest prefix), or None.
    sub_route: int | None
    # The index of the path sub-route whose authorize rules apply, or None.
    rules_route: int | None
    # The readings as path rules compare them (folded on case-insensitive
    # routes, see PathJudge.fold): public paths and api_paths match these.
    matched: tuple[str, ...] = ()
    # The canonical path is the raw path: the request target goes upstream as is.
    unchanged: bool = False

    @property
    def text(self) -> str:
        return self.texts[0]

    def everywhere(self, test: Callable[[str], bool]) -> bool:
        """Whether ``test`` holds for every reading as matched (how public paths
        are judged: public only if every reading is)."""
        for text in self.matched:
            if not test(text):
                return False
        return True


class PathJudge:
    """Reads request paths for one route: canonical form, readings, sub-route.

    ``prefixes`` are the route's ``paths[].prefix`` values (already canonical)
    in their configured order; ``with_rules`` says which of them carry their
    own authorize rules.
    """

    _CACHE_MAX = 4096

    def __init__(
        self,
        policy: PathPolicy,
        prefixes: Sequence[str] = (),
        with_rules: Sequence[bool] = (),
    ) -> None:
        self.policy = policy
        self.fold: Callable[[str], str] = fold_case if policy.case_insensitive else no_fold
        by_length = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]), reverse=True)
        self._subs = tuple((self.fold(prefixes[i]), i) for i in by_length)
        # Rules also cover a prefix's own path without its slash: "/admin/" rules
        # apply to "/admin" too (a servlet mapping "/admin/*" serves "/admin").
        rule_subs: list[tuple[str, int]] = []
        for prefix, i in self._subs:
            if i < len(with_rules) and with_rules[i]:
                rule_subs.append((prefix, i))
        self._rule_subs = tuple(rule_subs)
        self._rule_exact = {
            prefix[:-1]: i for prefix, i in rule_subs if prefix.endswith("/") and len(prefix) > 1
        }
        # Raw path -> its reading: pages ask for the same paths again and again.
        self._cache: dict[bytes, PathReading] = {}

    def read(self, raw: bytes) -> PathReading:
        """The reading of a request path, or AmbiguousPath."""
        cached = self._cache.get(raw)
        if cached is not None:
            return cached
        canonical = canonical_path(raw, self.policy)
        text = canonical.decode("latin-1")
        if canonical is raw and not self.policy.case_insensitive:
            texts: tuple[str, ...] = (text,)
        else:
            texts = readings(text, self.policy)
        matched = texts if self.fold is no_fold else tuple(self.fold(text) for text in texts)
        sub = self._agreed(matched, self._subs, "path sub-routes")
        rules = self._agreed(matched, self._rule_subs, "authorization rules", self._rule_exact)
        reading = PathReading(canonical, texts, sub, rules, matched, canonical is raw)
        if len(self._cache) >= self._CACHE_MAX:
            self._cache.clear()
        self._cache[raw] = reading
        return reading

    def _agreed(
        self,
        texts: tuple[str, ...],
        subs: tuple[tuple[str, int], ...],
        what: str,
        exact: dict[str, int] | None = None,
    ) -> int | None:
        if not subs:
            return None
        chosen = []
        for text in texts:  # (already folded)
            choice = self._longest(text, subs)
            if choice is None and exact:
                choice = exact.get(text)
            chosen.append(choice)
        if any(choice != chosen[0] for choice in chosen[1:]):
            raise AmbiguousPath(f"servers would read this path under different {what}")
        return chosen[0]

    @staticmethod
    def _longest(path: str, subs: tuple[tuple[str, int], ...]) -> int | None:
        for prefix, index in subs:
            if path.startswith(prefix):
                return index
        return None


_NON_ASCII_ESCAPES = re.compile(r"(?:%[89A-Fa-f][0-9A-Fa-f])+")


def fold_case(text: str) -> str:
    """A canonical path (or prefix) as a case-insensitive server compares it:
    escaped UTF-8 decoded, then Unicode case-folded, so "/CAF%C3%89/" and
    "/caf%C3%A9/" are one path, as they are to IIS."""
    if "%" in text:
        text = _NON_ASCII_ESCAPES.sub(lambda m: unquote(m.group(), errors="replace"), text)
    return text.casefold()


def no_fold(text: str) -> str:
    """The fold of a case-sensitive route: none."""
    return text
