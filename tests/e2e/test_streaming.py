"""1 GB each way through the gateway with bounded memory, and a slow reader."""

from __future__ import annotations

import hashlib
import http.client
import json
import time

import pytest

from tests.processes import free_port, rss_kib

GIB = 1024 * 1024 * 1024
BLOCK = b"".join(bytes([i % 251]) for i in range(251)) * 261  # ~64 KiB, deterministic


@pytest.fixture
def gateway(start_gateway, backend):
    port = free_port()
    gw = start_gateway(
        f"""
listeners:
  - address: 127.0.0.1:{port}
routes:
  - name: big
    default: true
    upstream: http://127.0.0.1:{backend.port}
    max_body_size: 2GB
""",
        [port],
    )
    return gw, port


def test_one_gigabyte_upload_streams_with_bounded_memory(gateway):
    gw, port = gateway
    baseline = rss_kib(gw.pid)
    peak = baseline
    digest = hashlib.sha256()
    sent = 0

    def body():
        nonlocal sent, peak
        while sent < GIB:
            piece = BLOCK[: min(len(BLOCK), GIB - sent)]
            sent += len(piece)
            digest.update(piece)
            if sent % (64 * len(BLOCK)) < len(BLOCK):
                peak = max(peak, rss_kib(gw.pid))
            yield piece

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(
        "POST",
        "/upload",
        body=body(),
        headers={"Host": "big.localhost", "Content-Length": str(GIB)},
    )
    response = conn.getresponse()
    result = json.loads(response.read())
    assert response.status == 200
    assert result["length"] == GIB
    assert result["sha256"] == digest.hexdigest()
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 50, f"gateway RSS grew by {growth_mib:.1f} MiB during a 1 GB upload"


def test_one_gigabyte_download_streams_with_bounded_memory(gateway):
    gw, port = gateway
    baseline = rss_kib(gw.pid)
    peak = baseline
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", f"/download?size={GIB}", headers={"Host": "big.localhost"})
    response = conn.getresponse()
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == GIB
    received = 0
    expected = hashlib.sha256()
    actual = hashlib.sha256()
    reads = 0
    while True:
        data = response.read(1 << 20)
        if not data:
            break
        actual.update(data)
        received += len(data)
        reads += 1
        if reads % 64 == 0:
            peak = max(peak, rss_kib(gw.pid))
    assert received == GIB
    pattern = bytes(i % 251 for i in range(251))
    # The back end's body is bytes i % 251 for i in 0..N-1.
    full, rest = divmod(GIB, len(pattern) * 4096)
    chunk = pattern * 4096
    for _ in range(full):
        expected.update(chunk)
    expected.update(chunk[:rest])
    assert actual.hexdigest() == expected.hexdigest()
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 50, f"gateway RSS grew by {growth_mib:.1f} MiB during a 1 GB download"


def test_slow_client_does_not_make_the_gateway_buffer(gateway):
    gw, port = gateway
    baseline = rss_kib(gw.pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", f"/download?size={512 * 1024 * 1024}", headers={"Host": "big.localhost"})
    response = conn.getresponse()
    response.read(1 << 20)
    # Stop reading for a while: the upstream must be paused, not drained into memory.
    time.sleep(3)
    grown_mib = (rss_kib(gw.pid) - baseline) / 1024
    assert grown_mib < 50, f"gateway buffered {grown_mib:.1f} MiB for a stalled client"
    conn.close()
