"""Start-up failures told as one line for people: what, where in the file, and the fix.

A listener that cannot be opened stops the start. twistd would print the
exception's traceback (forty lines of Twisted internals for a port in use);
instead the service logs one line naming the listener, the line of the file
that declares it and what to do, and the process exits with status 1.
"""

from __future__ import annotations

import errno
import os
from typing import Any, NoReturn

# What to do about the usual reasons a listening socket cannot be opened.
_FIXES = {
    errno.EADDRINUSE: "stop the process listening there (ss -ltnp shows it) or choose another port",
    errno.EACCES: "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability "
    "(AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit), or let systemd open "
    "the socket (etc/idgateway.socket)",
    errno.EADDRNOTAVAIL: "this machine has no such address: use one of its own "
    "addresses, 0.0.0.0 or [::]",
    errno.EAFNOSUPPORT: "this machine has no IPv6: listen on an IPv4 address",
}


class StartupError(Exception):
    """A reason the gateway cannot start, already worded for people."""


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind a listening failure (Twisted wraps it in CannotListenError)."""
    inner = getattr(error, "socketError", None)
    if isinstance(inner, OSError):
        return inner
    if isinstance(error, OSError):
        return error
    cause = error.__cause__
    return cause if isinstance(cause, OSError) else None


def listen_problem(address: str, where: str, error: BaseException) -> str:
    """``cannot listen on 0.0.0.0:443 (gateway.yaml:3): <reason and fix>``."""
    os_error = _os_error(error)
    if os_error is not None and os_error.errno in _FIXES:
        # The system's words first (what people search for), then the fix.
        said = os_error.strerror or os.strerror(os_error.errno)
        reason = f"{said}: {_FIXES[os_error.errno]}"
    elif os_error is not None:
        reason = os_error.strerror or str(os_error)
    else:
        reason = str(error) or type(error).__name__
    shown = f" ({where})" if where else ""
    return f"cannot listen on {address}{shown}: {reason}"


def stop_starting(log: Any, error: StartupError) -> NoReturn:
    """Log the reason as one error line and end the process with status 1."""
    log.error("{problem}", problem=str(error))
    # SystemExit passes through twistd's start-up without a traceback; the
    # reactor has not run yet, so nothing is left half-served.
    raise SystemExit(1)
