"""KeyRing: parsing keys, sealing, opening, rotation, and refusing bad tokens."""

import base64
import hashlib
import os

import pytest

from idgateway.sessions.keys import KeyRing, key_id

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
KEY_A_TEXT = base64.b64encode(KEY_A).decode()
KEY_B_TEXT = base64.b64encode(KEY_B).decode()
AD = b"route app1"


def b64url_decode(token: bytes) -> bytes:
    return base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4))


def b64url_encode(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


# -- parsing keys -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(KEY_A).decode(),
        base64.b64encode(KEY_A).decode().rstrip("="),
        base64.urlsafe_b64encode(KEY_A).decode(),
        base64.urlsafe_b64encode(KEY_A).decode().rstrip("="),
        base64.b64encode(KEY_A).decode() + "\n",  # as read from `openssl rand` output
    ],
)
def test_from_strings_accepts_both_alphabets_with_or_without_padding(text):
    ring = KeyRing.from_strings([text])
    assert ring.key_ids == (key_id(KEY_A),)


def test_key_with_both_url_and_standard_specific_characters():
    # A key whose encoding has "+" and "/" in the standard alphabet.
    key = b"\xfb\xff" * 16
    standard = base64.b64encode(key).decode()
    assert "+" in standard or "/" in standard
    url = base64.urlsafe_b64encode(key).decode()
    assert KeyRing.from_strings([standard]).key_ids == KeyRing.from_strings([url]).key_ids


@pytest.mark.parametrize("size", [16, 31, 33, 64])
def test_wrong_key_length_says_so_without_echoing_the_key(size):
    text = base64.b64encode(os.urandom(size)).decode()
    with pytest.raises(ValueError) as caught:
        KeyRing.from_strings([KEY_A_TEXT, text])
    message = str(caught.value)
    assert f"decodes to {size} bytes" in message
    assert "key 2 of 2" in message
    assert "openssl rand -base64 32" in message
    assert text not in message and text.rstrip("=") not in message


@pytest.mark.parametrize(
    "text",
    [
        "not base64 at all!!",
        KEY_A_TEXT[:-2] + "*=",
        KEY_A_TEXT.rstrip("=")[:-2],  # 4n+1 characters cannot be base64
        "é" * 44,
    ],
)
def test_bad_encoding_says_so_without_echoing_the_key(text):
    with pytest.raises(ValueError) as caught:
        KeyRing.from_strings([text])
    message = str(caught.value)
    assert "not valid base64" in message
    assert "openssl rand -base64 32" in message
    assert text not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize("keys", [[], (), [""], ["   "]])
def test_no_key_or_empty_key_is_refused(keys):
    with pytest.raises(ValueError, match="openssl rand -base64 32"):
        KeyRing.from_strings(keys)


def test_a_single_string_instead_of_a_list_is_refused():
    with pytest.raises(ValueError, match="list"):
        KeyRing.from_strings(KEY_A_TEXT)


def test_raw_constructor_checks_lengths():
    with pytest.raises(ValueError, match="needs 32"):
        KeyRing([b"short"])
    with pytest.raises(ValueError):
        KeyRing([])


def test_duplicate_keys_are_harmless_and_repr_hides_keys():
    ring = KeyRing.from_strings([KEY_A_TEXT, KEY_A_TEXT, KEY_B_TEXT])
    assert ring.key_ids == (key_id(KEY_A), key_id(KEY_B))
    text = repr(ring)
    assert KEY_A_TEXT not in text and KEY_A.hex() not in text
    assert key_id(KEY_A).hex() in text


def test_key_id_is_sha256_prefix():
    assert key_id(KEY_A) == hashlib.sha256(KEY_A).digest()[:4]


# -- sealing and opening ----------------------------------------------------


def test_seal_open_round_trip_and_token_layout():
    nonce = bytes(range(12))
    ring = KeyRing([KEY_A], random=lambda n: nonce[:n])
    token = ring.seal(b"hello", AD)
    assert token.isascii()
    assert not set(token) & set(b'+/=; ,"')
    raw = b64url_decode(token)
    assert raw[0] == 1
    assert raw[1:5] == key_id(KEY_A)
    assert raw[5:17] == nonce
    assert len(raw) == 1 + 4 + 12 + len(b"hello") + 16
    assert ring.open(token, AD) == b"hello"


def test_seal_uses_a_fresh_nonce_each_time():
    ring = KeyRing([KEY_A])
    assert ring.seal(b"x", AD) != ring.seal(b"x", AD)


def test_empty_plaintext_round_trips():
    ring = KeyRing([KEY_A])
    assert ring.open(ring.seal(b"", AD), AD) == b""


def test_wrong_associated_data_is_none():
    ring = KeyRing([KEY_A])
    assert ring.open(ring.seal(b"secret", AD), b"route app2") is None


def test_every_single_bit_flip_is_refused():
    ring = KeyRing([KEY_A])
    raw = b64url_decode(ring.seal(b"secret payload", AD))
    for index in range(len(raw)):
        for bit in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[index] ^= bit
            assert ring.open(b64url_encode(bytes(tampered)), AD) is None


def test_truncated_tokens_are_none():
    ring = KeyRing([KEY_A])
    token = ring.seal(b"secret payload", AD)
    for length in range(len(token)):
        assert ring.open(token[:length], AD) is None


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"=",
        b"a",
        b"!!!!",
        b"\x00\xff" * 40,
        b"A" * 200,
        b"AQ" * 50,
        "a str, not bytes",
        None,
        12345,
    ],
)
def test_garbage_is_none_never_an_exception(garbage):
    assert KeyRing([KEY_A]).open(garbage, AD) is None


def test_other_spellings_of_a_token_never_raise():
    # Decoding is lenient (the tag is what protects the token), so a padded
    # copy may or may not open; it must never raise or yield other bytes.
    ring = KeyRing([KEY_A])
    token = ring.seal(b"secret", AD)
    raw = b64url_decode(token)
    assert ring.open(base64.b64encode(raw), AD) in (None, b"secret")
    assert ring.open(token + b"==", AD) in (None, b"secret")
    assert ring.open(token.replace(token[:1], b"+"), AD) is None
    assert ring.open(token.replace(token[:1], b"/"), AD) is None


def test_unknown_version_is_none():
    ring = KeyRing([KEY_A])
    raw = bytearray(b64url_decode(ring.seal(b"secret", AD)))
    raw[0] = 2
    assert ring.open(b64url_encode(bytes(raw)), AD) is None


# -- rotation ---------------------------------------------------------------


def test_rotation_opens_old_tokens_and_seals_with_the_new_key():
    old = KeyRing.from_strings([KEY_A_TEXT])
    rotated = KeyRing.from_strings([KEY_B_TEXT, KEY_A_TEXT])
    old_token = old.seal(b"from before", AD)
    assert rotated.open(old_token, AD) == b"from before"
    new_token = rotated.seal(b"from now", AD)
    assert b64url_decode(new_token)[1:5] == key_id(KEY_B)
    assert old.open(new_token, AD) is None  # the old ring does not know the new key


def test_retired_key_is_none():
    old = KeyRing([KEY_A])
    retired = KeyRing([KEY_B])
    assert retired.open(old.seal(b"secret", AD), AD) is None


def test_only_the_key_named_by_the_key_id_is_tried():
    # Relabel a token sealed with A as if sealed with B: B must not be tried
    # with A's ciphertext, and A must not be tried for B's id.
    ring = KeyRing([KEY_A, KEY_B])
    raw = bytearray(b64url_decode(ring.seal(b"secret", AD)))
    raw[1:5] = key_id(KEY_B)
    assert ring.open(b64url_encode(bytes(raw)), AD) is None


def test_open_is_cheap_for_a_1kb_token():
    # Not a timed test: it only checks the AEAD objects are built once.
    ring = KeyRing([KEY_A, KEY_B])
    token = ring.seal(os.urandom(1024), AD)
    openers = dict(ring._openers)
    for _ in range(3):
        assert ring.open(token, AD) is not None
    assert all(ring._openers[kid] is openers[kid] for kid in openers)
