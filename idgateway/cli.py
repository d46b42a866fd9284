"""The ``idgateway`` command: tools around the daemon (the daemon itself runs under twistd).

idgateway check gateway.yaml
idgateway import oauth2-proxy oauth2-proxy.cfg [--listen ADDRESS] [--keep-secrets]
idgateway import mod_auth_openidc httpd-oidc.conf [--listen ADDRESS] [--keep-secrets]
idgateway keygen [--type ec|ed25519] PATH
"""

from __future__ import annotations

import argparse
import os
import sys

from idgateway.config.load import ConfigError, load_config, summarize
from idgateway.config.signing_keys import KEY_TYPES, generate_key_file
from idgateway.importers import KINDS, ImporterError, ImportOptions, import_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="idgateway")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a gateway.yaml and print a summary")
    check.add_argument("config")
    importer = commands.add_parser(
        "import",
        help="print a gateway.yaml equivalent to an OAuth2 Proxy or mod_auth_openidc set-up",
        description=(
            "Read an oauth2-proxy.cfg or an Apache configuration with mod_auth_openidc and "
            "print an equivalent gateway.yaml on standard output, with a comment for every "
            "directive that has no equivalent. Secrets become ${NAME} references unless "
            "--keep-secrets is given."
        ),
    )
    importer.add_argument("kind", choices=KINDS, help="what the file configures")
    importer.add_argument("file", help="oauth2-proxy.cfg, or the Apache file with the VirtualHost")
    importer.add_argument(
        "--listen",
        metavar="ADDRESS",
        help="listen here instead of the configuration's address (e.g. 127.0.0.1:8080)",
    )
    importer.add_argument(
        "--keep-secrets",
        action="store_true",
        help="copy client secrets (and usable keys) into the output instead of ${NAME} references",
    )
    keygen = commands.add_parser(
        "keygen",
        help="write a new signing key for identity assertions (assertion_keys)",
        description=(
            "Write a new private key for assertion_keys: EC P-256 (ES256, the default) or "
            "Ed25519 (EdDSA), unencrypted PEM, readable by its owner only (0600). An existing "
            "file is never overwritten. Prints the key's kid (its RFC 7638 thumbprint)."
        ),
    )
    keygen.add_argument("--type", choices=KEY_TYPES, default="ec", help="key type (default: ec)")
    keygen.add_argument("path", help="the key file to create, e.g. /etc/idgateway/assertion.pem")
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
    if args.command == "import":
        options = ImportOptions(listen=args.listen, keep_secrets=args.keep_secrets)
        try:
            text = import_file(args.kind, args.file, options)
        except ImporterError as error:
            print(f"idgateway import {args.kind}: {error}", file=sys.stderr)
            return 1
        sys.stdout.write(text)
        return 0
    if args.command == "keygen":
        try:
            key = generate_key_file(args.path, args.type)
        except FileExistsError:
            print(
                f"idgateway keygen: {args.path} exists; it is never overwritten (move it away "
                "first, or choose another name)",
                file=sys.stderr,
            )
            return 1
        except OSError as error:
            print(
                f"idgateway keygen: cannot write {args.path}: {error.strerror or error}",
                file=sys.stderr,
            )
            return 1
        print(f"wrote {os.path.abspath(args.path)} ({key.alg}, kid {key.kid})")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
