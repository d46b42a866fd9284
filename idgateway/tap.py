"""``twistd idgateway``: command-line options and the service maker.

Only this module touches the global reactor.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from idgateway.config.load import ConfigError, load_config, summarize


class Options(usage.Options):
    synopsis = "--config PATH [--check]"
    longdesc = (
        "Run the identity gateway with the given YAML configuration. "
        "With --check, validate the file, print a summary and exit 0, "
        "or print every error and exit 1."
    )
    optParameters = [["config", "c", None, "Path to gateway.yaml."]]
    optFlags = [["check", None, "Validate the configuration and exit."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config PATH is required")
        try:
            self["parsed_config"] = load_config(self["config"])
        except ConfigError as error:
            print(f"{self['config']}: configuration is not valid:", file=sys.stderr)
            for problem in error.problems:
                print(f"  {problem}", file=sys.stderr)
            raise SystemExit(1) from None
        if self["check"]:
            print(summarize(self["parsed_config"]))
            raise SystemExit(0)


def makeService(options: Options, reactor: Any = None) -> Any:
    # The imports are here, each in its branch: with workers the master runs
    # none of the data path, and importing it would cost the master its memory.
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options["parsed_config"]
    if config.workers > 1:
        from idgateway.workers.master import MasterService

        return MasterService(
            config,
            reactor,
            access_out=sys.stdout if log_is_text_on_stdout(options) else None,
        )
    from idgateway.server.service import GatewayService

    return GatewayService(
        config, reactor, access_out=sys.stdout if log_is_text_on_stdout(options) else None
    )


def log_is_text_on_stdout(options: Options) -> bool:
    """Whether twistd will write this process's log as text lines on stdout.

    That is ``twistd -n`` without ``--logfile`` (or with ``--logfile -``),
    ``--syslog`` or ``--logger``: how the systemd unit and ``make demo`` run.
    Called before twistd starts logging, while ``sys.stdout`` is still the
    file its text observer will write to.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return False
    try:
        if parent.get("syslog") or parent.get("logger"):
            return False
        logfile = parent.get("logfile")
        return logfile == "-" or (not logfile and bool(parent.get("nodaemon")))
    except AttributeError:
        return False
