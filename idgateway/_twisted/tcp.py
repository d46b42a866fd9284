"""twisted.internet.tcp internals: write flushing, adopted listening ports, accept logs.

Private names used:

- ``FileDescriptor._writeDisconnecting``, ``._aborting``,
  ``._tempDataBuffer`` (twisted.internet.abstract): whether a TCP transport is
  closing, and whether it still holds bytes, after the shared per-turn flush
  of ``idgateway.server.socket_writes`` ran its ``doWrite``. Without them
  (``COALESCING`` False) ``coalesce_writes`` leaves transports as they are:
  Twisted's own write path, one epoll change more per write.
- ``tcp.Port._fromListeningDescriptor``: a listening socket the workers share,
  adopted as a ``tcp.Port`` subclass (``SharedPort``). Without it: the
  reactor's public ``adoptStreamPort`` (a stock Port: Twisted's adaptive
  accept count instead of one connection per wake-up).
- ``tcp.Port._logger``: a port's accept-time log events (EMFILE) routed
  through a throttle. Without it: the port logs as stock Twisted does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import abstract, tcp
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from idgateway._twisted import note_fallback

_descriptor = abstract.FileDescriptor()
COALESCING = (
    isinstance(getattr(_descriptor, "_tempDataBuffer", None), list)
    and isinstance(getattr(_descriptor, "_writeDisconnecting", None), bool)
    and isinstance(getattr(tcp.Connection, "_aborting", None), bool)
)
del _descriptor
if not COALESCING:
    note_fallback("FileDescriptor write internals", "TCP writes are not coalesced per turn")

ADOPT_AS_SUBCLASS = callable(getattr(tcp.Port, "_fromListeningDescriptor", None))
if not ADOPT_AS_SUBCLASS:
    note_fallback("tcp.Port._fromListeningDescriptor", "shared ports are stock adopted ports")


def flush_transports(waiting: Iterable[Any]) -> None:
    """Send what each of the coalescing TCP transports ``waiting`` holds.

    Each was asked to write during the last turn; a transport that is closing,
    or whose socket did not take everything, is handed to the reactor to
    watch (``_watch``) as stock Twisted would have done at once.
    """
    for transport in waiting:
        transport._flush_waiting = False
        if not transport.connected or transport._watched:
            continue
        if transport.disconnecting or transport._writeDisconnecting or transport._aborting:
            # Closing: the reactor's own path writes what is left, then closes.
            transport._watch()
            continue
        if transport.doWrite() is not None or transport.dataBuffer or transport._tempDataBuffer:
            # The kernel did not take it all, or the send failed: let the
            # reactor watch the socket (it reports a failure as before).
            transport._watch()


def adopt_listening_port(
    reactor: Any, fd: int, family: int, factory: Any, port_class: type[tcp.Port]
) -> IListeningPort:
    """A started ``port_class`` listening on the already bound socket ``fd``."""
    if not ADOPT_AS_SUBCLASS:
        port: IListeningPort = reactor.adoptStreamPort(fd, family, factory)
        return port
    adopted = port_class._fromListeningDescriptor(reactor, fd, family, factory)  # type: ignore[attr-defined]
    adopted.startListening()
    return adopted  # type: ignore[no-any-return]


def port_logger(port: Any) -> Logger | None:
    """The Logger a ``tcp.Port`` logs its accept-time events to (None: none)."""
    logger = getattr(port, "_logger", None)
    return logger if isinstance(logger, Logger) else None


def set_port_logger(port: Any, logger: Logger) -> None:
    """Make ``port`` log its accept-time events to ``logger``."""
    port._logger = logger


def wrapped_by_endpoint(transport: Any, protocol: Any) -> bool:
    """Whether ``transport`` delivers to ``protocol`` through the wrapper
    protocol a TCP endpoint puts in between (``_WrappingProtocol``, whose
    ``_wrappedProtocol`` it is). Without that name: False, and reads keep
    going through the wrapper, as stock."""
    return getattr(getattr(transport, "protocol", None), "_wrappedProtocol", None) is protocol
