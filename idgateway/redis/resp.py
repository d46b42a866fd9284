"""Reading Redis replies (RESP2): every complete reply in what has arrived, in one pass.

txredisapi's own reader handles one reply per reactor iteration when several
arrive in one read (pipelined commands): after each bulk reply it pauses the
transport (an ``epoll_ctl``), schedules the rest with ``callLater(0)`` and
resumes it (another ``epoll_ctl``). With 32 requests in flight on a few
connections, that was most of the client's CPU per ``GET``. This reader
gives back every complete reply at once and keeps the incomplete rest.

Replies are what txredisapi's reader makes of them (``charset=None``, no
number conversion), so the rest of txredisapi is unchanged: bulk strings as
``bytes`` (a missing one as None), status replies as ``str``, integers as
``int``, arrays as lists (a missing one as None), and errors as
``txredisapi.ResponseError`` with Redis's message.
"""

from __future__ import annotations

from typing import Any

import txredisapi

__all__ = ["RespProtocolError", "RespReader"]

# Deeper than any reply a command we send gets (CLUSTER SLOTS nests three).
_MAX_DEPTH = 16
# A type line (length, integer, status, error) longer than this is not Redis.
_MAX_LINE = 65536
_CRLF = b"\r\n"
# The first byte of each reply type: $ bulk, * array, : integer, + status, - error.
_KINDS = frozenset(b"$*:+-")


class RespProtocolError(Exception):
    """The server sent something that is not RESP: the connection cannot be trusted."""


class _Incomplete(Exception):
    """More bytes are needed; ``needed``: how many the buffer must hold at least."""

    def __init__(self, needed: int) -> None:
        self.needed = needed


class RespReader:
    """Feed it what a connection reads; it returns the replies completed so far."""

    __slots__ = ("_needed", "_unread")

    def __init__(self) -> None:
        self._unread = b""
        # The buffer cannot hold a complete reply before it is this long.
        self._needed = 0

    def feed(self, data: bytes) -> list[Any]:
        """Every reply completed by ``data``, in order (raises ``RespProtocolError``)."""
        buffer = self._unread + data if self._unread else data
        if len(buffer) < self._needed:
            self._unread = buffer
            return []
        replies: list[Any] = []
        position, end = 0, len(buffer)
        try:
            while position < end:
                reply, position = _parse(buffer, position, 0)
                replies.append(reply)
        except _Incomplete as incomplete:
            self._needed = incomplete.needed - position
        else:
            self._needed = 0
        self._unread = buffer[position:]
        return replies


def _line_end(buffer: bytes, start: int) -> int:
    end = buffer.find(_CRLF, start)
    if end < 0:
        if len(buffer) - start > _MAX_LINE:
            raise RespProtocolError(f"a reply line longer than {_MAX_LINE} bytes")
        raise _Incomplete(len(buffer) + 1)
    return end


def _number(buffer: bytes, start: int, end: int) -> int:
    try:
        return int(buffer[start:end])
    except ValueError:
        raise RespProtocolError(f"not a number: {buffer[start:end][:40]!r}") from None


def _parse(buffer: bytes, position: int, depth: int) -> tuple[Any, int]:
    """The reply starting at ``position`` and where the next one starts."""
    kind = buffer[position]
    if kind not in _KINDS:
        raise RespProtocolError(f"unknown reply type {bytes([kind])!r}")
    end = _line_end(buffer, position + 1)
    if kind == 36:  # $ bulk string
        length = _number(buffer, position + 1, end)
        if length < 0:
            return None, end + 2
        start = end + 2
        stop = start + length
        if len(buffer) < stop + 2:
            raise _Incomplete(stop + 2)
        if buffer[stop : stop + 2] != _CRLF:
            raise RespProtocolError("a bulk string does not end with CRLF")
        return buffer[start:stop], stop + 2
    if kind == 42:  # * array
        count = _number(buffer, position + 1, end)
        if count < 0:
            return None, end + 2
        if depth >= _MAX_DEPTH:
            raise RespProtocolError(f"arrays nested more than {_MAX_DEPTH} deep")
        items = []
        position = end + 2
        for _ in range(count):
            if position >= len(buffer):
                raise _Incomplete(position + 1)
            item, position = _parse(buffer, position, depth + 1)
            items.append(item)
        return items, position
    if kind == 58:  # : integer
        return _number(buffer, position + 1, end), end + 2
    if kind == 43:  # + status
        return buffer[position + 1 : end].decode("utf-8", "replace"), end + 2
    # - error
    message = buffer[position + 1 : end].decode("utf-8", "replace")
    return txredisapi.ResponseError(message), end + 2
