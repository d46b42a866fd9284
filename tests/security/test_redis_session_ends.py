"""A Redis session ended on one process stays ended on every other, through a real redis-server.

Two gateway processes are two ``RouteLogin`` gates of one route on one Redis
(each with its own client and its own second of loaded sessions). Process B
holds the session loaded; process A ends it (a sign-out, a back-channel
logout by sid or by sub); then B does what a request of that session may
make it do within its second: slide the session's expiry (a write once a
minute per session), or finish a token refresh it started before the end.
Neither may store the session again: before, a plain ``SET`` brought it back
for a whole inactivity timeout, on every process.
"""

from __future__ import annotations

import base64
from typing import Any

import attrs
import pytest
from twisted.internet import defer

from idgateway.config.model import OIDCSettings, RouteAuth, SessionSettings
from idgateway.gate import session_check as gate_module
from idgateway.gate.session_check import RouteLogin
from idgateway.oidc.client import TokenResponse
from idgateway.redis.client import RedisClient
from idgateway.sessions.model import Session
from tests.redis_process import RedisProcess, redis_settings, requires_redis, run_in_reactor, sleep
from tests.route_gates import route_login

KEY = base64.b64encode(b"r" * 32).decode()


def gate(reactor: Any, client: RedisClient) -> RouteLogin:
    auth = RouteAuth(
        oidc=OIDCSettings(provider="wso2", client_id="c", client_secret="s"),
        session=SessionSettings(keys=(KEY,), store="redis"),
    )
    return route_login(auth, reactor, redis=client)


def make_session(now: float) -> Session:
    return Session(
        id="s1",
        route="app1",
        sub="sub-1",
        user="alice",
        claims={"sub": "sub-1"},
        created_at=now - 120,
        last_seen=now - 120,  # the slide is due
        access_token="at-1",
        access_expires_at=now + 5,
        refresh_token="rt-1",
        provider_sid="op-sid-1",
    )


async def end_on_a(a: RouteLogin, how: str, session_id: str, session: Session) -> None:
    if how == "sign-out":
        await a.end_session(False, 1, session_id, session)
    elif how == "back-channel logout (sid)":
        await a.end_sessions(sid="op-sid-1", sub=None)
    elif how == "back-channel logout (sub)":
        await a.end_sessions(sid=None, sub="sub-1")
    else:
        assert how == "nobody"


ENDINGS = ["sign-out", "back-channel logout (sid)", "back-channel logout (sub)"]


@requires_redis
@pytest.mark.parametrize("how", [*ENDINGS, "nobody"])
def test_a_slide_on_another_process_does_not_bring_an_ended_session_back(
    redis: RedisProcess, how: str
) -> None:
    async def main(reactor: Any) -> None:
        clients = [RedisClient(reactor, redis_settings(redis.url)) for _ in range(2)]
        a, b = (gate(reactor, client) for client in clients)
        assert a.store is not None and b.store is not None and b._loaded is not None
        try:
            session = make_session(reactor.seconds())
            session_id = a.store.new_session_id()
            await a.store.save(session_id, session)
            loaded = await b._loaded.load(session_id)  # B serves the session
            assert loaded == session
            await end_on_a(a, how, session_id, session)
            # Within B's second: a request whose slide is due.
            b._save_later(session_id, attrs.evolve(loaded, last_seen=reactor.seconds()))
            await sleep(reactor, 0.2)
            stored = await a.store.load(session_id)
            if how == "nobody":
                assert stored is not None and stored.last_seen > session.last_seen, "slid"
            else:
                assert stored is None, f"the {how} was undone by B's slide"
                assert b._loaded.fresh(session_id, reactor.seconds()) is None
        finally:
            for client in clients:
                await client.close()

    run_in_reactor(main)


@requires_redis
@pytest.mark.parametrize("how", [*ENDINGS, "nobody"])
def test_a_refresh_that_ends_after_a_logout_does_not_store_the_session_again(
    redis: RedisProcess, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main(reactor: Any) -> None:
        clients = [RedisClient(reactor, redis_settings(redis.url)) for _ in range(2)]
        a, b = (gate(reactor, client) for client in clients)
        assert a.store is not None and b.store is not None
        session = make_session(reactor.seconds())
        session_id = a.store.new_session_id()

        async def provider_refreshes(*args: Any, **kwargs: Any) -> TokenResponse:
            # While B waits for the provider, A ends the session.
            await end_on_a(a, how, session_id, session)
            return TokenResponse(
                access_token="at-2",
                token_type="Bearer",
                expires_in=300,
                refresh_token="rt-2",
                id_token=None,
                scope=None,
            )

        monkeypatch.setattr(gate_module, "refresh_tokens", provider_refreshes)
        try:
            await a.store.save(session_id, session)
            outcome = await defer.ensureDeferred(b.refreshed(session, session_id))
            stored = await a.store.load(session_id)
            if how == "nobody":
                assert isinstance(outcome, Session) and outcome.refresh_token == "rt-2"
                assert stored is not None and stored.refresh_token == "rt-2"
            else:
                assert outcome is None, "the request is sent to log in again"
                assert stored is None, f"the {how} was undone by B's refresh"
        finally:
            for client in clients:
                await client.close()

    run_in_reactor(main)
