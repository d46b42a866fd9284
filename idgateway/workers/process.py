"""A worker process's entry point: ``python -m idgateway.workers.process``.

The master (``idgateway.workers.master``) starts its workers with this module so that
each installs the lean event loop (``idgateway.workers.event_loop``) before
anything imports twisted's default reactor (txredisapi does, on import), then
runs ``idgateway.workers.master.main``. ``python -m idgateway.workers.master`` still runs a
worker, on the default reactor.
"""

from __future__ import annotations

import sys


def run() -> int:
    from idgateway.workers.event_loop import install

    install()
    from idgateway.workers.master import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
