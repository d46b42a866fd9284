"""The configuration reference, rendered from the schema specs.

The specs in ``config`` and ``config_auth`` are the one copy of what each key
means: ``docs/conf.py`` puts ``render()`` into ``docs/configuration.rst``, and
``tests/unit/test_config_reference.py`` fails when a key reachable from
``TOP_FIELDS`` has no description. Nothing here runs in the gateway.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import attrs

from idgateway.config.load import TOP_FIELDS
from idgateway.config.schema import Field

# Section titles by dotted path ("[]" marks a list of mappings): the README's
# reference had most of these, and cross-references elsewhere in the docs name them.
TITLES = {
    "": "Top level",
    "listeners[]": "Listeners",
    "listeners[].tls": "``tls``: HTTPS on a listener",
    "listeners[].tls.certificates[]": "``certificates``: certificate and key pairs",
    "admin": "``admin``: the health-check listener",
    "logging": "``logging``: access and audit log",
    "reload": "``reload``: re-reading the file by itself",
    "http2": "``http2``: limits of HTTP/2 connections",
    "redis": "Redis connections",
    "providers.*": "Providers",
    "routes[]": "Routes",
    "routes[].paths[]": "``paths``: upstreams by path prefix",
    "routes[].paths[].login": "``login``: step-up per path",
    "routes[].hsts": "``hsts``: Strict-Transport-Security",
    "routes[].path_rules": "``path_rules``: what the route passes instead of refusing",
    "routes[].oidc": "Login on a route",
    "routes[].session": "``session``: where sessions live",
    "routes[].headers": "``headers``: identity headers",
    "routes[].authorize": "``authorize``: who may pass",
    "routes[].forward_auth": "``forward_auth``: what the auth endpoint hands out",
    "routes[].assertion": "``assertion``: a signed identity assertion for the upstream",
    "routes[].bearer": "``bearer``: access tokens for APIs",
    "routes[].bearer.introspection": "``introspection``: checking opaque tokens",
}
# How a field's value holds its nested keys: a list of mappings, a mapping of
# names to mappings, or one mapping.
_LISTS = {"listeners", "routes", "certificates", "paths"}
_NAMED = {"providers"}


@attrs.frozen
class Block:
    """One section of the reference: the keys of one spec, under the field that holds them."""

    path: str
    field: Field | None  # None for the top level
    fields: tuple[Field, ...]

    @property
    def label(self) -> str:
        """A Sphinx label for links from other pages, e.g. config-routes-headers."""
        name = self.path.replace("[]", "").replace(".*", "").replace(".", "-")
        return f"config-{name}" if name else "config-top-level"

    @property
    def title(self) -> str:
        return TITLES.get(self.path, f"``{self.path}``")


def _child_path(path: str, field: Field) -> str:
    child = f"{path}.{field.name}" if path else field.name
    if field.name in _LISTS:
        return child + "[]"
    if field.name in _NAMED:
        return child + ".*"
    return child


def _walk(path: str, field: Field | None, fields: tuple[Field, ...]) -> Iterator[Block]:
    yield Block(path, field, fields)
    for child in fields:
        if child.fields:
            yield from _walk(_child_path(path, child), child, child.fields)


def blocks() -> list[Block]:
    """Every section, in reading order; a spec reached twice is shown once, at its shortest path."""
    found = list(_walk("", None, TOP_FIELDS))
    shortest: dict[int, Block] = {}
    for block in found:
        known = shortest.get(id(block.fields))
        if known is None or block.path.count(".") < known.path.count("."):
            shortest[id(block.fields)] = block
    return [block for block in found if shortest[id(block.fields)] is block]


def every_key(top: tuple[Field, ...] = TOP_FIELDS) -> Iterator[tuple[str, Field]]:
    """Every (dotted key, field) a configuration file may hold."""
    for block in _walk("", None, top):
        for field in block.fields:
            yield (f"{block.path}.{field.name}" if block.path else field.name), field


def _text(text: str) -> str:
    return inspect.cleandoc(text)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else "" for line in text.split("\n"))


def _kind(field: Field) -> str:
    parts = [field.type_text] if field.type_text else []
    if field.default_text:
        parts.append(field.default_text)
    elif field.required:
        parts.append("required")
    return "; ".join(parts)


def _summary_table(fields: tuple[Field, ...]) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 22 30 28", ""]
    lines += ["   * - key", "     - type", "     - default"]
    for field in fields:
        default = field.default_text or ("required" if field.required else "")
        lines.append(f"   * - ``{field.name}``")
        lines.append(f"     - {field.type_text or ' '}")
        lines.append(f"     - {default.removeprefix('default').lstrip(': ') or ' '}")
    return lines + [""]


def render() -> str:
    """The reference as reStructuredText sections (underlined with '-')."""
    sections = blocks()
    title_of = {id(block.fields): block.title for block in sections}
    # A field two specs share (session's Redis keys) is told once, in the smaller spec.
    home: dict[int, Block] = {}
    for block in sections:
        for field in block.fields:
            known = home.get(id(field))
            if known is None or len(block.fields) < len(known.fields):
                home[id(field)] = block
    out: list[str] = []
    for block in sections:
        out += [f".. _{block.label}:", "", block.title, "-" * len(block.title), ""]
        if block.field is not None:
            out += [_text(block.field.description), ""]
        out += _summary_table(block.fields)
        for field in block.fields:
            out.append(f"``{field.name}`` ({_kind(field)})")
            if field.fields:
                # The nested keys have their own section, which shows the field's text;
                # here its opening paragraph, unless that only leads into a list.
                opening = _text(field.description).split("\n\n")[0]
                if not opening.endswith(":") and "::" not in opening:
                    out.append(_indent(opening))
                out.append(f"    See `{title_of[id(field.fields)]}`_.")
            elif home[id(field)] is not block:
                out.append(f"    As in `{home[id(field)].title}`_.")
            else:
                out.append(_indent(_text(field.description)))
            out.append("")
    return "\n".join(out)
