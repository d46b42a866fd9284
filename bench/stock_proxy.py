"""Reference target for bench/run: Twisted's stock reverse proxy, one process.

A ``Site`` whose root is ``twisted.web.proxy.ReverseProxyResource`` pointed at
the upstream, on the default reactor (epoll on Linux, as ``twistd`` picks).
Nothing of idgateway is imported: this is the "plain Twisted" baseline that
the gateway is compared against.

Usage::

    python bench/stock_proxy.py --port 8081 --upstream-port 8080 [--log FILE]

With ``--log FILE`` Twisted's log (including the Site's access log lines) is
written to FILE, the way ``twistd -n`` writes the gateway's log to stdout, so
both proxies pay for logging alike.  Binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    parser.add_argument("--upstream-host", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--log", metavar="FILE", help="write Twisted's log here")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.proxy import ReverseProxyResource
    from twisted.web.server import Site

    if args.log:
        logfile = open(args.log, "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the process)
        globalLogBeginner.beginLoggingTo([textFileLogObserver(logfile)], redirectStandardIO=False)

    site = Site(ReverseProxyResource(args.upstream_host, args.upstream_port, b""))
    reactor.listenTCP(args.port, site, interface="127.0.0.1")  # type: ignore[attr-defined]

    # bench/run stops us with SIGTERM; Twisted already handles it, SIGINT too.
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reactor.stop))  # type: ignore[attr-defined]
    print(
        f"stock proxy listening on 127.0.0.1:{args.port} -> "
        f"{args.upstream_host}:{args.upstream_port}",
        flush=True,
    )
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
