"""A log line's time as twistd's text log writes it.

Its own module so that the master process, which writes its workers' access
lines with it, need not import the access log and the metrics behind it.
"""

from __future__ import annotations

from twisted.logger import formatTime

_stamp: tuple[int, str] = (-1, "")


def text_timestamp(when: float) -> str:
    """``when`` as twistd's text log writes it; to the second, so kept per second."""
    global _stamp
    second = int(when)
    if _stamp[0] != second:
        _stamp = (second, formatTime(when))
    return _stamp[1]
