"""Outside ``idgateway/_twisted/``, no code touches a private Twisted name.

The rule, applied to every module of ``idgateway/`` except the seam:

1. No ``from twisted... import _name`` / ``from txredisapi import _name``,
   and no import from a private module (``twisted.internet._sslverify``).
2. No attribute access ``anything._name`` and no method ``def _name`` where
   ``_name`` is a private member of one of the Twisted / txredisapi classes the
   gateway builds on (``PRIVATE_SOURCES``, read with ``dir()`` from the
   installed releases, instances included): an access to ``channel._buffer``
   cannot be told from ``self._buffer`` of a gateway class by the AST alone,
   so the names count, not the objects.
3. The gateway's own attributes that happen to share such a name are allowed
   per module and name (``OWN``), each with the reason; ``_log`` (the house
   style's class-level ``Logger``) everywhere.

A new use of a private Twisted name therefore fails here until it moves into
the seam, with a fallback and a line in tests/unit/test_twisted_seam.py.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest
import txredisapi
from twisted.internet import abstract, endpoints, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.protocols import basic, tls
from twisted.web import http, server
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyChannel

import idgateway

PACKAGE = Path(idgateway.__file__).parent
SEAM = PACKAGE / "_twisted"

PRIVATE_SOURCES: list[Any] = [
    http.HTTPChannel,
    http.HTTPChannel(),
    http.Request,
    http.Request(DummyChannel()),
    server.Request,
    server.Site,
    Headers,
    Headers(),
    basic.LineReceiver,
    abstract.FileDescriptor(),
    tcp.Port,
    tcp.Server,
    tcp.Client,
    EPollReactor,
    tls.TLSMemoryBIOProtocol,
    tls.BufferingTLSTransport,
    tls.TLSMemoryBIOFactory,
    endpoints._WrappingProtocol,
    txredisapi.BaseRedisProtocol,
    txredisapi.BaseRedisProtocol(),
    txredisapi.ReplyQueue(),
]

# (module relative to idgateway/, name): the gateway's own attribute.
OWN = {
    # TurnWriteBuffer's own list and write callable (not a LineReceiver's).
    ("server/socket_writes.py", "_buffer"),
    ("server/socket_writes.py", "_write"),
    # The upstream response parser's own buffer.
    ("proxy/upstream.py", "_buffer"),
    # A set's / a flow store's own helpers.
    ("sessions/revocation.py", "_add"),
    ("sessions/flows.py", "_base"),
    # Injected clocks (house style: "pass clock=reactor unless testing").
    ("oidc/provider.py", "_clock"),
    ("sessions/cookie.py", "_clock"),
    ("sessions/redis_store.py", "_clock"),
    ("sessions/revocation.py", "_clock"),
    # RedisClient's own (not the txredisapi protocol's) state and method.
    ("redis/client.py", "_command"),
    ("redis/client.py", "_started"),
    ("sessions/revocation.py", "_started"),
}
EVERYWHERE = {"_log"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def base_is_ours_or_builtin(cls: type) -> bool:
    return cls.__module__.split(".")[0] not in ("twisted", "txredisapi")


@functools.cache
def _private_twisted_names() -> frozenset[str]:
    names: set[str] = set()
    for source in PRIVATE_SOURCES:
        names.update(n for n in dir(source) if _is_private(n))
        names.update(n for n in getattr(source, "__dict__", {}) if _is_private(n))
    # Attributes those classes make later (connectionMade, startListening...):
    # every ``self._x = ...`` in them and their bases.
    classes = {source if inspect.isclass(source) else type(source) for source in PRIVATE_SOURCES}
    for cls in {base for each in classes for base in each.__mro__}:
        if base_is_ours_or_builtin(cls):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        names.update(
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and _is_private(node.attr)
        )
    # Name-mangled private attributes (HTTPChannel.__first_line).
    names.update(n for n in dir(http.HTTPChannel()) if n.startswith("_HTTPChannel__"))
    return frozenset(names - EVERYWHERE)


def _is_private_module(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _violations(relative: str, source: str, forbidden: frozenset[str]) -> list[str]:
    """What module ``idgateway/<relative>`` with this source breaks of the rule."""
    tree = ast.parse(source, relative)
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"idgateway/{relative}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            if top in ("twisted", "txredisapi"):
                if _is_private_module(node.module):
                    found.append(f"{where}: from {node.module} import ...")
                found.extend(
                    f"{where}: from {node.module} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                )
        elif isinstance(node, ast.Import):
            found.extend(
                f"{where}: import {alias.name}"
                for alias in node.names
                if alias.name.split(".")[0] in ("twisted", "txredisapi")
                and _is_private_module(alias.name)
            )
        elif isinstance(node, ast.Attribute):
            if node.attr in forbidden and (relative, node.attr) not in OWN:
                found.append(f"{where}: .{node.attr}")
        elif isinstance(node, ast.ClassDef):
            found.extend(
                f"idgateway/{relative}:{item.lineno}: def {item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                and item.name in forbidden
                and (relative, item.name) not in OWN
            )
    return found


def test_no_private_twisted_name_outside_the_seam() -> None:
    forbidden = _private_twisted_names()
    modules = [p for p in PACKAGE.rglob("*.py") if SEAM not in p.parents]
    assert len(modules) > 40
    violations = [
        violation
        for path in sorted(modules)
        for violation in _violations(
            path.relative_to(PACKAGE).as_posix(), path.read_text(encoding="utf-8"), forbidden
        )
    ]
    assert violations == [], "move these into idgateway/_twisted/:\n" + "\n".join(violations)


def test_the_scan_knows_the_private_names_the_seam_hides() -> None:
    forbidden = _private_twisted_names()
    for name in (
        "_HTTPChannel__first_line",
        "_rawHeaders",
        "_transferDecoder",
        "_dataBuffer",
        "_disconnected",
        "_cleanup",
        "_networkProducer",
        "_poller",
        "_selectables",
        "_fromListeningDescriptor",
        "_logger",
        "_tempDataBuffer",
        "_send100Continue",
        "_respondToBadRequestAndDisconnect",
        "_protocolUpgradeForWebsockets",
        "_aggregator",
    ):
        assert name in forbidden or not hasattr(http.HTTPChannel, name), name


CAUGHT = {
    "attribute": "def f(request):\n    return request._disconnected\n",
    "mangled": "def f(channel):\n    return channel._HTTPChannel__first_line\n",
    "assignment": "def f(channel):\n    channel._dataBuffer = []\n",
    "import-private-name": "from twisted.web.http import _IdentityTransferDecoder\n",
    "import-private-module": "from twisted.internet._sslverify import IOpenSSLTrustRoot\n",
    "import-private-module-plain": "import twisted.internet._sslverify\n",
    "txredisapi": "from txredisapi import _private\n",
    "override": "class C:\n    def _cleanup(self):\n        pass\n",
    "own-name-elsewhere": "def f(channel):\n    return channel._buffer\n",
}


@pytest.mark.parametrize("source", list(CAUGHT.values()), ids=list(CAUGHT))
def test_the_scan_catches_each_way_in(source: str) -> None:
    assert _violations("probe.py", source, _private_twisted_names())


def test_the_gateways_own_names_pass() -> None:
    source = "class C:\n    _log = 1\n    def _mine(self):\n        return self._log\n"
    assert _violations("probe.py", source, _private_twisted_names()) == []
    own = "def f(buffer):\n    return buffer._buffer\n"
    assert _violations("server/socket_writes.py", own, _private_twisted_names()) == []
    assert _violations("request.py", own, _private_twisted_names())
