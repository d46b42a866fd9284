"""``twistd idgateway``: command-line options and the service maker.

Only this module touches the global reactor.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from twisted.python import usage

if TYPE_CHECKING:
    from idgateway.config.load import ConfigError


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
        path = self["config"]
        if self["check"]:
            from idgateway.config.load import summarize

            print(summarize(_load_fully(path)))
            raise SystemExit(0)
        # A child reads the file first: with workers, this process becomes the
        # master, which keeps none of what reads a config (workers.config_child).
        from idgateway.workers.config_child import read_at_start

        status, config = read_at_start(path, _report)
        if status != 0 or config is None:
            raise SystemExit(status if status > 0 else 1)
        if config.workers <= 1:
            # The single process serves: it loads (and reports) everything itself.
            self["parsed_config"] = _load_fully(path)
            return
        self["parsed_config"] = config
        # Before twistd imports the reactor: its base without pyOpenSSL (8 MiB
        # the master never uses; its workers are processes of their own).
        from idgateway._twisted.no_tls import import_reactor_base_without_tls

        import_reactor_base_without_tls()


def _load_fully(path: str) -> Any:
    from idgateway.config.load import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as error:
        _report(path, error)
        raise SystemExit(1) from None


def _report(path: str, error: ConfigError) -> None:
    print(f"{path}: configuration is not valid:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


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
