"""HTTP/2 streaming with backpressure through flow control (issue 14): 1 GB each
way over one stream with gateway RSS growth under 50 MB, a slow reader that
does not make the gateway buffer, many streams on one connection each progressing.

The client is tests/h2_client.py over h2c (prior knowledge): the flow control
under test is HTTP/2's, the same over TLS.
"""

from __future__ import annotations

import hashlib
import json
import time

import h2.settings
import pytest

from tests.backends import pattern_bytes
from tests.h2_client import H2Client
from tests.processes import free_port, rss_kib

GIB = 1024 * 1024 * 1024
BLOCK = b"".join(bytes([i % 251]) for i in range(251)) * 64  # ~16 KiB, deterministic
AUTHORITY = "big.localhost"
# The client's windows: large, so that a 1 GB transfer is not a round trip per 64 KiB.
CLIENT_SETTINGS = {
    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 8 * 1024 * 1024,
    h2.settings.SettingCodes.MAX_FRAME_SIZE: 256 * 1024,
}


@pytest.fixture
def gateway(start_gateway, backend):
    port = free_port()
    gw = start_gateway(
        f"""
listeners:
  - address: 127.0.0.1:{port}
    http2: prior_knowledge
routes:
  - name: big
    default: true
    upstream: http://127.0.0.1:{backend.port}
    max_body_size: 2GB
""",
        [port],
    )
    return gw, port


def _open_connection_window(client: H2Client) -> None:
    client.h2.increment_flow_control_window(64 * 1024 * 1024)
    client.flush()


def test_one_gigabyte_upload_over_one_stream_with_bounded_memory(gateway):
    gw, port = gateway
    baseline = peak = rss_kib(gw.pid)
    digest = hashlib.sha256()
    with H2Client(port, settings=CLIENT_SETTINGS, timeout=120) as client:
        stream_id = client.request(
            "/upload",
            method="POST",
            authority=AUTHORITY,
            headers=[("content-length", str(GIB))],
            end=False,
        )
        sent = frames = 0
        while sent < GIB:
            window = min(
                client.h2.local_flow_control_window(stream_id), client.h2.max_outbound_frame_size
            )
            if window <= 0:
                client.flush()
                client.read_once(timeout=60)
                continue
            piece = BLOCK[: min(window, len(BLOCK), GIB - sent)]
            client.h2.send_data(stream_id, piece)
            digest.update(piece)
            sent += len(piece)
            frames += 1
            if frames % 16 == 0:
                client.flush()
            if frames % 2048 == 0:
                peak = max(peak, rss_kib(gw.pid))
        client.h2.end_stream(stream_id)
        client.flush()
        response = client.wait(stream_id, timeout=120)
    assert response.status == 200
    result = json.loads(bytes(response.body))
    assert result["length"] == GIB
    assert result["sha256"] == digest.hexdigest()
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 50, f"gateway RSS grew by {growth_mib:.1f} MiB during a 1 GB h2 upload"


def test_one_gigabyte_download_over_one_stream_with_bounded_memory(gateway):
    gw, port = gateway
    baseline = peak = rss_kib(gw.pid)
    with H2Client(port, settings=CLIENT_SETTINGS, timeout=120) as client:
        _open_connection_window(client)
        stream_id = client.request(f"/download?size={GIB}", authority=AUTHORITY)
        response = client.responses[stream_id]
        received = reads = 0
        actual = hashlib.sha256()
        while not (response.ended or response.reset is not None):
            client.read_once(timeout=60)
            if response.body:
                # Consumed as it comes (the helper keeps bodies; this one is 1 GB).
                actual.update(response.body)
                received += len(response.body)
                del response.body[:]
            reads += 1
            if reads % 512 == 0:
                peak = max(peak, rss_kib(gw.pid))
    assert response.status == 200
    assert response.header(b"content-length") == str(GIB).encode()
    assert received == GIB
    expected = hashlib.sha256()
    chunk = bytes(i % 251 for i in range(251)) * 4096
    full, rest = divmod(GIB, len(chunk))
    for _ in range(full):
        expected.update(chunk)
    expected.update(chunk[:rest])
    assert actual.hexdigest() == expected.hexdigest()
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 50, f"gateway RSS grew by {growth_mib:.1f} MiB during a 1 GB h2 download"


def test_a_slow_reader_does_not_make_the_gateway_buffer(gateway):
    """The client opens its window 64 KiB at a time, slowly: the upstream is paused."""
    gw, port = gateway
    baseline = rss_kib(gw.pid)
    with H2Client(port, auto_window=False, timeout=30) as client:
        stream_id = client.request(f"/download?size={512 * 1024 * 1024}", authority=AUTHORITY)
        response = client.responses[stream_id]
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                client.read_once(timeout=0.2)
            except TimeoutError:
                pass
            taken = len(response.body)
            if taken:
                del response.body[:]
                client.h2.acknowledge_received_data(taken, stream_id)
                client.flush()
            time.sleep(0.05)
        grown_mib = (rss_kib(gw.pid) - baseline) / 1024
        assert response.status == 200 and response.reset is None
    assert grown_mib < 20, f"gateway buffered {grown_mib:.1f} MiB for a slow h2 reader"


def test_many_streams_on_one_connection_each_progress(gateway):
    _, port = gateway
    size = 4 * 1024 * 1024
    with H2Client(port, settings=CLIENT_SETTINGS, timeout=60) as client:
        _open_connection_window(client)
        streams = [client.request(f"/download?size={size}", authority=AUTHORITY) for _ in range(16)]
        first_data: dict[int, int] = {}
        reads = 0
        while not all(client.responses[s].ended for s in streams):
            client.read_once(timeout=30)
            reads += 1
            for stream_id in streams:
                if client.responses[stream_id].body and stream_id not in first_data:
                    first_data[stream_id] = reads
        for stream_id in streams:
            response = client.responses[stream_id]
            assert response.status == 200
            assert bytes(response.body[:1000]) == pattern_bytes(0, 1000)
            assert len(response.body) == size
        # Interleaved, not one after another: every stream had data before the
        # first one ended.
        first_end = min(
            index
            for index, event in enumerate(client.events)
            if type(event).__name__ == "StreamEnded"
        )
        starts = [
            index
            for index, event in enumerate(client.events)
            if type(event).__name__ == "DataReceived"
        ]
        assert len({client.events[i].stream_id for i in starts if i < first_end}) == len(streams)


def test_expect_100_continue_gets_an_interim_100_before_the_body_is_sent(gateway):
    """As on HTTP/1.1: the client waits for 100 before it sends the body."""
    import h2.events

    _gw, port = gateway
    body = BLOCK * 4
    with H2Client(port, timeout=10) as client:
        stream_id = client.request(
            "/upload", method="PUT", headers=[("expect", "100-continue")], end=False
        )
        deadline = time.monotonic() + 10
        interim = []
        while not interim and time.monotonic() < deadline:
            client.read_once(timeout=deadline - time.monotonic())
            interim = [
                e
                for e in client.events
                if isinstance(e, h2.events.InformationalResponseReceived)
                and e.stream_id == stream_id
            ]
        assert dict(interim[0].headers)[b":status"] == b"100"
        assert client.responses[stream_id].status is None  # no final answer yet
        client.send_body(stream_id, body)
        response = client.wait(stream_id)
        assert response.status == 200
        assert json.loads(bytes(response.body)) == {
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
