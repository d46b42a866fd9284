"""A worker process's entry point: ``python -m idgateway.workers.process``.

The master (``idgateway.workers.master``) starts its workers with this module
so that each installs the lean event loop (``idgateway.workers.event_loop``)
before anything imports twisted's default reactor (txredisapi does, on
import), then runs ``idgateway.workers.worker.main`` on it. This and
``idgateway.tap`` are the only modules that name the global reactor; every
other part of the gateway is handed the reactor it uses.
"""

from __future__ import annotations

import sys


def run() -> int:
    from idgateway._twisted.web_http2 import leave_out_twisted_http2
    from idgateway.workers.event_loop import install

    # (Before anything imports twisted.web: its own HTTP/2, which the
    # gateway does not use, would import h2 in every worker.)
    leave_out_twisted_http2()
    install()
    from twisted.internet import reactor

    from idgateway.workers.worker import main

    return main(reactor=reactor)


if __name__ == "__main__":
    sys.exit(run())
