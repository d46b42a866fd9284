"""Sessions in cookies: sealing, route binding, chunking, attributes, stripping."""

import os
import zlib

import pytest

from idgateway.sessions.cookie import (
    FLAG_ZLIB,
    CookieSessionCodec,
    CookieSettings,
    SessionTooLarge,
    parse_cookie_header,
    strip_cookies,
)
from idgateway.sessions.keys import KeyRing
from idgateway.sessions.model import Session

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))


class FakeClock:
    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def make_session(route="app1", **claims):
    return Session(
        id="0123456789abcdef0123456789abcdef",
        route=route,
        sub="user-sub",
        user="alice",
        claims={"username": "alice", "groups": ["admin", "dev"], **claims},
        created_at=1_700_000_000.0,
        last_seen=1_700_000_100.5,
        provider_sid="sid-1",
        id_token="eyJhbGciOi.payload.sig",
    )


def big_session(random_bytes):
    # Random hex does not compress below half its size, so this needs chunks.
    return make_session(blob=os.urandom(random_bytes).hex())


def codec(route="app1", keys=(KEY_A,), clock=None, **settings):
    options = {"name": "_idgw_app1", "secure": True, **settings}
    return CookieSessionCodec(
        route, KeyRing(list(keys)), CookieSettings(**options), clock=clock or FakeClock()
    )


def parse_set_cookie(header):
    """b"n=v; Path=/; Secure" -> (b"n", b"v", {"path": "/", "secure": ""})."""
    first, *rest = header.decode("ascii").split("; ")
    name, _, value = first.partition("=")
    attributes = {}
    for item in rest:
        key, _, val = item.partition("=")
        attributes[key.lower()] = val
    return name.encode(), value.encode(), attributes


def as_request_cookies(headers):
    """What a browser with no cookies sends back after these Set-Cookie values."""
    return apply({}, headers)


def apply(jar, headers):
    """What a browser holding ``jar`` sends back after these Set-Cookie values."""
    jar = dict(jar)
    for header in headers:
        name, value, attributes = parse_set_cookie(header)
        if attributes.get("max-age") == "0":
            jar.pop(name, None)
        else:
            jar[name] = value
    return jar


# -- round trips ------------------------------------------------------------


def test_round_trip_single_cookie():
    c = codec()
    session = make_session(nickname="Zoë ✓")
    headers = c.encode(session)
    assert len(headers) == 1
    decoded, count = c.decode(as_request_cookies(headers))
    assert decoded == session
    assert count == 1


def test_no_cookie_is_none_and_zero():
    assert codec().decode({}) == (None, 0)
    assert codec().decode({b"other": b"x"}) == (None, 0)


def test_compressible_sessions_are_compressed():
    c = codec()
    session = make_session(roles=["reader"] * 300)
    headers = c.encode(session)
    _, value, _ = parse_set_cookie(headers[0])
    envelope = c._keyring.open(value, c._associated_data)
    assert envelope[0] & FLAG_ZLIB
    assert len(value) < len(repr(session.claims))
    assert c.decode(as_request_cookies(headers))[0] == session


def test_sessions_are_not_compressed_when_it_does_not_help(monkeypatch):
    c = codec()
    session = make_session(roles=["reader"] * 30)
    monkeypatch.setattr(zlib, "compress", lambda data: data + b"longer")
    headers = c.encode(session)
    assert len(headers) == 1
    _, value, _ = parse_set_cookie(headers[0])
    assert not c._keyring.open(value, c._associated_data)[0] & FLAG_ZLIB
    assert c.decode(as_request_cookies(headers))[0] == session


def test_key_rotation_keeps_sessions():
    session = make_session()
    old = codec(keys=[KEY_A])
    rotated = codec(keys=[KEY_B, KEY_A])
    assert rotated.decode(as_request_cookies(old.encode(session)))[0] == session


# -- names and attributes ---------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"secure": True}, "__Host-_idgw_app1"),
        ({"secure": False}, "_idgw_app1"),
        ({"secure": True, "domain": "example.com"}, "_idgw_app1"),
        ({"secure": True, "path": "/app"}, "_idgw_app1"),
        ({"secure": True, "host_prefix": False}, "_idgw_app1"),
    ],
)
def test_host_prefix_only_where_browsers_accept_it(settings, expected):
    c = codec(**settings)
    assert c.cookie_name == expected
    name, _, _ = parse_set_cookie(c.encode(make_session())[0])
    assert name == expected.encode()


def test_attributes_on_tls():
    headers = codec(same_site="Strict").encode(make_session())
    _, _, attributes = parse_set_cookie(headers[0])
    assert attributes == {"path": "/", "secure": "", "httponly": "", "samesite": "Strict"}


def test_attributes_without_tls_with_domain_path_and_max_age():
    c = codec(secure=False, domain="example.com", path="/app")
    _, _, attributes = parse_set_cookie(c.encode(make_session(), max_age=3600)[0])
    assert attributes == {
        "path": "/app",
        "domain": "example.com",
        "httponly": "",
        "samesite": "Lax",
        "max-age": "3600",
    }


def test_same_site_none_on_tls():
    _, _, attributes = parse_set_cookie(codec(same_site="None").encode(make_session())[0])
    assert attributes["samesite"] == "None"
    assert "secure" in attributes


def test_same_site_none_without_tls_falls_back_to_lax():
    # Browsers drop SameSite=None cookies that are not Secure.
    c = codec(same_site="None", secure=False)
    _, _, attributes = parse_set_cookie(c.encode(make_session())[0])
    assert attributes["samesite"] == "Lax"
    assert "secure" not in attributes


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"name": "bad name"}, "letters"),
        ({"name": ""}, "non-empty"),
        ({"name": "a;b"}, "letters"),
        ({"same_site": "lax"}, "one of"),
        ({"path": "app"}, "start with"),
        ({"path": "/a;b"}, "';'"),
        ({"domain": "example.com; HttpOnly"}, "';'"),
        ({"max_chunk": 10}, "max_chunk"),
        ({"max_chunks": 0}, "max_chunks"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    options = {"name": "_idgw_app1", "secure": True, **settings}
    with pytest.raises(ValueError, match=message):
        CookieSettings(**options)


# -- chunking ---------------------------------------------------------------


def test_large_session_spans_three_or_more_cookies_and_reassembles():
    c = codec(max_chunk=400)
    session = big_session(800)
    headers = c.encode(session, max_age=600)
    assert len(headers) >= 4
    names = [parse_set_cookie(h)[0] for h in headers]
    assert names == [b"__Host-_idgw_app1"] + [
        b"__Host-_idgw_app1_%d" % i for i in range(1, len(headers))
    ]
    for header in headers:
        _, value, attributes = parse_set_cookie(header)
        assert len(value) <= 400
        assert attributes["max-age"] == "600"
    decoded, count = c.decode(as_request_cookies(headers))
    assert decoded == session
    assert count == len(headers)


def test_token_exactly_filling_one_chunk_is_not_split():
    c = codec()
    token_length = len(parse_set_cookie(c.encode(make_session())[0])[1])
    exact = codec(max_chunk=token_length)
    headers = exact.encode(make_session())
    assert len(headers) == 1
    assert exact.decode(as_request_cookies(headers))[0] == make_session()


def test_shrinking_session_deletes_stale_chunks():
    c = codec(max_chunk=300)
    jar = as_request_cookies(c.encode(big_session(600)))
    _, previous = c.decode(jar)
    assert previous >= 4
    small = make_session()
    now_needed = len(c.encode(small))
    assert now_needed < previous
    headers = c.encode(small, previous_chunks=previous)
    assert len(headers) == previous
    deleted = [parse_set_cookie(h) for h in headers[now_needed:]]
    assert [name for name, _, _ in deleted] == [
        b"__Host-_idgw_app1_%d" % i for i in range(now_needed, previous)
    ]
    for _, value, attributes in deleted:
        assert value == b""
        assert attributes["max-age"] == "0"
        assert "secure" in attributes and attributes["path"] == "/"
    jar = apply(jar, headers)
    assert c.decode(jar) == (small, now_needed)


def test_stale_chunks_left_in_the_browser_are_ignored():
    c = codec(max_chunk=300)
    old = as_request_cookies(c.encode(big_session(600)))
    new = as_request_cookies(c.encode(big_session(200)))
    assert 2 <= len(new) < len(old)
    jar = {**old, **new}  # the deletions never arrived
    session, count = c.decode(jar)
    assert session is not None and session.claims == c.decode(new)[0].claims
    assert count == len(old)  # so the next encode deletes them


def test_too_large_session_raises():
    c = codec(max_chunk=200, max_chunks=3)
    with pytest.raises(SessionTooLarge, match="app1"):
        c.encode(big_session(600))


def test_default_limits_hold_a_typical_session_in_one_cookie():
    headers = codec().encode(make_session())
    assert len(headers) == 1
    assert len(headers[0]) < 1000


# -- refusing bad cookies ---------------------------------------------------


def chunked_jar(c, session):
    jar = as_request_cookies(c.encode(session))
    assert len(jar) >= 3
    return jar


def test_missing_middle_chunk_is_none():
    c = codec(max_chunk=300)
    jar = chunked_jar(c, big_session(600))
    del jar[b"__Host-_idgw_app1_1"]
    assert c.decode(jar) == (None, len(jar) + 1)


def test_missing_last_chunk_is_none():
    c = codec(max_chunk=300)
    jar = chunked_jar(c, big_session(600))
    count = len(jar)
    del jar[b"__Host-_idgw_app1_%d" % (count - 1)]
    assert c.decode(jar) == (None, count - 1)


def test_missing_first_chunk_is_none_but_counted():
    c = codec(max_chunk=300)
    jar = chunked_jar(c, big_session(600))
    count = len(jar)
    del jar[b"__Host-_idgw_app1"]
    assert c.decode(jar) == (None, count)
    assert len(c.clear(count)) == count


def test_reordered_chunks_are_none():
    c = codec(max_chunk=300)
    jar = chunked_jar(c, big_session(600))
    a, b = b"__Host-_idgw_app1_1", b"__Host-_idgw_app1_2"
    jar[a], jar[b] = jar[b], jar[a]
    assert c.decode(jar)[0] is None


def test_tampered_chunk_is_none():
    c = codec(max_chunk=300)
    jar = chunked_jar(c, big_session(600))
    name = b"__Host-_idgw_app1_1"
    value = jar[name]
    jar[name] = value[:10] + (b"A" if value[10:11] != b"A" else b"B") + value[11:]
    assert c.decode(jar)[0] is None


def test_truncated_cookie_is_none():
    c = codec()
    jar = as_request_cookies(c.encode(make_session()))
    for name, value in jar.items():
        for cut in (1, 2, 17, len(value) // 2):
            assert c.decode({name: value[:-cut]})[0] is None


@pytest.mark.parametrize(
    "head",
    [b"x.", b"1.", b"0.", b"99.", b"-2.", b".", b"2.2.", b"\xff."],
)
def test_bad_chunk_count_is_none(head):
    c = codec(max_chunk=300)
    jar = chunked_jar(c, big_session(600))
    name = b"__Host-_idgw_app1"
    jar[name] = head + jar[name].partition(b".")[2]
    assert c.decode(jar)[0] is None


def test_cookie_for_another_route_is_refused_even_with_the_same_keys():
    app1 = codec(route="app1")
    app2 = codec(route="app2")
    jar = as_request_cookies(app1.encode(make_session()))
    assert app2.decode(jar) == (None, 1)


def test_cookie_renamed_is_refused():
    app1 = codec()
    other = codec(name="_idgw_other")
    (value,) = as_request_cookies(app1.encode(make_session())).values()
    assert other.decode({b"__Host-_idgw_other": value})[0] is None


def test_cookie_from_a_retired_key_is_none():
    old = codec(keys=[KEY_A])
    new = codec(keys=[KEY_B])
    assert new.decode(as_request_cookies(old.encode(make_session()))) == (None, 1)


@pytest.mark.parametrize(
    "value",
    [b"", b"garbage", b"deleted", b"\x00\xff\xfe", b"A" * 5000, b"2.", b"2.abc", b"%20"],
)
def test_garbage_is_none(value):
    assert codec().decode({b"__Host-_idgw_app1": value}) == (None, 1)


def test_expired_by_content_even_if_the_browser_kept_it():
    clock = FakeClock()
    c = codec(clock=clock)
    jar = as_request_cookies(c.encode(make_session(), max_age=60))
    clock.now += 59
    assert c.decode(jar)[0] == make_session()
    clock.now += 1
    assert c.decode(jar) == (None, 1)


def test_sealed_but_malformed_envelopes_are_none():
    c = codec()
    name = b"__Host-_idgw_app1"

    def sealed(envelope):
        return {name: c._keyring.seal(envelope, c._associated_data)}

    assert c.decode(sealed(b"")) == (None, 1)
    assert c.decode(sealed(b"\x80{}")) == (None, 1)  # unknown flag
    assert c.decode(sealed(b"\x00not json")) == (None, 1)
    assert c.decode(sealed(b"\x00[1,2]")) == (None, 1)
    assert c.decode(sealed(b'\x00{"id":"x"}')) == (None, 1)  # fields missing
    assert c.decode(sealed(b"\x01not zlib")) == (None, 1)
    assert c.decode(sealed(b"\x01" + zlib.compress(b"{}")[:-3])) == (None, 1)
    assert c.decode(sealed(b"\x02\x00\x00")) == (None, 1)  # short expiry
    assert c.decode(sealed(b"\x00\xff{}")) == (None, 1)


# -- clearing and ownership -------------------------------------------------


def test_clear_deletes_every_chunk():
    c = codec(secure=False, domain="example.com", path="/app")
    headers = c.clear(3)
    assert [parse_set_cookie(h)[0] for h in headers] == [
        b"_idgw_app1",
        b"_idgw_app1_1",
        b"_idgw_app1_2",
    ]
    for header in headers:
        _, value, attributes = parse_set_cookie(header)
        assert value == b""
        assert attributes["max-age"] == "0"
        assert attributes["domain"] == "example.com"
        assert attributes["path"] == "/app"
    assert len(c.clear(0)) == 1  # sign-out always clears the first
    assert len(c.clear(100)) == 8  # never beyond max_chunks


@pytest.mark.parametrize(
    ("name", "own"),
    [
        (b"__Host-_idgw_app1", True),
        (b"__Host-_idgw_app1_1", True),
        (b"__Host-_idgw_app1_7", True),
        (b"__Host-_idgw_app1_12", True),
        (b"_idgw_app1", True),  # left from a plain listener
        (b"_idgw_app1_3", True),
        (b"_idgw_app1_x", False),
        (b"_idgw_app10", False),
        (b"_idgw_app", False),
        (b"session", False),
        (b"", False),
    ],
)
def test_is_own_cookie(name, own):
    assert codec().is_own_cookie(name) is own


# -- Cookie header helpers --------------------------------------------------


def test_parse_cookie_header_first_wins_and_tolerates_junk():
    values = [b"a=1; b=2;  c = 3 ;;junk; =nameless; a=dup", b"b=other; d=x=y;e="]
    assert parse_cookie_header(values) == {
        b"a": b"1",
        b"b": b"2",
        b"c": b"3",
        b"d": b"x=y",
        b"e": b"",
    }
    assert parse_cookie_header([]) == {}
    assert parse_cookie_header([b""]) == {}


def test_strip_cookies_keeps_others_byte_exact_and_in_order():
    c = codec()
    header = (
        b'theme="dark mode"; __Host-_idgw_app1=SEALED; pref=a%20b;'
        b"__Host-_idgw_app1_1=MORE;  weird=\xff\x00; _idgw_flow_abc=1"
    )
    assert strip_cookies([header], c.is_own_cookie) == (
        b'theme="dark mode"; pref=a%20b; weird=\xff\x00; _idgw_flow_abc=1'
    )


def test_strip_cookies_returns_the_header_untouched_when_nothing_is_ours():
    header = b"a=1;b=2 ;  c=3;"
    assert strip_cookies([header], codec().is_own_cookie) is header


def test_strip_cookies_none_when_only_ours():
    c = codec()
    assert strip_cookies([b"__Host-_idgw_app1=x; __Host-_idgw_app1_1=y"], c.is_own_cookie) is None
    assert strip_cookies([], c.is_own_cookie) is None
    assert strip_cookies([b" ; "], c.is_own_cookie) is None


def test_strip_cookies_joins_several_headers():
    c = codec()
    values = [b"a=1; __Host-_idgw_app1=x", b"b=2"]
    assert strip_cookies(values, c.is_own_cookie) == b"a=1; b=2"
    assert strip_cookies([b"a=1", b"b=2"], c.is_own_cookie) == b"a=1; b=2"


def test_strip_cookies_keeps_nameless_junk():
    assert strip_cookies([b"junk; __Host-_idgw_app1=x"], codec().is_own_cookie) == b"junk"


# -- the cache of recently opened cookies -----------------------------------


def test_a_cookie_seen_again_is_not_decrypted_again():
    c = codec()
    jar = as_request_cookies(c.encode(make_session()))
    assert c.decode(jar)[0] == make_session()

    class SpyRing:
        def __init__(self, ring):
            self.ring = ring
            self.opened = 0

        def open(self, token, associated_data):
            self.opened += 1
            return self.ring.open(token, associated_data)

    spy = c._keyring = SpyRing(c._keyring)
    assert c.decode(jar)[0] == make_session()
    assert spy.opened == 0
    # Any change to the value misses the cache and is checked in full.
    (name,) = jar
    value = jar[name]
    middle = len(value) // 2  # (the last character may carry unused bits)
    tampered = value[:middle] + (b"A" if value[middle : middle + 1] != b"A" else b"B")
    tampered += value[middle + 1 :]
    assert c.decode({name: tampered})[0] is None
    assert spy.opened == 1


def test_only_cookies_that_opened_are_remembered_and_the_cache_is_bounded():
    c = codec()
    for i in range(20):
        c.decode({b"__Host-_idgw_app1": b"garbage%d" % i})
    assert len(c._recent) == 0
    for _ in range(1100):
        c.decode(as_request_cookies(c.encode(make_session())))
    # Past the bound the older generation goes whole: never more than two bounds.
    assert len(c._recent) <= 2 * 1024


def test_cookies_not_sent_for_two_minutes_are_forgotten():
    """A refreshed or re-issued cookie is never sent again: the cache must not
    keep it until its bound pushes it out (the soak's slow RSS climb)."""
    clock = FakeClock()
    c = codec(clock=clock)
    old = as_request_cookies(c.encode(make_session(), max_age=3600))
    kept = as_request_cookies(c.encode(make_session(), max_age=3600))
    assert c.decode(old)[0] is not None and c.decode(kept)[0] is not None
    for _ in range(4):
        clock.now += 45
        assert c.decode(kept)[0] is not None  # in use: stays
        c.decode(as_request_cookies(c.encode(make_session(), max_age=3600)))
    # Six cookies were opened; the old one and the first new one are gone.
    assert len(c._recent) == 4
    # The old cookie still opens (from scratch), and is cached again.
    assert c.decode(old)[0] is not None


def test_cached_cookie_still_expires():
    clock = FakeClock()
    c = codec(clock=clock)
    jar = as_request_cookies(c.encode(make_session(), max_age=60))
    assert c.decode(jar)[0] is not None
    clock.now += 60
    assert c.decode(jar) == (None, 1)
    clock.now -= 1
    assert c.decode(jar)[0] is not None


# -- CookieHeaderReader: a Cookie header is split and stripped once ------------------


def _own(name: bytes) -> bool:
    return name.startswith(b"_idgw")


def test_cookie_header_reader_answers_as_strip_and_parse_do():
    from idgateway.sessions.cookie import CookieHeaderReader, parse_cookie_header, strip_cookies

    reader = CookieHeaderReader()
    for values in (
        [b"_ga=1; _idgw_app=secret; theme=dark"],
        [b"_idgw_app=secret"],
        [b"theme=dark"],
        [b"a=1", b"_idgw_app=x; b=2"],
        [b"a=1; b=2", b""],
    ):
        expected = (strip_cookies(values, _own), parse_cookie_header(values))
        assert reader.read(values, _own) == expected
        assert reader.read(list(values), _own) == expected  # and again, from the memo


def test_cookie_header_reader_reuses_its_answer_for_the_same_header():
    from idgateway.sessions.cookie import CookieHeaderReader

    reader = CookieHeaderReader()
    first = reader.read([b"_idgw_app=secret; theme=dark"], _own)
    again = reader.read([b"".join([b"_idgw_app=secret; ", b"theme=dark"])], _own)
    assert again is first
    assert first == (b"theme=dark", {b"_idgw_app": b"secret", b"theme": b"dark"})


def test_cookie_header_reader_keeps_header_lists_apart_from_joined_headers():
    from idgateway.sessions.cookie import CookieHeaderReader

    reader = CookieHeaderReader()
    two = reader.read([b"a=1", b"b=2"], _own)
    one = reader.read([b"a=1; b=2"], _own)
    assert two[0] == b"a=1; b=2" and one[0] == b"a=1; b=2"
    assert two is not one


def test_cookie_header_reader_forgets_everything_when_ownership_changes():
    from idgateway.sessions.cookie import CookieHeaderReader

    reader = CookieHeaderReader()
    header = [b"_idgw_app=secret; other=1"]
    assert reader.read(header, _own)[0] == b"other=1"

    def owns_other_too(name: bytes) -> bool:
        return _own(name) or name == b"other"

    # A reload gave the routes a new idea of which cookies are the gateway's.
    assert reader.read(header, owns_other_too)[0] is None


def test_cookie_header_reader_is_bounded():
    from idgateway.sessions.cookie import CookieHeaderReader

    reader = CookieHeaderReader(limit=3, max_bytes=64)
    for n in range(10):
        reader.read([b"n=%d" % n], _own)
        assert len(reader._known) <= 3
    big = [b"big=" + b"x" * 100]
    assert reader.read(big, _own) == (big[0], {b"big": b"x" * 100})
    assert big[0] not in reader._known  # over max_bytes: answered, not kept


def test_cookie_header_reader_keeps_neither_many_pair_headers_nor_too_many_bytes():
    from idgateway.sessions.cookie import CookieHeaderReader

    reader = CookieHeaderReader(max_pairs=4, max_total_bytes=1000)
    crowded = [b"; ".join(b"c%d=" % n for n in range(10))]
    assert len(reader.read(crowded, _own)[1]) == 10
    assert crowded[0] not in reader._known  # answered, not kept: too many cookies
    for n in range(20):
        reader.read([b"n=%d; " % n + b"x" * 200], _own)
        assert reader._bytes <= 1000
    assert 0 < len(reader._known) < 20
