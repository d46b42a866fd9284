"""How a Redis call fails: one exception kind for "Redis could not answer"."""

from __future__ import annotations

from twisted.python.failure import Failure


class RedisUnavailable(Exception):
    """Redis could not answer (down, too slow, refused us); the gateway answers 503."""


class RedisCommandError(RedisUnavailable):
    """Redis answered a command with an error (a wrong type, a missing permission).

    A ``RedisUnavailable`` too, so one ``except RedisUnavailable`` covers every
    Redis failure.
    """

    def __init__(self, message: str, reply: str = "") -> None:
        super().__init__(message)
        # The server's own error reply ("MOVED 3999 10.0.0.2:7000", "WRONGTYPE ..."),
        # for callers that act on it (the cluster client follows redirections).
        self.reply = reply


def describe_failure(failure: Failure | BaseException | None) -> str:
    error = failure.value if isinstance(failure, Failure) else failure
    if error is None:
        return "connection closed"
    if isinstance(error, RedisUnavailable):
        return str(error)
    text = str(error).strip() or type(error).__name__
    # Twisted's connection errors read "Connection was refused by other side: 111: ...".
    return text.rstrip(".")
