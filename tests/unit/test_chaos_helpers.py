"""bench/chaos.py and bench/soak.py's judging helpers: what counts as growth,
as a failure of the wrong kind, and how the load client reads an answer."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import chaos  # noqa: E402
import chaos_rig  # noqa: E402
import soak  # noqa: E402


def test_flat_series_with_noise_is_no_growth() -> None:
    warm_up = [60.0, 70, 76]
    noisy = [76, 77, 76, 75, 77, 76, 75, 77, 76, 76, 77, 75]
    assert abs(soak.growth(warm_up + noisy)) < 0.01


def test_a_steady_climb_after_the_warm_up_is_growth() -> None:
    # 100 -> 110 over the last two thirds: 10%
    values = [50.0] * 5 + [100 + i for i in range(11)]  # the first third: 5 of 16
    assert soak.growth(values) == pytest.approx(0.10, abs=0.001)


def test_the_warm_up_third_does_not_count() -> None:
    values = [10.0, 50, 90, 100, 100, 100, 100, 100, 100]
    assert soak.growth(values) == pytest.approx(0.0, abs=1e-9)


def outcome(**failed: int) -> chaos.Outcome:
    result = chaos.Outcome("test")
    result.failed = Counter({k.replace("_", " "): v for k, v in failed.items()})
    return result


def test_only_the_named_route_may_fail_and_only_with_the_named_status() -> None:
    assert chaos._only(outcome(redis_503=5), ("redis",), {"503"}) == []
    wrong_status = chaos._only(outcome(redis_302=1), ("redis",), {"503"})
    assert wrong_status == ["1 302 on the redis route, expected only ['503']"]
    other_route = chaos._only(outcome(cookie_503=2), ("redis",), {"503"})
    assert other_route == ["2 failed on the cookie route (503), expected none"]


def test_an_upstream_fault_that_did_not_bite_is_not_met() -> None:
    check = chaos.EXPECTATIONS["upstream_down"]
    assert check(None, outcome()) == [  # type: ignore[arg-type]
        "no 502 on the flaky route: the fault did not bite"
    ]
    assert check(None, outcome(flaky_502=3)) == []  # type: ignore[arg-type]
    assert check(None, outcome(flaky_502=3, cookie_timeout=1))  # type: ignore[arg-type]


def read(raw: bytes) -> tuple[int, bool, list[str]]:
    async def main() -> tuple[int, bool, list[str]]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await chaos_rig._read_response(reader)

    return asyncio.run(main())


def test_load_client_reads_chunked_and_sized_answers_and_cookies() -> None:
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc") == (200, True, [])
    chunked = (
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n"
        b"Set-Cookie: a=1; Path=/\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert read(chunked) == (503, False, ["a=1; Path=/"])


def test_a_reissued_cookie_replaces_the_old_one_and_a_cleared_one_goes() -> None:
    session = chaos_rig.Session("cookie", {"_idgw_cookie": "old", "other": "x"})
    chaos_rig.take_cookies(session, ["_idgw_cookie=new; Path=/; HttpOnly"])
    assert session.cookies == {"_idgw_cookie": "new", "other": "x"}
    chaos_rig.take_cookies(session, ["other=; Max-Age=0; Path=/"])
    assert session.header() == "_idgw_cookie=new"
