"""A small YAML writer that keeps comments where the importers put them.

PyYAML's dumper drops comments, and the point of an imported configuration is
its comments, so the importers build a tree of ``Block`` objects (mappings in
insertion order, with comment lines and trailing comments) and ``render`` it.

The input of an importer is hostile until shown otherwise, so nothing from it
is ever spliced into the text by hand:

* every value (and every key of a flow mapping) is written by PyYAML's emitter:
  plain when YAML reads it back as the same string, quoted otherwise, and
  double-quoted, every line break and control character escaped, when it holds
  anything that is not printable (YAML breaks lines at \\n, \\r, U+0085,
  U+2028 and U+2029; Python's ``str.splitlines`` at even more);
* a ``$`` that would start a ``${NAME}`` reference is escaped (``$${``), so the
  gateway's configuration loader reads the text literally; only ``ConfigText``
  (built by ``reference`` and ``config_text``) carries references that are meant;
* a comment is one line of text, wrapped at blanks: anything unprintable in it
  (a line break of any kind from an input value) is shown as an escape
  (``\\n``, ``\\L``); values quoted into comments go through ``shown``.
"""

from __future__ import annotations

import math
import re
import textwrap
from typing import Any

import attrs
import yaml

WIDTH = 96
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
# The configuration loader hides ${NAME} behind these two private-use characters
# while it parses (idgateway.config.schema.hide_references) and turns them back into
# "${" and "}" in every value afterwards: a value holding them cannot be written
# so that it reads back literally.
_LOADER_RESERVED = ("\ue000", "\ue001")


class UnrepresentableValue(ValueError):
    """A value gateway.yaml cannot hold literally; the message says which and why."""


class ConfigText(str):
    """Text already in the configuration loader's syntax: its ${NAME} references are meant."""


def reference(name: str) -> ConfigText:
    """``${NAME}``: a value the gateway takes from its environment at start."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not an environment variable name")
    return ConfigText(f"${{{name}}}")


def literal(text: str) -> str:
    """``text`` as the loader must see it to read it back unchanged: ``${`` becomes ``$${``."""
    for character in _LOADER_RESERVED:
        if character in text:
            raise UnrepresentableValue(
                f"the value {shown(text)} holds the character U+{ord(character):04X}, which "
                "the gateway's configuration loader reserves for itself: it cannot be imported "
                "as it is; remove it from the source configuration"
            )
    return text.replace("${", "$${")


def config_text(*parts: str) -> ConfigText:
    """One value from literal parts (escaped) and ``reference``s (kept), in order."""
    return ConfigText(
        "".join(part if isinstance(part, ConfigText) else literal(part) for part in parts)
    )


class Flow(dict[str, Any]):
    """A mapping written in flow style: {cert: a.pem, key: a.key}."""


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, with the importers' string rules."""


def _represent_text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    text = data if isinstance(data, ConfigText) else literal(data)
    # Not printable: a line break of any kind, a control character, U+FEFF... The
    # emitter's double-quoted style escapes them all and keeps the value on one line
    # (its other quoted style, single quotes, would write line breaks as they are).
    style = None if text.isprintable() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


def _represent_sequence(dumper: yaml.SafeDumper, data: Any) -> yaml.SequenceNode:
    return dumper.represent_list(list(data))


_Dumper.add_representer(str, _represent_text)
_Dumper.add_representer(ConfigText, _represent_text)
_Dumper.add_representer(tuple, _represent_sequence)


def _emit(value: Any) -> str:
    """``value`` as one line of flow YAML, written by PyYAML's emitter."""
    if isinstance(value, ConfigText) and _BARE_REFERENCE.fullmatch(value):
        # Plain, as the reference documentation writes it: the loader hides ${NAME}
        # before it parses, so even [${KEY}] reads as a list of one string.
        return str(value)
    text = yaml.dump(
        [value],
        Dumper=_Dumper,
        default_flow_style=True,
        width=math.inf,  # never fold a long value onto a second line
        allow_unicode=True,
        sort_keys=False,
    )
    # "[<value>]\n": the brackets make the emitter choose a style valid in flow context
    # too, so the same text is right after "key: " and inside [...] or {...}.
    return text[1:-2]


class _ShownDumper(yaml.SafeDumper):
    """For comments and messages: strings double-quoted, never $-escaped."""


def _represent_shown(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')


_ShownDumper.add_representer(str, _represent_shown)
_ShownDumper.add_representer(ConfigText, _represent_shown)
_ShownDumper.add_representer(tuple, _represent_sequence)


def quoted(value: Any) -> str:
    """``value`` as a double-quoted YAML scalar (or flow list of them), on one line."""
    text = yaml.dump(
        [value],
        Dumper=_ShownDumper,
        default_flow_style=True,
        width=math.inf,
        allow_unicode=True,
        sort_keys=False,
    )
    return text[1:-2]


def shown(value: Any) -> str:
    """An input value for a comment or a message: as it is when every character is
    printable (a printable text holds no line break of any kind), else double-quoted
    by PyYAML with its line breaks and control characters escaped."""
    text = str(value)
    return text if text.isprintable() else quoted(text)


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


def scalar(value: Any, flow: bool = False) -> str:
    """One scalar as YAML text that reads back as exactly ``value`` (``$`` escaped)."""
    del flow  # the emitter's choice is valid in flow and block context alike
    return _emit(value)


class _Key(str):
    """A mapping key: the loader expands no ${NAME} in keys (and hides one in raw text)."""


def _represent_key(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "${" in data or any(character in data for character in _LOADER_RESERVED):
        raise UnrepresentableValue(
            f"the name {shown(data)} holds '${{' (or a character the configuration loader "
            "reserves), which gateway.yaml cannot hold in a key; rename it in the source "
            "configuration"
        )
    if len(data) > 1000:  # YAML's limit for an implicit key is 1024 characters
        raise UnrepresentableValue(f"the name {shown(data[:40])}... is too long for a key")
    style = None if data.isprintable() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style=style)


def _represent_flow(dumper: yaml.SafeDumper, data: Flow) -> yaml.MappingNode:
    return dumper.represent_dict({_Key(key): item for key, item in data.items()})


_Dumper.add_representer(_Key, _represent_key)
_Dumper.add_representer(Flow, _represent_flow)


def _flow(value: Any) -> str:
    return _emit(value)


def printable(text: str) -> str:
    """A line of comment text (or a message), anything unprintable in it escaped."""
    if text.isprintable():
        return text
    return "".join(
        character if character.isprintable() else quoted(character)[1:-1] for character in text
    )


def _comment_lines(text: str, indent: int) -> list[str]:
    """One comment, wrapped: never a line break of its own (an input value's is escaped)."""
    prefix = " " * indent + "# "
    paragraph = printable(text)
    if not paragraph.strip():
        return [prefix.rstrip()]
    lead = len(paragraph) - len(paragraph.lstrip(" "))
    marker = re.match(r"(\d+\.|\*|-) ", paragraph.lstrip(" "))
    hang = len(marker.group(0)) if marker else 2
    return textwrap.wrap(
        paragraph.strip(" "),
        width=max(WIDTH, indent + 40),
        initial_indent=prefix + " " * lead,
        subsequent_indent=prefix + " " * (lead + hang),
        break_long_words=False,
        break_on_hyphens=False,
    ) or [prefix + paragraph]


def _with_comment(line: str, comment: str | None, indent: int) -> list[str]:
    if not comment:
        return [line]
    single = f"{line}  # {comment}"
    if len(single) <= WIDTH and comment.isprintable():
        return [single]
    return [*_comment_lines(comment, indent), line]


def render_block(block: Block, indent: int = 0) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for item in block.items:
        if isinstance(item, Comment):
            lines.extend(_comment_lines(item.text, indent))
            continue
        key, value = _emit(_Key(item.key)), item.value
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
