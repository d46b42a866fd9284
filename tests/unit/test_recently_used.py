"""sessions/recent.py: a memo that forgets what was not used for a while."""

from __future__ import annotations

from idgateway.sessions.recent import RecentlyUsed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_not_used_for_two_periods_is_forgotten() -> None:
    clock = Clock()
    memo: RecentlyUsed[str, int] = RecentlyUsed(clock, 60, 100)
    memo.put("old", 1)
    memo.put("used", 2)
    clock.now += 61
    memo.put("a", 3)  # the first generation turns
    assert memo.get("used") == 2  # moved back into the current generation
    clock.now += 61
    memo.put("b", 4)  # turns again: "old" was not used for two periods
    assert memo.get("old") is None
    assert memo.get("used") == 2 and memo.get("a") == 3 and memo.get("b") == 4
    assert "old" not in memo and len(memo) == 3


def test_under_steady_new_keys_memory_stays_at_what_two_periods_bring() -> None:
    """The soak's case: a new key every few seconds, each used once."""
    clock = Clock()
    memo: RecentlyUsed[int, bytes] = RecentlyUsed(clock, 60, 4096)
    sizes = []
    for n in range(3600):  # an hour, a new key a second
        clock.now += 1
        memo.put(n, b"x")
        sizes.append(len(memo))
    assert max(sizes[600:]) <= 121 and min(sizes[600:]) >= 60


def test_the_entry_bound_holds_within_a_period() -> None:
    clock = Clock()
    memo: RecentlyUsed[int, int] = RecentlyUsed(clock, 60, 10)
    for n in range(35):
        memo.put(n, n)
    assert len(memo) <= 20
    assert memo.get(34) == 34


def test_clear_and_misses() -> None:
    clock = Clock()
    memo: RecentlyUsed[str, int] = RecentlyUsed(clock, 60, 10)
    assert memo.get("nothing") is None
    memo.put("k", 1)
    clock.now += 61
    memo.put("j", 2)
    memo.clear()
    assert len(memo) == 0 and memo.get("k") is None and memo.get("j") is None
