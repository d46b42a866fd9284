"""Real HTTP back ends for end-to-end tests of the reverse proxy.

Run as a program (stdlib and Twisted only, so it needs no install)::

    python tests/backends.py --listen 127.0.0.1:0 [--listen unix:/tmp/x.sock]
                             [--listen tls:127.0.0.1:0:CERT.pem:KEY.pem]
                             [--ready-file PATH] [--name NAME] [--exit-with-parent]

Once every listener is up it prints one JSON line, ``{"ports": [...],
"tls_ports": [...], "unix": [...], "pid": N}``, and writes the same to
--ready-file (atomically, by rename). Port 0 asks for a free port; "ports"
holds every TCP port actually bound (TLS ones too), in --listen order.

The handler is chosen by the LAST segment of the path, so each one also
answers behind a route that adds a prefix (``/app/download`` is ``/download``):

``/echo`` and anything unmatched
    JSON: method, path, query, version, headers ([[name, value], ...] in
    arrival order, names lower case), cookies, body_length, body_sha256,
    peer, local, backend (the --name).
``/download?size=N[&chunked=1]``
    N bytes of the pattern ``byte[i] = i % 251`` (see ``pattern_bytes``), with
    Content-Length unless chunked=1, produced under backpressure.
``/upload``
    JSON ``{"length": N, "sha256": hex}`` of the body, any size.
``/slow-headers?delay=S``
    Waits S seconds (default 1) before answering.
``/die-midway?size=N``
    Promises Content-Length N, sends N/2 pattern bytes, then resets the TCP
    connection.
``/set-cookies``
    Three Set-Cookie headers (a=1, b=2, c=3 in that order) and X-Multi: one,
    X-Multi: two.
``/status?code=N``
    Answers with status N (200-599) and a small JSON body.
``/hop``
    Sends hop-by-hop headers (Connection: X-Secret-Hop, keep-alive;
    X-Secret-Hop; Keep-Alive; Proxy-Authenticate) plus X-End-To-End: kept.
``/ws``
    WebSocket echo (RFC 6455): text and binary messages come back as sent.

Every response carries ``X-Backend-Name`` when --name is given, so a test with
several back ends can tell which one answered.

Text in the JSON answers is the UTF-8 reading of the raw bytes; bytes that are
not UTF-8 come through as lone surrogates (``\\udcXX``), so
``value.encode("utf-8", "surrogateescape")`` always gives back the exact bytes.

For tests, ``BackendProcess`` runs this module in a subprocess::

    with BackendProcess() as backend:
        http.client.HTTPConnection("127.0.0.1", backend.port)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import http.client
import io
import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

BACKENDS_SCRIPT = Path(__file__).resolve()

CHUNK_SIZE = 64 * 1024
PATTERN_MODULUS = 251
_PATTERN_CYCLE = bytes(range(PATTERN_MODULUS))

# Pattern chunks written per reactor turn: enough for loopback throughput,
# few enough that the back end keeps serving timers and other connections.
_CHUNKS_PER_TURN = 16

# Time for the kernel to take the last bytes before /die-midway resets the
# connection (an abort throws away whatever is still in twisted's buffer).
_FLUSH_BEFORE_ABORT = 0.05

# A WebSocket message larger than this is refused (close code 1009) rather than
# buffered; the echo exists to test the proxy's relaying, not to hold data.
MAX_WEBSOCKET_MESSAGE = 16 * 1024 * 1024
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pattern_bytes(offset: int, length: int) -> bytes:
    """The /download pattern from ``offset``: byte i of the stream is i % 251.

    251 is prime, so the pattern never lines up with chunk or buffer sizes and
    a lost, repeated or reordered chunk shows up as a mismatch.
    """
    start = offset % PATTERN_MODULUS
    cycles = (start + length) // PATTERN_MODULUS + 1
    return (_PATTERN_CYCLE * cycles)[start : start + length]


def is_pattern(data: bytes, offset: int = 0) -> bool:
    return data == pattern_bytes(offset, len(data))


# ---------------------------------------------------------------------------
# Requests


class ArrivalOrderHeaders(Headers):
    """Request headers that also remember each field in the order it arrived.

    twisted's ``Headers`` groups a repeated field under its first occurrence,
    so ``A, B, A`` reads back as ``A, A, B``; the echo must show what was sent.
    """

    __slots__ = ("arrival_order",)

    def __init__(self) -> None:
        super().__init__()
        self.arrival_order: list[tuple[bytes, bytes]] = []

    def addRawHeader(self, name: str | bytes, value: str | bytes) -> None:
        super().addRawHeader(name, value)
        raw_name = name.encode("latin-1") if isinstance(name, str) else name
        raw_value = value.encode("utf-8") if isinstance(value, str) else value
        self.arrival_order.append((raw_name.lower(), raw_value))


class BackendRequest(Request):
    """A request that hashes its body as it arrives instead of keeping it.

    twisted would spool a large body to a temporary file and the handler would
    then read it all back in one go, stalling the reactor for seconds on 1 GB;
    hashing each chunk on arrival keeps memory and latency flat.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requestHeaders = ArrivalOrderHeaders()
        self.body_hash = hashlib.sha256()
        self.body_length = 0

    def gotLength(self, length: int | None) -> None:
        # twisted still wants a file it can seek; it stays empty.
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        self.body_hash.update(data)
        self.body_length += len(data)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def describe_address(address: IAddress | None) -> str:
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        if isinstance(name, bytes):
            name = _text(name)
        return f"unix:{name or ''}"
    return str(address)


class BadParameter(ValueError):
    pass


def _int_parameter(request: Request, name: bytes, default: int | None = None) -> int:
    values = (request.args or {}).get(name)
    if not values:
        if default is None:
            raise BadParameter(f"missing parameter {_text(name)}")
        return default
    try:
        return int(values[0])
    except ValueError:
        raise BadParameter(f"{_text(name)} must be an integer") from None


def _float_parameter(request: Request, name: bytes, default: float) -> float:
    values = (request.args or {}).get(name)
    if not values:
        return default
    try:
        return float(values[0])
    except ValueError:
        raise BadParameter(f"{_text(name)} must be a number") from None


def _json_body(request: Request, document: dict[str, Any]) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return (json.dumps(document) + "\n").encode("ascii")


# ---------------------------------------------------------------------------
# Streaming


@implementer(IPushProducer)
class PatternProducer:
    """Writes ``total`` pattern bytes to a request as fast as the peer reads.

    Registered as a push producer, so twisted pauses it when the socket's
    buffer is full and resumes it when it drains: memory stays at a chunk or
    two however large ``total`` is.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        request: Request,
        total: int,
        when_done: Callable[[], None],
    ) -> None:
        self._reactor = reactor
        self._request = request
        self._total = total
        self._when_done = when_done
        self._sent = 0
        self._paused = False
        self._stopped = False
        self._next_turn: IDelayedCall | None = None

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda _failure: self.stopProducing())
        self._schedule()

    def _schedule(self) -> None:
        if self._next_turn is None and not self._paused and not self._stopped:
            self._next_turn = self._reactor.callLater(0, self._produce)

    def _produce(self) -> None:
        self._next_turn = None
        for _ in range(_CHUNKS_PER_TURN):
            if self._paused or self._stopped:
                return
            if self._sent >= self._total:
                break
            length = min(CHUNK_SIZE, self._total - self._sent)
            self._request.write(pattern_bytes(self._sent, length))
            self._sent += length
        if self._sent >= self._total and not self._stopped:
            self._stopped = True
            self._request.unregisterProducer()
            self._when_done()
            return
        self._schedule()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self._stopped = True
        if self._next_turn is not None and self._next_turn.active():
            self._next_turn.cancel()
        self._next_turn = None


# ---------------------------------------------------------------------------
# WebSocket


def websocket_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest())


def _unmask(mask: bytes, payload: bytes) -> bytes:
    # One big-integer XOR is far faster than a Python loop over the bytes.
    if not payload:
        return b""
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    unmasked = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return unmasked.to_bytes(len(payload), "big")


class WebSocketEcho(Protocol):
    """Server side of RFC 6455, just enough to echo messages back.

    Handles text, binary, fragmented messages, ping and close; no extensions
    are negotiated, so frames are never compressed.
    """

    TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._message_opcode: int | None = None
        self._message = bytearray()
        self._closing = False

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        while not self._closing:
            frame = self._next_frame()
            if frame is None:
                return
            self._handle_frame(*frame)

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        fin = bool(buffer[0] & 0x80)
        reserved = buffer[0] & 0x70
        opcode = buffer[0] & 0x0F
        masked = bool(buffer[1] & 0x80)
        length = buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if len(buffer) < 4:
                return None
            length = int.from_bytes(buffer[2:4], "big")
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            length = int.from_bytes(buffer[2:10], "big")
            offset = 10
        if reserved or not masked:
            # Clients must mask every frame, and no extension set RSV bits.
            self._fail(1002)
            return None
        if length + len(self._message) > MAX_WEBSOCKET_MESSAGE:
            self._fail(1009)
            return None
        end = offset + 4 + length
        if len(buffer) < end:
            return None
        mask = bytes(buffer[offset : offset + 4])
        payload = _unmask(mask, bytes(buffer[offset + 4 : end]))
        del buffer[:end]
        return fin, opcode, payload

    def _handle_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode in (self.CLOSE, self.PING, self.PONG):
            if not fin or len(payload) > 125:
                self._fail(1002)
            elif opcode == self.CLOSE:
                # Answer with the peer's own code, then end the TCP connection
                # as the server should (RFC 6455 section 7.1.1).
                self._send(self.CLOSE, payload[:2])
                self._closing = True
                self._close_transport()
            elif opcode == self.PING:
                self._send(self.PONG, payload)
            return
        if opcode in (self.TEXT, self.BINARY):
            if self._message_opcode is not None:
                self._fail(1002)
                return
            self._message_opcode = opcode
        elif opcode != self.CONTINUATION or self._message_opcode is None:
            self._fail(1002)
            return
        self._message += payload
        if not fin:
            return
        message_opcode, message = self._message_opcode, bytes(self._message)
        self._message_opcode = None
        self._message = bytearray()
        if message_opcode == self.TEXT:
            try:
                message.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(1007)
                return
        self._send(message_opcode, message)

    def _send(self, opcode: int, payload: bytes) -> None:
        length = len(payload)
        if length < 126:
            header = bytes([0x80 | opcode, length])
        elif length < 1 << 16:
            header = bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big")
        assert self.transport is not None
        self.transport.writeSequence([header, payload])

    def _fail(self, code: int) -> None:
        self._send(self.CLOSE, code.to_bytes(2, "big"))
        self._closing = True
        self._buffer.clear()
        self._close_transport()

    def _close_transport(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


def _header_tokens(request: Request, name: bytes) -> list[bytes]:
    values = request.requestHeaders.getRawHeaders(name, [])
    return [token.strip().lower() for value in values for token in value.split(b",")]


# ---------------------------------------------------------------------------
# The resource


class BackendResource(Resource):
    isLeaf = True

    def __init__(self, reactor: IReactorTime, name: str | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self._name = name
        self._handlers: dict[bytes, Callable[[BackendRequest], bytes | int]] = {
            b"echo": self.echo,
            b"download": self.download,
            b"upload": self.upload,
            b"slow-headers": self.slow_headers,
            b"die-midway": self.die_midway,
            b"set-cookies": self.set_cookies,
            b"status": self.status,
            b"hop": self.hop,
            b"ws": self.websocket,
        }

    def render(self, request: BackendRequest) -> bytes | int:
        if self._name is not None:
            request.setHeader(b"x-backend-name", self._name.encode("utf-8"))
        path = request.path or b"/"
        handler = self._handlers.get(path.rsplit(b"/", 1)[-1], self.echo)
        try:
            return handler(request)
        except BadParameter as problem:
            request.setResponseCode(400)
            return _json_body(request, {"error": str(problem)})

    def echo(self, request: BackendRequest) -> bytes:
        uri = _text(request.uri)
        path, _, query = uri.partition("?")
        headers = request.requestHeaders
        if isinstance(headers, ArrivalOrderHeaders):
            pairs = headers.arrival_order
        else:
            pairs = [(n.lower(), v) for n, values in headers.getAllRawHeaders() for v in values]
        return _json_body(
            request,
            {
                "backend": self._name,
                "method": _text(request.method),
                "path": path,
                "query": query,
                "version": _text(request.clientproto),
                "headers": [[_text(name), _text(value)] for name, value in pairs],
                "cookies": {_text(k): _text(v) for k, v in request.received_cookies.items()},
                "body_length": request.body_length,
                "body_sha256": request.body_hash.hexdigest(),
                "peer": describe_address(request.getClientAddress()),
                "local": describe_address(request.getHost()),
            },
        )

    def download(self, request: BackendRequest) -> bytes | int:
        size = _int_parameter(request, b"size")
        if size < 0:
            raise BadParameter("size must be >= 0")
        request.setHeader(b"content-type", b"application/octet-stream")
        chunked = (request.args or {}).get(b"chunked", [b"0"])[0] not in (b"", b"0")
        if not chunked:
            request.setHeader(b"content-length", b"%d" % size)
        if request.method == b"HEAD":
            return b""
        PatternProducer(self._reactor, request, size, request.finish).start()
        return NOT_DONE_YET

    def upload(self, request: BackendRequest) -> bytes:
        return _json_body(
            request, {"length": request.body_length, "sha256": request.body_hash.hexdigest()}
        )

    def slow_headers(self, request: BackendRequest) -> int:
        delay = _float_parameter(request, b"delay", 1.0)
        if not 0 <= delay <= 3600:
            raise BadParameter("delay must be 0-3600 seconds")

        def answer() -> None:
            request.write(_json_body(request, {"delay": delay}))
            request.finish()

        call = self._reactor.callLater(delay, answer)

        def client_gone(_failure: Failure) -> None:
            if call.active():
                call.cancel()

        request.notifyFinish().addErrback(client_gone)
        return NOT_DONE_YET

    def die_midway(self, request: BackendRequest) -> int:
        size = _int_parameter(request, b"size")
        if size < 2:
            raise BadParameter("size must be >= 2")
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % size)

        def abort() -> None:
            channel = request.channel
            transport = channel.transport if channel is not None else None
            if transport is not None:
                # TCP and unix transports both have abortConnection (a reset,
                # not a clean close); it is just not on ITransport.
                transport.abortConnection()  # type: ignore[attr-defined]

        def half_sent() -> None:
            self._reactor.callLater(_FLUSH_BEFORE_ABORT, abort)

        PatternProducer(self._reactor, request, size // 2, half_sent).start()
        return NOT_DONE_YET

    def set_cookies(self, request: BackendRequest) -> bytes:
        for cookie in (b"a=1", b"b=2", b"c=3"):
            request.responseHeaders.addRawHeader(b"set-cookie", cookie)
        request.responseHeaders.addRawHeader(b"x-multi", b"one")
        request.responseHeaders.addRawHeader(b"x-multi", b"two")
        return _json_body(request, {"cookies": ["a=1", "b=2", "c=3"]})

    def status(self, request: BackendRequest) -> bytes:
        code = _int_parameter(request, b"code")
        if not 200 <= code <= 599:
            raise BadParameter("code must be 200-599")
        request.setResponseCode(code)
        if code in (204, 304):
            return b""
        return _json_body(request, {"status": code})

    def hop(self, request: BackendRequest) -> bytes:
        request.setHeader(b"connection", b"X-Secret-Hop, keep-alive")
        request.setHeader(b"x-secret-hop", b"1")
        request.setHeader(b"keep-alive", b"timeout=5")
        request.setHeader(b"proxy-authenticate", b"x")
        request.setHeader(b"x-end-to-end", b"kept")
        return _json_body(request, {"hop": True})

    def websocket(self, request: BackendRequest) -> bytes | int:
        if request.method != b"GET" or b"websocket" not in _header_tokens(request, b"upgrade"):
            request.setResponseCode(426, b"Upgrade Required")
            request.setHeader(b"upgrade", b"websocket")
            return _json_body(request, {"error": "WebSocket upgrade required"})
        if request.getHeader(b"sec-websocket-version") != b"13":
            request.setResponseCode(426, b"Upgrade Required")
            request.setHeader(b"sec-websocket-version", b"13")
            return _json_body(request, {"error": "only WebSocket version 13"})
        key = request.getHeader(b"sec-websocket-key") or b""
        try:
            key_is_valid = len(base64.b64decode(key, validate=True)) == 16
        except binascii.Error:
            key_is_valid = False
        if not key_is_valid or b"upgrade" not in _header_tokens(request, b"connection"):
            request.setResponseCode(400)
            return _json_body(request, {"error": "bad WebSocket handshake"})

        response = [
            b"HTTP/1.1 101 Switching Protocols",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Accept: " + websocket_accept(key),
        ]
        offered = [p for p in _header_tokens(request, b"sec-websocket-protocol") if p]
        if offered:
            response.append(b"Sec-WebSocket-Protocol: " + offered[0])
        if self._name is not None:
            response.append(b"X-Backend-Name: " + self._name.encode("utf-8"))

        channel = request.channel
        transport = channel.transport
        assert transport is not None
        echo = WebSocketEcho()
        # From here on the bytes on this connection are WebSocket frames, not
        # HTTP: take them away from the HTTP channel (twisted's own
        # WebSocketResource does the same). The request is never finished.
        channel.dataReceived = echo.dataReceived  # type: ignore[method-assign]
        channel.connectionLost = echo.connectionLost  # type: ignore[method-assign]
        echo.makeConnection(transport)
        transport.write(b"\r\n".join(response) + b"\r\n\r\n")
        return NOT_DONE_YET


def make_site(reactor: IReactorTime, name: str | None = None) -> Site:
    return Site(
        BackendResource(reactor, name),
        requestFactory=BackendRequest,
        # Bodies are hashed, never parsed as forms.
        parsePOSTFormSubmission=False,
        reactor=reactor,
    )


# ---------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class ListenAddress:
    """One --listen value, parsed."""

    kind: str  # "tcp", "tls" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""
    cert_file: str = ""
    key_file: str = ""


def parse_listen(spec: str) -> ListenAddress:
    """``HOST:PORT``, ``unix:PATH`` or ``tls:HOST:PORT:CERT_PEM:KEY_PEM``.

    HOST may be ``[::1]``. Only loopback hosts are accepted: these back ends
    exist for tests on this machine and must never be reachable from elsewhere.
    """
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        if not path:
            raise ValueError(f"{spec!r}: unix: needs a socket path")
        return ListenAddress("unix", path=path)
    tls = spec.startswith("tls:")
    rest = spec[len("tls:") :] if tls else spec
    if rest.startswith("["):
        host, _, rest = rest[1:].partition("]:")
    else:
        host, _, rest = rest.partition(":")
    port_text, _, files = rest.partition(":")
    cert_file, _, key_file = files.partition(":")
    try:
        port = int(port_text)
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ValueError(
            f"{spec!r}: expected 127.0.0.1:PORT, [::1]:PORT, unix:PATH "
            "or tls:127.0.0.1:PORT:CERT:KEY"
        ) from None
    if not loopback:
        raise ValueError(f"{spec!r}: test back ends listen on loopback addresses only")
    if tls != bool(cert_file and key_file):
        raise ValueError(f"{spec!r}: a tls: listener needs CERT and KEY files, others none")
    return ListenAddress("tls" if tls else "tcp", host, port, "", cert_file, key_file)


def tls_options(cert_file: str, key_file: str) -> CertificateOptions:
    """Server TLS settings from PEM files; certificates after the first are its chain."""
    certificates = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
        Path(cert_file).read_bytes(),
        re.DOTALL,
    )
    if not certificates:
        raise ValueError(f"no certificate in {cert_file}")
    leaf = PrivateCertificate.loadPEM(certificates[0] + b"\n" + Path(key_file).read_bytes())
    return CertificateOptions(
        privateKey=leaf.privateKey.original,
        certificate=leaf.original,
        extraCertChain=[Certificate.loadPEM(pem).original for pem in certificates[1:]],
    )


def make_endpoint(reactor: Any, address: ListenAddress) -> IStreamServerEndpoint:
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint,
        TCP4ServerEndpoint,
        UNIXServerEndpoint,
    )

    if address.kind == "unix":
        _remove_stale_socket(address.path)
        return UNIXServerEndpoint(reactor, address.path)
    # listenTCP and listenSSL pick IPv6 by themselves for an address like ::1.
    if address.kind == "tls":
        options = tls_options(address.cert_file, address.key_file)
        return SSL4ServerEndpoint(reactor, address.port, options, interface=address.host)
    return TCP4ServerEndpoint(reactor, address.port, interface=address.host)


def _remove_stale_socket(path: str) -> None:
    """Delete a socket file left by a back end that died without cleaning up."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def write_atomically(path: str, text: str) -> None:
    """Readers polling for ``path`` never see it half written."""
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(partial, path)


def _log_problems_to_stderr() -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Warnings and errors only (a handler's traceback, a failed listen); the
    # access log would drown them. stdout stays ours for the ready line.
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HTTP back ends for the proxy's tests.")
    parser.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help="127.0.0.1:PORT (0 for a free port), [::1]:PORT or unix:PATH; repeatable "
        "(default 127.0.0.1:0)",
    )
    parser.add_argument("--ready-file", help="write the bound ports here as JSON once listening")
    parser.add_argument("--name", help="reported by /echo and in X-Backend-Name")
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this one goes away",
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults
    from twisted.internet.task import LoopingCall

    addresses: list[ListenAddress] = []
    endpoints: list[IStreamServerEndpoint] = []
    for spec in args.listen or ["127.0.0.1:0"]:
        try:
            address = parse_listen(spec)
            endpoints.append(make_endpoint(reactor, address))
        except (ValueError, OSError) as problem:
            parser.error(str(problem))
        addresses.append(address)

    _log_problems_to_stderr()
    site = make_site(reactor, args.name)
    exit_code = 0

    def listening(ports: list[IListeningPort]) -> None:
        tcp_ports: list[int] = []
        tls_ports: list[int] = []
        unix_paths: list[str] = []
        for address, port in zip(addresses, ports, strict=True):
            bound = port.getHost()
            if isinstance(bound, UNIXAddress):
                unix_paths.append(_text(bound.name or b""))
            elif isinstance(bound, IPv4Address | IPv6Address):
                tcp_ports.append(bound.port)
                if address.kind == "tls":
                    tls_ports.append(bound.port)
        ready = {"ports": tcp_ports, "tls_ports": tls_ports, "unix": unix_paths, "pid": os.getpid()}
        line = json.dumps(ready)
        if args.ready_file:
            write_atomically(args.ready_file, line + "\n")
        print(line, flush=True)

    def failed(failure: Failure) -> None:
        nonlocal exit_code
        exit_code = 1
        cause = getattr(failure.value, "subFailure", None)
        message = cause.getErrorMessage() if isinstance(cause, Failure) else str(failure.value)
        print(f"backends: cannot listen: {message}", file=sys.stderr, flush=True)
        core.stop()

    core: IReactorCore = reactor

    def start() -> None:
        gatherResults([e.listen(site) for e in endpoints], consumeErrors=True).addCallbacks(
            listening, failed
        )
        if args.exit_with_parent:
            parent = os.getppid()

            def stop_if_orphaned() -> None:
                # A test run that crashed or was killed must not leave its
                # back ends running: once orphaned, the parent pid changes.
                if os.getppid() != parent:
                    core.stop()

            LoopingCall(stop_if_orphaned).start(1.0, now=False)

    # twisted's SIGINT/SIGTERM handlers stop the reactor, which closes the
    # listeners (removing unix socket files) before run() returns.
    core.callWhenRunning(start)
    core.run()
    return exit_code


# ---------------------------------------------------------------------------
# For tests: one back end in a subprocess


class BackendProcess:
    """``tests/backends.py`` running in a subprocess, for end-to-end tests.

    ::

        with BackendProcess(name="app1") as backend:
            urllib.request.urlopen(backend.url + "/echo")

    ``listen`` takes the program's --listen values (default one free TCP port
    on 127.0.0.1). The back end's stdout and stderr go to a file, readable
    with ``output()``, so a full pipe can never stall it.
    """

    def __init__(
        self,
        listen: Sequence[str] = ("127.0.0.1:0",),
        *,
        name: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.listen = tuple(listen)
        self.name = name
        self.start_timeout = start_timeout
        self.ports: list[int] = []
        self.tls_ports: list[int] = []
        self.unix_paths: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: str | None = None

    # -- what a test uses

    @property
    def port(self) -> int:
        """The first TCP port."""
        if not self.ports:
            raise RuntimeError("the back end is not listening on TCP (or not started)")
        return self.ports[0]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` for the first TCP port (https if it is TLS)."""
        scheme = "https" if self.port in self.tls_ports else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.port in self.tls_ports else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def output(self) -> str:
        """Everything the back end printed so far (ready line, errors)."""
        if self._workdir is None:
            return ""
        try:
            return Path(self._workdir, "output.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- life cycle

    def start(self) -> BackendProcess:
        if self._process is not None:
            raise RuntimeError("already started")
        self._workdir = tempfile.mkdtemp(prefix="idgateway-backend-")
        ready_file = Path(self._workdir, "ready.json")
        command = [sys.executable, str(BACKENDS_SCRIPT), "--exit-with-parent"]
        command += ["--ready-file", str(ready_file)]
        for spec in self.listen:
            command += ["--listen", spec]
        if self.name is not None:
            command += ["--name", self.name]
        with open(Path(self._workdir, "output.log"), "wb") as output_file:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output_file, stderr=subprocess.STDOUT
            )

        deadline = time.monotonic() + self.start_timeout
        while not ready_file.exists():
            if self._process.poll() is not None:
                problem = f"exited with status {self._process.returncode}"
                break
            if time.monotonic() > deadline:
                problem = f"not ready after {self.start_timeout} s"
                break
            time.sleep(0.02)
        else:
            ready = json.loads(ready_file.read_text())
            self.ports = list(ready["ports"])
            self.tls_ports = list(ready["tls_ports"])
            self.unix_paths = list(ready["unix"])
            return self
        output = self.output()
        self.stop()
        raise RuntimeError(f"test back end {command!r} {problem}; its output:\n{output}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the back end (SIGTERM, then SIGKILL) and return its exit status."""
        status = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            status = self._process.returncode
            self._process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return status

    def __enter__(self) -> BackendProcess:
        return self if self._process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a unix socket, for back ends listening on one."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


if __name__ == "__main__":
    sys.exit(main())
