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
    from idgateway.workers.event_loop import install

    install()
    from twisted.internet import reactor

    from idgateway.workers.worker import main

    return main(reactor=reactor)


if __name__ == "__main__":
    sys.exit(run())
