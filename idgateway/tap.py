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
        path = self["config"]
        try:
            # Without reading key and certificate files (no cryptography): the
            # config the workers' master keeps, and what says whether it is one.
            lean = load_config(path, contents=False)
        except ConfigError:
            lean = None
        if lean is None or lean.workers <= 1 or self["check"]:
            self["parsed_config"] = self._load_fully(path)
            if self["check"]:
                print(summarize(self["parsed_config"]))
                raise SystemExit(0)
            return
        # The workers' master: a child checks what the lean load left out
        # (workers.preflight), so a bad file stops the start as it always has.
        from idgateway.workers.preflight import check_in_child

        status = check_in_child(path, _report)
        if status != 0:
            raise SystemExit(status if status > 0 else 1)
        self["parsed_config"] = lean
        # Before twistd imports the reactor: its base without pyOpenSSL (8 MiB the
        # master never uses; its workers are processes of their own).
        from idgateway._twisted.no_tls import import_reactor_base_without_tls

        import_reactor_base_without_tls()

    def _load_fully(self, path: str) -> Any:
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
