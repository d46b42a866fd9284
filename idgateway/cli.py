"""The ``idgateway`` command: tools around the daemon (the daemon itself runs under twistd)."""

from __future__ import annotations

import argparse
import sys

from idgateway.config import ConfigError, load_config, summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="idgateway")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a gateway.yaml and print a summary")
    check.add_argument("config")
    args = parser.parse_args(argv)
    if args.command == "check":
        try:
            config = load_config(args.config)
        except ConfigError as error:
            print(f"{args.config}: configuration is not valid:", file=sys.stderr)
            for problem in error.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        print(summarize(config))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
