"""TLS records without pyOpenSSL's per-call buffers and exceptions.

Twisted's ``TLSMemoryBIOProtocol`` moves every TLS record through pyOpenSSL's
memory-BIO methods, and each call costs more Python than the record's
cryptography: ``Connection.recv`` and ``bio_read`` allocate a fresh 32 KiB
cffi buffer per call, and the loop that drains them ends, every time, in a
``WantReadError`` built by ``_raise_ssl_error`` (three helper checks and
``SSL_get_error``), raised and caught. A keep-alive request over TLS takes
three such calls and two such exceptions on the way in, and two more calls
on the way out.

``DirectRecordTLS`` makes the same OpenSSL calls pyOpenSSL makes (``BIO_write``,
``SSL_read``, ``SSL_write``, ``BIO_read`` on the connection's own ``SSL`` and
memory BIOs), into one buffer per process, and reads "nothing more for now"
from the return value instead of an exception. Every other outcome (an
alert, a close_notify, an OpenSSL error) is handed to pyOpenSSL's own
``_raise_ssl_error`` / ``_handle_bio_errors``, so it raises exactly the
exception the stock call would have, and Twisted's handling of it is kept
line for line. Until the handshake is done, and while writes wait for the
peer (``_appSendBuffer``), the stock methods run: the handshake is where
pyOpenSSL's callbacks (SNI, ALPN) run and report their problems.

Private names used: pyOpenSSL's ``OpenSSL.SSL._lib`` and ``_ffi`` (its cffi
bindings: ``SSL_read``, ``SSL_write``, ``SSL_get_error``, ``BIO_read``,
``BIO_write``, ``BIO_should_retry``, ``BIO_should_read``), and of its
``Connection``: ``_ssl``, ``_into_ssl``, ``_from_ssl``, ``_raise_ssl_error``,
``_handle_bio_errors``; of Twisted's ``TLSMemoryBIOProtocol``:
``_tlsConnection``, ``_handshakeDone``, ``_lostTLSConnection``,
``_aborted``, ``_appSendBuffer``, ``_flushReceiveBIO``, ``_flushSendBIO``,
``_write``, ``_bufferedWrite``, ``_shutdownTLS``, ``_tlsShutdownFinished``.
Without any of them (``DIRECT`` False), ``GatewayTLS`` is ``TurnBufferedTLS``
with Twisted's and pyOpenSSL's methods as they are.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from idgateway._twisted import note_fallback
from idgateway._twisted.tls import TurnBufferedTLS

# What Twisted asks for per call: a TLS record's plaintext is at most 16 KiB,
# and it drains the send BIO 32 KiB at a time.
_RECORD = 2**14
_CHUNK = 2**15

_lib: Any = getattr(SSL, "_lib", None)
_ffi: Any = getattr(SSL, "_ffi", None)

_LIB_NAMES = (
    "SSL_read",
    "SSL_write",
    "SSL_get_error",
    "SSL_ERROR_WANT_READ",
    "BIO_read",
    "BIO_write",
    "BIO_should_retry",
    "BIO_should_read",
)
_TWISTED_NAMES = (
    "_flushReceiveBIO",
    "_flushSendBIO",
    "_write",
    "_bufferedWrite",
    "_shutdownTLS",
    "_tlsShutdownFinished",
)
_TWISTED_STATE = ("_tlsConnection", "_handshakeDone", "_lostTLSConnection", "_aborted")


def _has_names() -> bool:
    if _lib is None or _ffi is None or not all(hasattr(_lib, n) for n in _LIB_NAMES):
        return False
    connection_init = SSL.Connection.__init__.__code__.co_names
    if not all(n in connection_init for n in ("_ssl", "_into_ssl", "_from_ssl")):
        return False
    if not all(callable(getattr(SSL.Connection, n, None)) for n in ("_raise_ssl_error",)):
        return False
    if not callable(getattr(SSL.Connection, "_handle_bio_errors", None)):
        return False
    if not all(callable(getattr(TLSMemoryBIOProtocol, n, None)) for n in _TWISTED_NAMES):
        return False
    protocol_names = set(TLSMemoryBIOProtocol.__init__.__code__.co_names)
    for method in ("makeConnection", "_checkHandshakeStatus", "_write"):
        protocol_names |= set(getattr(TLSMemoryBIOProtocol, method).__code__.co_names)
    return all(n in protocol_names for n in (*_TWISTED_STATE, "_appSendBuffer"))


DIRECT = _has_names()
if not DIRECT:  # pragma: no cover - a pyOpenSSL or Twisted built otherwise
    note_fallback(
        "OpenSSL.SSL._lib / TLSMemoryBIOProtocol._flushReceiveBIO",
        "TLS records go through pyOpenSSL's recv/bio_read/send",
    )

# One buffer for every connection of the process: what SSL_read and BIO_read
# put there is copied out into bytes before anything else runs (the reactor
# is one thread), so no connection ever sees another's bytes.
_buffer: Any = _ffi.new("char[]", _CHUNK) if DIRECT else None


class DirectRecordTLS(TurnBufferedTLS):
    """TurnBufferedTLS whose established connections move records with
    direct OpenSSL calls (see the module docstring); same behaviour."""

    def dataReceived(self, data: bytes) -> None:
        if not self._handshakeDone or self._appSendBuffer:
            super().dataReceived(data)
            return
        connection = self._tlsConnection
        bio = connection._into_ssl
        if type(data) is bytes:
            # cffi passes bytes to a (void *) as is, without from_buffer's
            # buffer object and context manager.
            result = _lib.BIO_write(bio, data, len(data))
        else:
            with _ffi.from_buffer(data) as cdata:
                result = _lib.BIO_write(bio, cdata, len(cdata))
        if result <= 0:
            connection._handle_bio_errors(bio, result)  # raises, as bio_write would
        self._flushReceiveBIO()

    def _flushReceiveBIO(self) -> None:
        if not self._handshakeDone:
            super()._flushReceiveBIO()
            return
        connection = self._tlsConnection
        ssl = connection._ssl
        buffer = _buffer
        while not self._lostTLSConnection:
            result = _lib.SSL_read(ssl, buffer, _CHUNK)
            if result > 0:
                data = _ffi.buffer(buffer, result)[:]
                if not self._aborted:
                    # (ProtocolWrapper.dataReceived, without its frame)
                    self.wrappedProtocol.dataReceived(data)
                continue
            if _lib.SSL_get_error(ssl, result) == _lib.SSL_ERROR_WANT_READ:
                break  # the bytes so far make no complete record: wait for more
            # Anything else as Twisted handles what pyOpenSSL raises for it.
            try:
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:  # pragma: no cover - SSL_read <= 0 always comes with an error
                break
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        connection = self._tlsConnection
        bio = connection._from_ssl
        result = _lib.BIO_read(bio, _buffer, _CHUNK)
        if result > 0:
            transport: Any = self.transport
            transport.write(_ffi.buffer(_buffer, result)[:])
        elif not (_lib.BIO_should_retry(bio) and _lib.BIO_should_read(bio)):
            connection._handle_bio_errors(bio, result)  # raises, as bio_read would
        # (else the send BIO is empty: nothing to write, as after WantReadError)

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        if not self._handshakeDone:
            super()._write(data)
            return
        connection = self._tlsConnection
        ssl = connection._ssl
        total = len(data)
        sent = 0
        if total <= _RECORD and type(data) is bytes:
            # One record (the usual response): the bytes as they are, without
            # a buffer object to take slices from.
            if not total:
                return
            result = _lib.SSL_write(ssl, data, total)
            if result <= 0:
                self._write_failed(connection, ssl, result, data, 0)
                return
            sent = result
            self._flushSendBIO()
            if sent == total:
                return
        with _ffi.from_buffer(data) as cdata:
            while sent < total:
                result = _lib.SSL_write(ssl, cdata + sent, min(_RECORD, total - sent))
                if result > 0:
                    sent += result
                    self._flushSendBIO()
                    continue
                self._write_failed(connection, ssl, result, data, sent)
                break

    # HTTPChannel pauses and resumes its transport's producer around requests
    # (resumeProducing after every one). The TLS protocol has no such methods:
    # ProtocolWrapper.__getattr__ hands over the TCP transport's after a failed
    # lookup through eight classes (1.0 us a call); the same, spelled out
    # (0.2 us).
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]

    def _write_failed(self, connection: Any, ssl: Any, result: int, data: bytes, sent: int) -> None:
        """What Twisted's _write does when pyOpenSSL's send raises."""
        try:
            connection._raise_ssl_error(ssl, result)
        except SSL.WantReadError:
            self._bufferedWrite(data[sent:])
        except SSL.Error:
            self._tlsShutdownFinished(Failure())


GatewayTLS: type[TurnBufferedTLS] = DirectRecordTLS if DIRECT else TurnBufferedTLS
