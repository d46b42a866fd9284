"""HPACK for the gateway: its responses encoded, its requests decoded.

``ResponseHeaderEncoder`` replaces ``hpack``'s encoder for responses: its
dynamic-table search walks the table in Python for every field, and the
table fills with values that never repeat (``x-request-id``, ``date``).
Like nginx, it never adds response fields to the dynamic table: each field is
a static-table reference or a literal "without indexing" (``set-cookie`` and
the credentials: "never indexed"), so the client's decoder state cannot be
probed through compression (RFC 7541 7.1). Literals of fields that repeat are
Huffman-coded once and cached; values that change with every response are
sent as they are.

``RequestHeaderDecoder`` replaces ``hpack``'s decoder (see its text).
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Decoder, Encoder
from hpack.exceptions import HPACKDecodingError, InvalidTableSizeError, OversizedHeaderListError
from hpack.hpack import decode_integer
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

# Fields whose value is different in (nearly) every response: not worth caching.
_VOLATILE = frozenset(
    (
        b"date",
        b"content-length",
        b"x-request-id",
        b"etag",
        b"last-modified",
        b"expires",
        b"age",
        b"location",
        b"content-range",
    )
)
# Never indexed by any intermediary either (RFC 7541 7.1.3).
_SENSITIVE = frozenset((b"set-cookie", b"cookie", b"authorization", b"proxy-authorization"))
_CACHE_MAX = 1024
_CACHE_VALUE_MAX = 256

_huffman = Encoder().huffman_coder
# name -> static index; (name, value) -> static index.
_STATIC_NAMES: dict[bytes, int] = {}
_STATIC_PAIRS: dict[tuple[bytes, bytes], int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_NAMES.setdefault(_name, _index)
    _STATIC_PAIRS.setdefault((_name, _value), _index)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: ``value`` with an N-bit prefix, ``first`` the flag bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes, huffman: bool) -> bytes:
    if huffman:
        coded = _huffman.encode(data)
        if len(coded) < len(data):
            return _integer(len(coded), 7, 0x80) + coded
    return _integer(len(data), 7, 0) + data


def encode_field(name: bytes, value: bytes, *, huffman: bool) -> bytes:
    """One field as a static-table reference or a literal that is never added to
    the dynamic table (RFC 7541 6.1, 6.2.2, 6.2.3)."""
    index = _STATIC_PAIRS.get((name, value))
    if index is not None:
        return bytes((0x80 | index,))
    first = 0x10 if name in _SENSITIVE else 0x00
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        head = _integer(name_index, 4, first)
    else:
        head = bytes((first,)) + _string(name, huffman)
    return head + _string(value, huffman)


_field_cache: dict[tuple[bytes, bytes], bytes] = {}
# name -> the start of a literal of that name (its static index, or the name
# Huffman-coded), for the fields whose values are not cached.
_name_heads: dict[bytes, bytes] = {}
# The length prefix of a raw string shorter than 127 bytes (one byte).
_SHORT_LENGTHS = tuple(bytes((length,)) for length in range(127))


def _literal_head(name: bytes) -> bytes:
    first = 0x10 if name in _SENSITIVE else 0x00
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        head = _integer(name_index, 4, first)
    else:
        head = bytes((first,)) + _string(name, True)
    if len(_name_heads) >= _CACHE_MAX:
        _name_heads.clear()
    _name_heads[name] = head
    return head


class ResponseHeaderEncoder:
    """``h2``'s ``H2Connection.encoder`` for a server: see the module's text.

    The dynamic table stays empty; the first block (and the first after the
    client changes SETTINGS_HEADER_TABLE_SIZE) sets its size to 0, so no
    decoder waits for a size update it is owed (RFC 7541 4.2).
    """

    def __init__(self) -> None:
        self._announce_size = True
        self._limit = 4096

    @property
    def header_table_size(self) -> int:
        return self._limit

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._limit = value
        self._announce_size = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        parts = []
        if self._announce_size:
            self._announce_size = False
            parts.append(b"\x20")  # dynamic table size update: 0
        cache = _field_cache
        heads = _name_heads
        for name, value in headers:
            if name in _VOLATILE or name in _SENSITIVE or len(value) > _CACHE_VALUE_MAX:
                # (None of these has a value in the static table.)
                head = heads.get(name)
                parts.append(head if head is not None else _literal_head(name))
                length = len(value)
                parts.append(_SHORT_LENGTHS[length] if length < 127 else _integer(length, 7, 0))
                parts.append(value)
                continue
            key = (name, value)
            encoded = cache.get(key)
            if encoded is None:
                encoded = encode_field(name, value, huffman=huffman)
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[key] = encoded
            parts.append(encoded)
        return b"".join(parts)


# -- reading ------------------------------------------------------------------------


# hpack's tables, read directly for a one-byte index (HeaderTable.get_by_index
# without its frame): the static table, and the name of the dynamic one.
_STATIC_TABLE = HeaderTable.STATIC_TABLE
_STATIC_LENGTH = len(_STATIC_TABLE)
DIRECT_INDEX = getattr(HeaderTable, "STATIC_TABLE_LENGTH", None) == _STATIC_LENGTH and hasattr(
    HeaderTable(), "dynamic_entries"
)


class RequestHeaderDecoder(Decoder):
    """``h2``'s ``H2Connection.decoder``: hpack's Decoder with a leaner ``decode``.

    hpack's ``decode`` makes two tuple objects, a debug-log call and three
    function calls for every field, even one that is a single-byte reference
    to the table (most fields of a browser's second and later requests). This
    one decodes the same representations (RFC 7541 6) with hpack's own table,
    integer and Huffman code, and keeps its bounds: ``max_header_list_size``
    counted as each field is decoded (HPACK bombs), table size updates only at
    the start of a block and within ``max_allowed_table_size``. Errors are
    hpack's exceptions, which ``h2`` turns into a connection error as before.
    Fields come back as plain ``(name, value)`` byte tuples.
    """

    def decode(self, data: bytes, raw: bool = False) -> list[tuple[bytes, bytes]]:  # type: ignore[override]
        table = self.header_table
        get = table.get_by_index
        # (get_by_index's answer for a valid index, read here: a Python frame
        # per field otherwise; anything else still asks it, which raises)
        dynamic = table.dynamic_entries if DIRECT_INDEX else ()
        limit = self.max_header_list_size
        headers: list[tuple[bytes, bytes]] = []
        inflated = 0
        index = 0
        end = len(data)
        view = memoryview(data)
        while index < end:
            first = data[index]
            if first & 0x80:
                # Indexed field (6.1); a one-byte index is the usual case.
                if first != 0xFF:
                    number, used = first & 0x7F, 1
                else:
                    number, used = decode_integer(view[index:], 7)
                if number == 0:
                    raise HPACKDecodingError("indexed field with index 0")
                if number <= _STATIC_LENGTH and DIRECT_INDEX:
                    field = _STATIC_TABLE[number - 1]
                elif 0 < number - _STATIC_LENGTH <= len(dynamic):
                    field = dynamic[number - _STATIC_LENGTH - 1]
                else:
                    field = get(number)
                index += used
            elif first & 0xE0 == 0x20:
                # Dynamic table size update (6.3): only before the first field.
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size, used = decode_integer(view[index:], 5)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                index += used
                continue
            else:
                # Literal (6.2.1 with indexing, 6.2.2 without, 6.2.3 never).
                indexing = bool(first & 0x40)
                number, used = decode_integer(view[index:], 6 if indexing else 4)
                index += used
                if number:
                    name = get(number)[0]
                else:
                    name, index = _read_string(data, view, index)
                value, index = _read_string(data, view, index)
                field = (name, value)
                if indexing:
                    table.add(name, value)
            inflated += len(field[0]) + len(field[1]) + 32
            if inflated > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
            headers.append(field)
        if self.header_table_size > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return headers


def _read_string(data: bytes, view: memoryview, index: int) -> tuple[bytes, int]:
    """A string literal (RFC 7541 5.2) at ``index``: its bytes and the index after it."""
    if index >= len(data):
        raise HPACKDecodingError("Truncated header block")
    huffman = data[index] & 0x80
    length, used = decode_integer(view[index:], 7)
    start = index + used
    stop = start + length
    if stop > len(data):
        raise HPACKDecodingError("Truncated header block")
    text = data[start:stop]
    return (decode_huffman(text) if huffman else text), stop
