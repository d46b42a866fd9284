from idgateway.config.model import Route, Upstream
from idgateway.routing.table import RouteTable, normalise_host

UP = Upstream(url="http://127.0.0.1:1", kind="http", host="127.0.0.1", port=1)


def route(name, hosts=(), default=False):
    return Route(name=name, hosts=tuple(hosts), upstream=UP, default=default)


APP1 = route("app1", ["app1.example.com"])
WILD = route("wild", ["*.example.com"])
DEEP = route("deep", ["*.eu.example.com"])
FALLBACK = route("fallback", default=True)


def test_normalise_host_strips_port_case_and_trailing_dot():
    assert normalise_host(b"App1.Example.COM:8443") == "app1.example.com"
    assert normalise_host("app1.example.com.") == "app1.example.com"
    assert normalise_host(b"[::1]:8080") == "[::1]"
    assert normalise_host(None) == ""


def test_exact_beats_wildcard_and_longest_wildcard_wins():
    table = RouteTable.build([APP1, WILD, DEEP, FALLBACK])
    assert table.route_for(b"app1.example.com") is APP1
    assert table.route_for(b"APP1.example.com:443") is APP1
    assert table.route_for(b"other.example.com") is WILD
    assert table.route_for(b"a.b.example.com") is WILD
    assert table.route_for(b"x.eu.example.com") is DEEP
    assert table.route_for(b"example.com") is FALLBACK
    assert table.route_for(b"elsewhere.org") is FALLBACK


def test_unknown_host_without_default_is_none():
    table = RouteTable.build([APP1, WILD])
    assert table.route_for(b"elsewhere.org") is None
    assert table.route_for(b"") is None
    assert table.route_for_name("app1.example.com") is APP1


def test_cached_lookups_stay_correct():
    table = RouteTable.build([APP1, FALLBACK])
    for _ in range(3):
        assert table.route_for(b"app1.example.com") is APP1
        assert table.route_for(b"nope") is FALLBACK


def test_tls_server_names_are_cached_bounded_and_stay_correct():
    table = RouteTable.build([APP1, WILD, DEEP])
    for _ in range(2):
        assert table.route_for_name("app1.example.com") is APP1
        assert table.route_for_name("APP1.example.com.") is APP1
        assert table.route_for_name("x.eu.example.com") is DEEP
        assert table.route_for_name("elsewhere.org") is None
    # A client picks its SNI name: a flood of distinct names cannot grow the
    # cache without limit, and each still gets its own answer.
    for n in range(10_000):
        assert table.route_for_name(f"h{n}.example.com") is WILD
        assert table.route_for_name(f"h{n}.example.org") is None
    assert len(table._names) <= 4097
    assert table.route_for_name("app1.example.com") is APP1
