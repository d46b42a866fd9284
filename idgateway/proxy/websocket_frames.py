"""Where WebSocket frames end, in one direction of a tunnel (RFC 6455, 5.2).

The gateway relays a tunnel's bytes unchanged. To end a tunnel cleanly with a
close frame of its own (1008, policy violation: the session ended), it must
write that frame between two of the upstream's frames, never inside one, so
it follows the frame headers going to the client: a few bytes per frame.
"""

from __future__ import annotations

# A close frame from a server (unmasked): FIN + opcode 8, payload 2 bytes,
# status code 1008 ("policy violation", RFC 6455 7.4.1).
CLOSE_POLICY_VIOLATION = b"\x88\x02\x03\xf0"


def _header_size(head: bytes) -> int | None:
    """The whole header's size once its first two bytes are known."""
    if len(head) < 2:
        return None
    length7 = head[1] & 0x7F
    extended = 2 if length7 == 126 else 8 if length7 == 127 else 0
    return 2 + extended + (4 if head[1] & 0x80 else 0)


def _payload_length(head: bytes) -> int:
    length7 = head[1] & 0x7F
    if length7 == 126:
        return int.from_bytes(head[2:4], "big")
    if length7 == 127:
        return int.from_bytes(head[2:10], "big")
    return length7


class FrameBoundaries:
    """Follows frame headers and payload lengths; ``at_boundary`` between frames."""

    __slots__ = ("_head", "_left")

    def __init__(self) -> None:
        self._head = b""  # a header read in part
        self._left = 0  # payload bytes of the current frame still to come

    @property
    def at_boundary(self) -> bool:
        return not self._head and not self._left

    def feed(self, data: bytes) -> None:
        index, end = 0, len(data)
        while index < end:
            if self._left:
                taken = min(self._left, end - index)
                self._left -= taken
                index += taken
                continue
            head = self._head + data[index : index + 14]
            size = _header_size(head)
            if size is None or len(head) < size:
                self._head = head
                return
            index += size - len(self._head)
            self._head = b""
            self._left = _payload_length(head)
