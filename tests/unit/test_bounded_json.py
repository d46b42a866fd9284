"""JSON from providers and tokens: a nesting limit, no NaN, errors not crashes."""

from __future__ import annotations

import time

import pytest
from twisted.web.http_headers import Headers

from idgateway.oidc import bounded_json
from idgateway.oidc.bounded_json import MAX_DEPTH, TooDeep, loads, nesting_depth
from idgateway.oidc.http import HTTPResult


def test_ordinary_documents_parse() -> None:
    assert loads(b'{"keys": [{"kty": "RSA", "n": "x"}]}') == {"keys": [{"kty": "RSA", "n": "x"}]}
    assert loads('{"a": "[[[[{{{{"}') == {"a": "[[[[{{{{"}
    assert loads(b"3600") == 3600


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        # Brackets inside strings, escaped quotes and backslashes do not count.
        (b'["[[[[", "\\"[[[", "\\\\", {"k]": "}"}]', 2),
        (b'"unterminated [[[[', 0),
    ],
)
def test_nesting_depth(text: bytes, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_the_limit_is_inclusive() -> None:
    assert loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    with pytest.raises(TooDeep):
        loads(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(b"[" * 5000, id="5000-open-brackets"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="balanced-100k"),
        pytest.param(b'{"a":' * 5000 + b"1" + b"}" * 5000, id="nested-objects"),
        pytest.param(b'["x", ' * 40 + b"1" + b"]" * 40, id="just-over-the-limit"),
    ],
)
def test_deep_nesting_is_a_value_error_not_a_recursion_error(attack: bytes) -> None:
    with pytest.raises(ValueError):
        loads(attack)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b'{"exp": NaN}'])
def test_non_json_constants_are_refused(constant: bytes) -> None:
    with pytest.raises(ValueError):
        loads(constant)


def test_invalid_utf8_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        loads(b'{"a": "\xff"}')


def test_escaped_quotes_do_not_make_the_scan_quadratic() -> None:
    # An unterminated string of escaped quotes: each one could restart a scan.
    attack = b'"' + b'\\"' * 500_000
    started = time.monotonic()
    with pytest.raises(ValueError):
        loads(attack)
    assert time.monotonic() - started < 2


def test_provider_answers_are_parsed_with_the_limit() -> None:
    result = HTTPResult(status=200, headers=Headers(), body=b"[" * 5000)
    with pytest.raises(ValueError):
        result.json()
    assert bounded_json.MAX_DEPTH >= 8  # room for WSO2's richest claims
