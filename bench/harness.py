"""Throughput/latency benchmark for idgateway; started by ``bench/run``.

Brings up, on free 127.0.0.1 ports, in one temp dir:

* a fixed-response nginx (the upstream),
* Twisted's stock ``ReverseProxyResource`` (bench/stock_proxy.py) -> nginx,
* the gateway (``twistd -n --pidfile= idgateway --config FILE``) -> nginx,

then runs ``wrk`` against each in alternating rounds, prints one table of
medians and ratios, optionally writes JSON, and tears everything down (also on
Ctrl-C, SIGTERM or an error).  This is a measurement, not a test: low numbers
never make it fail.  Exit status: 0 everything measured; 1 some target could
not be started or measured (the rest is still reported); 2 set-up problem;
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
NGINX = os.environ.get("BENCH_NGINX", "/usr/sbin/nginx")
WRK = os.environ.get("BENCH_WRK", shutil.which("wrk") or "/usr/bin/wrk")
BODY_100K = 100 * 1024
START_TIMEOUT = {"nginx": 10.0, "stock": 15.0, "gateway": 30.0}


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    got = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(got) if got else "(log is empty)"


def info(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    key: str  # nginx | stock | gateway
    label: str
    argv: list[str]
    port: int
    log: Path
    cwd: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    error: str | None = None  # why it is not usable, if it is not

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        logf = open(self.log, "ab")  # noqa: SIM115 (closed right after Popen dups it)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: Ctrl-C reaches only us
            )
        finally:
            logf.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        """Poll TCP connect + GET / until an HTTP answer, death, or timeout."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.alive():
                rc = self.proc.returncode if self.proc else None
                self.error = f"exited with status {rc} before answering"
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
                try:
                    conn.request("GET", "/")
                    resp = conn.getresponse()
                    body = resp.read()
                finally:
                    conn.close()
                if resp.status != 200:
                    info(
                        f"warning: {self.label} answers GET / with {resp.status} "
                        f"(wrk counts non-2xx/3xx as errors): {body[:120]!r}"
                    )
                return True
            except (OSError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
        self.error = f"no HTTP answer on 127.0.0.1:{self.port} within {timeout:.0f}s ({last})"
        return False

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        stop_group(p, grace=5.0)


def stop_group(p: subprocess.Popen, grace: float) -> None:
    """SIGTERM the child's process group, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # the leader is gone; make sure nothing of its group is left (nginx workers)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)


NGINX_CONF = """\
# generated by bench/run
{user}worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/ngx_client_body;
    proxy_temp_path {tmp}/ngx_proxy;
    fastcgi_temp_path {tmp}/ngx_fastcgi;
    uwsgi_temp_path {tmp}/ngx_uwsgi;
    scgi_temp_path {tmp}/ngx_scgi;

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;

        location / {{
            default_type text/plain;
            return 200 "hello from upstream\\n";
        }}

        location = /100k {{
            root {tmp}/www;
        }}
    }}
}}
"""

GATEWAY_CONF = """\
# generated by bench/run
listeners:
  - address: 127.0.0.1:{port}
routes:
  - name: bench
    default: true
    upstream: http://127.0.0.1:{upstream_port}
"""


def make_servers(tmp: Path, venv: Path, stock_log: bool) -> dict[str, Server]:
    nginx_port, stock_port, gw_port = free_ports(3)

    (tmp / "www").mkdir()
    (tmp / "www" / "100k").write_bytes(os.urandom(BODY_100K))
    (tmp / "nginx.conf").write_text(
        NGINX_CONF.format(
            tmp=tmp,
            port=nginx_port,
            # nginx warns and ignores `user` unless it runs as root; as root the
            # default (nobody/www-data) could not read a 0700 temp dir.
            user="user root;\n" if os.geteuid() == 0 else "",
        )
    )
    (tmp / "gateway.yaml").write_text(GATEWAY_CONF.format(port=gw_port, upstream_port=nginx_port))

    python = str(venv / "bin" / "python")
    # The repo on PYTHONPATH: `twistd` finds twisted/plugins/idgateway_plugin.py
    # and the idgateway package even if `pip install -e .` has not been run.
    gw_env = dict(os.environ)
    gw_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    gw_env.pop("PYTHONSTARTUP", None)

    return {
        "nginx": Server(
            "nginx",
            "direct upstream (nginx)",
            # -e: nginx >= 1.19.5 opens this instead of the built-in
            # /var/log/nginx/error.log before reading the config.
            [
                NGINX,
                "-e",
                str(tmp / "nginx-error.log"),
                "-c",
                str(tmp / "nginx.conf"),
                "-p",
                str(tmp),
            ],
            nginx_port,
            tmp / "nginx.out",
            tmp,
        ),
        "stock": Server(
            "stock",
            "stock ReverseProxyResource",
            [
                python,
                str(BENCH_DIR / "stock_proxy.py"),
                "--port",
                str(stock_port),
                "--upstream-port",
                str(nginx_port),
            ]
            + (["--log", str(tmp / "stock.log")] if stock_log else []),
            stock_port,
            tmp / "stock.out",
            tmp,
        ),
        "gateway": Server(
            "gateway",
            "idgateway",
            [
                str(venv / "bin" / "twistd"),
                "-n",
                "--pidfile=",
                "idgateway",
                "--config",
                str(tmp / "gateway.yaml"),
            ],
            gw_port,
            tmp / "gateway.log",
            REPO,
            env=gw_env,
        ),
    }


# --------------------------------------------------------------------------- wrk

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(out: str) -> dict:
    """Pull numbers out of `wrk --latency` text output."""
    r: dict = {}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", out, re.M)
    r["transfer_bytes_per_s"] = float(m.group(1)) * _SIZE[m.group(2)] if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
        r[f"p{pct}_ms"] = _ms(*m.groups()) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out)
    r["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
        if m
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non_2xx_3xx"] = int(m.group(1)) if m else 0
    r["errors"] = sum(r["socket_errors"].values()) + r["non_2xx_3xx"]
    return r


_running_wrk: subprocess.Popen | None = None


def run_wrk(url: str, threads: int, connections: int, seconds: int) -> tuple[dict | None, str]:
    """One wrk run; returns (parsed, raw text).  parsed is None if wrk failed."""
    global _running_wrk
    argv = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "5s",
        url,
    ]
    p = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    _running_wrk = p
    try:
        out, _ = p.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        stop_group(p, grace=1.0)
        out = (p.stdout.read() if p.stdout else "") + "\n(wrk timed out)"
    except BaseException:
        stop_group(p, grace=1.0)  # Ctrl-C / SIGTERM: do not leave wrk behind
        raise
    finally:
        _running_wrk = None
    parsed = parse_wrk(out)
    if p.returncode != 0 or parsed["rps"] is None:
        return None, out
    return parsed, out


# --------------------------------------------------------------------------- report


@dataclass
class Case:
    key: str
    server: str
    path: str
    label: str
    runs: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None

    def median(self, name: str) -> float | None:
        vals = [r[name] for r in self.runs if r.get(name) is not None]
        return statistics.median(vals) if vals else None

    def summary(self) -> dict | None:
        if not self.runs:
            return None
        return {
            "rounds": len(self.runs),
            "rps": self.median("rps"),
            "p50_ms": self.median("p50_ms"),
            "p99_ms": self.median("p99_ms"),
            "transfer_bytes_per_s": self.median("transfer_bytes_per_s"),
            "rps_min": min(r["rps"] for r in self.runs),
            "rps_max": max(r["rps"] for r in self.runs),
            "errors_total": sum(r["errors"] for r in self.runs),
            "requests_total": sum(r["requests"] or 0 for r in self.runs),
        }


CASES = [
    ("direct", "nginx", "/"),
    ("stock", "stock", "/"),
    ("gateway", "gateway", "/"),
    ("direct_100k", "nginx", "/100k"),
    ("gateway_100k", "gateway", "/100k"),
]

# (name, numerator case, denominator case)
RATIOS = [
    ("gateway / stock proxy", "gateway", "stock"),
    ("gateway / direct upstream", "gateway", "direct"),
    ("stock proxy / direct upstream", "stock", "direct"),
    ("gateway / direct upstream (100 KB)", "gateway_100k", "direct_100k"),
]


def compute_ratios(cases: dict[str, Case]) -> dict[str, dict | None]:
    out: dict[str, dict | None] = {}
    for name, num, den in RATIOS:
        a, b = cases[num].summary(), cases[den].summary()
        if not a or not b or not b["rps"] or not b["p50_ms"] or not b["p99_ms"]:
            out[name] = None
            continue
        out[name] = {
            "rps": a["rps"] / b["rps"],
            "p50": a["p50_ms"] / b["p50_ms"] if a["p50_ms"] else None,
            "p99": a["p99_ms"] / b["p99_ms"] if a["p99_ms"] else None,
        }
    return out


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 1:
        return f"{v * 1000:.0f}us"
    if v < 100:
        return f"{v:.2f}ms"
    return f"{v:.0f}ms"


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def fmt_bytes(v: float | None) -> str:
    return "-" if v is None else f"{v / 1024**2:,.1f}MB/s"


def fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}x"


def render(meta: dict, cases: dict[str, Case], ratios: dict, notes: list[str]) -> str:
    m = meta["machine"]
    c = meta["config"]
    lines = [
        f"idgateway benchmark  {meta['date']}",
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}; {m['kernel']}",
        f"software: Python {m['python']}, Twisted {m['twisted']}, {m['nginx']}, {m['wrk']}",
        f"load: wrk -t{c['threads']} -c{c['connections']} -d{c['duration_s']}s --latency; "
        f"{c['rounds']} round(s) alternating targets, {c['warmup_s']}s warm-up; "
        f"medians over rounds; stock proxy logging "
        f"{'to a file' if c['stock_proxy_logging'] else 'off'}",
        "",
    ]
    ratio_rows = {
        "stock": ratios["stock proxy / direct upstream"],
        "gateway": ratios["gateway / direct upstream"],
        "gateway_100k": ratios["gateway / direct upstream (100 KB)"],
    }
    vs_stock = {"gateway": ratios["gateway / stock proxy"]}
    header = [
        "target",
        "path",
        "req/s",
        "min..max req/s",
        "p50",
        "p99",
        "MB/s",
        "÷ direct",
        "÷ stock",
        "errors",
    ]
    rows = [header]
    for key, case in cases.items():
        s = case.summary()
        if s is None:
            rows.append([case.label, case.path, "not run", "-", "-", "-", "-", "-", "-", "-"])
            continue
        r_direct = ratio_rows.get(key)
        r_stock = vs_stock.get(key)
        rows.append(
            [
                case.label,
                case.path,
                fmt_rate(s["rps"]),
                f"{s['rps_min']:,.0f}..{s['rps_max']:,.0f}",
                fmt_ms(s["p50_ms"]),
                fmt_ms(s["p99_ms"]),
                fmt_bytes(s["transfer_bytes_per_s"]),
                fmt_x(r_direct["rps"]) if r_direct else "-",
                fmt_x(r_stock["rps"]) if r_stock else "-",
                str(s["errors_total"]),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    left = {0, 1}
    for i, row in enumerate(rows):
        cells = [
            cell.ljust(widths[j]) if j in left else cell.rjust(widths[j])
            for j, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        "÷ direct / ÷ stock: this row's median req/s divided by the direct-upstream "
        "(same path) / stock-proxy row's; 1.00x = as fast."
    )
    lat = []
    for name in ("gateway / stock proxy", "gateway / direct upstream"):
        r = ratios.get(name)
        if r and r["p50"] and r["p99"]:
            lat.append(f"{name}: p50 {fmt_x(r['p50'])}, p99 {fmt_x(r['p99'])}")
    if lat:
        lines.append("latency ratios (lower is better): " + "; ".join(lat))
    for n in notes:
        lines.append("NOTE: " + n)
    return "\n".join(lines)


# --------------------------------------------------------------------------- machine


def _cmd_version(argv: list[str], pattern: str) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(pattern, p.stdout + p.stderr)
    return m.group(0) if m else "?"


def machine_info() -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import twisted

        tw = twisted.__version__
    except ImportError:
        tw = "?"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "twisted": tw,
        "nginx": _cmd_version([NGINX, "-v"], r"nginx/[\w.]+"),
        "wrk": _cmd_version([WRK, "--version"], r"wrk [\w./+-]+"),
        "hostname": platform.node(),
    }


# --------------------------------------------------------------------------- main


def positive_int(text: str) -> int:
    t = text.strip().lower()
    if t.endswith("s"):
        t = t[:-1]
    v = int(t)
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return v


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark idgateway against nginx direct and Twisted's stock "
        "ReverseProxyResource (all on 127.0.0.1); prints one table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            environment (flags win): BENCH_DURATION, BENCH_CONNECTIONS, BENCH_ROUNDS,
            BENCH_THREADS, BENCH_WARMUP, BENCH_JSON.
            exit status: 0 all measured, 1 a target could not be started/measured,
            2 set-up problem, 130 interrupted.  Low numbers never fail the run."""),
    )
    p.add_argument(
        "--duration",
        type=positive_int,
        default=env("BENCH_DURATION", "10"),
        help="seconds per wrk run (default 10)",
    )
    p.add_argument(
        "--connections",
        type=positive_int,
        default=env("BENCH_CONNECTIONS", "32"),
        help="wrk connections (default 32)",
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=env("BENCH_ROUNDS", "3"),
        help="rounds over all targets, medians reported (default 3)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=env("BENCH_THREADS", "2"),
        help="wrk threads (default 2)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=int(env("BENCH_WARMUP", "2")),
        help="seconds of warm-up load per target before measuring (default 2)",
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        default=env("BENCH_JSON"),
        help="also write the results as JSON to PATH",
    )
    p.add_argument(
        "--stock-no-log",
        action="store_true",
        help="run the stock proxy without a log observer (by default it logs to "
        "a file, as the gateway does under twistd -n)",
    )
    p.add_argument("--venv", default=str(REPO / ".venv"), help=argparse.SUPPRESS)
    p.add_argument(
        "--keep-tmp",
        action="store_true",
        help="keep the temp dir (configs, server logs, raw wrk output)",
    )
    a = p.parse_args(argv)
    for name in ("duration", "connections", "rounds", "threads"):
        v = getattr(a, name)
        if isinstance(v, str):  # default from the environment
            setattr(a, name, positive_int(v))
    if a.threads > a.connections:
        a.threads = a.connections
    return a


class Interrupted(Exception):
    pass


def _on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    venv = Path(args.venv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    if not (venv / "bin" / "twistd").exists():
        print(f"bench/run: {venv}/bin/twistd is missing; run `make venv` first.", file=sys.stderr)
        return 2
    for tool in (NGINX, WRK):
        if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            print(
                f"bench/run: {tool} is missing (apt-get install -y wrk nginx-light)",
                file=sys.stderr,
            )
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="idgateway-bench-"))
    servers: dict[str, Server] = {}
    cases = {key: Case(key, srv, path, "") for key, srv, path in CASES}
    notes: list[str] = []
    interrupted = False
    raw_out = tmp / "wrk"
    raw_out.mkdir()
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "stock_proxy_logging": not args.stock_no_log,
            "order": [k for k, _, _ in CASES],
        },
    }
    try:
        servers = make_servers(tmp, venv, stock_log=not args.stock_no_log)
        for case in cases.values():
            case.label = servers[case.server].label

        # nginx first: both proxies need it.
        for key in ("nginx", "stock", "gateway"):
            srv = servers[key]
            if key != "nginx" and servers["nginx"].error:
                srv.error = "upstream nginx is not running"
                continue
            info(f"starting {srv.label} on 127.0.0.1:{srv.port}")
            srv.start()
            if not srv.wait_ready(START_TIMEOUT[key]):
                srv.stop()
                detail = (
                    tail(srv.log)
                    if key != "nginx"
                    else (tail(srv.log) + "\n" + tail(tmp / "nginx-error.log"))
                )
                msg = (
                    f"{srv.label if key != 'gateway' else 'gateway'} did not start: "
                    f"{srv.error}\n{textwrap.indent(detail, '    ')}"
                )
                print(msg, file=sys.stderr, flush=True)
                srv.error = f"did not start ({srv.error})"

        for case in cases.values():
            srv = servers[case.server]
            if srv.error:
                case.skipped = f"{srv.label}: {srv.error}"
                notes.append(f"{case.label} {case.path}: not measured, {srv.error}")
        notes = list(dict.fromkeys(notes))

        live = [c for c in cases.values() if not c.skipped]
        if args.warmup > 0:
            for case in live:
                srv = servers[case.server]
                info(f"warm-up {args.warmup}s: {case.label} {case.path}")
                run_wrk(srv.base_url + case.path, args.threads, args.connections, args.warmup)

        for rnd in range(1, args.rounds + 1):
            for case in live:
                srv = servers[case.server]
                if not srv.alive():
                    if not case.skipped:
                        case.skipped = f"{srv.label} died (status {srv.proc.returncode})"
                        notes.append(
                            f"{case.label} {case.path}: {case.skipped}; log tail:\n"
                            + textwrap.indent(tail(srv.log, 8), "    ")
                        )
                    continue
                url = srv.base_url + case.path
                info(f"round {rnd}/{args.rounds}: {case.label} {case.path} ({args.duration}s)")
                parsed, out = run_wrk(url, args.threads, args.connections, args.duration)
                (raw_out / f"{case.key}-round{rnd}.txt").write_text(out)
                if parsed is None:
                    case.failures.append(out.strip().splitlines()[-1] if out.strip() else "?")
                    info(f"  wrk failed: {case.failures[-1]}")
                    continue
                parsed["round"] = rnd
                case.runs.append(parsed)
                info(
                    f"  {parsed['rps']:,.0f} req/s, p50 {fmt_ms(parsed['p50_ms'])}, "
                    f"p99 {fmt_ms(parsed['p99_ms'])}, errors {parsed['errors']}"
                )
    except Interrupted as e:
        interrupted = True
        info(f"interrupted ({e}); tearing down")
    finally:
        # From here on a second Ctrl-C must not cut the teardown short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if _running_wrk is not None:
            stop_group(_running_wrk, grace=1.0)
        for srv in reversed(list(servers.values())):
            srv.stop()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            info(f"kept {tmp}")

    for case in cases.values():
        if case.failures and case.runs:
            notes.append(
                f"{case.label} {case.path}: {len(case.failures)} wrk run(s) failed: "
                f"{case.failures[-1]}"
            )
        elif case.failures:
            notes.append(f"{case.label} {case.path}: every wrk run failed: {case.failures[-1]}")
        s = case.summary()
        if s and s["requests_total"] < 2 * args.connections * s["rounds"]:
            notes.append(
                f"{case.label} {case.path}: only {s['requests_total']} requests completed "
                f"over {s['rounds']} run(s) of {args.connections} connections; "
                f"responses stall (see its log with --keep-tmp)"
            )
        if s and s["errors_total"]:
            notes.append(
                f"{case.label} {case.path}: {s['errors_total']} socket errors or "
                f"non-2xx/3xx responses over {s['requests_total']} requests "
                f"(numbers are suspect)"
            )
    if interrupted:
        notes.append("interrupted: partial results")

    ratios = compute_ratios(cases)
    print(render(meta, cases, ratios, notes), flush=True)

    if args.json:
        result = {
            **meta,
            "targets": {
                key: {
                    "label": c.label,
                    "server": c.server,
                    "path": c.path,
                    "port": servers[c.server].port if servers else None,
                    "skipped": c.skipped,
                    "failures": c.failures,
                    "median": c.summary(),
                    "runs": c.runs,
                }
                for key, c in cases.items()
            },
            "ratios": ratios,
            "notes": notes,
            "interrupted": interrupted,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        info(f"wrote {args.json}")

    if interrupted:
        return 130
    if any(c.skipped or (c.failures and not c.runs) for c in cases.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
