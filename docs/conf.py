"""Sphinx configuration for idgateway's documentation (``make docs``)."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.abspath(".."))

from idgateway.config import reference as config_reference  # noqa: E402

project = "idgateway"
author = "the idgateway developers"
copyright = "the idgateway developers"
extensions = ["sphinx.ext.autosectionlabel"]
# Section labels are "page:Section title", so the same title on two pages is no clash.
autosectionlabel_prefix_document = True
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []

# The configuration reference is rendered from the schema specs at this marker.
REFERENCE_MARKER = ".. idgateway-config-reference"


def _insert_reference(app: Any, docname: str, source: list[str]) -> None:
    if docname == "configuration":
        if REFERENCE_MARKER not in source[0]:
            raise RuntimeError(f"docs/configuration.rst lost its {REFERENCE_MARKER!r} line")
        source[0] = source[0].replace(REFERENCE_MARKER, config_reference.render())


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _insert_reference)
    return {"parallel_read_safe": True}
