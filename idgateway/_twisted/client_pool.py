"""twisted.web.client internals: a connection pool whose connections do not log.

Names used: ``HTTPConnectionPool._factory``, the factory class the pool
instantiates for every new connection. Each instance is a noisy
``protocol.Factory``: it logs "Starting factory ..." and "Stopping factory
..." around every connection to a provider (twelve of the seventy-two lines
of the demo's log, and one pair per token call under load). The pool gets a
subclass with ``noisy = False``. Without the name (``QUIET`` False) the pool is
left stock and the lines stay.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet.protocol import Factory
from twisted.web.client import HTTPConnectionPool

from idgateway._twisted import note_fallback

_STOCK_FACTORY: Any = getattr(HTTPConnectionPool, "_factory", None)
QUIET = inspect.isclass(_STOCK_FACTORY) and issubclass(_STOCK_FACTORY, Factory)
if QUIET:
    _QuietFactory: Any = type("QuietHTTP11ClientFactory", (_STOCK_FACTORY,), {"noisy": False})
else:  # pragma: no cover - a Twisted built otherwise
    note_fallback("HTTPConnectionPool._factory", "provider connections log each start and stop")


def quiet(pool: HTTPConnectionPool) -> HTTPConnectionPool:
    """``pool``, its connections no longer logging "Starting/Stopping factory"."""
    if QUIET:
        pool._factory = _QuietFactory
    return pool
