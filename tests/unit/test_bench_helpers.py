"""bench/harness.py's small helpers: raw HTTP reading, process figures, rendering."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_harness", BENCH / "harness.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_harness"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_harness", None)
        sys.path.remove(str(BENCH))


def test_read_response_keeps_what_follows(harness):
    a, b = socket.socketpair()
    with a, b:
        b.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}"
        )
        buf = bytearray()
        assert harness.read_response(a, buf) == 200
        assert harness.read_response(a, buf) == 401
        assert buf == b""


def test_process_figures_cover_this_process(harness):
    pid = os.getpid()
    assert pid in harness.process_tree(pid)
    memory = harness.tree_memory(pid)
    assert memory["rss_kib"] > 0
    # Each process's own figures, the leader first, adding up to the tree's.
    assert memory["each"][0][0] == pid
    assert sum(own_rss for _, own_rss, _ in memory["each"]) == memory["rss_kib"]
    assert harness.each_process_memory(memory).count("/") == len(memory["each"])
    assert harness.tree_cpu_seconds(pid) > 0


def test_step_errors_and_lines(harness):
    extras = {
        "idle_conns": {"gateway_cookie": {"error": "idgateway: did not start"}},
        "gate_micro": {"error": "failed"},
    }
    assert harness.step_errors(extras) == [
        "idle_conns: idgateway: did not start",
        "gate_micro: failed",
    ]
    lines = harness.render_extras(extras)
    assert any("not run (idgateway: did not start)" in line for line in lines)
    assert any(line.startswith("gate microbenchmark: not run") for line in lines)


def test_cpu_per_request_and_its_column(harness):
    assert harness.cpu_per_request_us(1.5, 10_000) == pytest.approx(150.0)
    # Nothing answered, or no CPU time seen (clock ticks): no figure, not 0.
    assert harness.cpu_per_request_us(1.5, 0) is None
    assert harness.cpu_per_request_us(0.0, 10_000) is None

    def case(key, server, rps, cpu):
        c = harness.Case(key, server, "/", key)
        for r in rps:
            c.runs.append(
                {
                    "rps": r,
                    "p50_ms": 1.0,
                    "p99_ms": 2.0,
                    "transfer_bytes_per_s": 1.0,
                    "errors": 0,
                    "requests": int(r * 10),
                    "cpu_us_per_request": cpu,
                }
            )
        return c

    cases = {
        "login_cookie": case("login_cookie", "gateway_cookie", [3000, 3300, 3200], 180.0),
        "apache_shm": case("apache_shm", "apache_shm", [2000, 2100, 2050], 300.0),
    }
    ratios = harness.compute_ratios(cases)
    ratio = ratios["cookie session / mod_auth_openidc shm"]
    assert ratio["cpu"] == pytest.approx(0.6)
    meta = {
        "date": "now",
        "machine": {
            "nproc": 2,
            "cpu_model": "x",
            "kernel": "k",
            "python": "3",
            "twisted": "t",
            "nginx": "n",
            "wrk": "w",
        },
        "config": {
            "threads": 2,
            "connections": 32,
            "duration_s": 10,
            "rounds": 3,
            "warmup_s": 2,
            "stock_proxy_logging": True,
        },
    }
    text = harness.render(meta, cases, ratios, [], None)
    assert "CPU/req" in text.splitlines()[5]
    assert " 180us " in text and " 300us " in text
    assert "CPU per request 0.6x" in text


def test_steal_share_between_two_readings(harness):
    assert harness.steal_percent((100, 10_000), (150, 11_000)) == pytest.approx(5.0)
    assert harness.steal_percent(None, (150, 11_000)) is None
    assert harness.steal_percent((100, 10_000), (100, 10_000)) is None
    ticks = harness.machine_cpu_ticks()
    assert ticks is not None and ticks[1] > 0 and 0 <= ticks[0] <= ticks[1]


def test_the_gate_microbenchmark_still_measures_the_authenticated_path():
    """bench/gate_micro.py drives the gate as render does (a few calls: a smoke test)."""
    spec = importlib.util.spec_from_file_location("bench_gate_micro", BENCH / "gate_micro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.run(iterations=50, batches=1)
    assert figures


def test_the_request_cycle_microbenchmark_goes_round(capsys):
    """bench/cycle_micro.py: a request through the gateway on real sockets, counted."""
    spec = importlib.util.spec_from_file_location("bench_cycle_micro", BENCH / "cycle_micro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from idgateway.observe import access_log

    try:
        cycle = module.Cycle()
        head, answer = cycle.one()
        assert head.startswith(b"GET / HTTP/1.1\r\n") and b"X-Forwarded-User: " in head
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"hello from upstream\n")
        assert cycle.records and " 200 20B route=app1 " in cycle.records[-1]
        module.count(cycle, 3, top=2)
        assert "Python calls per request" in capsys.readouterr().out
    finally:
        # The cycle sends access lines to itself, as a worker to its master:
        # later tests read them from twisted.logger again.
        access_log.send_access_lines_to(None)


PEER = "/opt/peers/mod_auth_openidc-2.4.20.2.so"


@pytest.fixture
def peer_module(tmp_path):
    path = tmp_path / "mod_auth_openidc-2.4.20.2.so"
    path.write_bytes(b"\x7fELF")
    return str(path)


def test_default_apache_rows_load_debians_module(harness, monkeypatch):
    monkeypatch.delenv("BENCH_MOD_AUTH_OPENIDC", raising=False)
    args = harness.parse_args([])
    assert args.modules == [harness.OidcModule(harness.DEBIAN_MOD_AUTH_OPENIDC, "")]
    # One set of Apache rows, the keys as before.
    assert [k for k, _, _ in harness.cases_for(args.modules)] == [k for k, _, _ in harness.CASES]


@pytest.mark.parametrize("source", ["flag", "env"])
def test_mod_auth_openidc_is_the_reference_and_debians_a_second_column(
    harness, monkeypatch, peer_module, source
):
    if source == "flag":
        monkeypatch.delenv("BENCH_MOD_AUTH_OPENIDC", raising=False)
        args = harness.parse_args(["--mod-auth-openidc", peer_module])
    else:
        monkeypatch.setenv("BENCH_MOD_AUTH_OPENIDC", peer_module)
        args = harness.parse_args([])
    assert args.modules == [
        harness.OidcModule(peer_module, ""),
        harness.OidcModule(harness.DEBIAN_MOD_AUTH_OPENIDC, "_debian"),
    ]
    keys = [k for k, _, _ in harness.cases_for(args.modules)]
    # Each mod_auth_openidc row is followed by Debian's twin, on a server of its own.
    assert keys[keys.index("login_cookie") : keys.index("login_cookie") + 3] == [
        "login_cookie",
        "apache_shm",
        "apache_shm_debian",
    ]
    tls = keys.index("apache_shm_tls")
    assert keys[tls : tls + 2] == ["apache_shm_tls", "apache_shm_tls_debian"]
    assert keys[-2:] == ["apache_shm_h2", "apache_shm_h2_debian"]
    servers = {server for _, server, _ in harness.cases_for(args.modules)}
    assert {"apache_redis", "apache_redis_debian"} <= servers
    assert harness.base_key("apache_shm_tls_debian") == "apache_shm_tls"
    assert harness.is_apache("apache_redis_debian") and not harness.is_apache("gateway_redis")
    # --only takes the twins' keys too.
    args = harness.parse_args(
        ["--mod-auth-openidc", peer_module, "--only", "login_cookie_tls,apache_shm_tls_debian"]
    )
    assert args.only == ["login_cookie_tls", "apache_shm_tls_debian"]


def test_the_flag_wins_over_the_environment_and_repeats(harness, monkeypatch, peer_module):
    monkeypatch.setenv("BENCH_MOD_AUTH_OPENIDC", "/nonexistent/mod.so")
    args = harness.parse_args(["--mod-auth-openidc", "debian", "--mod-auth-openidc", peer_module])
    # Debian's first (the reference), the other one's rows suffixed by position;
    # Debian's is not added twice.
    assert args.modules == [
        harness.OidcModule(harness.DEBIAN_MOD_AUTH_OPENIDC, ""),
        harness.OidcModule(peer_module, "_m2"),
    ]
    args = harness.parse_args(["--mod-auth-openidc", peer_module] * 2)
    assert [m.suffix for m in args.modules] == ["", "_debian"]


@pytest.mark.parametrize("bad", ["/nonexistent/mod_auth_openidc.so", "."])
def test_a_module_that_is_not_a_file_is_refused(harness, monkeypatch, capsys, bad):
    monkeypatch.delenv("BENCH_MOD_AUTH_OPENIDC", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        harness.parse_args(["--mod-auth-openidc", bad])
    assert exit_info.value.code == 2
    assert f"--mod-auth-openidc: {bad} is not a file" in capsys.readouterr().err


def test_an_unknown_row_of_a_second_module_is_refused(harness, monkeypatch, capsys):
    monkeypatch.delenv("BENCH_MOD_AUTH_OPENIDC", raising=False)
    with pytest.raises(SystemExit):
        harness.parse_args(["--only", "apache_shm_debian"])  # no second module
    assert "unknown row(s) apache_shm_debian" in capsys.readouterr().err


def test_module_version_from_apaches_error_log(harness):
    log = (
        "[Mon Dec 07 08:37:32.519453 2026] [auth_openidc:info] [pid 347:tid 347] "
        "mod_auth_openidc-2.4.12.3 - init - cjose 0.6.2.1, OpenSSL 3.0.20 7 Apr 2026, "
        "EC=yes, GCM=yes, Memcache=yes, Redis=yes, JQ=no\n"
        "[Mon Dec 07 08:37:34.368968 2026] [auth_openidc:info] [pid 347:tid 347] "
        "mod_auth_openidc-2.4.12.3 - shutdown\n"
        "[Mon Dec 07 08:38:34.481580 2026] [auth_openidc:info] [pid 480:tid 480] "
        "mod_auth_openidc-2.4.20.2 - init - cjose 0.6.2.1, openssl-3.0.22, EC=yes, GCM=yes, "
        "Memcache=yes, Redis=yes, JQ=no\n"
    )
    # The last start's version; a shutdown line is not a start.
    assert harness.module_version(log) == "2.4.20.2"
    assert harness.module_version(log.split("\n")[0]) == "2.4.12.3"
    assert harness.module_version("AH00489: Apache/2.4.71 (Debian) configured") is None
    assert harness.module_version("mod_auth_openidc-2.4.20.2 - shutdown") is None


def test_apache_config_loads_the_module_and_logs_its_version(harness):
    fields = dict.fromkeys(
        [
            "root",
            "user",
            "group",
            "host",
            "port",
            "modules",
            "ssl_modules",
            "ssl",
            "passphrase",
            "discovery_url",
            "client_id",
            "client_secret",
            "scheme",
            "cache",
            "upstream_port",
        ],
        "x",
    )
    conf = harness.APACHE_CONF.format(oidc_module=PEER, log_level="warn", **fields)
    assert f"LoadModule auth_openidc_module {PEER}\n" in conf
    # The server logs the module's init line; the virtual host stays at warn.
    assert "\nLogLevel warn auth_openidc:info\n" in conf
    assert "\n    LogLevel warn\n" in conf.split("<VirtualHost", 1)[1]


def test_second_module_column_and_header(harness):
    def case(key, server, rps):
        c = harness.Case(key, server, "/", key)
        for r in rps:
            c.runs.append(
                {
                    "rps": r,
                    "p50_ms": 1.0,
                    "p99_ms": 2.0,
                    "transfer_bytes_per_s": 1.0,
                    "errors": 0,
                    "requests": int(r * 10),
                    "cpu_us_per_request": 100.0,
                }
            )
        return c

    cases = {
        "direct": case("direct", "nginx", [40000]),
        "login_cookie": case("login_cookie", "gateway_cookie", [20000]),
        "apache_shm": case("apache_shm", "apache_shm", [10000]),
        "apache_shm_debian": case("apache_shm_debian", "apache_shm_debian", [8000]),
    }
    ratios = harness.compute_ratios(cases)
    assert ratios["cookie session / mod_auth_openidc shm"]["rps"] == pytest.approx(2.0)
    assert ratios["cookie session / mod_auth_openidc shm [debian]"]["rps"] == pytest.approx(2.5)
    assert ratios["mod_auth_openidc shm / direct upstream [debian]"]["rps"] == pytest.approx(0.2)
    meta = {
        "date": "now",
        "machine": dict.fromkeys(
            ["nproc", "cpu_model", "kernel", "python", "twisted", "nginx", "wrk"], "x"
        ),
        "config": {
            "threads": 2,
            "connections": 32,
            "duration_s": 10,
            "rounds": 1,
            "warmup_s": 2,
            "stock_proxy_logging": True,
            "mod_auth_openidc": [
                {"path": PEER, "suffix": "", "version": "2.4.20.2"},
                {
                    "path": harness.DEBIAN_MOD_AUTH_OPENIDC,
                    "suffix": "_debian",
                    "version": "2.4.12.3",
                },
            ],
        },
    }
    lines = harness.render(meta, cases, ratios, [], None).splitlines()
    assert "mod_auth_openidc 2.4.20.2 (" + PEER + ", the ÷ apache reference)" in lines[2]
    assert "mod_auth_openidc 2.4.12.3 (" in lines[2]
    header = lines[5].split("  ")
    assert "÷ 2.4.12.3" in [h.strip() for h in header]
    row = next(line for line in lines if line.startswith("login_cookie "))
    assert "2x" in row.split() and "2.5x" in row.split()
    assert any(
        line.startswith("÷ mod_auth_openidc 2.4.20.2 (req/s): cookie session 2x (target ≥ 2x: met)")
        for line in lines
    )
    assert any(
        line.startswith("÷ mod_auth_openidc 2.4.12.3 (req/s): cookie session 2.5x")
        for line in lines
    )


def test_idle_rss_per_10k_connections(harness):
    before = {"rss_kib": 60 * 1024, "pss_kib": 40 * 1024}
    after = {"rss_kib": 100 * 1024, "pss_kib": 70 * 1024}
    got = harness.idle_rss_projection(before, after, 5_000)
    assert got["rss_growth_per_10k_kib"] == pytest.approx(80 * 1024)
    assert got["rss_at_10k_kib"] == pytest.approx(140 * 1024)
    assert got["pss_at_10k_kib"] == pytest.approx(100 * 1024)
    assert got["memory_at_10k_target_mb"] == 150
    # 143 MiB is 149.9 MB: met; 144 MiB is 151 MB: not (the issue writes MB).
    assert harness.memory_target_verdict(143 * 1024, 144 * 1024, 150) == (
        "target < 150 MB (143.1 MiB): RSS met, PSS NOT met"
    )
    assert harness.memory_target_verdict(200 * 1024, None, 150).endswith("RSS NOT met")
    assert harness.idle_rss_projection(before, before, 0)["rss_at_10k_kib"] is None
    no_pss = harness.idle_rss_projection({"rss_kib": 1, "pss_kib": None}, after, 5_000)
    assert no_pss["pss_at_10k_kib"] is None and no_pss["rss_at_10k_kib"] is not None
    r = {
        "fresh": {"median_ms": 1.0, "max_ms": 2.0},
        "rss_growth_kib": 40 * 1024,
        "answered": 5_000,
        "still_open": 5_000,
        "before": before,
        "after": after,
        "target_ms": 100.0,
        **got,
    }
    [line] = harness.render_extras({"idle_conns": {"gateway_cookie": r}})
    assert (
        "per 10,000 connections +80.0 MiB: whole server at 10,000 RSS 140.0 MiB, "
        "PSS 100.0 MiB (target < 150 MB (143.1 MiB): RSS met, PSS met)" in line
    )


def test_the_bench_knows_when_the_gateway_reissues_a_cookie(harness):
    from idgateway.gate.session_check import SLIDE_EVERY

    assert harness.RESEAL_AFTER == SLIDE_EVERY


class _Client:
    def __init__(self, cookies, answer_cookies=None):
        self.cookies = dict(cookies)
        self.answer_cookies = answer_cookies
        self.asked = 0

    def get(self, path, headers):
        self.asked += 1
        if self.answer_cookies is not None:
            self.cookies = dict(self.answer_cookies)
        return 200, {}, b"{}"


def _rig_and_server(harness, tmp_path, key, cookie_age):
    rig = harness.LoginRig(tmp_path, {})
    logins = []
    rig.login = lambda srv: logins.append(srv.key)
    srv = harness.Server(key, key, [], 0, tmp_path / "log", tmp_path)
    srv.client = _Client({"_idgw_app1": "old"})
    srv.cookie_since = harness.time.monotonic() - cookie_age
    return rig, srv, logins


def test_a_cookie_that_would_be_reissued_mid_run_is_replaced_by_a_fresh_login(harness, tmp_path):
    rig, srv, logins = _rig_and_server(harness, tmp_path, "gateway_cookie", cookie_age=50)
    rig.touch(srv, for_seconds=10)
    assert logins == ["gateway_cookie"]
    assert srv.client.asked == 0


def test_a_young_cookie_is_kept_and_a_reissued_one_restarts_the_clock(harness, tmp_path):
    rig, srv, logins = _rig_and_server(harness, tmp_path, "gateway_cookie", cookie_age=20)
    srv.client.answer_cookies = {"_idgw_app1": "new"}
    since = srv.cookie_since
    assert rig.touch(srv, for_seconds=10) is None
    assert logins == [] and srv.client.asked == 1
    assert srv.cookie_since > since


def test_apache_sessions_are_not_logged_in_again(harness, tmp_path):
    rig, srv, logins = _rig_and_server(harness, tmp_path, "apache_shm", cookie_age=500)
    assert rig.touch(srv, for_seconds=10) is None
    assert logins == [] and srv.client.asked == 1
