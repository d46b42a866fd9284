"""A small YAML writer that keeps comments where the importers put them.

PyYAML's dumper drops comments, and the point of an imported configuration is
its comments, so the importers build a tree of ``Block`` objects (mappings in
insertion order, with comment lines and trailing comments) and ``render`` it.
Scalars are written plain when YAML reads them back as the same string, and
double-quoted otherwise; ``${NAME}`` references stay plain, as the reference
documentation writes them.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import attrs
import yaml

WIDTH = 96
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_FLOW_INDICATORS = set(",[]{}")


class Flow(dict[str, Any]):
    """A mapping written in flow style: {cert: a.pem, key: a.key}."""


@attrs.define
class Comment:
    text: str


@attrs.define
class Entry:
    key: str
    value: Any
    comment: str | None = None


@attrs.define
class Block:
    """A mapping: entries in order, with comment lines between them."""

    items: list[Entry | Comment] = attrs.field(factory=list)

    def add(self, key: str, value: Any, comment: str | None = None) -> Any:
        for item in self.items:
            if isinstance(item, Entry) and item.key == key:
                item.value, item.comment = value, comment or item.comment
                return value
        self.items.append(Entry(key, value, comment))
        return value

    def note(self, text: str) -> None:
        """A comment line (wrapped) at this point of the mapping."""
        self.items.append(Comment(text))

    def child(self, key: str, comment: str | None = None) -> Block:
        existing = self.get(key)
        if isinstance(existing, Block):
            return existing
        return self.add(key, Block(), comment)  # type: ignore[no-any-return]

    def get(self, key: str) -> Any:
        for item in self.items:
            if isinstance(item, Entry) and item.key == key:
                return item.value
        return None

    def remove(self, key: str) -> None:
        self.items = [i for i in self.items if not (isinstance(i, Entry) and i.key == key)]

    @property
    def keys(self) -> list[str]:
        return [item.key for item in self.items if isinstance(item, Entry)]


def _reads_back(text: str, document: str, expected: Any) -> bool:
    try:
        return bool(yaml.safe_load(document) == expected)
    except yaml.YAMLError:
        return False


def scalar(value: Any, flow: bool = False) -> str:
    """One scalar as YAML text that reads back as exactly ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _ENV_REFERENCE.fullmatch(text):
        return text
    plain = (
        text
        and "#" not in text
        and text == text.strip()
        and not (flow and _FLOW_INDICATORS & set(text))
        and _reads_back(text, f"k: {text}", {"k": text})
        and (not flow or _reads_back(text, f"k: [{text}]", {"k": [text]}))
    )
    return text if plain else json.dumps(text, ensure_ascii=False)


def _flow(value: Any) -> str:
    if isinstance(value, Flow):
        inner = ", ".join(f"{key}: {_flow(item)}" for key, item in value.items())
        return "{" + inner + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(item) for item in value) + "]"
    return scalar(value, flow=True)


def _comment_lines(text: str, indent: int) -> list[str]:
    prefix = " " * indent + "# "
    lines: list[str] = []
    for paragraph in text.split("\n"):
        if not paragraph.strip():
            lines.append(prefix.rstrip())
            continue
        lead = len(paragraph) - len(paragraph.lstrip(" "))
        marker = re.match(r"(\d+\.|\*|-) ", paragraph.lstrip(" "))
        hang = len(marker.group(0)) if marker else 2
        lines.extend(
            textwrap.wrap(
                paragraph.strip(),
                width=max(WIDTH, indent + 40),
                initial_indent=prefix + " " * lead,
                subsequent_indent=prefix + " " * (lead + hang),
                break_long_words=False,
                break_on_hyphens=False,
            )
            or [prefix + paragraph]
        )
    return lines


def _with_comment(line: str, comment: str | None, indent: int) -> list[str]:
    if not comment:
        return [line]
    single = f"{line}  # {comment}"
    if len(single) <= WIDTH and "\n" not in comment:
        return [single]
    return [*_comment_lines(comment, indent), line]


def render_block(block: Block, indent: int = 0) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for item in block.items:
        if isinstance(item, Comment):
            lines.extend(_comment_lines(item.text, indent))
            continue
        key, value = item.key, item.value
        if isinstance(value, Block):
            lines.extend(_with_comment(f"{pad}{key}:", item.comment, indent))
            lines.extend(render_block(value, indent + 2))
        elif isinstance(value, list) and value and all(isinstance(v, Block) for v in value):
            lines.extend(_with_comment(f"{pad}{key}:", item.comment, indent))
            for sub in value:
                lines.extend(_list_item(sub, indent + 2))
        elif isinstance(value, list | tuple | Flow):
            lines.extend(_with_comment(f"{pad}{key}: {_flow(value)}", item.comment, indent))
        else:
            lines.extend(_with_comment(f"{pad}{key}: {scalar(value)}", item.comment, indent))
    return lines


def _list_item(block: Block, indent: int) -> list[str]:
    """A mapping as an item of a block list: its first key line starts with '- '."""
    lines = render_block(block, indent + 2)
    for index, line in enumerate(lines):
        if not line.lstrip().startswith("#"):
            lines[index] = " " * indent + "- " + line[indent + 2 :]
            break
        lines[index] = line[2:]  # the item's leading comments line up with its dash
    return lines


def render(top: Block, header: list[str], footer: list[str]) -> str:
    out: list[str] = []
    for text in header:
        out.extend(_comment_lines(text, 0) if text else ["#"])
    out.append("")
    previous: Entry | Comment | None = None
    for item in top.items:
        # A blank line between top-level keys, before the comments that lead one.
        if isinstance(previous, Entry):
            out.append("")
        out.extend(render_block(Block([item]), 0))
        previous = item
    if footer:
        out.append("")
        for text in footer:
            out.extend(_comment_lines(text, 0) if text else ["#"])
    return "\n".join(out) + "\n"
