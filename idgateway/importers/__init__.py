"""Import an OAuth2 Proxy or mod_auth_openidc configuration as a gateway.yaml.

    idgateway import oauth2-proxy oauth2-proxy.cfg
    idgateway import mod_auth_openidc httpd-oidc.conf

Each importer reads the other tool's file, maps every directive it can onto
the gateway's options (``docs/migration.rst``) and
writes the YAML with comments: where a value came from when that matters,
what the gateway does by itself, and one ``# not imported:`` line for every
directive without an equivalent. Secrets (client secrets, cookie secrets,
passphrases, passwords) never reach the output unless asked for with
``keep_secrets``: they become ``${NAME}`` references, and the header says which
variables to set. The result is checked with ``load_config`` before it is
returned, and what ``idgateway check`` would still object to is listed in the
header (typically certificate files that do not exist on this machine).
"""

from __future__ import annotations

from collections.abc import Callable

from idgateway.config import values
from idgateway.importers import mod_auth_openidc, oauth2_proxy
from idgateway.importers._yaml import UnrepresentableValue, printable, shown
from idgateway.importers.common import (
    KINDS,
    MAX_FILE_BYTES,
    ImporterError,
    ImportOptions,
    Report,
    describe,
    read_source,
)

__all__ = [
    "KINDS",
    "MAX_FILE_BYTES",
    "ImportOptions",
    "ImporterError",
    "Report",
    "describe",
    "import_file",
]


def import_file(kind: str, path: str, options: ImportOptions | None = None) -> str:
    """The gateway.yaml text for the ``kind`` configuration in ``path``."""
    importers: dict[str, Callable[[str, str, ImportOptions], str]] = {
        "oauth2-proxy": oauth2_proxy.convert,
        "mod_auth_openidc": mod_auth_openidc.convert,
    }
    if kind not in importers:
        raise ImporterError(f"unknown kind {kind!r}; expected one of: {', '.join(KINDS)}")
    options = options or ImportOptions()
    if options.listen is not None:
        try:
            values.parse_listen_address(options.listen)
        except ValueError as error:
            raise ImporterError(f"--listen: {error}") from None
    try:
        return importers[kind](read_source(path), path, options)
    except UnrepresentableValue as error:
        raise ImporterError(f"{shown(path)}: {error}") from None
    except ImporterError as error:
        # Messages quote the input: whatever it holds reaches the terminal escaped, on one line.
        raise ImporterError(printable(str(error))) from None
