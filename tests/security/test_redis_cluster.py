"""On a Redis Cluster, nothing a client or a provider sends picks a key's slot.

A ``{hash tag}`` decides where a key lives. The gateway's tags hold only
SHA-256 hex digests it computed: a cookie's session id must be 43 base64url
characters before anything is asked of Redis (braces never are), and ``sid``
and ``sub`` values from tokens are hashed before they are part of a key. So
no cookie or token can crowd keys into one slot, reach another route's keys,
or make a multi-key call span slots (``CROSSSLOT``). Each attack vector is a
case; the client records every call and would answer like a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from idgateway.config.model import RedisSettings
from idgateway.redis.cluster import RedisClusterClient
from idgateway.redis.slots import key_slot
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.redis_store import RedisSessionStore
from tests.session_factories import make_session

_OUR_KEY = re.compile(r"idgw:app1:(s|lock):\{[0-9a-f]{64}\}|idgw:app1:(sid|sub):[0-9a-f]{64}")


class RecordingCluster(RedisClusterClient):
    """A cluster client whose every routed call is recorded and answered from a dict."""

    def __init__(self) -> None:
        super().__init__(Clock(), RedisSettings(cluster=("redis://10.0.0.1:7000",)))
        self.calls: list[tuple[Any, ...]] = []
        self.data: dict[str, Any] = {}

    async def _for_slot(self, slot: int, args: tuple[Any, ...]) -> Any:
        self.calls.append(args)
        if args[0] == "EVAL":
            keys = args[3 : 3 + int(args[2])]
            assert len({key_slot(k) for k in keys}) <= 1, "CROSSSLOT"
            return [] if "SMEMBERS" in args[1] else 1
        if args[0] == "GET":
            return self.data.get(args[1])
        if args[0] == "SET":
            self.data[args[1]] = args[2]
            return b"OK"
        return 0

    def keys_used(self) -> list[str]:
        used = []
        for args in self.calls:
            if args[0] == "EVAL":
                used.extend(args[3 : 3 + int(args[2])])
            elif args[0] in ("GET", "SET", "DEL", "EXISTS", "SREM", "SMEMBERS"):
                used.append(args[1])
        return [k.decode() if isinstance(k, bytes) else k for k in used]


def _store(client: RecordingCluster) -> RedisSessionStore:
    return RedisSessionStore(
        client,
        route="app1",
        keyring=KeyRing([b"k" * 32]),
        inactivity_timeout=600,
        max_duration=3600,
        clock=Clock(),
    )


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    results: list[Any] = []
    defer.ensureDeferred(coroutine).addBoth(results.append)
    assert results, "did not finish"
    return results[0]


@pytest.mark.parametrize(
    "cookie",
    [
        "{" + "A" * 41 + "}",  # a whole tag, 43 characters
        "A" * 42 + "{",
        "{}" + "A" * 41,
        "%7B" + "A" * 40,  # percent-encoded braces stay text, and are refused
        "A" * 20 + "{x}" + "A" * 20,
        "{" * 43,
        "A" * 10_000,  # oversize
        "\uff5b" + "A" * 42,  # a full-width brace
        "",
    ],
)
def test_a_cookie_cannot_reach_redis_with_a_brace(cookie: str) -> None:
    client = RecordingCluster()
    store = _store(client)
    assert _run(store.load(cookie)) is None
    assert _run(store.lock(cookie)) is None
    _run(store.delete(cookie))
    assert client.calls == []


@pytest.mark.parametrize(
    "claim",
    [
        "{x}",
        "}{",
        "{}",
        "a{b}c",
        "{app2}",  # another route's name as a tag
        "\u00e9{",
        "{" * 10_000,
        "x\x00{y}",
    ],
)
def test_a_provider_value_with_braces_is_hashed_before_it_names_a_key(claim: str) -> None:
    client = RecordingCluster()
    store = _store(client)
    session_id = RedisSessionStore.new_session_id()
    _run(store.save(session_id, make_session(provider_sid=claim, sub=claim)))
    _run(store.delete_by_sid(claim))
    _run(store.delete_by_sub(claim))
    used = client.keys_used()
    assert used, "the calls went somewhere"
    for key in used:
        assert _OUR_KEY.fullmatch(key), key
