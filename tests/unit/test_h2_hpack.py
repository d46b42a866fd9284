"""server.h2_hpack: the response encoder, read back by hpack's own decoder."""

from __future__ import annotations

import pytest
from hpack import Decoder

from idgateway.server.h2_hpack import ResponseHeaderEncoder

RESPONSE = [
    (b":status", b"200"),
    (b"content-type", b"text/html"),
    (b"content-length", b"612"),
    (b"x-request-id", b"0123456789abcdef"),
    (b"server", b"nginx/1.22.1"),
    (b"set-cookie", b"s=secret; HttpOnly"),
    (b"x-custom-header", b"a value"),
    (b"x-long", b"v" * 300),
]


def test_responses_decode_to_what_was_encoded_with_nothing_in_the_dynamic_table() -> None:
    encoder = ResponseHeaderEncoder()
    decoder = Decoder()
    for status in (b"200", b"302", b"200"):
        block = [(b":status", status)] + RESPONSE[1:]
        encoded = encoder.encode(block)
        assert decoder.decode(encoded, raw=True) == block
        assert len(decoder.header_table.dynamic_entries) == 0
    # The first block set the table size to 0; later ones do not repeat it.
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    # A new SETTINGS_HEADER_TABLE_SIZE from the client: announced again.
    encoder.header_table_size = 256
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x88"


def test_set_cookie_is_never_indexed_and_volatile_values_are_not_huffman_coded() -> None:
    encoder = ResponseHeaderEncoder()
    encoded = encoder.encode([(b"set-cookie", b"s=secret")])
    # 0x20 (table size 0), then "literal never indexed", name index 55 (set-cookie).
    assert encoded[:3] == b"\x20\x1f\x28"
    assert encoded.endswith(b"\x08s=secret")
    assert encoder.encode([(b"x-request-id", b"abc")]).endswith(b"\x03abc")


def test_a_client_that_shrinks_its_table_reads_every_response() -> None:
    """SETTINGS_HEADER_TABLE_SIZE 0 from an h2 client, then responses."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.encoder = ResponseHeaderEncoder()  # type: ignore[assignment]
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    server.initiate_connection()
    for stream_id in (1, 3):
        client.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")],
            end_stream=True,
        )
        server.receive_data(client.data_to_send())
        server.send_headers(stream_id, RESPONSE[:-1], end_stream=True)
        events = client.receive_data(server.data_to_send())
        [response] = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert response.headers == RESPONSE[:-1]


# -- RequestHeaderDecoder: the same answers as hpack's Decoder -----------------------


def _blocks(seed: int) -> list[list[tuple[bytes, bytes, bool]]]:
    """Header lists a browser-like client sends: repeats, new values, secrets."""
    import random

    rng = random.Random(seed)
    names = [
        b":method",
        b":path",
        b"cookie",
        b"user-agent",
        b"accept",
        b"x-custom",
        b"authorization",
    ]
    blocks = []
    for _ in range(60):
        block = []
        for _ in range(rng.randint(1, 12)):
            name = rng.choice(names + [b"x-%d" % rng.randint(0, 50)])
            value = bytes(rng.choice(b"abcXYZ019 =;/") for _ in range(rng.choice([0, 3, 40, 300])))
            block.append((name, value, rng.random() < 0.2))
        blocks.append(block)
    return blocks


@pytest.mark.parametrize("seed", range(6))
def test_the_decoder_reads_what_hpack_reads_and_keeps_the_same_table(seed: int) -> None:
    from hpack import Encoder

    from idgateway.server.h2_hpack import RequestHeaderDecoder

    encoder, stock, lean = Encoder(), Decoder(), RequestHeaderDecoder()
    if seed % 2:
        encoder.header_table_size = 256  # evictions, and a size update in a block
        stock.max_allowed_table_size = lean.max_allowed_table_size = 4096
    for block in _blocks(seed):
        encoded = encoder.encode(block, huffman=bool(seed % 3))
        expected = [(bytes(n), bytes(v)) for n, v in stock.decode(encoded, raw=True)]
        assert lean.decode(encoded, raw=True) == expected
        assert list(lean.header_table.dynamic_entries) == list(stock.header_table.dynamic_entries)


BAD_BLOCKS = {
    "index-0": b"\x80",
    "index-past-the-table": b"\xbe",
    "truncated-integer": b"\xff",
    "truncated-name": b"\x40\x05ab",
    "truncated-value": b"\x40\x01a\x05ab",
    "huffman-with-eos": b"\x40\x01a\x84\xff\xff\xff\xff",
    "size-update-after-a-field": b"\x82\x20",
    "size-update-past-the-maximum": b"\x3f\xe2\x1f",  # 4097
}


@pytest.mark.parametrize("data", list(BAD_BLOCKS.values()), ids=list(BAD_BLOCKS))
def test_a_bad_block_is_refused_as_hpack_refuses_it(data: bytes) -> None:
    from hpack.exceptions import HPACKDecodingError

    from idgateway.server.h2_hpack import RequestHeaderDecoder

    with pytest.raises(HPACKDecodingError):
        Decoder().decode(data, raw=True)
    with pytest.raises(HPACKDecodingError):
        RequestHeaderDecoder().decode(data, raw=True)


def test_a_block_that_inflates_past_max_header_list_size_is_refused_at_once() -> None:
    """An HPACK bomb: one big entry in the table, then many references to it."""
    from hpack import Encoder
    from hpack.exceptions import OversizedHeaderListError

    from idgateway.server.h2_hpack import RequestHeaderDecoder

    encoder = Encoder()
    decoder = RequestHeaderDecoder()
    decoder.max_header_list_size = 16 * 1024
    decoder.decode(encoder.encode([(b"x-bomb", b"a" * 4000)]), raw=True)
    bomb = encoder.encode([(b"x-bomb", b"a" * 4000)] * 100)
    assert len(bomb) == 100  # one byte per reference
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(bomb, raw=True)


@pytest.mark.parametrize("direct", [True, False], ids=["direct-index", "hpack-get-by-index"])
@pytest.mark.parametrize(
    "block",
    [
        b"\x81",  # the first static entry
        b"\xbd",  # the last static entry (61)
        b"\xbe",  # the newest dynamic entry (62)
        b"\xbf",  # the oldest (63)
        b"\xc0",  # one past the dynamic table (64)
        b"\xff\x00",  # 127, in two bytes: past the table
        b"\xff\x80\x80\x80\x80\x80\x01",  # a huge index
        b"\xbe\xbf\x81\xbe",  # mixed, repeated
    ],
)
def test_indexed_fields_at_the_tables_edges_read_as_hpack_reads_them(
    block: bytes, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-byte index is read from hpack's tables directly (h2_hpack.DIRECT_INDEX):
    every index, valid or not, must answer as hpack's get_by_index does."""
    from hpack.exceptions import HPACKDecodingError

    from idgateway.server import h2_hpack

    monkeypatch.setattr(h2_hpack, "DIRECT_INDEX", direct)
    # Two entries in each dynamic table: indices 62 (b: 2) and 63 (a: 1).
    filling = b"\x40\x01a\x011\x40\x01b\x012"
    stock, lean = Decoder(), h2_hpack.RequestHeaderDecoder()
    assert lean.decode(filling) == [(b"a", b"1"), (b"b", b"2")]
    stock.decode(filling, raw=True)
    try:
        expected = [(bytes(n), bytes(v)) for n, v in stock.decode(block, raw=True)]
    except HPACKDecodingError as error:
        with pytest.raises(type(error)):
            lean.decode(block)
    else:
        assert lean.decode(block) == expected
