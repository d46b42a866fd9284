"""Public paths, path normalisation, authorization rules and redirect targets."""

from __future__ import annotations

import pytest

from idgateway.config.model import AuthorizeRules, ClaimRule, PublicPath
from idgateway.gate.rules import (
    authorization_failure,
    compile_public_paths,
    is_public,
    safe_redirect,
)
from idgateway.http.paths import AmbiguousPath, PathJudge, PathPolicy

JUDGE = PathJudge(PathPolicy())


def public_everywhere(method: bytes, raw: bytes) -> bool:
    """As the gate judges: public only if every reading of the path is;
    a path that cannot be read one way only never gets that far (400)."""
    try:
        reading = JUDGE.read(raw)
    except AmbiguousPath:
        return False
    return reading.everywhere(lambda text: is_public(RULES, method, text))


RULES = compile_public_paths(
    [
        PublicPath(None, prefix="/healthz"),
        PublicPath("GET", prefix="/static/"),
        PublicPath(None, regex=r"^/assets/.*\.css$"),
    ]
)


@pytest.mark.parametrize(
    ("method", "raw", "public"),
    [
        (b"GET", b"/healthz", True),
        (b"POST", b"/healthz", True),
        (b"GET", b"/static/app.js", True),
        (b"HEAD", b"/static/app.js", True),
        (b"POST", b"/static/app.js", False),
        (b"GET", b"/static/../admin", False),
        (b"GET", b"/static/%2e%2e/admin", False),
        (b"GET", b"/static%2F..%2Fadmin", False),
        (b"GET", b"//static/../admin", False),
        (b"GET", b"/static/..;/admin", False),
        (b"GET", b"/assets/site.css", True),
        (b"GET", b"/assets/site.js", False),
        (b"GET", b"/admin", False),
        (b"GET", b"/healthz/live", True),
        (b"GET", b"/healthz-internal/dump", False),
        (b"GET", b"/healthzadmin", False),
        (b"GET", b"/static", True),
    ],
)
def test_public_paths_cannot_be_tricked(method: bytes, raw: bytes, public: bool) -> None:
    assert public_everywhere(method, raw) is public


def test_query_string_does_not_make_a_path_public() -> None:
    # The caller passes request.path (query already removed); a "?" inside a
    # path after decoding must not end the match early either.
    assert not public_everywhere(b"GET", b"/admin%3F/healthz")


CLAIMS = {
    "email": "alice@example.com",
    "email_verified": True,
    "groups": ["engineering", "ops"],
    "roles": "admin",
    "department": "eng",
}


def test_authorization_rules() -> None:
    assert authorization_failure(AuthorizeRules(), CLAIMS) is None
    assert authorization_failure(AuthorizeRules(email_domains=("example.com",)), CLAIMS) is None
    assert authorization_failure(AuthorizeRules(email_domains=("other.org",)), CLAIMS)
    assert authorization_failure(AuthorizeRules(groups=("ops",)), CLAIMS) is None
    assert authorization_failure(AuthorizeRules(groups=("sales",)), CLAIMS)
    assert authorization_failure(AuthorizeRules(roles=("admin",)), CLAIMS) is None
    assert (
        authorization_failure(
            AuthorizeRules(claims=(ClaimRule("department", "^(eng|ops)$", regex=True),)), CLAIMS
        )
        is None
    )
    assert authorization_failure(AuthorizeRules(claims=(ClaimRule("department", "sales"),)), CLAIMS)
    unverified = {**CLAIMS, "email_verified": False}
    assert authorization_failure(AuthorizeRules(email_domains=("example.com",)), unverified)
    no_email = {k: v for k, v in CLAIMS.items() if k != "email"}
    assert authorization_failure(AuthorizeRules(email_domains=("example.com",)), no_email)
    # WSO2 may send one group as a plain string; it is never split on commas.
    assert authorization_failure(AuthorizeRules(groups=("ops",)), {"groups": "ops"}) is None
    assert authorization_failure(AuthorizeRules(groups=("admins",)), {"groups": "evil,admins"})
    # A missing email_verified is not verified.
    missing = {k: v for k, v in CLAIMS.items() if k != "email_verified"}
    assert authorization_failure(AuthorizeRules(email_domains=("example.com",)), missing)
    stringly = {**CLAIMS, "email_verified": "false"}
    assert authorization_failure(AuthorizeRules(email_domains=("example.com",)), stringly)


@pytest.mark.parametrize(
    "target",
    [
        "//evil.com",
        "/\\evil.com",
        "https:evil.com",
        "/%2F%2Fevil.com",
        "javascript:alert(1)",
        "\t//evil.com",
        "https://app1.localhost@evil.com",
        "https://evil.com/",
        "/ok\r\nSet-Cookie: x=1",
        "",
        None,
    ],
)
def test_unsafe_redirects_are_refused(target: str | None) -> None:
    assert safe_redirect(target, host="app1.localhost") is None


def test_no_scheme_downgrade_on_the_same_host() -> None:
    assert safe_redirect("http://app1.localhost/x", host="app1.localhost", tls=True) is None
    assert safe_redirect("https://app1.localhost/x", host="app1.localhost", tls=True)


def test_safe_redirects_are_kept() -> None:
    assert safe_redirect("/a/b?c=d", host="app1.localhost") == "/a/b?c=d"
    assert safe_redirect("https://app1.localhost/x", host="app1.localhost") == (
        "https://app1.localhost/x"
    )
    assert (
        safe_redirect(
            "https://portal.example.com/p",
            host="app1.localhost",
            allowed=["https://portal.example.com"],
        )
        == "https://portal.example.com/p"
    )
