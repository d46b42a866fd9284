"""A small blocking HTTP/2 client on the ``h2`` library, for tests that play
both well-behaved clients and attackers against the real gateway.

``H2Client`` speaks over TLS (ALPN h2) or plain TCP (h2c prior knowledge) and
exposes the raw ``h2.connection.H2Connection`` so that a test can send
whatever frames it likes (``send_raw`` writes bytes as they are).
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions


@dataclass
class H2Response:
    stream_id: int
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class ConnectionClosed(Exception):
    pass


class H2Client:
    """One HTTP/2 connection to ``127.0.0.1:port``; ``ca`` for TLS, None for h2c."""

    def __init__(
        self,
        port: int,
        *,
        ca: Any = None,
        server_name: str = "app1.localhost",
        timeout: float = 10.0,
        settings: dict[int, int] | None = None,
        auto_window: bool = True,
    ) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
            context.set_alpn_protocols(["h2", "http/1.1"])
            self.sock: Any = context.wrap_socket(raw, server_hostname=server_name)
            self.alpn = self.sock.selected_alpn_protocol()
        else:
            self.sock = raw
            self.alpn = None
        self.authority = server_name
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        if settings:
            # (Applied once the server acknowledges them, as h2 requires.)
            self.h2.update_settings(settings)
        self.responses: dict[int, H2Response] = {}
        self.events: list[Any] = []
        self.auto_window = auto_window
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.flush()

    # -- sending -------------------------------------------------------------------

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.flush()
        self.sock.sendall(data)

    def request(
        self,
        path: str = "/echo",
        *,
        method: str = "GET",
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        body: bytes | None = None,
        authority: str | None = None,
        end: bool = True,
    ) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        block = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", (authority or self.authority).encode()),
            (b":path", path.encode()),
        ]
        block += [(name.encode(), value.encode()) for name, value in headers]
        self.h2.send_headers(stream_id, block, end_stream=end and not body)
        self.responses[stream_id] = H2Response(stream_id)
        if body:
            self.send_body(stream_id, body, end=end)
        self.flush()
        return stream_id

    def send_unchecked(
        self, block: list[tuple[bytes, bytes]], *, stream_id: int | None = None, end: bool = True
    ) -> int:
        """A header block sent as given (no client-side checks, no lower-casing),
        on a new stream or as trailers of ``stream_id``; this side's h2 state
        follows the stream, so the gateway's answer to it is read as usual."""
        config = self.h2.config
        config.validate_outbound_headers = False
        config.normalize_outbound_headers = False
        try:
            if stream_id is None:
                stream_id = self.h2.get_next_available_stream_id()
                self.responses[stream_id] = H2Response(stream_id)
            self.h2.send_headers(stream_id, block, end_stream=end)
        finally:
            config.validate_outbound_headers = True
            config.normalize_outbound_headers = True
        self.flush()
        return stream_id

    def send_body(self, stream_id: int, body: bytes, *, end: bool = True) -> None:
        """Send ``body`` as the windows allow (reading the while)."""
        sent = 0
        while sent < len(body):
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                self.read_once()
                if self.responses[stream_id].reset is not None:
                    return
                continue
            chunk = body[sent : sent + window]
            self.h2.send_data(stream_id, chunk)
            sent += len(chunk)
            self.flush()
        if end:
            self.h2.end_stream(stream_id)
            self.flush()

    # -- receiving -----------------------------------------------------------------

    def read_once(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, OSError) as error:
            if isinstance(error, socket.timeout | TimeoutError):
                raise
            self.closed = True
            raise ConnectionClosed(str(error)) from error
        if not data:
            self.closed = True
            raise ConnectionClosed("EOF")
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            raise
        for event in events:
            self.events.append(event)
            response = self.responses.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and response is not None:
                response.headers = list(event.headers)
                response.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived) and response is not None:
                response.body += event.data
                if self.auto_window and event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and response is not None:
                response.ended = True
            elif isinstance(event, h2.events.StreamReset) and response is not None:
                response.reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self.flush()
        return events

    def wait(self, stream_id: int, timeout: float = 10.0) -> H2Response:
        """Read until the stream's response ended (or it was reset)."""
        deadline = time.monotonic() + timeout
        response = self.responses[stream_id]
        while not (response.ended or response.reset is not None):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"stream {stream_id}: no complete response")
            self.read_once(timeout=left)
        return response

    def get(self, path: str = "/echo", **kwargs: Any) -> H2Response:
        return self.wait(self.request(path, **kwargs))

    def read_until_closed(self, timeout: float = 10.0) -> None:
        """Read (answering as h2 does) until the gateway closes the connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.read_once(timeout=max(0.01, deadline - time.monotonic()))
            except (ConnectionClosed, h2.exceptions.ProtocolError):
                return
        raise TimeoutError("the connection stayed open")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
