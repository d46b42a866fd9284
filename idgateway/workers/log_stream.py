"""A worker's stdout, as the master reads it: lines, and frames of finished access lines.

Everything a worker writes on stdout is a line (a JSON record, an access
record, stray text), except the framed batches of finished access lines a
worker sends when the master logs text on its stdout (``log_relay.ACCESS_FRAME``):
the mark, the length in bytes, a newline, then the lines. Pipe reads cut the
stream anywhere; this puts it back together.
"""

from __future__ import annotations

from collections.abc import Callable

from idgateway.workers.log_relay import ACCESS_FRAME, MAX_FRAME, MAX_LINE

_MARK = ACCESS_FRAME[0]

# The mark, the most digits MAX_FRAME has, the newline.
_HEADER_MAX = 1 + len(str(MAX_FRAME)) + 1


class WorkerStdout:
    """Calls ``on_line`` for each line (without its newline) and ``on_frame``
    for each frame's bytes (whole lines), in the order the worker wrote them."""

    def __init__(self, on_line: Callable[[bytes], None], on_frame: Callable[[bytes], None]) -> None:
        self.on_line = on_line
        self.on_frame = on_frame
        self._partial = b""
        # A frame that has not all arrived yet: its pieces and the bytes missing.
        self._frame_parts: list[bytes] = []
        self._frame_missing = 0

    def feed(self, data: bytes) -> None:
        if self._frame_missing:
            data = self._frame_rest(data)
            if not data:
                return
        buffered = self._partial + data if self._partial else data
        self._partial = b""
        start, size = 0, len(buffered)
        while start < size:
            if buffered[start] == _MARK:
                header_end = buffered.find(b"\n", start, start + _HEADER_MAX)
                if header_end < 0 and size - start < _HEADER_MAX:
                    break  # the header is not all here yet
                length = _frame_length(buffered, start, header_end)
                if length is not None:
                    body = header_end + 1
                    end = body + length
                    if end <= size:
                        self.on_frame(buffered[body:end])
                        start = end
                        continue
                    self._frame_parts = [buffered[body:]]
                    self._frame_missing = end - size
                    return
                # Not a frame after all: a line like any other.
            newline = buffered.find(b"\n", start)
            if newline < 0:
                break
            self.on_line(buffered[start:newline])
            start = newline + 1
        rest = buffered[start:]
        while len(rest) > MAX_LINE:
            self.on_line(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial = rest

    def _frame_rest(self, data: bytes) -> bytes:
        """Add ``data`` to the frame under way; what follows the frame, if it ends."""
        missing = self._frame_missing
        if len(data) < missing:
            self._frame_parts.append(data)
            self._frame_missing = missing - len(data)
            return b""
        self._frame_parts.append(data[:missing])
        frame = b"".join(self._frame_parts)
        self._frame_parts = []
        self._frame_missing = 0
        self.on_frame(frame)
        return data[missing:]

    def end(self) -> int:
        """The worker is gone: pass on what is whole; the bytes of a torn line dropped.

        A frame cut short (the worker died writing it) gives its whole lines;
        the line it was in the middle of is dropped rather than written torn.
        An unfinished ordinary line is passed on, as a line.
        """
        torn = 0
        if self._frame_missing:
            received = b"".join(self._frame_parts)
            whole = received.rfind(b"\n") + 1
            if whole:
                self.on_frame(received[:whole])
            torn = len(received) - whole
            self._frame_parts = []
            self._frame_missing = 0
        elif self._partial:
            rest, self._partial = self._partial, b""
            self.on_line(rest)
        return torn


def _frame_length(buffered: bytes, start: int, header_end: int) -> int | None:
    """The length in a frame header at ``start`` (ending at ``header_end``), if it is one."""
    if header_end < 0:
        return None
    digits = buffered[start + 1 : header_end]
    # (Not int() alone: it would take " 12", "+12", "1_2" or non-ASCII digits.)
    if not digits or not digits.isdigit() or len(digits) > _HEADER_MAX - 2:
        return None
    length = int(digits)
    return length if 0 < length <= MAX_FRAME else None
