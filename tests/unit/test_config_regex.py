"""Config regexes run on RE2: linear time, and what RE2 cannot run is refused at check."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from idgateway.config.model import AuthorizeRules, ClaimRule, PublicPath
from idgateway.config.regex import compile_config_regex, not_starting_with
from idgateway.gate.rules import authorization_failure, compile_public_paths, is_public
from tests.unit.test_config_auth import OIDC, problems, route_with

# Each of these backtracks exponentially (or close) on Python's re.
CATASTROPHIC = [
    r"^/pub/(a+)+$",
    r"^/pub/(a|a)+$",
    r"^/pub/(a|aa)+$",
    r"^/pub/(.*a){12}$",
    r"^/pub/(\w+\s?)+$",
]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_public_path_answers_in_linear_time(pattern: str) -> None:
    rules = compile_public_paths([PublicPath(None, regex=pattern)])
    evil = "/pub/" + "a" * 30 + "!"
    started = time.perf_counter()
    for _ in range(100):
        assert not is_public(rules, b"GET", evil)
    assert time.perf_counter() - started < 0.5
    # Still a working pattern.
    assert is_public(rules, b"GET", "/pub/aaaa") == (pattern != r"^/pub/(.*a){12}$")


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_claim_rule_answers_in_linear_time(pattern: str) -> None:
    rules = AuthorizeRules(claims=(ClaimRule("dept", pattern, regex=True),))
    started = time.perf_counter()
    failure = authorization_failure(rules, {"dept": "/pub/" + "a" * 30 + "!"})
    assert time.perf_counter() - started < 0.5
    assert failure == "claim dept does not match"


REFUSED = {
    "backreference": (r"^/(a)\1$", "invalid escape sequence"),
    "named backreference": (r"^/(?P<x>a)(?P=x)$", "invalid perl operator"),
    "lookahead": (r"^/(?=admin)", "invalid perl operator"),
    "negative lookahead": (r"^/(?!admin)", "invalid perl operator"),
    "lookbehind": (r"(?<=/pub)/x", "invalid perl operator"),
    "python end of text": (r"^/pub\Z", "invalid escape sequence"),
    "huge repetition": (r"^/((a{100}){100}){100}$", "repetition"),
    "syntax error": (r"^/([", "missing"),
}


@pytest.mark.parametrize("pattern, reason", REFUSED.values(), ids=REFUSED.keys())
def test_public_path_regex_refused_at_check(tmp_path: Path, pattern: str, reason: str) -> None:
    yaml_pattern = pattern.replace("'", "''")
    text = problems(tmp_path, route_with(OIDC + f"    public_paths: ['~ {yaml_pattern}']\n"))
    assert "gateway.yaml:" in text and "public_paths" in text
    assert "bad regular expression" in text and reason in text
    assert "RE2" in text


@pytest.mark.parametrize("pattern, reason", REFUSED.values(), ids=REFUSED.keys())
def test_claim_rule_regex_refused_at_check(tmp_path: Path, pattern: str, reason: str) -> None:
    yaml_pattern = pattern.replace("'", "''")
    block = OIDC + f"    authorize: {{claims: {{dept: '~ {yaml_pattern}'}}}}\n"
    text = problems(tmp_path, route_with(block))
    assert "gateway.yaml:" in text and "authorize.claims.dept" in text
    assert "bad regular expression" in text and reason in text


def test_refusal_is_quiet_on_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError):
        compile_config_regex(r"(a)\1")
    assert "re2.cc" not in capfd.readouterr().err


def test_ordinary_patterns_behave_as_with_re() -> None:
    rules = compile_public_paths(
        [PublicPath(None, regex=r"^/assets/.*[.]css$"), PublicPath("GET", regex=r"(?i)^/PUB/")]
    )
    assert is_public(rules, b"GET", "/assets/site.css")
    assert not is_public(rules, b"GET", "/assets/site.css/../admin")
    assert not is_public(rules, b"GET", "/assets/site.css\n")  # RE2's $ is end of text
    assert is_public(rules, b"HEAD", "/pub/x")
    assert not is_public(rules, b"POST", "/pub/x")
    assert is_public(rules, b"GET", "/x/\u00e9/assets/a.css") is False
    claims = AuthorizeRules(claims=(ClaimRule("level", "^[0-9]+$", regex=True),))
    assert authorization_failure(claims, {"level": "42"}) is None
    assert authorization_failure(claims, {"level": "42\n"}) == "claim level does not match"
    assert authorization_failure(claims, {"level": ["x", "7"]}) is None


NOT_UNDER = {
    "one prefix": (["/secure"], ["/", "/s", "/secur", "/x/secure", ""], ["/secure", "/securex"]),
    "shared start": (
        ["/admin", "/api/private", "/a-b"],
        ["/ad", "/api", "/api/pub", "/a", "/a-", "/b"],
        ["/admin/x", "/api/private", "/api/privateer", "/a-b/c"],
    ),
    "class characters": (
        ["/x]", "/x^", "/x-", "/x\\"],
        ["/x", "/xa"],
        ["/x]", "/x^1", "/x-", "/x\\"],
    ),
    "nested prefixes": (["/a", "/ab"], ["/", "/b"], ["/a", "/ab", "/ac"]),
}


@pytest.mark.parametrize("prefixes, public, protected", NOT_UNDER.values(), ids=NOT_UNDER.keys())
def test_not_starting_with(prefixes: list[str], public: list[str], protected: list[str]) -> None:
    pattern = compile_config_regex(not_starting_with(prefixes))
    for path in public:
        assert pattern.search(path), path
    for path in protected:
        assert not pattern.search(path), path


def test_not_starting_with_needs_a_prefix() -> None:
    with pytest.raises(ValueError):
        not_starting_with([])
    with pytest.raises(ValueError):
        not_starting_with(["/a", ""])
