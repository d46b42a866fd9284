"""Chunked request bodies with a bound on the chunk size.

The decoder subclasses a private twisted.web class, so it lives in the seam
(``idgateway._twisted.chunked``); this module keeps its old import path.
"""

from __future__ import annotations

from idgateway._twisted.chunked import BOUNDED, bound_chunked_decoder

if BOUNDED:
    from idgateway._twisted.chunked import BoundedChunkedDecoder  # noqa: F401

__all__ = ["BOUNDED", "bound_chunked_decoder"]
