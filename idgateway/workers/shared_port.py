"""The listening sockets the master binds and the workers accept on.

The master binds every listener and never accepts; each worker inherits the
sockets as fixed descriptors and accepts one connection per turn of its event
loop (``SharedPort``), so a burst spreads over the workers.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
)

from idgateway._twisted.tcp import adopt_listening_port
from idgateway.config.model import Listener

BACKLOG = 1024


# The first inherited listening socket's descriptor number in a worker.
FIRST_LISTEN_FD = 3


def listener_key(listener: Listener) -> tuple[str, int, bool]:
    return (listener.host, listener.port, listener.tls is not None)


def bind_listener(listener: Listener, backlog: int = BACKLOG) -> socket.socket:
    """A listening, non-blocking socket for ``listener``; nobody accepts on it here."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listener.host, listener.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise CannotListenError(listener.host, listener.port, error) from error
    return sock


class SharedPort(tcp.Port):
    """A listening port shared with the other workers: one accept per wake-up.

    twisted's port accepts up to 100 connections each time the socket is
    readable (and raises that while they keep coming). Every worker is woken
    for a new connection, so the first to run took a whole burst: a client
    that opens its 32 connections at once could find all of them on one
    worker, one core busy and the other idle. Taking one connection per turn
    lets the worker with less to do take the next one.
    """

    @property  # type: ignore[override]
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass  # tcp.Port's own adaptive figure; ignored


def adopt_shared_port(reactor: Any, fd: int, family: int, factory: Any) -> IListeningPort:
    """reactor.adoptStreamPort for a socket the workers share (see SharedPort)."""
    return adopt_listening_port(reactor, fd, family, factory, SharedPort)


def parse_listen_fd(spec: str) -> tuple[int, tuple[str, int]]:
    """``3=127.0.0.1:8080`` or ``4=[::1]:8443``."""
    fd_text, _, address = spec.partition("=")
    host_text, _, port_text = address.rpartition(":")
    if host_text.startswith("[") and host_text.endswith("]"):
        host_text = host_text[1:-1]
    try:
        return int(fd_text), (host_text, int(port_text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FD=HOST:PORT, got {spec!r}") from None
