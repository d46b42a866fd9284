"""twisted.web's own HTTP/2, left out of a worker process.

Private name used: the module ``twisted.web._http2``, which
``twisted.web.http`` imports at its own import (when h2 is installed) for the
HTTP/2 of its generic channel, and with it h2, hpack, hyperframe and
priority: about 2 MiB. The gateway's listeners never use that channel
(GatewaySite's channel is GatewayChannel, and HTTP/2 is
``idgateway.server.h2_connection``'s, imported when a listener offers it).
``leave_out_twisted_http2`` marks the module absent before anything imports
twisted.web: ``twisted.web.http`` then imports without it (``H2_ENABLED``
False), as on a machine without h2. Once twisted.web.http is imported there
is nothing left to save, and it does nothing; a Twisted without that module
imports nothing by that name, and marking it absent changes nothing.
"""

from __future__ import annotations

import sys

TWISTED_HTTP2 = "twisted.web._http2"


def leave_out_twisted_http2() -> bool:
    """Keep twisted.web from importing its own HTTP/2 (True), unless it
    already has (False)."""
    if "twisted.web.http" in sys.modules:
        return False
    sys.modules.setdefault(TWISTED_HTTP2, None)  # type: ignore[arg-type]
    return True
