"""HTTP helpers for end-to-end tests: explicit Host header and SNI name."""

from __future__ import annotations

import http.client
import json
import socket
import ssl


def request(
    port: int,
    host: str,
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    tls_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 10,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to 127.0.0.1:port with the given Host header (and SNI name, for TLS)."""
    if tls_context is not None:
        conn: http.client.HTTPConnection = _SNIConnection(
            "127.0.0.1",
            port,
            context=tls_context,
            server_hostname=server_hostname or host,
            timeout=timeout,
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def send_raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Exactly these bytes on a new connection to 127.0.0.1:port (http.client refuses
    some of them); everything the gateway sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def echo_json(port: int, host: str, path: str = "/echo", **kw: object) -> dict:
    headers = dict(kw.pop("headers", {}) or {})  # type: ignore[arg-type]
    headers.setdefault("Accept", "application/json")
    status, _, body = request(port, host, path, headers=headers, **kw)  # type: ignore[arg-type]
    assert status == 200, body
    return json.loads(body)


def header_values(echo: dict, name: str) -> list[str]:
    return [v for n, v in echo["headers"] if n.lower() == name.lower()]


class _SNIConnection(http.client.HTTPSConnection):
    """Connects to an IP but sends a chosen SNI name (Python's resolver knows no *.localhost)."""

    def __init__(
        self, host: str, port: int, *, context: ssl.SSLContext, server_hostname: str, timeout: float
    ):
        super().__init__(host, port, context=context, timeout=timeout)
        self._sni = server_hostname
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._sni)
