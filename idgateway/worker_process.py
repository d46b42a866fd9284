"""A worker process's entry point: ``python -m idgateway.worker_process``.

The master (``idgateway.workers``) starts its workers with this module so that
each installs the lean event loop (``idgateway.lean_reactor``) before
anything imports twisted's default reactor (txredisapi does, on import), then
runs ``idgateway.workers.main``. ``python -m idgateway.workers`` still runs a
worker, on the default reactor.
"""

from __future__ import annotations

import sys


def run() -> int:
    from idgateway.lean_reactor import install

    install()
    from idgateway.workers import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
