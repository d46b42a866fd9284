"""A memo that forgets what has not been used for a while.

The gate keeps memos keyed by what browsers send (opened session cookies,
authorization verdicts per session). A browser's cookie changes when its
session is refreshed or re-issued, so under steady traffic new keys keep
arriving while old ones are never asked for again. A memo bounded only by
its entry count keeps those dead entries until it is full: memory that
climbs for an hour and then stays at its bound (the 30-minute soak saw the
workers grow by 0.3-0.4 MiB a minute). Here entries live in two
generations: every ``period`` seconds (checked when something is added)
the current one becomes the previous one and the previous one is dropped; a
hit in the previous generation moves the entry back. So memory follows what
was used in the last one to two periods, and ``max_entries`` still bounds a
burst. A hit in the current generation is one dict lookup, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RecentlyUsed"]

K = TypeVar("K")
V = TypeVar("V")


class RecentlyUsed(Generic[K, V]):
    __slots__ = ("_current", "_max_entries", "_now", "_period", "_previous", "_turn_at")

    def __init__(self, clock: Callable[[], float], period: float, max_entries: int) -> None:
        self._now = clock
        self._period = period
        self._max_entries = max_entries
        self._current: dict[K, V] = {}
        self._previous: dict[K, V] = {}
        self._turn_at = clock() + period

    def get(self, key: K) -> V | None:
        value = self._current.get(key)
        if value is None and self._previous:
            value = self._previous.pop(key, None)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        current = self._current
        if len(current) >= self._max_entries or self._now() >= self._turn_at:
            self._turn()
            current = self._current
        current[key] = value

    def _turn(self) -> None:
        self._previous = self._current
        self._current = {}
        self._turn_at = self._now() + self._period

    def clear(self) -> None:
        self._current = {}
        self._previous = {}

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def __contains__(self, key: object) -> bool:
        return key in self._current or key in self._previous
