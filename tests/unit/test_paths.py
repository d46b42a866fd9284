"""One reading of a request path: the canonical form, what is refused, and the
readings of other servers that the gate must agree with."""

from __future__ import annotations

import pytest

from idgateway.http.paths import (
    AmbiguousPath,
    PathJudge,
    PathPolicy,
    canonical_path,
    readings,
)

PASS_ALL = PathPolicy(encoded_slashes="pass", backslashes="pass")


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"/", b"/"),
        (b"/a/b", b"/a/b"),
        (b"/a/b/", b"/a/b/"),
        (b"/static/../admin", b"/admin"),
        (b"/../../etc", b"/etc"),
        (b"/a/./b/.", b"/a/b/"),
        (b"/a/b/..", b"/a/"),
        (b"/a/..", b"/"),
        (b"/a//../b", b"/a/b"),  # RFC 3986: the empty segment is the one removed
        (b"//a//b/", b"//a//b/"),  # kept as is: nginx's merged reading is judged too
        (b"/%41%62%7e%2D%5f%2e1", b"/Ab~-_.1"),  # unreserved escapes are decoded
        (b"/a%3bb%3Ac%40", b"/a%3Bb%3Ac%40"),  # the others are upper-cased, kept
        (b"/caf\xc3\xa9/", b"/caf%C3%A9/"),  # bytes a path cannot carry bare are encoded
        (b'/q"<>^`{|}', b"/q%22%3C%3E%5E%60%7B%7C%7D"),
        (b"/a%25b", b"/a%25b"),  # an escaped % that starts no other escape
        (b"/a%25zz", b"/a%25zz"),
        (b"/static;jsessionid=1/x", b"/static;jsessionid=1/x"),
        (b"/.well-known/x", b"/.well-known/x"),
        (b"/a/.b/..c/...", b"/a/.b/..c/..."),  # not dot segments
    ],
)
def test_canonical_path(raw: bytes, canonical: bytes) -> None:
    assert canonical_path(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"/secret/..;/healthz", "dot segment carries ;parameters"),
        (b"/a/.;x/b", "dot segment carries ;parameters"),
        (b"/a/..;", "dot segment carries ;parameters"),
        (b"/static/%2e%2e/admin", "encoded dot forms a dot segment"),
        (b"/static/%2E./admin", "encoded dot forms a dot segment"),
        (b"/static/.%2e/admin", "encoded dot forms a dot segment"),
        (b"/static/%2e/admin", "encoded dot forms a dot segment"),
        (b"/static/%2e%2e;x/admin", "encoded dot forms a dot segment"),
        (b"/static/%252e%252e/admin", "double percent-encoding"),
        (b"/a/%252F", "double percent-encoding"),
        (b"/a/%25%32%65", "double percent-encoding"),  # %25 then an escape
        (b"/static%2F..%2Fadmin", "encoded slash"),
        (b"/a%2fb", "encoded slash"),
        (b"/a%5Cb", "encoded backslash"),
        (b"/x\\..\\..\\healthz", "backslash"),
        (b"/a\\b", "backslash"),
        (b"/a%00b", "encoded control character"),
        (b"/a%0d%0aSet-Cookie:x", "encoded control character"),
        (b"/a%09", "encoded control character"),
        (b"/a%7f", "encoded control character"),
        (b"/a%", "invalid percent-escape"),
        (b"/a%4", "invalid percent-escape"),
        (b"/a%zz", "invalid percent-escape"),
        (b"/a%%41", "invalid percent-escape"),
        (b"/a\x7fb", "control character"),
        (b"/public/..%c0%af../admin", "overlong UTF-8"),
        (b"/public/%c1%9c", "overlong UTF-8"),
        (b"/public/%e0%80%ae%e0%80%ae/admin", "overlong UTF-8"),
        (b"/public/%f0%80%80%af", "overlong UTF-8"),
        (b"/public/%u002e%u002e/admin", "invalid percent-escape"),
        (b"a/b", "must start with /"),
    ],
)
def test_what_cannot_be_read_one_way_is_refused(raw: bytes, why: str) -> None:
    with pytest.raises(AmbiguousPath, match=why.replace("(", r"\(")):
        canonical_path(raw)


def test_passed_slashes_and_backslashes_stay_opaque() -> None:
    assert canonical_path(b"/files/a%2fb%5cc", PASS_ALL) == b"/files/a%2Fb%5Cc"
    assert canonical_path(b"/files/a\\b", PASS_ALL) == b"/files/a\\b"
    # Only what the route passes: the other one is still refused.
    with pytest.raises(AmbiguousPath):
        canonical_path(b"/a\\b", PathPolicy(encoded_slashes="pass"))
    with pytest.raises(AmbiguousPath):
        canonical_path(b"/a%2Fb", PathPolicy(backslashes="pass"))


@pytest.mark.parametrize(
    "raw",
    [b"/public/..\\admin", b"/public\\..\\admin", b"/public/..%2Fadmin", b"/public/%2F..%5Cx"],
)
def test_passed_separators_may_not_form_dot_segments(raw: bytes) -> None:
    # A servlet container reading \ or %2F as / would resolve these upstream.
    with pytest.raises(AmbiguousPath, match="forms a dot segment"):
        PathJudge(PASS_ALL).read(raw)


def test_readings_of_a_path() -> None:
    assert readings("/a/b") == ("/a/b",)
    assert readings("//admin//x") == ("//admin//x", "/admin/x")
    assert readings("/admin;jsessionid=1/x") == ("/admin;jsessionid=1/x", "/admin/x")
    assert readings("/admin%3Bx/y") == ("/admin%3Bx/y", "/admin/y")
    iis = PathPolicy(case_insensitive=True)
    assert readings("/Admin./x%20/y", iis) == ("/Admin./x%20/y", "/Admin/x/y")


JUDGE = PathJudge(PathPolicy(), ["/api/", "/admin/", "/admin/reports/"], [False, True, False])


@pytest.mark.parametrize(
    ("raw", "sub_route", "rules_route"),
    [
        (b"/", None, None),
        (b"/api/x", 0, None),
        (b"/admin/x", 1, 1),
        (b"/admin/reports/q", 2, 1),  # the longest prefix serves; the rules come from /admin/
        (b"/adminx", None, None),
        (b"/x/../admin/y", 1, 1),
        (b"/%61dmin/y", 1, 1),
    ],
)
def test_the_judge_picks_sub_route_and_rules(
    raw: bytes, sub_route: int | None, rules_route: int | None
) -> None:
    reading = JUDGE.read(raw)
    assert (reading.sub_route, reading.rules_route) == (sub_route, rules_route)


@pytest.mark.parametrize(
    "raw",
    [
        b"//admin/x",  # nginx merges the slashes: /admin/x
        b"/admin;x/y",  # a servlet drops ;x: /admin/y
        b"/admin%3Bx/y",  # ... or decodes it first
        b"/api;v=2/x",
    ],
)
def test_paths_that_servers_read_under_different_rules_are_refused(raw: bytes) -> None:
    with pytest.raises(AmbiguousPath, match="different"):
        JUDGE.read(raw)


def test_case_insensitive_routes_fold_paths_and_prefixes() -> None:
    judge = PathJudge(PathPolicy(case_insensitive=True), ["/Admin/"], [True])
    assert judge.read(b"/ADMIN/x").rules_route == 0
    assert judge.read(b"/admin/x").rules_route == 0
    # IIS ignores a segment's trailing dots and spaces.
    assert _refused(judge, b"/admin./x") or judge.read(b"/admin./x").rules_route == 0
    assert _refused(judge, b"/admin%20/x") or judge.read(b"/admin%20/x").rules_route == 0
    # Case-sensitive by default, as nginx.
    assert PathJudge(PathPolicy(), ["/Admin/"], [True]).read(b"/ADMIN/x").rules_route is None


def _refused(judge: PathJudge, raw: bytes) -> bool:
    try:
        judge.read(raw)
    except AmbiguousPath:
        return True
    return False


def test_the_plain_path_is_its_own_canonical_path_and_is_remembered() -> None:
    judge = PathJudge(PathPolicy())
    raw = b"/static/app.js"
    reading = judge.read(raw)
    assert reading.canonical is raw and reading.texts == ("/static/app.js",)
    assert judge.read(raw) is reading


@pytest.mark.parametrize(
    "raw",
    [
        b"/adm%C4%B1n/x",  # dotless i: Java's equalsIgnoreCase reads it as I
        b"/adm%C4%B0n/x",  # dotted capital I
        b"/%E2%84%AAey/",  # Kelvin sign K
        b"/s%C5%BFecret/",  # long s
        b"/%EF%BD%81dmin/",  # fullwidth a (Windows best fit)
        b"/public/..%20/admin",  # Windows trims ".. " to ".."
        b"/public/.../admin",
        b"/public/.%20./admin",
    ],
)
def test_case_insensitive_routes_refuse_what_folds_to_ascii(raw: bytes) -> None:
    judge = PathJudge(PathPolicy(case_insensitive=True), ["/admin/"], [True])
    with pytest.raises(AmbiguousPath):
        judge.read(raw)
    if b"%20" not in raw and b"..." not in raw:
        assert PathJudge(PathPolicy()).read(raw).canonical  # fine where case matters


@pytest.mark.parametrize(
    "raw", [b"/public/%25u002e%25u002e/admin", b"/a%F8%80%80%80%AF", b"/a%FC%80%80%80%80%AF"]
)
def test_more_double_encodings_and_overlong_forms_are_refused(raw: bytes) -> None:
    with pytest.raises(AmbiguousPath):
        canonical_path(raw)


def test_rules_under_a_prefix_cover_the_prefix_without_its_slash() -> None:
    # A servlet mapping "/admin/*" serves "/admin" too.
    assert JUDGE.read(b"/admin").rules_route == 1
    assert JUDGE.read(b"/admin").sub_route is None  # the upstream choice is nginx's
    assert JUDGE.read(b"/adminx").rules_route is None
    with pytest.raises(AmbiguousPath):
        JUDGE.read(b"/admin;jsessionid=1")


def test_case_insensitive_routes_fold_non_ascii_as_iis_does() -> None:
    from idgateway.config.values import canonical_prefix

    judge = PathJudge(PathPolicy(case_insensitive=True), [canonical_prefix("/café/")], [True])
    for raw in (b"/caf%C3%A9/x", b"/CAF%C3%89/x", b"/Caf%c3%a9/x"):
        assert judge.read(raw).rules_route == 0, raw
    plain = PathJudge(PathPolicy(), [canonical_prefix("/café/")], [True])
    assert plain.read(b"/CAF%C3%89/x").rules_route is None  # case matters there


def test_a_plain_path_goes_upstream_unchanged() -> None:
    judge = PathJudge(PathPolicy())
    assert judge.read(b"/a/b").unchanged
    assert not judge.read(b"/a/./b").unchanged
    # A cached reading still says so for another bytes object of the same path.
    assert judge.read(bytes(bytearray(b"/a/b"))).unchanged
