"""The workers' master's start-up check, in a child process.

With ``workers:`` > 1 the master keeps a config loaded without reading the
key and certificate files (``load_config(contents=False)``: no cryptography,
no pyOpenSSL in a process that never uses them). What it leaves out is checked
before anything starts, as a single process checks it: a forked child loads
the file fully and builds each TLS listener's contexts, reports every problem
on stderr as ``--check`` does, and exits; its modules go with it.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from idgateway.config.load import ConfigError, load_config


def check_in_child(path: str, report: Callable[[str, ConfigError], None]) -> int:
    """Check ``path`` fully in a forked child; its exit status (0: it may start).

    ``report`` prints a ConfigError's problems (in the child).
    """
    # Whatever is buffered would otherwise be written twice.
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child; its exit status is what is tested)
        status = 1
        try:
            status = check(path, report)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


def check(path: str, report: Callable[[str, ConfigError], None]) -> int:
    """Load ``path`` fully and prepare each TLS listener; 0, or 1 once reported."""
    try:
        config = load_config(path)
    except ConfigError as error:
        report(path, error)
        return 1
    # Here, not at the top: the master itself must not import pyOpenSSL.
    from idgateway.server.tls import SNIServerContexts, TLSConfigurationError

    failed = []
    for listener in config.listeners:
        if listener.tls is None:
            continue
        try:
            # What each worker will do with them: a bad one stops the start
            # here rather than crash-loop every worker.
            SNIServerContexts.prepare(listener.tls)
        except TLSConfigurationError as error:
            failed.append(f"{listener.source}: listeners: tls of {listener.address}: {error}")
    if failed:
        print(f"{path}: configuration is not valid:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
