"""server.h2_hpack: the response encoder, read back by hpack's own decoder."""

from __future__ import annotations

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
