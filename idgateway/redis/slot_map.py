"""The replies that say where slots live: ``CLUSTER SLOTS`` and ``MOVED``/``ASK``.

Pure text handling, for the cluster client (``redis.cluster``).
"""

from __future__ import annotations

from typing import Any

from idgateway.redis.slots import SLOT_COUNT

__all__ = ["Address", "parse_cluster_slots", "parse_redirect"]

Address = tuple[str, int]


def parse_cluster_slots(reply: Any, asked: Address) -> list[tuple[int, int, Address]]:
    """``(first slot, last slot, primary address)`` ranges from a ``CLUSTER SLOTS`` reply.

    A node that does not know its own address reports an empty host: that is
    the node we asked (``asked``). Raises ValueError on a reply of another shape.
    """
    if not isinstance(reply, list):
        raise ValueError(f"CLUSTER SLOTS answered {reply!r}, not a list")
    ranges = []
    for entry in reply:
        if not isinstance(entry, list) or len(entry) < 3 or not isinstance(entry[2], list):
            raise ValueError(f"CLUSTER SLOTS gave a strange entry {entry!r}")
        first, last = int(entry[0]), int(entry[1])
        if not 0 <= first <= last < SLOT_COUNT:
            raise ValueError(f"CLUSTER SLOTS gave a bad slot range {first}-{last}")
        primary = entry[2]
        if len(primary) < 2:
            raise ValueError(f"CLUSTER SLOTS gave no address in {entry!r}")
        raw_host = primary[0]
        host = bytes(raw_host).decode("ascii") if isinstance(raw_host, bytes) else str(raw_host)
        if host in ("", "?"):
            host = asked[0]
        ranges.append((first, last, (host, int(primary[1]))))
    return ranges


def parse_redirect(reply: str) -> tuple[str, int, Address] | None:
    """``("MOVED" | "ASK", slot, address)`` from an error reply, or None for another error."""
    words = reply.split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    if not words[1].isdigit() or not port.isdigit() or not host:
        return None
    return words[0], int(words[1]), (host.strip("[]"), int(port))
