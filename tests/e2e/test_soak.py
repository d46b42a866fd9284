"""A short soak (issue 16, section 2): bench/soak's mixed traffic for 70 s.

Authenticated GETs on cookie and Redis sessions, 100 KB answers, uploads,
WebSockets opening and closing, login/sign-out cycles, token refreshes (the
provider issues 60 s access tokens; a session is refreshed at most once a
minute, so by the first request after its token expired), a reload at the
minute; samples every 3 s. Passes as the long run does: RSS and descriptors
flat after the warm-up third (under 5%), Redis keys bounded by live sessions,
no unexpected status, and the tokens really were refreshed, the WebSocket-only
session's on a 101. The long run is ``bench/soak --minutes 30``
(docs/faults.rst).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.provider_process import node_binary

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from soak import soak  # noqa: E402

pytestmark = [
    # 70 s of load: left out of `make test` to keep the suite well under 15
    # minutes on a 2-core machine; `make soak` runs it (and CI can).
    pytest.mark.soak,
    pytest.mark.skipif(node_binary() is None, reason="node is not installed"),
    pytest.mark.skipif(
        shutil.which("redis-server") is None or not Path("/usr/sbin/nginx").exists(),
        reason="needs redis-server and nginx (make system-deps)",
    ),
]


def test_short_soak_stays_flat() -> None:
    report, code = soak(seconds=70, sample_every=3, rate=100)
    figures = report["figures"]
    assert report["problems"] == [], report["text"]
    assert code == 0, report["text"]
    assert figures["reloads"] == 1, report["text"]
    assert figures["cookie_reissues"] > 0, report["text"]  # the 60 s tokens were refreshed
    # The WebSocket-only session was refreshed on an upgrade and got its new cookie
    # on the 101 (without it, 60 s later, every upgrade of that session was a 302).
    assert figures["websocket_cookie_reissues"] > 0, report["text"]
    assert figures["websockets"].get("ok", 0) > 50, report["text"]
    assert figures["login_cycles"].get("ok", 0) > 20, report["text"]
