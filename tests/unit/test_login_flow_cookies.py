"""Login-flow cookies: one per login, sealed, route-bound, single use, capped."""

import base64
import hashlib
import itertools

import pytest

from idgateway.sessions.cookie import parse_cookie_header, strip_cookies
from idgateway.sessions.flows import FlowCookies, LoginFlow
from idgateway.sessions.keys import KeyRing

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
NOW = 1_700_000_000.0


def flows(route="app1", keys=(KEY_A,), secure=True, **options):
    return FlowCookies(route, KeyRing(list(keys)), secure, **options)


def parse_set_cookie(header):
    first, *rest = header.decode("ascii").split("; ")
    name, _, value = first.partition("=")
    attributes = {}
    for item in rest:
        key, _, val = item.partition("=")
        attributes[key.lower()] = val
    return name.encode(), value.encode(), attributes


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


def start(fc, jar, now, return_to="/"):
    flow = fc.new_flow(return_to, now)
    return flow, apply(jar, fc.set_cookie(flow, jar, now))


def counting_random():
    counter = itertools.count()
    return lambda n: bytes([next(counter) % 256]) * n


# -- making flows -----------------------------------------------------------


def test_new_flow_values():
    flow = flows().new_flow("/reports?q=1", NOW)
    assert flow.return_to == "/reports?q=1"
    assert flow.created_at == NOW
    assert len(flow.state) == 43 and len(flow.nonce) == 43
    assert len(flow.code_verifier) == 86
    for value in (flow.state, flow.nonce, flow.code_verifier):
        assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len({flow.state, flow.nonce, flow.code_verifier}) == 3


def test_new_flow_uses_the_injected_randomness():
    flow = flows().new_flow("/", NOW, random=counting_random())
    assert base64.urlsafe_b64decode(flow.state + "=") == b"\x00" * 32
    assert base64.urlsafe_b64decode(flow.nonce + "=") == b"\x01" * 32
    assert base64.urlsafe_b64decode(flow.code_verifier + "==") == b"\x02" * 64


def test_code_challenge_matches_rfc7636_appendix_b():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert FlowCookies.code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_overlong_return_url_is_cut_back():
    fc = flows(max_return_to=100)
    fitting = "/" + "a" * 99
    assert fc.new_flow(fitting, NOW).return_to == fitting
    long_query = "/reports/42?" + "q=1&" * 30 + "#top"
    assert fc.new_flow(long_query, NOW).return_to == "/reports/42"
    long_fragment = "/reports/42#" + "x" * 100
    assert fc.new_flow(long_fragment, NOW).return_to == "/reports/42"
    assert fc.new_flow("/" + "p" * 100 + "?q=1", NOW).return_to == "/"
    assert fc.new_flow("/" + "é" * 60, NOW).return_to == "/"  # 121 UTF-8 bytes


def test_default_limits_keep_a_flow_cookie_under_4k():
    fc = flows()
    flow = fc.new_flow("/" + "a" * 2047, NOW)
    (header,) = fc.set_cookie(flow, {}, NOW)
    assert len(header) < 4000


@pytest.mark.parametrize(
    "options",
    [
        {"prefix": ""},
        {"prefix": "bad prefix"},
        {"prefix": "a;b"},
        {"lifetime": 0},
        {"max_flows": 0},
        {"path": "app"},
        {"path": "/a;b"},
    ],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        flows(**options)


# -- the cookie -------------------------------------------------------------


def test_set_cookie_name_value_and_attributes_on_tls():
    fc = flows()
    flow = fc.new_flow("/secret-place", NOW)
    (header,) = fc.set_cookie(flow, {}, NOW)
    name, value, attributes = parse_set_cookie(header)
    digest = hashlib.sha256(flow.state.encode()).digest()[:9]
    assert name == b"__Host-_idgw_flow_" + base64.urlsafe_b64encode(digest)
    assert name == fc.cookie_name_for(flow.state)
    assert attributes == {
        "max-age": "600",
        "path": "/",
        "secure": "",
        "httponly": "",
        "samesite": "Lax",
    }
    # Sealed: the browser sees none of the secrets.
    for secret in (flow.state, flow.nonce, flow.code_verifier, "secret-place"):
        assert secret.encode() not in value
    assert set(value) <= set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_plain_listener_has_no_host_prefix_and_no_secure():
    fc = flows(secure=False, lifetime=300.5, prefix="_idgw_app1_flow")
    flow = fc.new_flow("/", NOW)
    name, _, attributes = parse_set_cookie(fc.set_cookie(flow, {}, NOW)[0])
    assert name.startswith(b"_idgw_app1_flow_")
    assert "secure" not in attributes
    assert attributes["max-age"] == "301"
    assert attributes["samesite"] == "Lax" and "httponly" in attributes


def test_round_trip_and_single_use():
    fc = flows()
    flow, jar = start(fc, {}, NOW, "/after")
    taken, headers = fc.take(flow.state, jar, NOW + 5)
    assert taken == flow
    (deletion,) = headers
    name, value, attributes = parse_set_cookie(deletion)
    assert name == fc.cookie_name_for(flow.state)
    assert value == b"" and attributes["max-age"] == "0" and "secure" in attributes
    # The replayed callback finds the cookie gone.
    jar = apply(jar, headers)
    assert jar == {}
    replay, headers = fc.take(flow.state, jar, NOW + 6)
    assert replay is None
    assert len(headers) == 1  # still a deletion, harmless


def test_two_tabs_succeed_in_either_order():
    fc = flows()
    for order in ((0, 1), (1, 0)):
        first, jar = start(fc, {}, NOW, "/tab-one")
        second, jar = start(fc, jar, NOW + 1, "/tab-two")
        started = (first, second)
        assert len(jar) == 2
        for index in order:
            flow = started[index]
            taken, headers = fc.take(flow.state, jar, NOW + 10)
            assert taken == flow
            jar = apply(jar, headers)
        assert jar == {}


def test_state_mismatch_fails():
    fc = flows()
    flow, jar = start(fc, {}, NOW)
    other = fc.new_flow("/", NOW)
    assert fc.take(other.state, jar, NOW)[0] is None
    assert fc.take("", jar, NOW)[0] is None
    assert fc.take("ünïcode \udc80", jar, NOW)[0] is None
    # A cookie moved under the name of another state does not open there.
    moved = {fc.cookie_name_for(other.state): jar[fc.cookie_name_for(flow.state)]}
    assert fc.take(other.state, moved, NOW)[0] is None


def test_state_check_is_constant_time_compare(monkeypatch):
    # Even if a cookie opens under the name (e.g. a hash collision), the
    # state inside must match exactly.
    fc = flows()
    flow, jar = start(fc, {}, NOW)
    monkeypatch.setattr(fc, "cookie_name_for", lambda state: next(iter(jar)))
    assert fc.take(flow.state + "x", jar, NOW)[0] is None
    assert fc.take(flow.state, jar, NOW)[0] == flow


def test_expired_flow_fails():
    fc = flows(lifetime=600)
    flow, jar = start(fc, {}, NOW)
    assert fc.take(flow.state, jar, NOW + 600)[0] == flow
    taken, headers = fc.take(flow.state, jar, NOW + 600.5)
    assert taken is None
    assert len(headers) == 1


def test_flow_for_another_route_fails_even_with_the_same_keys():
    app1 = flows("app1")
    app2 = flows("app2")
    flow, jar = start(app1, {}, NOW)
    assert app2.take(flow.state, jar, NOW)[0] is None


def test_flow_sealed_by_a_retired_key_fails_and_rotation_keeps_it():
    flow, jar = start(flows(keys=[KEY_A]), {}, NOW)
    assert flows(keys=[KEY_B]).take(flow.state, jar, NOW)[0] is None
    assert flows(keys=[KEY_B, KEY_A]).take(flow.state, jar, NOW)[0] == flow


@pytest.mark.parametrize("value", [b"", b"garbage", b"A" * 300, b"\xff\x00"])
def test_garbage_flow_cookie_fails(value):
    fc = flows()
    flow = fc.new_flow("/", NOW)
    taken, headers = fc.take(flow.state, {fc.cookie_name_for(flow.state): value}, NOW)
    assert taken is None and len(headers) == 1


def test_tampered_flow_cookie_fails():
    fc = flows()
    flow, jar = start(fc, {}, NOW)
    name = fc.cookie_name_for(flow.state)
    value = jar[name]
    # Not the last character: its unused low bits do not change the bytes.
    for index in (0, 5, len(value) // 2, len(value) - 2):
        swapped = b"A" if value[index : index + 1] != b"A" else b"B"
        tampered = value[:index] + swapped + value[index + 1 :]
        assert fc.take(flow.state, {name: tampered}, NOW)[0] is None
    assert fc.take(flow.state, {name: value[:-4]}, NOW)[0] is None


def test_sealed_but_malformed_flow_is_none():
    fc = flows()
    flow = fc.new_flow("/", NOW)
    name = fc.cookie_name_for(flow.state)
    for plaintext in (b"", b"[]", b"{}", b'[2,"a","b","c","d",1]', b'[1,"a","b","c","d",true]'):
        value = fc._keyring.seal(plaintext, fc._associated_data(name))
        assert fc.take(flow.state, {name: value}, NOW)[0] is None


# -- the cap ----------------------------------------------------------------


def test_cap_evicts_the_oldest_flows():
    fc = flows(max_flows=3)
    jar = {}
    started = []
    for i in range(3):
        flow, jar = start(fc, jar, NOW + i)
        started.append(flow)
    assert len(jar) == 3
    newest = fc.new_flow("/", NOW + 3)
    headers = fc.set_cookie(newest, jar, NOW + 3)
    deleted = [parse_set_cookie(h)[0] for h in headers[1:]]
    assert deleted == [fc.cookie_name_for(started[0].state)]
    jar = apply(jar, headers)
    assert len(jar) == 3
    assert fc.take(started[0].state, jar, NOW + 4)[0] is None
    for flow in [*started[1:], newest]:
        assert fc.take(flow.state, jar, NOW + 4)[0] == flow


def test_many_logins_never_pile_up():
    fc = flows()
    jar = {}
    for i in range(50):
        _, jar = start(fc, jar, NOW + i)
        assert len(jar) <= 5


def test_expired_and_unreadable_flow_cookies_are_cleaned_up():
    fc = flows(lifetime=60)
    old, jar = start(fc, {}, NOW)
    junk_name = b"__Host-_idgw_flow_junkjunkjunk"
    jar[junk_name] = b"garbage"
    jar[b"unrelated"] = b"keep"
    fresh = fc.new_flow("/", NOW + 120)
    headers = fc.set_cookie(fresh, jar, NOW + 120)
    deleted = sorted(parse_set_cookie(h)[0] for h in headers[1:])
    assert deleted == sorted([fc.cookie_name_for(old.state), junk_name])
    jar = apply(jar, headers)
    assert set(jar) == {b"unrelated", fc.cookie_name_for(fresh.state)}


def test_setting_the_same_flow_again_does_not_delete_it():
    fc = flows(max_flows=1)
    flow, jar = start(fc, {}, NOW)
    headers = fc.set_cookie(flow, jar, NOW)
    assert len(headers) == 1
    assert fc.take(flow.state, apply(jar, headers), NOW)[0] == flow


# -- ownership --------------------------------------------------------------


def test_flow_cookies_are_stripped_from_the_upstream_request():
    fc = flows()
    flow, jar = start(fc, {}, NOW)
    (name,) = jar
    header = b"app=1; " + name + b"=" + jar[name] + b"; _idgw_flow_old=x; other=2"
    assert fc.is_own_cookie(name)
    assert fc.is_own_cookie(b"_idgw_flow_old")
    assert not fc.is_own_cookie(b"_idgw_flowx")
    assert strip_cookies([header], fc.is_own_cookie) == b"app=1; other=2"
    assert fc.take(flow.state, parse_cookie_header([header]), NOW)[0] == flow


def test_login_flow_is_a_value():
    flow = LoginFlow("s", "n", "v", "/", NOW)
    assert flow == LoginFlow("s", "n", "v", "/", NOW)
    with pytest.raises(AttributeError):
        flow.state = "other"
