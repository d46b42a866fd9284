"""txredisapi internals: how many replies a connection still owes.

Names used: ``BaseRedisProtocol.replyQueue`` (not documented API: txredisapi's
queue of the Deferreds waiting for replies) and its ``waiting`` list. The
pool sends each command on the connection owing the fewest replies. Without
them (``COUNTED`` False) every connection counts as owing none: the pool
keeps using the first one it finds open (less spread, same answers).
"""

from __future__ import annotations

from typing import Any

import txredisapi

from idgateway._twisted import note_fallback

COUNTED = "replyQueue" in txredisapi.BaseRedisProtocol.__init__.__code__.co_names and isinstance(
    getattr(txredisapi.ReplyQueue(), "waiting", None), list
)
if not COUNTED:  # pragma: no cover - a txredisapi built otherwise
    note_fallback("txredisapi BaseRedisProtocol.replyQueue", "Redis commands are not spread")


def replies_outstanding(protocol: Any) -> int:
    """Replies ``protocol`` (a txredisapi BaseRedisProtocol) still owes."""
    if not COUNTED:
        return 0
    return len(protocol.replyQueue.waiting)
