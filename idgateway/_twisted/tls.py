"""twisted.protocols.tls internals: TLS writes gathered by the shared per-turn flush.

Private names used: ``BufferingTLSTransport._aggregator`` (its per-connection
small-write buffer, replaced), ``TLSMemoryBIOFactory._clock`` (the reactor
that buffer schedules on), and, for typing only, ``twisted.internet._sslverify``
(``IOpenSSLTrustRoot``, which Twisted does not re-export).

Without them (``TURN_BUFFERED`` False), ``TurnBufferedTLS`` is Twisted's
``BufferingTLSTransport`` as it is: a ``callLater(0)`` per connection and turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory

from idgateway._twisted import note_fallback
from idgateway.server.socket_writes import TurnWriteBuffer

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot as IOpenSSLTrustRoot

TURN_BUFFERED = "_aggregator" in BufferingTLSTransport.__init__.__code__.co_names
if not TURN_BUFFERED:  # pragma: no cover - a Twisted that buffers otherwise
    note_fallback("BufferingTLSTransport._aggregator", "each TLS connection buffers with a timer")


class TurnBufferedTLS(BufferingTLSTransport):
    """Twisted's buffering TLS transport, its small writes gathered per reactor
    turn by the shared flush (server.socket_writes.TurnWriteBuffer) instead of a timer
    per connection."""

    def __init__(
        self, factory: TLSMemoryBIOFactory, wrappedProtocol: Any, _connectWrapped: bool = True
    ) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        clock = getattr(factory, "_clock", None)
        if TURN_BUFFERED and clock is not None:
            self._aggregator = TurnWriteBuffer(  # type: ignore[assignment]
                super(BufferingTLSTransport, self).write, clock
            )
            self.write = self._aggregator.write  # type: ignore[method-assign]
