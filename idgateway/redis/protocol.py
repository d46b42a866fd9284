"""One Redis connection: txredisapi's protocol on the reactor it is given.

txredisapi encodes the commands and keeps the queue of callers waiting for
replies; the replies are read by ``idgateway.redis.resp`` (all that arrived
in one read at once, instead of one per reactor iteration).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.python.failure import Failure

from idgateway._twisted.redis import replies_outstanding
from idgateway.redis.resp import RespProtocolError, RespReader


class RedisProtocol(txredisapi.BaseRedisProtocol):  # type: ignore[misc]
    """txredisapi's RESP protocol on our reactor, remembering why it was lost."""

    def __init__(self, reactor: Any) -> None:
        # charset=None and no number conversion: values come back as the bytes stored.
        super().__init__(charset=None, convertNumbers=False)
        self.callLater = reactor.callLater
        self.lost_reason: Failure | None = None
        self.on_lost: Callable[[RedisProtocol], None] | None = None
        self._replies = RespReader()
        self._protocol_error: Failure | None = None

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        try:
            replies = self._replies.feed(data)
        except RespProtocolError:
            # Nothing after this can be matched to its command.
            self._protocol_error = Failure()
            self.abort()
            return
        for reply in replies:
            self.replyReceived(reply)

    def connectionMade(self) -> Any:
        set_keep_alive = getattr(self.transport, "setTcpKeepAlive", None)
        if set_keep_alive is not None:
            try:
                set_keep_alive(True)
            except OSError:
                pass
        return super().connectionMade()

    def connectionLost(self, why: Failure) -> None:
        self.lost_reason = self._protocol_error or why
        # Leave the pool before failing the waiting calls: their callers may
        # send their next command from inside that errback.
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self)
        super().connectionLost(why)

    @property
    def outstanding(self) -> int:
        return replies_outstanding(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


class SubscriberProtocol(RedisProtocol):
    """A connection in subscribe mode: messages go to ``on_message``, replies to callers."""

    def __init__(self, reactor: Any, on_message: Callable[[bytes, bytes], None]) -> None:
        super().__init__(reactor)
        self._on_message = on_message
        self.channels: set[bytes] = set()

    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            self._on_message(reply[1], reply[2])
            return
        super().replyReceived(reply)
