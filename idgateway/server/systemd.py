"""systemd integration without libsystemd: readiness notification and socket activation.

Readiness (``Type=notify`` in etc/idgateway.service)
    ``notify()`` speaks the sd_notify(3) protocol: one datagram of newline-separated
    ``NAME=value`` assignments to the AF_UNIX datagram socket that systemd names in
    ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). The gateway
    sends ``READY=1`` once it serves, ``RELOADING=1`` and then ``READY=1`` around a
    reload (SIGHUP), and ``STOPPING=1`` as it begins to stop. Outside systemd
    (no ``$NOTIFY_SOCKET``) every call does nothing and returns False.

Socket activation (etc/idgateway.socket)
    ``listen_fds()`` implements sd_listen_fds(3): when ``$LISTEN_PID`` is this
    process, descriptors 3 .. 3+``$LISTEN_FDS``-1 are sockets systemd bound for it,
    named by ``$LISTEN_FDNAMES``. A listener of gateway.yaml whose address equals a
    passed socket's bound address (as ``getsockname()`` reports it) serves on that
    socket instead of binding its own, so ports below 1024 need no privilege in the
    gateway's process. The variables are removed once read, as sd_listen_fds does
    with unset_environment set, and the master also leaves them and $NOTIFY_SOCKET
    out of its workers' environment. (Twisted's endpoints module, which twistd
    imports early, takes LISTEN_PID and LISTEN_FDS from os.environ for itself; they
    are then read from /proc/self/environ, the environment the process began with.)
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, ParamSpec, TypeVar

import attrs
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger

# The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
# sd_listen_fds(3)'s variables.
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# The variables systemd sets for the process it starts, which no child should inherit.
SYSTEMD_VARIABLES = (
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
)
# A notification never holds up the reactor for longer than this.
SEND_TIMEOUT = 2.0

_log = Logger(namespace="idgateway.server.systemd")

P = ParamSpec("P")
R = TypeVar("R")


# ---------------------------------------------------------------------------
# sd_notify


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (``NAME=value`` lines) to the service manager, as sd_notify(3) does.

    True once the datagram is sent; False, and nothing sent, when ``$NOTIFY_SOCKET``
    is unset or names an unsupported kind of socket, or when the send fails. Never
    raises: the gateway serves the same with or without a listening manager.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        target = "\0" + address[1:]  # abstract namespace
    elif address.startswith("/"):
        target = address
    else:
        # Unset, or a kind this module does not speak (systemd >= 254 also has vsock:).
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(target)
            data = state.encode("utf-8")
            return sock.send(data) == len(data)
    except OSError:
        return False


def _one_line(text: str) -> str:
    # A newline would end the assignment early and start another.
    return " ".join(text.splitlines())


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ready(status: str | None = None, environ: Mapping[str, str] = os.environ) -> bool:
    """``READY=1``: start-up, or a reload, is complete."""
    state = "READY=1"
    if status is not None:
        state += f"\nSTATUS={_one_line(status)}"
    return notify(state, environ)


def reloading(environ: Mapping[str, str] = os.environ) -> bool:
    """``RELOADING=1``, with the ``MONOTONIC_USEC`` that systemd >= 253 requires with it."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}", environ)


def stopping(environ: Mapping[str, str] = os.environ) -> bool:
    """``STOPPING=1``: the service is shutting down."""
    return notify("STOPPING=1", environ)


def status(text: str, environ: Mapping[str, str] = os.environ) -> bool:
    """``STATUS=text``: shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}", environ)


def notify_reload(method: Callable[P, R]) -> Callable[P, R]:
    """Wrap a reload: ``RELOADING=1`` before it, ``READY=1`` after it, however it ends.

    A method returning False (reload refused) sets a STATUS saying that the previous
    configuration still serves.
    """

    @functools.wraps(method)
    def reload(*args: P.args, **kwargs: P.kwargs) -> R:
        reloading()
        outcome: object = _RAISED
        try:
            result = method(*args, **kwargs)
            outcome = result
            return result
        finally:
            when = time.strftime("%Y-%m-%d %H:%M:%S")
            if outcome is False or outcome is _RAISED:
                ready(f"reload refused at {when}; serving the previous configuration")
            else:
                ready(f"configuration reloaded at {when}")

    return reload


_RAISED = object()


def child_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A copy of ``environ`` for a child process, without what systemd meant for this one.

    A worker must not send notifications (systemd accepts them from the main process
    only, NotifyAccess=main) nor take the passed sockets for its own.
    """
    return {name: value for name, value in environ.items() if name not in SYSTEMD_VARIABLES}


# ---------------------------------------------------------------------------
# sd_listen_fds


def listen_fds(environ: MutableMapping[str, str] = os.environ) -> dict[str | int, int]:
    """The descriptors systemd passed to this process, as sd_listen_fds(3) finds them.

    Each descriptor under its name from ``$LISTEN_FDNAMES`` when no other descriptor
    has that name, else under its position (0, 1, ...): one .socket unit gives the
    same name to all its sockets. Nothing when ``$LISTEN_PID`` is not this process.
    The LISTEN_* variables are removed in every case, and each descriptor is made
    close-on-exec.
    """
    pid_text = environ.get("LISTEN_PID")
    count_text = environ.get("LISTEN_FDS")
    names_text = environ.get("LISTEN_FDNAMES")
    for name in LISTEN_VARIABLES:
        environ.pop(name, None)
    if not pid_text or not count_text:
        return {}
    try:
        pid, count = int(pid_text), int(count_text)
    except ValueError:
        _log.warn(
            "ignoring LISTEN_PID={pid!r} LISTEN_FDS={count!r}: not numbers",
            pid=pid_text,
            count=count_text,
        )
        return {}
    if pid != os.getpid() or count <= 0:
        return {}
    names = names_text.split(":") if names_text is not None else [""] * count
    if len(names) != count:
        _log.warn(
            "ignoring LISTEN_FDNAMES: {names} name(s) for {count} descriptor(s)",
            names=len(names),
            count=count,
        )
        names = [""] * count
    repeated = collections.Counter(names)
    found: dict[str | int, int] = {}
    for index, name in enumerate(names):
        fd = LISTEN_FDS_START + index
        try:
            os.set_inheritable(fd, False)
        except OSError as error:
            _log.warn("systemd passed descriptor {fd}, but: {error}", fd=fd, error=error)
            continue
        found[name if name and repeated[name] == 1 else index] = fd
    return found


@attrs.frozen
class PassedSocket:
    """A listening TCP socket that systemd passed, and the address it is bound to."""

    fd: int
    name: str | int
    family: int
    host: str
    port: int

    @property
    def address(self) -> str:
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def matches(self, host: str, port: int) -> bool:
        """True if this socket is bound to ``host:port``: the same IP address (however it
        is spelt) and port, or for a host name, an address the name resolves to."""
        if port != self.port:
            return False
        mine = ipaddress.ip_address(self.host)
        try:
            return ipaddress.ip_address(host) == mine
        except ValueError:
            pass
        # A host name (localhost:8080): what binding it would bind.
        try:
            found = socket.getaddrinfo(host, port, self.family, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return False
        return any(ipaddress.ip_address(address[4][0]) == mine for address in found)


def describe(fd: int, name: str | int = "") -> PassedSocket | None:
    """``fd`` as a PassedSocket, or None if it is not a listening TCP socket."""
    try:
        duplicate = os.dup(fd)
    except OSError:
        return None
    try:
        sock = socket.socket(fileno=duplicate)  # family and type from the descriptor
    except OSError:
        os.close(duplicate)
        return None
    with sock:
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            if sock.type != socket.SOCK_STREAM:
                return None
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return None
            host, port = sock.getsockname()[:2]
        except OSError:
            return None
        return PassedSocket(fd=fd, name=name, family=sock.family, host=host, port=port)


class PassedSockets:
    """The listening sockets systemd passed; a listener looks its address up here.

    The descriptors stay open for the life of the process (systemd holds its own copy
    anyway), so a listener that a reload removes and later brings back finds its
    socket again. Users get duplicates.
    """

    def __init__(self, sockets: list[PassedSocket]) -> None:
        self.sockets = list(sockets)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> PassedSockets:
        found = []
        for name, fd in listen_fds(environ).items():
            passed = describe(fd, name)
            if passed is None:
                _log.warn(
                    "systemd passed descriptor {fd} ({name}), which is not a listening TCP "
                    "socket; ignoring it",
                    fd=fd,
                    name=name,
                )
                continue
            found.append(passed)
        if found:
            _log.info(
                "systemd passed {count} listening socket(s): {sockets}",
                count=len(found),
                sockets=", ".join(f"{each.address} (fd {each.fd})" for each in found),
            )
        return cls(found)

    def find(self, host: str, port: int) -> PassedSocket | None:
        for passed in self.sockets:
            if passed.matches(host, port):
                return passed
        return None

    def _lookup(self, host: str, port: int) -> PassedSocket | None:
        """``find``, saying so when systemd passed sockets but none for this address."""
        passed = self.find(host, port)
        if passed is None and self.sockets:
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            _log.warn(
                "{address}: systemd passed no socket for this listener (it passed {passed}); "
                "binding it here. A listener and its ListenStream= must name the same address.",
                address=address,
                passed=", ".join(each.address for each in self.sockets),
            )
        return passed

    def socket_for(self, host: str, port: int) -> socket.socket | None:
        """A non-blocking socket object on a duplicate of the passed socket for the address."""
        passed = self._lookup(host, port)
        if passed is None:
            return None
        sock = socket.socket(fileno=os.dup(passed.fd))
        sock.setblocking(False)
        _log.info(
            "{address}: using the socket systemd passed (fd {fd})",
            address=passed.address,
            fd=passed.fd,
        )
        return sock

    def adopt(
        self, reactor: Any, host: str, port: int, factory: IProtocolFactory
    ) -> IListeningPort | None:
        """A listening port serving ``factory`` on the passed socket for the address, if any."""
        passed = self._lookup(host, port)
        if passed is None:
            return None
        # Twisted's accept loop needs a non-blocking socket (this sets the flag on the
        # socket itself, which systemd's copy shares: systemd does not mind).
        os.set_blocking(passed.fd, False)
        # adoptStreamPort works on its own duplicate; ours stays for later adoptions.
        listening: IListeningPort = reactor.adoptStreamPort(passed.fd, passed.family, factory)
        _log.info(
            "{address}: serving on the socket systemd passed (fd {fd})",
            address=passed.address,
            fd=passed.fd,
        )
        return listening


_inherited: PassedSockets | None = None


def initial_environ() -> dict[str, str]:
    """The environment this process was started with, as Linux keeps it in /proc/self/environ.

    Changes made since (setenv, unsetenv, os.environ) do not show here.
    """
    try:
        with open("/proc/self/environ", "rb") as file:
            data = file.read()
    except OSError:
        return {}
    found = {}
    for entry in data.split(b"\0"):
        name, equals, value = entry.partition(b"=")
        if equals:
            found[os.fsdecode(name)] = os.fsdecode(value)
    return found


def inherited() -> PassedSockets:
    """This process's passed sockets, read from its environment on first use.

    Importing twisted.internet.endpoints (as twistd does when it loads its plugins,
    before any of this code runs) takes LISTEN_PID and LISTEN_FDS out of os.environ,
    for Twisted's own ``systemd:`` endpoints. So when they are gone from os.environ,
    they are read from the environment the process started with.
    """
    global _inherited
    if _inherited is None:
        environ: MutableMapping[str, str] = os.environ
        if "LISTEN_PID" not in os.environ or "LISTEN_FDS" not in os.environ:
            started = initial_environ()
            environ = {name: started[name] for name in LISTEN_VARIABLES if name in started}
            for name in LISTEN_VARIABLES:
                os.environ.pop(name, None)
        _inherited = PassedSockets.from_environment(environ)
    return _inherited


def adopt_listener(
    reactor: Any, host: str, port: int, factory: IProtocolFactory
) -> IListeningPort | None:
    """Serve ``factory`` on the socket systemd passed for ``host:port``; None if none."""
    return inherited().adopt(reactor, host, port, factory)


def listener_socket(host: str, port: int) -> socket.socket | None:
    """A socket object for the socket systemd passed for ``host:port``; None if none."""
    return inherited().socket_for(host, port)
