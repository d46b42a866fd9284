"""Sessions are bound to what made them (route, provider, client id), and a
request of hundreds of stale cookies draws a bounded number of deletions."""

from __future__ import annotations

import time
from typing import Any

import pytest
from twisted.internet import defer

from idgateway.config.model import ProviderSettings
from idgateway.sessions.binding import session_binding
from idgateway.sessions.cookie import CookieSessionCodec, CookieSettings, parse_cookie_header
from idgateway.sessions.flows import MAX_CLEARED_FLOWS, FlowCookies
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.model import Session
from idgateway.sessions.redis_store import RedisSessionStore

KEY = bytes(range(32))
NOW = 1_700_000_000.0
ISSUER = "https://localhost:9443/oauth2/token"
TENANT = "https://localhost:9443/t/acme.com/oauth2/token"
DISCOVERY = "https://localhost:9443/oauth2/oidcdiscovery/.well-known/openid-configuration"

BOUND = session_binding(ProviderSettings("wso2", issuer=ISSUER), "app1")
# What a reload may change, each of which must end the route's sessions.
CHANGED = {
    "client id": session_binding(ProviderSettings("wso2", issuer=ISSUER), "app2"),
    "issuer": session_binding(ProviderSettings("wso2", issuer=TENANT), "app1"),
    "issuer named by discovery": session_binding(
        ProviderSettings("wso2", discovery_url=ISSUER), "app1"
    ),
    "discovery url": session_binding(ProviderSettings("wso2", discovery_url=DISCOVERY), "app1"),
    "unbound": b"",
    # Fields shifted between issuer and client id must not collide.
    "shifted": session_binding(ProviderSettings("wso2", issuer=ISSUER + '","app1'), ""),
}


def test_what_does_not_change_the_binding() -> None:
    renamed = ProviderSettings("tenant-a", issuer=ISSUER, ca_file="/etc/ca.pem")
    assert session_binding(renamed, "app1") == BOUND


def session() -> Session:
    return Session(
        id="ab" * 16,
        route="app1",
        sub="alice-sub",
        user="alice",
        claims={"email": "alice@example.com"},
        created_at=NOW,
        last_seen=NOW,
    )


def codec(binding: bytes, max_chunks: int = 8) -> CookieSessionCodec:
    settings = CookieSettings(name="_idgw_app1", secure=True, max_chunks=max_chunks)
    return CookieSessionCodec("app1", KeyRing([KEY]), settings, clock=lambda: NOW, binding=binding)


def cookies_from(headers: list[bytes]) -> dict[bytes, bytes]:
    return parse_cookie_header([b"; ".join(h.split(b";", 1)[0] for h in headers)])


@pytest.mark.parametrize("binding", CHANGED.values(), ids=CHANGED.keys())
def test_cookie_session_does_not_open_under_another_binding(binding: bytes) -> None:
    cookies = cookies_from(codec(BOUND).encode(session()))
    assert codec(BOUND).decode(cookies)[0] == session()
    assert codec(binding).decode(cookies) == (None, 1)


class DictRedis:
    """Just enough of RedisClient for RedisSessionStore.save and load."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def get(self, key: str) -> Any:
        return self.values.get(key)

    async def eval(self, script: str, keys: list[str], args: list[Any]) -> int:
        self.values[keys[0]] = args[0]  # the _SAVE script's SET
        return 1


class Clock:
    def seconds(self) -> float:
        return NOW


def store(redis: DictRedis, binding: bytes) -> RedisSessionStore:
    return RedisSessionStore(
        redis,  # type: ignore[arg-type]
        route="app1",
        keyring=KeyRing([KEY]),
        inactivity_timeout=3600,
        max_duration=86400,
        clock=Clock(),
        binding=binding,
    )


def result(coroutine: Any) -> Any:
    return defer.ensureDeferred(coroutine).result


@pytest.mark.parametrize("binding", CHANGED.values(), ids=CHANGED.keys())
def test_redis_session_does_not_open_under_another_binding(binding: bytes) -> None:
    redis = DictRedis()
    session_id = RedisSessionStore.new_session_id()
    result(store(redis, BOUND).save(session_id, session()))
    assert result(store(redis, BOUND).load(session_id)) == session()
    assert result(store(redis, binding).load(session_id)) is None


@pytest.mark.parametrize("binding", CHANGED.values(), ids=CHANGED.keys())
def test_login_flow_does_not_finish_under_another_binding(binding: bytes) -> None:
    before = FlowCookies("app1", KeyRing([KEY]), True, binding=BOUND)
    flow = before.new_flow("/after", NOW)
    cookies = cookies_from(before.set_cookie(flow, {}, NOW)[:1])
    after = FlowCookies("app1", KeyRing([KEY]), True, binding=binding)
    taken, deletion = after.take(flow.state, cookies, NOW)
    assert taken is None and len(deletion) == 1
    assert before.take(flow.state, cookies, NOW)[0] == flow


# -- amplification -------------------------------------------------------------


def fake_flow_cookies(flows: FlowCookies, count: int) -> dict[bytes, bytes]:
    """``count`` cookies named like flows, holding garbage (15 KB for 780)."""
    base = flows.cookie_name_for("x")[: -len(b"AAAAAAAAAAAA")]
    return {base + b"%012d" % i: b"x" for i in range(count)}


@pytest.mark.parametrize("count", [9, 100, 780, 5000])
def test_login_start_clears_a_bounded_number_of_stale_flows(count: int) -> None:
    flows = FlowCookies("app1", KeyRing([KEY]), True, binding=BOUND)
    cookies = fake_flow_cookies(flows, count)
    started = time.perf_counter()
    headers = flows.set_cookie(flows.new_flow("/", NOW), cookies, NOW)
    assert time.perf_counter() - started < 0.05
    assert len(headers) == 1 + MAX_CLEARED_FLOWS
    assert b"Max-Age=0" not in headers[0]
    assert all(b"Max-Age=0" in h for h in headers[1:])


def test_real_flows_beyond_the_cap_are_cleared_before_garbage() -> None:
    flows = FlowCookies("app1", KeyRing([KEY]), True, max_flows=3, binding=BOUND)
    jar: dict[bytes, bytes] = {}
    real = []
    for age in range(6):  # 6 real flows, the oldest first
        flow = flows.new_flow("/", NOW - 100 + age)
        real.append(flows.cookie_name_for(flow.state))
        jar.update(cookies_from(flows.set_cookie(flow, {}, NOW)[:1]))
    expired = flows.new_flow("/", NOW - 10_000)
    jar.update(cookies_from(flows.set_cookie(expired, {}, NOW)[:1]))
    # Garbage first in the header, as an attacker would send it.
    cookies = {**fake_flow_cookies(flows, 20), **jar}
    headers = flows.set_cookie(flows.new_flow("/", NOW), cookies, NOW)
    deleted = [h.split(b"=", 1)[0] for h in headers[1:]]
    assert len(deleted) == MAX_CLEARED_FLOWS
    # The newest max_flows - 1 stay; the other 4 real ones and the expired one go first.
    assert deleted[:5] == [*reversed(real[:4]), flows.cookie_name_for(expired.state)]
    assert not set(real[4:]) & set(deleted)


def test_forged_session_chunks_draw_at_most_max_chunks_deletions() -> None:
    sessions = codec(BOUND)
    name = sessions.cookie_name.encode()
    forged = {name: b"9.garbage", **{b"%s_%d" % (name, i): b"x" for i in range(1, 781)}}
    found, chunks = sessions.decode(forged)
    assert found is None
    assert len(sessions.clear(chunks)) == 8
    assert len(sessions.encode(session(), chunks)) == 8  # 1 chunk + 7 stale deletions
