"""twisted.internet.tcp internals: write flushing, adopted listening ports, accept logs.

Private names used:

- ``FileDescriptor._writeDisconnecting``, ``._aborting``,
  ``._tempDataBuffer`` (twisted.internet.abstract): whether a TCP transport is
  closing, and whether it still holds bytes, after the shared per-turn flush
  of ``idgateway.server.socket_writes`` ran its ``doWrite``. Without them
  (``COALESCING`` False) ``coalesce_writes`` leaves transports as they are:
  Twisted's own write path, one epoll change more per write.
- ``FileDescriptor._tempDataLen``, ``._writeDisconnected`` (with the
  ``_tempDataBuffer`` above): ``DirectWrites.write`` queues a write as
  ``FileDescriptor.write`` does, in one frame instead of five, and
  ``flush_transports`` sends what a turn queued with one ``send`` of its own
  when the transport holds nothing older, instead of ``doWrite`` and the four
  calls under it (in its own loop: no frame per transport). Checked with the
  names above (``COALESCING``).
- ``EPollReactor._reads`` (the descriptors watched for reading):
  ``DirectWrites.resumeProducing`` returns at once when its descriptor is in
  it, as ``startReading`` would have after three calls. A reactor without it:
  the stock path.
- ``tcp.Port._fromListeningDescriptor``: a listening socket the workers share,
  adopted as a ``tcp.Port`` subclass (``SharedPort``). Without it: the
  reactor's public ``adoptStreamPort`` (a stock Port: Twisted's adaptive
  accept count instead of one connection per wake-up).
- ``tcp.Port._logger``: a port's accept-time log events (EMFILE) routed
  through a throttle. Without it: the port logs as stock Twisted does.
- ``tcp.Port.transport`` (the class a port makes each accepted connection
  of, ``tcp.Server``): a listener's port makes the gateway's coalescing
  ``tcp.Server`` subclass at once (``accept_as``), instead of the channel
  changing the class of each new transport (in CPython 3.11 a class change
  gives the instance a dict of its own: about 1 KiB per connection). Without
  it: the class is changed as before.
- ``tcp.Server._addressType`` (the address class of its peer, IPv6Address
  on an IPv6 connection): ``peer_address`` makes the address tcp.Server's
  ``getPeer`` makes, once, for the gateway's accepted connections, which
  keep it (``idgateway.server.socket_writes``). Without it: IPv4Address or
  IPv6Address by the length of the peer's tuple, as tcp.Server chooses.
- ``tcp.Port._realPortNumber`` and ``FileDescriptor._getLogPrefix``: what
  ``tcp.Server`` puts in its ``repstr`` and ``logstr`` at accept, made when
  asked instead (``accepted_repr``, ``accepted_log_prefix``) for the
  connections of the workers' lean event loop, which does not ask for them
  at every event. Without them: the text says less (the port number
  "unknown", the protocol's class name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from errno import EWOULDBLOCK
from typing import Any

from twisted.internet import abstract, address, main, tcp
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from idgateway._twisted import note_fallback

_descriptor = abstract.FileDescriptor()
COALESCING = (
    isinstance(getattr(_descriptor, "_tempDataBuffer", None), list)
    and isinstance(getattr(_descriptor, "_tempDataLen", None), int)
    and isinstance(getattr(_descriptor, "_writeDisconnected", None), bool)
    and isinstance(getattr(_descriptor, "_writeDisconnecting", None), bool)
    and isinstance(getattr(tcp.Connection, "_aborting", None), bool)
    and isinstance(getattr(tcp.Connection, "SEND_LIMIT", None), int)
)
del _descriptor
if not COALESCING:
    note_fallback("FileDescriptor write internals", "TCP writes are not coalesced per turn")

ADOPT_AS_SUBCLASS = callable(getattr(tcp.Port, "_fromListeningDescriptor", None))
if not ADOPT_AS_SUBCLASS:
    note_fallback("tcp.Port._fromListeningDescriptor", "shared ports are stock adopted ports")


class DirectWrites:
    """Mixin over a coalescing ``tcp.Connection`` subclass: ``write`` and
    ``doRead`` in one frame each.

    ``write`` is what ``tcp.Connection.write`` (``_newtls.ConnectionMixin.write``,
    then ``FileDescriptor.write``, ``_dataMustBeBytes``, ``_maybePauseProducer``,
    ``_isSendBufferFull``) does for a plain connection and a bytes object;
    anything else takes that stock path. ``startWriting`` is the coalescing
    one: the bytes leave with the turn's shared flush. ``doRead`` is
    ``tcp.Connection.doRead`` with its ``_dataReceived`` spelled out.
    """

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        # HTTPChannel resumes its transport after every request, paused or not:
        # FileDescriptor.resumeProducing -> startReading -> addReader -> _add,
        # which finds the descriptor already watched. The epoll reactor keeps
        # the watched descriptors in _reads: when this one is there already,
        # that is all there is to know (any other reactor: the stock path).
        transport: Any = self
        if (
            transport.connected
            and not transport.disconnecting
            and transport.fileno() in getattr(transport.reactor, "_reads", ())
        ):
            return
        abstract.FileDescriptor.resumeProducing(transport)

    def doRead(self) -> Any:  # noqa: N802 - Twisted's name
        transport: Any = self
        if transport.TLS:
            return tcp.Connection.doRead(transport)
        try:
            data = transport.socket.recv(transport.bufferSize)
        except OSError as error:
            if error.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        transport.protocol.dataReceived(data)
        return None

    def write(self, data: bytes) -> None:
        transport: Any = self
        if transport.TLS or type(data) is not bytes:
            tcp.Connection.write(transport, data)
            return
        if not transport.connected or transport._writeDisconnected or not data:
            return
        transport._tempDataBuffer.append(data)
        transport._tempDataLen += len(data)
        producer = transport.producer
        if (
            producer is not None
            and transport.streamingProducer
            and len(transport.dataBuffer) + transport._tempDataLen > transport.bufferSize
        ):
            transport.producerPaused = True
            producer.pauseProducing()
        # (The coalescing startWriting has nothing to do for a transport
        # already waiting for the turn's flush, or watched: a second write in
        # a turn, such as a response's body after its head, skips its frame.)
        if not transport._flush_waiting and not transport._watched:
            transport.startWriting()


def call_after_events(reactor: Any, call: Callable[[], object]) -> bool:
    """Have ``reactor`` call ``call`` once the events it is dispatching now are
    dispatched, before it polls again (True); False when it is not the
    workers' lean reactor (``idgateway._twisted.reactor``, which keeps the list
    in ``_after_events`` while it dispatches) in the middle of a poll's events:
    the caller then uses ``callLater(0, ...)``, which runs at the same point of
    the next turn, through a DelayedCall."""
    after = getattr(reactor, "_after_events", None)
    if after is None:
        return False
    after.append(call)
    return True


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
        # What the turn queued, with one send, as doWrite would, when the
        # transport's state is the plain one (nothing older left to send, not
        # too much, no producer that is paused or pulls): doWrite otherwise.
        queued = transport._tempDataBuffer
        producer = transport.producer
        if not (
            transport.dataBuffer
            or not queued
            or transport._tempDataLen > transport.SEND_LIMIT
            or (
                producer is not None
                and (not transport.streamingProducer or transport.producerPaused)
            )
        ):
            data = queued[0] if len(queued) == 1 else b"".join(queued)
            try:
                sent = transport.socket.send(data)
            except OSError:
                sent = -1  # (doWrite sends again and reports what it was)
            if sent >= 0:
                transport._tempDataBuffer = []
                transport._tempDataLen = 0
                if sent < len(data):
                    # The kernel took part: the rest waits in dataBuffer, as
                    # doWrite leaves it, for the reactor to send when the
                    # socket drains.
                    transport.dataBuffer = data
                    transport.offset = sent
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


def accept_as(port: Any, transport_class: type[tcp.Server]) -> bool:
    """Have the listening ``port`` make its accepted connections as
    ``transport_class`` (a ``tcp.Server`` subclass); False (nothing done) if
    it does not make them from a ``transport`` class attribute that is
    ``tcp.Server`` or a subclass."""
    made = getattr(type(port), "transport", None)
    if not (isinstance(port, tcp.Port) and isinstance(made, type) and issubclass(made, tcp.Server)):
        return False
    port.transport = transport_class
    return True


def peer_address(transport: Any, client: tuple[Any, ...]) -> Any:
    """The address ``tcp.Server.getPeer`` makes from the peer's ``client`` tuple."""
    address_type = getattr(transport, "_addressType", None)
    if address_type is None:
        address_type = address.IPv4Address if len(client) == 2 else address.IPv6Address
    return address_type("TCP", *client)


def accepted_log_prefix(transport: Any) -> str:
    """What ``tcp.Server.__init__`` puts in ``logstr``: "Protocol,sessionno,host"."""
    get_prefix = getattr(transport, "_getLogPrefix", None)
    protocol = transport.protocol
    prefix = get_prefix(protocol) if get_prefix is not None else type(protocol).__name__
    return f"{prefix},{transport.sessionno},{transport.hostname}"


def accepted_repr(transport: Any) -> str:
    """What ``tcp.Server.__init__`` puts in ``repstr``: "<Protocol #sessionno on port>"."""
    port = getattr(transport.server, "_realPortNumber", "unknown")
    return f"<{type(transport.protocol).__name__} #{transport.sessionno} on {port}>"


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
