"""Frame boundaries in a tunnel's server-to-client bytes, and the 1008 close."""

from __future__ import annotations

import struct

import pytest

from idgateway.proxy.websocket_frames import CLOSE_POLICY_VIOLATION, FrameBoundaries


def frame(payload: bytes, opcode: int = 1, masked: bool = False) -> bytes:
    first = bytes([0x80 | opcode])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head = first + bytes([mask_bit | n])
    elif n < 65536:
        head = first + bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head = first + bytes([mask_bit | 127]) + struct.pack(">Q", n)
    return head + (b"\x01\x02\x03\x04" if masked else b"") + payload


STREAM = (
    frame(b"hello")
    + frame(b"")
    + frame(b"x" * 300)
    + frame(b"y" * 70_000, opcode=2)
    + frame(b"masked", masked=True)
    + frame(b"\x03\xe8", opcode=8)
)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 13, 14, 100, 4096, len(STREAM)])
def test_boundaries_are_followed_whatever_the_reads(step: int) -> None:
    frames = FrameBoundaries()
    ends = {len(frame(b"hello")), len(STREAM)}
    for start in range(0, len(STREAM), step):
        frames.feed(STREAM[start : start + step])
        end = min(start + step, len(STREAM))
        if end in ends:
            assert frames.at_boundary, end
    assert frames.at_boundary


def test_inside_a_header_or_a_payload_is_not_a_boundary() -> None:
    frames = FrameBoundaries()
    big = frame(b"z" * 1000)
    frames.feed(big[:1])
    assert not frames.at_boundary  # half a header
    frames.feed(big[1:3])
    assert not frames.at_boundary  # in the payload
    frames.feed(big[3:])
    assert frames.at_boundary


def test_the_close_frame_says_1008() -> None:
    assert CLOSE_POLICY_VIOLATION[0] == 0x88 and CLOSE_POLICY_VIOLATION[1] == 2
    assert int.from_bytes(CLOSE_POLICY_VIOLATION[2:], "big") == 1008
