"""Microbenchmark of the login gate: µs per authenticated request on CPython.

No network, no reactor running, no proxying: one in-memory ``GatewayRequest``
(a browser's GET with a ~2 KB sealed cookie session, a Host header and the
usual browser headers) goes through the same entry points the gateway's
listener uses, built from a real configuration by ``StateBuilder``:

* ``gate``: ``RouteLogin.handle`` (what ``GatewayResource.render`` calls for a
  login route) until it hands the identity headers to ``forward``, which is
  stubbed to only take them: cookie parsing and stripping, the session
  (decode, lifetime, revocation, refresh due?), authorization, identity
  headers.  This is the figure the target (≤ 30 µs) applies to.
* ``gate+head``: ``GatewayResource.render`` with the real ``forward``, up to
  the upstream request head built and handed to the pool (``submit`` is
  stubbed): routing by Host, request id, the gate, header rewriting.
* ``gate, new cookie``: ``gate`` with a cookie the codec has not seen before on
  every request (AES-GCM open, zlib, JSON: a browser's first request to this
  process, or a session just re-issued); the steady state is the cached one.
* ``gate+head, assertion``: ``gate+head`` on the same route with ``assertion``
  on (an ES256 identity assertion in every upstream request, signed once and
  reused): its ratio to ``gate+head`` is what the assertion costs per request.

Each figure is the median of several batches of many calls timed with
``time.perf_counter``.  Run standalone (``.venv/bin/python bench/gate_micro.py
[--json PATH]``) or from ``bench/run``, which prints its result under the table.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_US = 30.0
ROUTE = "app1"
HOST = b"app1.localhost:8443"
PORT = 8443
# The same shape of configuration bench/run gives its cookie-session gateway.
CONFIG = """\
{assertion_keys}listeners:
  - address: 127.0.0.1:{port}
providers:
  wso2:
    discovery_url: https://127.0.0.1:9443/oauth2/token/.well-known/openid-configuration
routes:
  - name: {route}
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:9
    oidc:
      provider: wso2
      client_id: bench-client
      client_secret: bench-secret
      user_claim: username
      scopes: [openid, email, profile, groups]
    session:
      store: cookie
      keys: [{key}]
{assertion}"""
BROWSER_HEADERS = [
    (
        b"User-Agent",
        b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    ),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"Accept-Language", b"en-GB,en;q=0.5"),
    (b"Accept-Encoding", b"gzip, deflate, br, zstd"),
    (b"Referer", b"http://app1.localhost:8443/projects/"),
    (b"Upgrade-Insecure-Requests", b"1"),
]
COOKIE_TARGET_BYTES = 2048


class _Fixture:
    """A gateway state built from CONFIG, its resource and a session cookie."""

    def __init__(self, assertion: bool = False) -> None:
        from twisted.internet.task import Clock
        from twisted.internet.testing import MemoryReactorClock

        from idgateway.config.load import load_config
        from idgateway.config.signing_keys import generate_key_file
        from idgateway.gate.session_check import ProviderHandle
        from idgateway.oidc.provider import ProviderMetadata
        from idgateway.routing.resource import GatewayResource, StateHolder
        from idgateway.routing.state import StateBuilder

        self.key = base64.b64encode(os.urandom(32)).decode("ascii")
        with tempfile.TemporaryDirectory(prefix="idgateway-gate-micro-") as tmp:
            path = Path(tmp) / "gateway.yaml"
            keys, block = "", ""
            if assertion:
                generate_key_file(str(Path(tmp) / "assertion.pem"), "ec")
                keys = f"assertion_keys: [{Path(tmp) / 'assertion.pem'}]\n"
                block = "    assertion: {header: X-Idgateway-Assertion, lifetime: 60s}\n"
            path.write_text(
                CONFIG.format(
                    port=PORT, route=ROUTE, key=self.key, assertion_keys=keys, assertion=block
                )
            )
            config = load_config(str(path), {})

        class _Provider:
            """A provider whose discovery is done (nothing on the hot path asks it)."""

            metadata = ProviderMetadata(
                issuer="https://127.0.0.1:9443/oauth2/token",
                authorization_endpoint="https://127.0.0.1:9443/oauth2/authorize",
                token_endpoint="https://127.0.0.1:9443/oauth2/token",
                jwks_uri="https://127.0.0.1:9443/oauth2/jwks",
            )
            ready = True
            last_error = None

            def stop(self) -> None:
                pass

        class _Builder(StateBuilder):
            def provider_handle(self, settings):  # no HTTP client, no discovery
                return ProviderHandle(settings=settings, client=_Provider(), http=None)

        # A clock at the wall time: sessions minted now are fresh.
        reactor = MemoryReactorClock()
        reactor.advance(time.time())
        self.clock: Clock = reactor
        self.state = _Builder(reactor).build(config)
        self.runtime = self.state.runtimes[ROUTE]
        self.login = self.runtime.login
        assert self.login is not None, "the route has no login gate"
        self.resource = GatewayResource(StateHolder(self.state), tls=False, port=PORT)
        self.submitted: list = []
        # No network: the upstream pools only take the exchange.
        for pool in self.state.pools.values():
            pool.submit = self.submitted.append  # type: ignore[method-assign]
        codec = self.login.codecs[False]
        self.cookie_name = codec.cookie_name.encode("ascii")
        self.cookie = self.new_cookie(0)

    def session(self, n: int):
        """A session as a real login through a WSO2-shaped provider leaves it,
        grown to a ~2 KB sealed cookie (more groups, as big directories have)."""
        import attrs
        from harness import synthetic_session

        now = self.clock.seconds()
        s = synthetic_session(n, now, ROUTE)
        claims = dict(s.claims)
        groups = list(claims["groups"])
        while True:
            claims["groups"] = groups
            candidate = attrs.evolve(s, claims=claims)
            token = self._seal(candidate)
            if len(token) >= COOKIE_TARGET_BYTES or len(groups) > 200:
                return candidate, token
            groups = [*groups, f"team-{os.urandom(6).hex()}"]

    def _seal(self, session) -> bytes:
        header = self.login.codecs[False].encode(session)[0]
        return header.split(b";", 1)[0].split(b"=", 1)[1]

    def new_cookie(self, n: int) -> bytes:
        _, token = self.session(n)
        return token

    def request(self, cookie: bytes):
        from twisted.web.test.requesthelper import DummyChannel

        from idgateway.server.channel import GatewayRequest

        channel = DummyChannel()
        request = GatewayRequest(channel)
        request.method = b"GET"
        request.uri = b"/projects/42?tab=activity"
        request.path = b"/projects/42"
        request.clientproto = b"HTTP/1.1"
        request.args = {}
        headers = request.requestHeaders
        headers.setRawHeaders(b"Host", [HOST])
        for name, value in BROWSER_HEADERS:
            headers.setRawHeaders(name, [value])
        headers.setRawHeaders(
            b"Cookie", [b"_ga=GA1.1.1843; %s=%s; theme=dark" % (self.cookie_name, cookie)]
        )
        # What render does before the gate: the path's one reading (idgateway.http.paths).
        request.idgw_reading = self.runtime.paths.read(request.path)
        return request


def _batches(fn, n: int, batches: int) -> list[float]:
    """µs per call for each batch of n calls."""
    out = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return out


def run(iterations: int = 20_000, batches: int = 7) -> dict:
    """Measure; returns the figures (µs per request) and what they cover."""
    import gc

    fx = _Fixture()
    login, resource, state, runtime = fx.login, fx.resource, fx.state, fx.runtime
    taken: list = []

    class _Forward:
        """Stands in for the resource: ``forward`` only takes the identity."""

        tls = False

        def forward(self, request, state, runtime, host, *, cookie=True, identity=(), **kw):
            taken.append(identity)

    stub = _Forward()
    request = fx.request(fx.cookie)

    # Check it is the authenticated path: identity headers, no Set-Cookie, no answer.
    login.handle(stub, request, state, runtime, HOST)
    if not taken or not taken[-1]:
        raise RuntimeError(
            "the gate did not admit the session (no identity headers handed to forward); "
            f"response code {request.code}"
        )
    identity = [(bytes(k).decode(), bytes(v).decode()[:60]) for k, v in taken[-1]]
    fx.resource.render(fx.request(fx.cookie))
    if not fx.submitted:
        raise RuntimeError("render did not hand an exchange to the upstream pool")
    head = fx.submitted[-1].head if hasattr(fx.submitted[-1], "head") else None
    head_bytes = len(b"".join(head)) if isinstance(head, list) else (len(head) if head else None)

    def gate() -> None:
        login.handle(stub, request, state, runtime, HOST)

    render_request = fx.request(fx.cookie)

    def gate_head() -> None:
        resource.render(render_request)

    # New cookies: more than the codec's cache holds, so each one is opened.
    fresh = [fx.request(fx.new_cookie(i)) for i in range(1, 1201)]
    fresh_iter = [0]

    def gate_new_cookie() -> None:
        i = fresh_iter[0]
        fresh_iter[0] = (i + 1) % len(fresh)
        login.handle(stub, fresh[i], state, runtime, HOST)

    # The same route with an identity assertion: every upstream head carries one.
    signed = _Fixture(assertion=True)
    signed_request = signed.request(signed.cookie)
    signed.resource.render(signed.request(signed.cookie))
    last = signed.submitted[-1].head if signed.submitted else b""
    signed_head = bytes(last) if not isinstance(last, list) else b"".join(last)
    if b"X-Idgateway-Assertion: " not in signed_head:
        raise RuntimeError("the route with assertion on sent no assertion upstream")

    def gate_head_assertion() -> None:
        signed.resource.render(signed_request)

    results = {}
    gc_was = gc.isenabled()
    try:
        for name, fn, n in (
            ("gate", gate, iterations),
            ("gate_head", gate_head, iterations),
            ("gate_new_cookie", gate_new_cookie, max(len(fresh), iterations // 10)),
            ("gate_head_assertion", gate_head_assertion, iterations),
        ):
            for _ in range(min(n, 2000)):  # warm-up
                fn()
            taken.clear()
            fx.submitted.clear()
            signed.submitted.clear()
            per = _batches(fn, n, batches)
            taken.clear()
            fx.submitted.clear()
            signed.submitted.clear()
            results[name] = {
                "median_us": statistics.median(per),
                "min_us": min(per),
                "max_us": max(per),
                "batches": batches,
                "calls_per_batch": n,
            }
    finally:
        if gc_was:
            gc.enable()
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "target_us": TARGET_US,
        "cookie_bytes": len(fx.cookie),
        "cookie_header_bytes": len(request.requestHeaders.getRawHeaders(b"cookie")[0]),
        "upstream_head_bytes": head_bytes,
        "identity_headers": identity,
        **results,
    }


def summary_line(r: dict) -> str:
    """One line for the bench/run table."""
    g = r["gate"]["median_us"]
    verdict = "met" if g <= r["target_us"] else "NOT met"
    return (
        f"gate microbenchmark ({r['implementation']} {r['python']}, "
        f"{r['cookie_bytes']:,} B sealed cookie): {g:.1f} µs per request "
        f"(target ≤ {r['target_us']:g} µs: {verdict}); with the upstream request head "
        f"{r['gate_head']['median_us']:.1f} µs; new cookie each request "
        f"{r['gate_new_cookie']['median_us']:.1f} µs"
        + (
            f"; with the identity assertion {r['gate_head_assertion']['median_us']:.1f} µs "
            f"({r['gate_head']['median_us'] / r['gate_head_assertion']['median_us']:.2f}x "
            "the requests per second without it)"
            if "gate_head_assertion" in r
            else ""
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/gate_micro.py",
        description="µs per authenticated request through the login gate (no network).",
    )
    p.add_argument("--iterations", type=int, default=20_000, help="calls per batch (20000)")
    p.add_argument("--batches", type=int, default=7, help="batches; the median is reported (7)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    a = p.parse_args(argv)
    r = run(a.iterations, a.batches)
    print(summary_line(r))
    for name, what in (
        ("gate", "RouteLogin.handle -> identity headers (cached cookie)"),
        ("gate_head", "GatewayResource.render -> upstream request head"),
        ("gate_new_cookie", "RouteLogin.handle, a cookie not seen before"),
        ("gate_head_assertion", "gate_head on the route with assertion on"),
    ):
        x = r[name]
        print(
            f"  {name:16} {x['median_us']:7.2f} µs  (batches {x['min_us']:.2f}..{x['max_us']:.2f}, "
            f"{x['batches']} x {x['calls_per_batch']:,})  {what}"
        )
    print(
        f"  cookie header {r['cookie_header_bytes']:,} B; upstream head "
        f"{r['upstream_head_bytes'] or '?'} B; identity headers: "
        + ", ".join(k for k, _ in r["identity_headers"])
    )
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
