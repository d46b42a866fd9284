"""Chunked request bodies with a bound on the chunk size.

twisted.web's ``_ChunkedTransferDecoder`` reads a chunk size of up to 1,024
hex digits (a length no client can send, and one more parser disagreement
for a smuggler to try). The gateway allows 16 hex digits (64 bits, as
``idgateway.http.numbers`` documents); a longer size is a malformed body,
which twisted.web answers with a 400 and a closed connection.

Private names used (twisted.web.http): ``_ChunkedTransferDecoder`` (its
``_dataReceived_CHUNK_LENGTH`` state and ``_buffer``),
``_MalformedChunkedDataError``. twisted.web has no public way to choose its
body decoder. Without them (``BOUNDED`` False): the stock, unbounded decoder.
"""

from __future__ import annotations

from typing import Any

from idgateway._twisted import note_fallback
from idgateway.http.numbers import MAX_HEX_DIGITS, leading_hex_digits

try:
    from twisted.web.http import _ChunkedTransferDecoder, _MalformedChunkedDataError
except ImportError:  # pragma: no cover - a Twisted without them
    BOUNDED = False
else:
    BOUNDED = callable(getattr(_ChunkedTransferDecoder, "_dataReceived_CHUNK_LENGTH", None))

if BOUNDED:

    class BoundedChunkedDecoder(_ChunkedTransferDecoder):  # type: ignore[misc]
        """The stock chunked decoder, refusing chunk sizes over 16 hex digits."""

        def _dataReceived_CHUNK_LENGTH(self) -> bool:
            # Only the digits the size starts with matter: whatever follows
            # (an extension, the CRLF, junk) is the stock decoder's to judge.
            if leading_hex_digits(self._buffer[: MAX_HEX_DIGITS + 1]) > MAX_HEX_DIGITS:
                raise _MalformedChunkedDataError("Chunk size over 16 hex digits.")
            return bool(super()._dataReceived_CHUNK_LENGTH())

else:  # pragma: no cover - a Twisted without them
    note_fallback("twisted.web.http._ChunkedTransferDecoder", "chunk sizes are not bounded")


def bound_chunked_decoder(decoder: Any) -> Any:
    """``decoder``, or a bounded one with the same callbacks if it is the
    stock chunked decoder twisted.web just chose for a request body."""
    if BOUNDED and type(decoder) is _ChunkedTransferDecoder:
        return BoundedChunkedDecoder(decoder.dataCallback, decoder.finishCallback)
    return decoder
