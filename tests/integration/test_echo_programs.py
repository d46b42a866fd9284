"""The demo echo back end and the test back ends (``tests/backends.py``) as programs: real
processes on real ports (the in-memory half is tests/unit/test_echo.py)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import BackendProcess, UnixHTTPConnection, is_pattern, pattern_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_echo_program(*listen: str) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "idgateway.demo.echo"]
    for spec in listen:
        command += ["--listen", spec]
    # A shell that starts the suite in the background (``nohup make test &``, CI
    # runners) makes its children ignore SIGINT, and Python and Twisted keep an
    # ignored SIGINT ignored: give the program the default disposition, as an
    # interactive shell would, so that the SIGINT case tests the program, not the
    # shell the suite was started from.
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("echo back end listening on "):
        process.kill()
        _, errors = process.communicate()
        pytest.fail(f"no ready line, got {line!r}; stderr: {errors}")
    return process, line


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_echo_program_serves_and_stops_cleanly(tmp_path: Path, stop_signal: int) -> None:
    socket_path = str(tmp_path / "echo.sock")
    process, line = start_echo_program("127.0.0.1:0", f"unix:{socket_path}")
    try:
        tcp_address, unix_address = line.removeprefix("echo back end listening on ").split(", ")
        assert unix_address == f"unix:{socket_path}"
        host, port = tcp_address.removeprefix("http://").rsplit(":", 1)
        assert host == "127.0.0.1"

        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/hello?x=1", headers={"X-Forwarded-User": "bob"})
        response = connection.getresponse()
        assert response.status == 200
        assert "<strong>bob</strong>" in response.read().decode()
        connection.close()

        over_unix = UnixHTTPConnection(socket_path, timeout=10)
        over_unix.request("GET", "/", headers={"Accept": "application/json"})
        assert json.loads(over_unix.getresponse().read())["path"] == "/"
        over_unix.close()
    finally:
        process.send_signal(stop_signal)
        _, errors = process.communicate(timeout=10)
    assert process.returncode == 0, errors
    assert errors == ""
    assert not os.path.exists(socket_path)


def test_echo_program_reports_a_port_in_use() -> None:
    first, line = start_echo_program("127.0.0.1:0")
    try:
        address = line.removeprefix("echo back end listening on http://")
        second = subprocess.run(
            [sys.executable, "-m", "idgateway.demo.echo", "--listen", address],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert second.returncode == 1
        assert "cannot listen" in second.stderr
    finally:
        first.terminate()
        first.communicate(timeout=10)


@pytest.fixture(scope="module")
def backend() -> Iterator[BackendProcess]:
    with BackendProcess(name="unit") as running:
        yield running


def connect(backend: BackendProcess) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", backend.port, timeout=30)


def test_backend_download_streams_the_pattern(backend: BackendProcess) -> None:
    size = 1_000_000
    connection = connect(backend)
    connection.request("GET", f"/download?size={size}")
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("content-length") == str(size)
    assert response.getheader("x-backend-name") == "unit"
    data = response.read()
    assert len(data) == size
    assert is_pattern(data)
    assert data[:3] == b"\x00\x01\x02" and data[251] == 0 and data[-1] == (size - 1) % 251

    # The same connection serves the next request: the stream ended cleanly.
    connection.request("GET", "/download?size=70000&chunked=1")
    response = connection.getresponse()
    assert response.getheader("transfer-encoding") == "chunked"
    assert response.getheader("content-length") is None
    assert response.read() == pattern_bytes(0, 70000)
    connection.close()


def test_backend_upload_hashes_the_body(backend: BackendProcess) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    connection = connect(backend)
    connection.request("POST", "/upload", body=body)
    answer = json.loads(connection.getresponse().read())
    assert answer == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    # Chunked request bodies too.
    parts = [body[:1000], body[1000:500_000], body[500_000:]]
    connection.request("PUT", "/prefixed/upload", body=iter(parts), encode_chunked=True)
    answer = json.loads(connection.getresponse().read())
    assert answer == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    connection.close()


def test_backend_echo(backend: BackendProcess) -> None:
    connection = connect(backend)
    connection.putrequest("PATCH", "/echo/thing?a=1&b=2", skip_accept_encoding=True)
    for name, value in [
        ("X-Trace", "1"),
        ("X-Other", "o"),
        ("X-Trace", "2"),
        ("Cookie", "sid=s1; theme=dark"),
        ("Content-Length", "5"),
    ]:
        connection.putheader(name, value)
    connection.endheaders(b"hello")
    echo = json.loads(connection.getresponse().read())
    assert echo["method"] == "PATCH"
    assert (echo["path"], echo["query"]) == ("/echo/thing", "a=1&b=2")
    assert [h for h in echo["headers"] if h[0].startswith("x-")] == [
        ["x-trace", "1"],
        ["x-other", "o"],
        ["x-trace", "2"],
    ]
    assert echo["cookies"] == {"sid": "s1", "theme": "dark"}
    assert echo["body_length"] == 5
    assert echo["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert echo["backend"] == "unit"
    assert echo["local"] == f"127.0.0.1:{backend.port}"
    connection.close()


def test_backend_set_cookies_keeps_order(backend: BackendProcess) -> None:
    connection = connect(backend)
    connection.request("GET", "/set-cookies")
    response = connection.getresponse()
    response.read()
    assert response.headers.get_all("Set-Cookie") == ["a=1", "b=2", "c=3"]
    assert response.headers.get_all("X-Multi") == ["one", "two"]
    connection.close()


def test_backend_dies_midway(backend: BackendProcess) -> None:
    size = 200_000
    connection = connect(backend)
    connection.request("GET", f"/die-midway?size={size}")
    response = connection.getresponse()
    assert response.getheader("content-length") == str(size)
    received = b""
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        while chunk := response.read(8192):
            received += chunk
        raise AssertionError(f"the stream ended cleanly after {len(received)} bytes")
    assert len(received) <= size // 2
    assert is_pattern(received)
    connection.close()


def test_backend_status_hop_and_slow_headers(backend: BackendProcess) -> None:
    connection = connect(backend)
    connection.request("GET", "/status?code=503")
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())) == (503, {"status": 503})

    connection.request("GET", "/hop")
    response = connection.getresponse()
    response.read()
    assert response.getheader("connection") == "X-Secret-Hop, keep-alive"
    assert response.getheader("x-secret-hop") == "1"
    assert response.getheader("keep-alive") == "timeout=5"
    assert response.getheader("proxy-authenticate") == "x"

    started = time.monotonic()
    connection.request("GET", "/slow-headers?delay=0.3")
    response = connection.getresponse()
    assert time.monotonic() - started >= 0.3
    assert json.loads(response.read()) == {"delay": 0.3}

    connection.request("GET", "/download?size=-1")
    response = connection.getresponse()
    assert response.status == 400
    response.read()
    connection.close()


def test_backend_websocket_echo(backend: BackendProcess) -> None:
    from websockets.sync.client import connect as websocket_connect

    with websocket_connect(backend.ws_url, open_timeout=10) as websocket:
        websocket.send("héllo, world")
        assert websocket.recv(timeout=10) == "héllo, world"
        websocket.send(b"\x00\x01\xfe\xff")
        assert websocket.recv(timeout=10) == b"\x00\x01\xfe\xff"
        large = os.urandom(200_000)  # a 64-bit length field
        websocket.send(large)
        assert websocket.recv(timeout=10) == large
        websocket.send(["frag", "mented"])
        assert websocket.recv(timeout=10) == "fragmented"
        assert websocket.ping(b"are you there").wait(10)


def test_backend_on_a_unix_socket(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "backend.sock")
    with BackendProcess(["127.0.0.1:0", f"unix:{socket_path}"]) as both:
        assert both.unix_paths == [socket_path]
        connection = UnixHTTPConnection(socket_path)
        connection.request("GET", "/download?size=5000")
        assert connection.getresponse().read() == pattern_bytes(0, 5000)
        connection.close()
        status = both.stop()
    assert status == 0
    assert not os.path.exists(socket_path)


def test_backend_refuses_to_listen_beyond_loopback() -> None:
    with pytest.raises(RuntimeError, match="loopback"):
        BackendProcess(["0.0.0.0:0"], start_timeout=10).start()


def test_backend_over_tls(tmp_path: Path) -> None:
    from tests.certs import make_ca

    ca = make_ca(tmp_path / "pki")
    leaf = ca.issue(tmp_path / "pki", ["127.0.0.1"], name="backend")
    spec = f"tls:127.0.0.1:0:{leaf.cert_path}:{leaf.key_path}"
    with BackendProcess([spec, "127.0.0.1:0"]) as backend:
        assert len(backend.ports) == 2 and backend.tls_ports == backend.ports[:1]
        assert backend.url == f"https://127.0.0.1:{backend.port}"
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", backend.port, context=context, timeout=10
        )
        connection.request("POST", "/upload", body=b"secret")
        answer = json.loads(connection.getresponse().read())
        assert answer["sha256"] == hashlib.sha256(b"secret").hexdigest()
        connection.close()
