"""Publish/subscribe: the channels subscribed to, and who hears each message.

The client keeps one dedicated subscriber connection (re-subscribed after
every reconnect); this module knows what to subscribe on it and where each
message goes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from idgateway.redis.protocol import SubscriberProtocol


@attrs.define
class Subscription:
    channel: bytes
    on_message: Callable[[bytes], None]
    on_subscribed: Callable[[], None] | None


class Subscriptions:
    """Every subscription made on one client, in order."""

    _log = Logger()

    def __init__(self) -> None:
        self.all: list[Subscription] = []

    def add(self, subscription: Subscription) -> None:
        self.all.append(subscription)

    async def subscribe_on(
        self,
        protocol: SubscriberProtocol,
        subscriptions: list[Subscription],
        within_timeout: Callable[[defer.Deferred[Any]], Awaitable[Any]],
    ) -> None:
        """SUBSCRIBE ``protocol`` to each channel it lacks, then tell the subscribers."""
        for subscription in subscriptions:
            channel = subscription.channel
            if channel not in protocol.channels:
                protocol.channels.add(channel)
                reply = protocol.execute_command("SUBSCRIBE", channel)
                try:
                    await within_timeout(reply)
                except Exception:
                    # Reconnecting subscribes to every channel again.
                    protocol.abort()
                    raise
        for subscription in subscriptions:
            if subscription.on_subscribed is not None:
                try:
                    subscription.on_subscribed()
                except Exception:
                    self._log.failure("A Redis subscriber failed on (re)subscription")

    def dispatch(self, channel: bytes, message: bytes) -> None:
        channel = bytes(channel)
        for subscription in list(self.all):
            if subscription.channel == channel:
                try:
                    subscription.on_message(bytes(message))
                except Exception:
                    self._log.failure("A Redis subscriber failed on a message")
