"""Every private Twisted / txredisapi name ``idgateway/_twisted/`` uses still exists.

The seam (``idgateway._twisted``) takes a fast path only when the names it
needs are there, and the stock path otherwise. This list is the seam's
contract with the installed Twisted: a name a new release drops fails here
(and the gateway, meanwhile, takes the fallback: slower, not broken). It runs on
the newest Twisted and on the floor setup.py states (``make test-floor``).
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from typing import Any

import pytest
import txredisapi
from OpenSSL import SSL
from twisted.internet import abstract, address, endpoints, posixbase, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.protocols import tls
from twisted.python import components
from twisted.web import client, http, http_headers, server
from twisted.web.test.requesthelper import DummyChannel

import idgateway._twisted
from idgateway._twisted import chunked, client_pool, http_channel, http_request
from idgateway._twisted import http_headers as seam_headers
from idgateway._twisted import reactor as seam_reactor
from idgateway._twisted import redis as seam_redis
from idgateway._twisted import tcp as seam_tcp
from idgateway._twisted import tls as seam_tls
from idgateway._twisted import tls_direct as seam_tls_direct


def _class(owner: Any, name: str) -> bool:
    return inspect.isclass(getattr(owner, name, None))


def _function(owner: Any, name: str) -> bool:
    return callable(getattr(owner, name, None))


def _instance_attribute(make: Callable[[], Any], kind: type) -> Callable[[Any, str], bool]:
    def check(owner: Any, name: str) -> bool:
        return isinstance(getattr(make(), name, None), kind)

    return check


def _class_attribute(kind: type) -> Callable[[Any, str], bool]:
    def check(owner: Any, name: str) -> bool:
        return isinstance(getattr(owner, name, None), kind)

    return check


def _set_in_init(owner: Any, name: str) -> bool:
    # Made in __init__ (an instance would open descriptors): read its code.
    return name in owner.__init__.__code__.co_names


def _set_in_make_connection(owner: Any, name: str) -> bool:
    return name in owner.makeConnection.__code__.co_names


def _cffi_lib_with(names: tuple[str, ...]) -> Callable[[Any, str], bool]:
    def check(owner: Any, name: str) -> bool:
        lib = getattr(owner, name, None)
        return lib is not None and all(hasattr(lib, each) for each in names)

    return check


def _cffi_ffi(owner: Any, name: str) -> bool:
    ffi = getattr(owner, name, None)
    return all(callable(getattr(ffi, each, None)) for each in ("new", "buffer", "from_buffer"))


def _set_in_line_received(owner: Any, name: str) -> bool:
    return name in inspect.getsource(owner.lineReceived)


def _set_in_http_request_init(owner: Any, name: str) -> bool:
    return name in http.Request.__init__.__code__.co_names


def _an_encoder(owner: Any, name: str) -> bool:
    return _function(getattr(owner, name, None), "encode")


_channel = http.HTTPChannel

# (where, private name, what kind of thing it must be)
PRIVATE_NAMES: list[tuple[Any, str, Callable[[Any, str], bool]]] = [
    # _twisted/http_channel.py: the one-pass request head
    (_channel, "_HTTPChannel__first_line", _class_attribute(int)),
    (_channel, "_busyReceiving", _class_attribute(bool)),
    (_channel, "_buffer", _class_attribute(bytes)),
    (_channel, "_handlingRequest", _instance_attribute(_channel, bool)),
    (_channel, "_finishRequestBody", _function),
    (_channel, "_transferDecoder", _instance_attribute(_channel, type(None))),
    (_channel, "_command", _set_in_line_received),
    (_channel, "_path", _set_in_line_received),
    (_channel, "_version", _set_in_line_received),
    (http, "_IdentityTransferDecoder", _class),
    (http_headers.Headers, "_rawHeaders", _instance_attribute(http_headers.Headers, dict)),
    (_channel, "_dataBuffer", _instance_attribute(_channel, list)),
    (_channel, "_send100Continue", _function),
    (_channel, "_savedTimeOut", _class_attribute(type(None))),
    (_channel, "_receivedHeaderCount", _class_attribute(int)),
    (_channel, "_receivedHeaderSize", _class_attribute(int)),
    # _twisted/http_request.py: a request ended in one frame (with _savedTimeOut,
    # _handlingRequest and _dataBuffer above)
    (http.Request, "_disconnected", _class_attribute(bool)),
    (server.Request, "_encoder", _class_attribute(type(None))),
    (_channel, "_waitingForTransport", _class_attribute(bool)),
    (_channel, "_networkProducer", lambda o, n: n in o.connectionMade.__code__.co_names),
    # _twisted/http_headers.py
    (http_headers, "_nameEncoder", _an_encoder),
    # _twisted/http_request.py (Headers._rawHeaders: above)
    (server.Request, "_parsePOSTFormSubmission", _set_in_http_request_init),
    (
        server.Request,
        "_adapterCache",
        lambda o, n: n in components.Componentized.__init__.__code__.co_names,
    ),
    # _twisted/chunked.py
    (http, "_ChunkedTransferDecoder", _class),
    (http, "_MalformedChunkedDataError", _class),
    (getattr(http, "_ChunkedTransferDecoder", None), "_dataReceived_CHUNK_LENGTH", _function),
    # _twisted/tcp.py
    (
        abstract.FileDescriptor,
        "_tempDataBuffer",
        _instance_attribute(abstract.FileDescriptor, list),
    ),
    (abstract.FileDescriptor, "_writeDisconnecting", _class_attribute(bool)),
    (abstract.FileDescriptor, "_tempDataLen", _instance_attribute(abstract.FileDescriptor, int)),
    (abstract.FileDescriptor, "_writeDisconnected", _class_attribute(bool)),
    (tcp.Connection, "_aborting", _class_attribute(bool)),
    (tcp.Port, "_fromListeningDescriptor", _function),
    (tcp.Port, "_logger", lambda o, n: "_logger" in inspect.getsource(o)),
    (tcp.Port, "transport", lambda o, n: getattr(o, n, None) is tcp.Server),
    (tcp.Port, "_realPortNumber", lambda o, n: n in inspect.getsource(o.startListening)),
    (abstract.FileDescriptor, "_getLogPrefix", _function),
    (tcp.Server, "_addressType", lambda o, n: getattr(o, n, None) is address.IPv4Address),
    (endpoints, "_WrappingProtocol", _class),
    (getattr(endpoints, "_WrappingProtocol", None), "_wrappedProtocol", _set_in_init),
    # _twisted/tls.py
    (tls.BufferingTLSTransport, "_aggregator", _set_in_init),
    (tls.TLSMemoryBIOFactory, "_clock", _set_in_init),
    # _twisted/tls_direct.py: pyOpenSSL's bindings and Connection, Twisted's TLS protocol
    (SSL, "_lib", _cffi_lib_with(seam_tls_direct._LIB_NAMES)),
    (SSL, "_ffi", _cffi_ffi),
    (SSL.Connection, "_ssl", _set_in_init),
    (SSL.Connection, "_into_ssl", _set_in_init),
    (SSL.Connection, "_from_ssl", _set_in_init),
    (SSL.Connection, "_raise_ssl_error", _function),
    (SSL.Connection, "_handle_bio_errors", _function),
    (tls.TLSMemoryBIOProtocol, "_flushReceiveBIO", _function),
    (tls.TLSMemoryBIOProtocol, "_flushSendBIO", _function),
    (tls.TLSMemoryBIOProtocol, "_write", _function),
    (tls.TLSMemoryBIOProtocol, "_bufferedWrite", _function),
    (tls.TLSMemoryBIOProtocol, "_shutdownTLS", _function),
    (tls.TLSMemoryBIOProtocol, "_tlsShutdownFinished", _function),
    (tls.TLSMemoryBIOProtocol, "_handshakeDone", _class_attribute(bool)),
    (tls.TLSMemoryBIOProtocol, "_lostTLSConnection", _class_attribute(bool)),
    (tls.TLSMemoryBIOProtocol, "_aborted", _class_attribute(bool)),
    (tls.TLSMemoryBIOProtocol, "_tlsConnection", _set_in_make_connection),
    (tls.TLSMemoryBIOProtocol, "_appSendBuffer", _set_in_make_connection),
    # _twisted/reactor.py
    (EPollReactor, "_poller", _set_in_init),
    (EPollReactor, "_selectables", _set_in_init),
    (EPollReactor, "_doReadOrWrite", _function),
    (EPollReactor, "_disconnectSelectable", _function),
    (EPollReactor, "_reads", _set_in_init),
    # _twisted/no_tls.py: TLS imported optionally (a module-level name either way)
    (posixbase, "tls", lambda o, n: n in vars(o)),
    (posixbase, "ssl", lambda o, n: n in vars(o)),
    (tcp, "_TLSConnectionMixin", _class),
    # _twisted/client_pool.py
    (client.HTTPConnectionPool, "_factory", _class),
    # _twisted/redis.py (txredisapi)
    (txredisapi.BaseRedisProtocol, "replyQueue", _set_in_init),
    (txredisapi.ReplyQueue, "waiting", _instance_attribute(txredisapi.ReplyQueue, list)),
]


@pytest.mark.parametrize(
    ("owner", "name", "kind"),
    PRIVATE_NAMES,
    ids=[f"{getattr(o, '__name__', o)}.{n}" for o, n, _k in PRIVATE_NAMES],
)
def test_each_private_name_the_seam_uses_exists(
    owner: Any, name: str, kind: Callable[[Any, str], bool]
) -> None:
    assert owner is not None
    assert kind(owner, name), f"{owner!r} has no {name} of the expected kind"


def test_the_seam_takes_every_fast_path_on_a_supported_twisted() -> None:
    # On the installed Twisted each check the seam makes at import succeeds
    # (a failing one means a fast path silently turned off).
    assert http_channel.ONE_PASS_HEAD and http_channel.BODILESS_IN_ONE_GO
    assert http_channel.UNPARSED_BUFFER
    assert http_request.LEAN_INIT and http_request.DIRECT_LOOKUP and http_request.FINISH_IN_ONE_GO
    assert chunked.BOUNDED
    assert seam_tcp.COALESCING and seam_tcp.ADOPT_AS_SUBCLASS
    assert seam_tls.TURN_BUFFERED
    assert seam_tls_direct.DIRECT
    assert seam_reactor.LEAN and seam_reactor.LeanEPollReactor is not EPollReactor
    assert seam_redis.COUNTED
    assert client_pool.QUIET
    assert idgateway._twisted.FALLBACKS == []


def test_the_one_pass_head_matches_twisted_header_storage() -> None:
    request = http.Request(DummyChannel())
    request.requestHeaders.setRawHeaders(b"www-authenticate", [b"x"])
    assert list(request.requestHeaders._rawHeaders) == [b"WWW-Authenticate"]
    assert seam_headers.canonical_header_name(b"www-authenticate") == b"WWW-Authenticate"


@pytest.mark.parametrize("name", [b"bad name", b"", b"x\r\ny", b"\xff", b" leading"])
def test_a_header_name_that_is_no_token_is_refused(name: bytes) -> None:
    with pytest.raises(seam_headers.InvalidHeaderName):
        seam_headers.canonical_header_name(name)


def test_without_namencoder_header_names_are_spelled_as_headers_stores_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(seam_headers, "_name_encoder", None)
    for name in (b"content-type", b"www-authenticate", b"x-forwarded-for", b"DNT", b"te"):
        headers = http_headers.Headers()
        headers.setRawHeaders(name, [b"v"])
        [(stored, _)] = list(headers.getAllRawHeaders())
        assert seam_headers.canonical_header_name(name) == stored
    with pytest.raises(seam_headers.InvalidHeaderName):
        seam_headers.canonical_header_name(b"no:colon")


def test_log_fallbacks_logs_each_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.logger import capturedLogs

    monkeypatch.setattr(idgateway._twisted, "FALLBACKS", [("Thing._gone", "done slowly")])
    monkeypatch.setattr(idgateway._twisted, "_logged", False)
    with capturedLogs() as events:
        idgateway._twisted.log_fallbacks()
        idgateway._twisted.log_fallbacks()
    texts = [e["log_format"].format(**e) for e in events if "name" in e]
    assert texts == ["this Twisted has no Thing._gone: done slowly (slower, same behaviour)"]


def test_without_reply_counts_every_redis_connection_owes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    protocol = txredisapi.BaseRedisProtocol()
    protocol.replyQueue.get()  # one reply owed
    assert seam_redis.replies_outstanding(protocol) == 1
    monkeypatch.setattr(seam_redis, "COUNTED", False)
    assert seam_redis.replies_outstanding(protocol) == 0


def test_without_write_internals_transports_are_left_stock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from idgateway.server import socket_writes as writecoalesce

    transport = tcp.Server.__new__(tcp.Server)
    monkeypatch.setattr(writecoalesce, "COALESCING", False)
    writecoalesce.coalesce_writes(transport)
    assert type(transport) is tcp.Server
    monkeypatch.setattr(writecoalesce, "COALESCING", True)
    writecoalesce.coalesce_writes(transport)
    assert type(transport) is writecoalesce.CoalescingServer


def test_a_port_that_makes_no_tcp_server_is_left_as_it_is() -> None:
    from idgateway._twisted import tcp as seam_tcp
    from idgateway.server import socket_writes as writecoalesce

    class OtherPort(tcp.Port):
        transport = object  # type: ignore[assignment]

    other = OtherPort.__new__(OtherPort)
    assert seam_tcp.accept_as(other, writecoalesce.AcceptedConnection) is False
    assert "transport" not in vars(other)
    assert seam_tcp.accept_as(object(), writecoalesce.AcceptedConnection) is False
    port = tcp.Port.__new__(tcp.Port)
    writecoalesce.accept_listened(port)
    assert port.transport is writecoalesce.AcceptedConnection


@pytest.mark.parametrize(
    ("family", "peer"),
    [(socket.AF_INET, ("10.1.2.3", 40000)), (socket.AF_INET6, ("fd00::3", 40000, 0, 0))],
    ids=["IPv4", "IPv6"],
)
def test_an_accepted_connection_reads_as_stock_twisteds_and_keeps_no_dict(
    family: int, peer: tuple[Any, ...]
) -> None:
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactor

    from idgateway.server import socket_writes as writecoalesce

    class Listening:
        _realPortNumber = 8080

    kinds = (tcp.Server, writecoalesce.AcceptedConnection, writecoalesce.QuietAcceptedConnection)
    for kind in kinds:
        with socket.socket(family) as skt:
            made = kind(skt, Protocol(), peer, Listening(), 7, MemoryReactor())
            texts = (made.logPrefix(), repr(made), made.getPeer())
            own_names = sorted(vars(made))
            assert made.fileno() == skt.fileno()
            del made.fileno  # (as connectionLost does: FileDescriptor's answers)
            assert made.fileno() == -1
        assert texts == (
            f"Protocol,7,{peer[0]}",
            "<Protocol #7 on 8080>",
            (address.IPv4Address if family == socket.AF_INET else address.IPv6Address)(
                "TCP", *peer
            ),
        ), kind
        # Every field in a slot but fileno (the stock class: all in its dict).
        assert own_names == ["fileno"] or kind is tcp.Server, own_names


def test_without_write_internals_a_port_makes_stock_transports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from idgateway.server import socket_writes as writecoalesce

    monkeypatch.setattr(writecoalesce, "COALESCING", False)
    port = tcp.Port.__new__(tcp.Port)
    writecoalesce.accept_listened(port)
    assert port.transport is tcp.Server


def test_without_adopt_as_subclass_a_shared_port_is_a_stock_adopted_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adopted: list[tuple[int, int, object]] = []

    class Reactor:
        def adoptStreamPort(self, fd: int, family: int, factory: object) -> str:  # noqa: N802
            adopted.append((fd, family, factory))
            return "stock port"

    monkeypatch.setattr(seam_tcp, "ADOPT_AS_SUBCLASS", False)
    port = seam_tcp.adopt_listening_port(Reactor(), 7, 2, "factory", tcp.Port)
    assert port == "stock port"
    assert adopted == [(7, 2, "factory")]


def _serve_gateway(reads: list[bytes]) -> tuple[bytes, int]:
    """The gateway channel's answer to these reads, and the lines twisted.web parsed."""
    from tests.unit.test_request_head import _serve

    _, output, _, lines = _serve(reads, fast=True)
    return output, lines


_HEADS = {
    "get": [b"GET /a?b=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"],
    "post": [b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"],
    "pipelined": [b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"],
    "chunk-size-too-long": [
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"0" * 16
        + b"1\r\nx\r\n0\r\n\r\n"
    ],
    "vertical-tab": [b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x0b2\r\n\r\n"],
}


@pytest.mark.parametrize("reads", list(_HEADS.values()), ids=list(_HEADS))
def test_without_the_one_pass_head_twisted_web_parses_and_answers_the_same(
    reads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, fast_lines = _serve_gateway(reads)
    monkeypatch.setattr(http_channel, "ONE_PASS_HEAD", False)
    stock, stock_lines = _serve_gateway(reads)
    assert stock == fast
    assert stock.startswith(b"HTTP/1.1 ")
    assert stock_lines > 0


@pytest.mark.parametrize(
    "reads",
    [
        _HEADS["get"],
        _HEADS["pipelined"],
        [b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"],
        [b"GET / HTTP/1.1\r\nConnection: x close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"],
    ],
    ids=["get", "pipelined", "http-1.0", "connection-close"],
)
def test_without_the_bodiless_shortcut_twisted_web_methods_answer_the_same(
    reads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from idgateway.server.channel import GatewayChannel
    from tests.unit.test_request_head import _serve

    stock_steps: list[str] = []
    original = GatewayChannel.allContentReceived

    def all_content_received(channel: GatewayChannel) -> None:
        stock_steps.append("allContentReceived")
        original(channel)

    monkeypatch.setattr(GatewayChannel, "allContentReceived", all_content_received)
    fast = _serve(reads, fast=True)
    assert stock_steps == []  # (the shortcut was taken)
    monkeypatch.setattr(http_channel, "BODILESS_IN_ONE_GO", False)
    stock = _serve(reads, fast=True)
    assert stock_steps
    assert stock[:3] == fast[:3]
    assert stock[1].split(b"\r\n")[0].endswith(b" 200 OK")


def _serve_closing_channel() -> tuple[bytes, bool, list[str]]:
    """A GET on a channel whose own checkPersistence says close (as a
    draining server's channels do): the answer, whether it closed, the calls."""
    from twisted.internet.testing import StringTransport

    from idgateway.server.channel import GatewayChannel, GatewaySite
    from tests.unit.test_request_head import _Record

    asked: list[str] = []

    class ClosingChannel(GatewayChannel):
        def checkPersistence(self, request: Any, version: bytes) -> bool:  # noqa: N802
            asked.append("checkPersistence")
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False

    site = GatewaySite(_Record())
    site.protocol = ClosingChannel  # type: ignore[assignment]
    channel: Any = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
    output = transport.value()
    return (
        output.replace(output.partition(b"Date: ")[2].partition(b"\r\n")[0], b""),
        bool(transport.disconnecting),
        asked,
    )


def test_a_channels_own_check_persistence_is_asked_on_the_bodiless_shortcut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output, closed, asked = _serve_closing_channel()
    assert asked == ["checkPersistence"]
    assert b"Connection: close\r\n" in output and closed
    assert output.count(b"HTTP/1.1 200 OK") == 1  # (the pipelined second one is not read)
    monkeypatch.setattr(http_channel, "BODILESS_IN_ONE_GO", False)
    assert _serve_closing_channel() == (output, closed, asked)


def test_the_bodiless_shortcut_is_checked_against_the_stock_methods_code() -> None:
    # The check reads the names each stock method's code uses: a method that
    # does something else (another name) turns the shortcut off.
    for name, names in http_channel._STOCK_HEAD_END.items():
        assert http_channel._names(getattr(http.HTTPChannel, name)) == names
    assert (
        http_channel._names(http.HTTPChannel.requestDone)
        != (http_channel._STOCK_HEAD_END["allContentReceived"])
    )
    assert http_channel._names(None) is None


def test_without_the_unparsed_buffer_a_tunnel_starts_with_nothing_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channel = http_channel.HTTPChannelInternals()
    channel._dataBuffer = [b"ab", b"c"]
    monkeypatch.setattr(http_channel, "UNPARSED_BUFFER", False)
    assert channel.take_unparsed_bytes() == b""
    monkeypatch.setattr(http_channel, "UNPARSED_BUFFER", True)
    assert channel.take_unparsed_bytes() == b"abc"
    assert channel.take_unparsed_bytes() == b""


def test_a_quiet_pool_connects_without_factory_log_lines() -> None:
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import globalLogPublisher

    reactor = MemoryReactorClock()
    pool = client_pool.quiet(client.HTTPConnectionPool(reactor))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        factory = pool._factory(lambda protocol: None, "provider:443")
        factory.doStart()
        factory.doStop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if "factory" in str(e.get("log_format", "")).lower()]
    # A stock pool's factory does log them: the test sees what it claims to.
    stock = client.HTTPConnectionPool(reactor)._factory(lambda protocol: None, "provider:443")
    globalLogPublisher.addObserver(events.append)
    try:
        stock.doStart()
        stock.doStop()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("Starting factory" in str(e.get("log_format", "")) for e in events)


def test_without_the_factory_name_the_pool_is_left_stock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_pool, "QUIET", False)
    pool = client.HTTPConnectionPool(None)
    assert client_pool.quiet(pool)._factory is client.HTTPConnectionPool._factory


def test_a_lean_request_is_set_up_as_a_stock_one() -> None:
    from idgateway.server.channel import GatewayRequest

    channel = DummyChannel()
    stock = server.Request(channel, False)
    lean = GatewayRequest(channel)
    assert {k: type(v) for k, v in vars(stock).items() if k != "requestHeaders"} == {
        k: type(v) for k, v in vars(lean).items() if k != "requestHeaders"
    }
    assert isinstance(lean.requestHeaders, http_headers.Headers)
    assert (lean.client, lean.host, lean.transport, lean.queued) == (
        stock.client,
        stock.host,
        stock.transport,
        stock.queued,
    )


def test_a_lean_requests_headers_are_empty_headers_of_their_own() -> None:
    from idgateway.server.channel import GatewayRequest

    channel = DummyChannel()
    one, two = GatewayRequest(channel), GatewayRequest(channel)
    for headers, kind in (
        (one.requestHeaders, http_request.RequestHeaders),
        (one.responseHeaders, http_headers.Headers),
    ):
        assert type(headers) is kind
        assert list(headers.getAllRawHeaders()) == [] and headers._rawHeaders == {}
        assert repr(headers) == repr(kind())
    one.requestHeaders.setRawHeaders(b"x-a", [b"1"])
    one.responseHeaders.setRawHeaders(b"x-b", [b"2"])
    assert not two.requestHeaders.hasHeader(b"x-a")
    assert not two.responseHeaders.hasHeader(b"x-b")
    assert one.requestHeaders.getRawHeaders(b"x-a") == [b"1"]


@pytest.mark.parametrize(
    "name",
    [
        b"host",
        b"Host",
        b"HOST",
        b"cookie",
        b"x-request-id",
        b"Connection",
        b"x-other",
        "host",
        "Cookie",
        type("BytesName", (bytes,), {})(b"host"),
    ],
)
def test_request_header_lookups_answer_as_stock_headers_do(name: Any) -> None:
    lean, stock = http_request.RequestHeaders(), http_headers.Headers()
    for headers in (lean, stock):
        assert headers.getRawHeaders(name) is None
        assert headers.getRawHeaders(name, [b"d"]) == [b"d"]
        headers.setRawHeaders(b"Host", [b"a", b"b"])
        headers.setRawHeaders(b"Cookie", [b"c=1"])
        headers.setRawHeaders(b"X-Request-Id", [b"r"])
        headers.setRawHeaders(b"Connection", [b"close"])
        headers.setRawHeaders(b"X-Other", [b"o"])
    assert lean.getRawHeaders(name) == stock.getRawHeaders(name)
    assert lean.getRawHeaders(name, "default") == stock.getRawHeaders(name, "default")


# ---- _twisted/no_tls.py: the workers' master imports the reactor without TLS ----------

NO_TLS = """
import json, sys
from idgateway._twisted import FALLBACKS
from idgateway._twisted.no_tls import import_reactor_base_without_tls, tls_left_out
took = import_reactor_base_without_tls()
from twisted.internet import reactor
left_out = tls_left_out()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("OpenSSL", "cryptography"))
# The block lasted for that import only: pyOpenSSL still imports afterwards.
import OpenSSL.SSL
from twisted.internet import ssl
print(json.dumps([took, left_out, loaded, FALLBACKS, ssl.CertificateOptions is not None]))
"""

# A Twisted whose reactor base needs pyOpenSSL: the guard must fall back to it.
NEEDS_OPENSSL = """
import importlib.abc, sys

class NeedsOpenSSL(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "twisted.internet.tcp" and sys.modules.get("OpenSSL", 0) is None:
            raise ImportError("this Twisted needs OpenSSL")
        return None

sys.meta_path.insert(0, NeedsOpenSSL())
"""


def _run(code: str) -> Any:
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_master_reactor_is_made_without_tls_on_a_supported_twisted() -> None:
    took, left_out, loaded, fallbacks, ssl_works = _run(NO_TLS)
    assert took and left_out
    assert loaded == []
    assert fallbacks == []
    assert ssl_works


def test_a_twisted_that_needs_openssl_for_its_reactor_gets_it() -> None:
    took, left_out, loaded, fallbacks, ssl_works = _run(NEEDS_OPENSSL + NO_TLS)
    assert not took and not left_out
    assert "OpenSSL" in loaded  # the stock import, TLS and all
    assert [name for name, _ in fallbacks] == ["posixbase's optional TLS import"]
    assert ssl_works


def _serve_draining_channel(draining: bool) -> tuple[bytes, bool, list[str]]:
    """A GET on a channel whose checkPersistence only adds "close while the
    site drains" (site_draining_persistence, as server.service's channels)."""
    from twisted.internet.testing import StringTransport

    from idgateway.server.channel import GatewayChannel, GatewaySite
    from tests.unit.test_request_head import _Record

    asked: list[str] = []

    class DrainingChannel(GatewayChannel):
        def checkPersistence(self, request: Any, version: bytes) -> bool:  # noqa: N802
            asked.append("checkPersistence")
            if self.site.draining:  # type: ignore[attr-defined]
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
                return False
            return bool(super().checkPersistence(request, version))

        site_draining_persistence = checkPersistence

    site = GatewaySite(_Record())
    site.protocol = DrainingChannel  # type: ignore[assignment]
    site.draining = draining  # type: ignore[attr-defined]
    channel: Any = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    channel.dataReceived(b"GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    output = transport.value()
    for date in output.split(b"Date: ")[1:]:
        output = output.replace(date.partition(b"\r\n")[0], b"")
    return output, bool(transport.disconnecting), asked


@pytest.mark.parametrize("draining", [False, True])
def test_a_draining_sites_channel_answers_as_its_own_check_persistence(
    draining: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, closed, asked = _serve_draining_channel(draining)
    if draining:
        assert asked == ["checkPersistence"], "asked while the site drains"
        assert output.count(b"HTTP/1.1 200 OK") == 1 and b"Connection: close\r\n" in output
        assert closed
    else:
        assert asked == [], "not asked: the one-pass path answers as it would"
        assert output.count(b"HTTP/1.1 200 OK") == 2 and closed  # (the second said close)
    monkeypatch.setattr(http_channel, "BODILESS_IN_ONE_GO", False)
    stock_output, stock_closed, stock_asked = _serve_draining_channel(draining)
    assert (stock_output, stock_closed) == (output, closed)
    assert stock_asked  # (the stock path always asks)


def test_a_subclass_with_its_own_check_persistence_again_is_asked() -> None:
    from idgateway.server.service import DrainableChannel

    class Stricter(DrainableChannel):
        def checkPersistence(self, request: Any, version: bytes) -> bool:  # noqa: N802
            return False

    assert Stricter.checkPersistence is not Stricter.site_draining_persistence
    assert DrainableChannel.checkPersistence is DrainableChannel.site_draining_persistence
