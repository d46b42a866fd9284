"""Publish/subscribe on a Redis Cluster: one node at a time, moved when it fails.

A cluster passes every ``PUBLISH`` to the subscribers of every node, so one
subscription on any node hears everything. ``MovingSubscription`` keeps it on
one node's ``RedisClient`` (which re-subscribes after reconnects by itself)
and, when that node stays unreachable, subscribes on the next node instead;
subscribers are told on every (re)subscription, as with one Redis, so they
reload what they may have missed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from idgateway.redis.client import RedisClient
from idgateway.redis.slot_map import Address

__all__ = ["MovingSubscription"]

# After this many checks (one a second) without a connection, move.
MOVE_AFTER = 2


class MovingSubscription:
    """Every subscription of one cluster client, on one node.

    ``make_client(address)`` gives a client for a node; ``candidates()`` the
    nodes to use, in order of preference; ``check()`` runs once a second.
    """

    _log = Logger()

    def __init__(
        self,
        make_client: Callable[[Address], RedisClient],
        candidates: Callable[[], list[Address]],
        description: str,
    ) -> None:
        self._make_client = make_client
        self._candidates = candidates
        self._description = description
        self._subscriptions: list[
            tuple[str, Callable[[bytes], None], Callable[[], None] | None]
        ] = []
        self._client: RedisClient | None = None
        self.address: Address | None = None
        self._misses = 0

    @property
    def subscribed(self) -> bool:
        return self._client is not None and self._client.subscribed

    def add(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], None] | None,
    ) -> None:
        self._subscriptions.append((channel, on_message, on_subscribed))
        if self._client is None:
            self._move()
        else:
            self._client.subscribe(channel, on_message, on_subscribed)

    def check(self) -> None:
        if self._client is None or self._client.subscribed:
            self._misses = 0
            return
        self._misses += 1
        if self._misses >= MOVE_AFTER:
            self._move()

    def close(self) -> defer.Deferred[Any]:
        client, self._client = self._client, None
        return client.close() if client is not None else defer.succeed(None)

    def _move(self) -> None:
        candidates = self._candidates()
        current = self.address
        if current in candidates and len(candidates) > 1:
            # The next one after the node that failed, round the list.
            at = candidates.index(current)
            candidates = candidates[at + 1 :] + candidates[:at]
        address = candidates[0]
        old = self._client
        client = self._make_client(address)
        self._client, self.address = client, address
        self._misses = 0
        for channel, on_message, on_subscribed in self._subscriptions:
            client.subscribe(channel, on_message, on_subscribed)
        if old is not None:
            self._log.warn(
                "{where}: publish/subscribe moved to {host}:{port}",
                where=self._description,
                host=address[0],
                port=address[1],
            )
            old.close()
