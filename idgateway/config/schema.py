"""The configuration schema engine: YAML nodes in, checked values or Problems out.

The file is composed (not constructed) with PyYAML so every value keeps its line,
then walked against declarative ``Field`` specs: each converter turns one node
into a value or records a ``Problem`` and returns INVALID. Checking goes on
after a problem, so that one ``ConfigError`` reports them all. ``config`` and
``config_auth`` hold the specs; this module knows nothing of gateways.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import yaml

from idgateway.config import values as value_syntax
from idgateway.config.files import (
    SECRET_FILE_LIMIT,
    FileTooOdd,
    loose_permissions,
    read_bounded,
    read_problem,
)


@attrs.frozen
class Problem:
    file: str
    line: int | None  # 1-based; None when not about a line (file not found, empty file)
    key: str  # dotted path, 0-based indices: routes[1].upstream; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        return value_syntax.mask_credentials(
            text
        )  # a URL value quoted back never shows its password


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


class _Invalid(enum.Enum):
    """A value whose problem is already recorded: checking goes on without it."""

    INVALID = "invalid"


INVALID = _Invalid.INVALID
_STR, _NULL, _BOOL, _MERGE = (f"tag:yaml.org,2002:{t}" for t in ("str", "null", "bool", "merge"))
# Tags plain YAML gives scalars; others (!!binary, !!python/..., !custom) are refused.
_SCALAR_TAGS = {
    f"tag:yaml.org,2002:{t}" for t in ("str", "null", "bool", "int", "float", "timestamp")
}
_RESOLVER = yaml.resolver.Resolver()
_ENV_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{[^}]*\}?")

# ${NAME} in the raw text is hidden behind private-use characters before YAML
# parsing: unquoted inside a flow list ("keys: [${KEY}]") its braces would
# otherwise be read as a YAML mapping. Values are substituted after parsing, so
# an environment value can never change the YAML structure.
_HIDDEN_OPEN, _HIDDEN_CLOSE = "\ue000", "\ue001"
_PLAIN_REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def hide_references(text: str) -> str:
    return _PLAIN_REFERENCE.sub(lambda m: _HIDDEN_OPEN + m.group(1) + _HIDDEN_CLOSE, text)


def reveal_references(text: str) -> str:
    return text.replace(_HIDDEN_OPEN, "${").replace(_HIDDEN_CLOSE, "}")


# Turns the node at a dotted key into a value, or records a problem and returns INVALID.
Converter = Callable[["Reader", yaml.Node, str], Any]


@attrs.frozen
class Field:
    name: str
    convert: Converter
    required: bool = False
    default: Any = None
    # The value may instead come from the file named by "<name>_file" (systemd credentials).
    secret: bool = False
    # Shown when a required key is missing, e.g. "upstream: http://127.0.0.1:3000".
    example: str = ""
    # The configuration reference (docs/configuration.rst) is rendered from these
    # (idgateway/config/reference.py); a unit test fails when a key has no description.
    # reStructuredText; indented as the source likes (cleaned with inspect.cleandoc).
    description: str = ""
    # For people, as the reference shows them: "duration > 0", "``15s``", "required".
    type_text: str = ""
    default_text: str = ""
    # The keys of a mapping (or of each mapping in a list) this field holds.
    fields: tuple[Field, ...] = ()


@attrs.define
class Section:
    """A mapping read against its fields: values (each maybe INVALID) and their nodes."""

    node: yaml.MappingNode
    key: str
    values: dict[str, Any]
    nodes: dict[str, yaml.Node]

    @property
    def valid(self) -> bool:
        return all(value is not INVALID for value in self.values.values())

    def child(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def line(self, name: str) -> int:
        return int(self.nodes.get(name, self.node).start_mark.line) + 1


class _LiteralScalar(yaml.ScalarNode):
    """A secret file's contents standing in for a value: never ${VAR}-expanded."""


class Reader:
    """Walks one file: expands ${VAR}s and collects problems and warnings."""

    def __init__(self, file: str, environ: Mapping[str, str], *, contents: bool = True) -> None:
        self.file = file
        # Whether the key and certificate files named are opened and checked
        # (False: only their names are taken; see load_config).
        self.contents = contents
        self.base_dir = os.path.dirname(os.path.abspath(file))
        self.environ = environ
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        # Names declared in a section (e.g. "providers") whose own checks
        # failed: a reference to one is not reported again as unknown.
        self.broken_names: dict[str, set[str]] = {}
        self._constructor = yaml.constructor.SafeConstructor()

    def problem(self, node: yaml.Node | None, key: str, message: str) -> _Invalid:
        line = None if node is None else node.start_mark.line + 1
        self.problems.append(Problem(self.file, line, key, message))
        return INVALID

    def path(self, text: str) -> str:
        """Relative paths are relative to the config file, not to the daemon's directory."""
        return os.path.normpath(os.path.join(self.base_dir, text))

    def expand(self, node: yaml.ScalarNode, key: str) -> yaml.ScalarNode | _Invalid:
        """The node after ${VAR} expansion; a plain scalar is re-typed from its new text."""
        if node.tag not in _SCALAR_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            return self.problem(node, key, f"unsupported YAML tag {tag!r}; remove the tag")
        if node.tag != _STR or isinstance(node, _LiteralScalar):
            return node
        if _HIDDEN_OPEN in node.value:
            node = yaml.ScalarNode(
                node.tag,
                reveal_references(node.value),
                node.start_mark,
                node.end_mark,
                style=node.style,
            )
        if "${" not in node.value:
            return node
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if match.group(0) == "$${" or name in self.environ:
                return "${" if name is None else self.environ[name]
            missing.append(name or match.group(0))
            return ""

        text = _ENV_REFERENCE.sub(substitute, node.value)
        for name in missing:
            self.problem(
                node,
                key,
                f"environment variable {name!r} is not set (used as ${{{name}}})"
                if name.isidentifier()
                else f"{name!r} is not a ${{NAME}} reference; write $${{ for a literal '${{'",
            )
        if missing:
            return INVALID
        tag = (
            _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) if node.style is None else _STR
        )
        return yaml.ScalarNode(tag, text, node.start_mark, node.end_mark, style=node.style)

    def text(self, node: yaml.Node, key: str, expected: str) -> str | _Invalid:
        """A scalar's text; numbers count (name: 2024), null and booleans do not."""
        if isinstance(node, yaml.ScalarNode) and node.tag not in (_NULL, _BOOL):
            expanded = self.expand(node, key)
            if expanded is INVALID or expanded.tag not in (_NULL, _BOOL):
                return expanded if expanded is INVALID else str(expanded.value)
            node = expanded
        return self.problem(node, key, f"expected {expected}; got {_describe(node)}")

    def value(self, node: yaml.Node, key: str) -> Any:
        """A scalar's Python value after ${VAR} expansion; None for lists and mappings."""
        if not isinstance(node, yaml.ScalarNode):
            return None
        expanded = self.expand(node, key)
        try:
            return expanded if expanded is INVALID else self._constructor.construct_object(expanded)
        except ValueError as error:  # a date-like value that is no date: 2024-13-45
            return self.problem(node, key, f"cannot read this value: {error}")


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        return "a mapping" if isinstance(node, yaml.MappingNode) else "a list"
    if node.tag == _NULL:
        return "nothing (null)"
    value = reveal_references(node.value) if isinstance(node.value, str) else node.value
    return f"the string {value!r}" if node.tag == _STR else str(value)


# ---- converters -------------------------------------------------------------------------


def parsed(parse: Callable[[str], Any], expected: str) -> Converter:
    """A scalar's text through ``parse``, whose ValueError says what is wrong and what is right."""

    def convert(reader: Reader, node: yaml.Node, key: str) -> Any:
        text = reader.text(node, key, expected)
        try:
            return text if text is INVALID else parse(text)
        except ValueError as error:
            return reader.problem(node, key, str(error))

    return convert


def boolean(reader: Reader, node: yaml.Node, key: str) -> bool | _Invalid:
    value = reader.value(node, key)
    if value is INVALID or isinstance(value, bool):
        return value
    return reader.problem(node, key, f"expected true or false; got {_describe(node)}")


def integer(minimum: int, example: int) -> Converter:
    def convert(reader: Reader, node: yaml.Node, key: str) -> int | _Invalid:
        value = reader.value(node, key)
        if value is INVALID or (type(value) is int and value >= minimum):
            return value  # type: ignore[no-any-return]
        expected = f"a whole number of at least {minimum}, e.g. {example}"
        return reader.problem(node, key, f"expected {expected}; got {_describe(node)}")

    return convert


def duration(allow_zero: bool = False) -> Converter:
    def parse(text: str) -> float:
        seconds = value_syntax.parse_duration(text)
        if seconds == 0 and not allow_zero:
            raise ValueError(f"must be longer than zero; expected {value_syntax.DURATION_FORMS}")
        return seconds

    return parsed(parse, f"a duration ({value_syntax.DURATION_FORMS})")


def size(zero_is_unlimited: bool = False) -> Converter:
    """Bytes; with ``zero_is_unlimited``, 0 or null give None (no limit)."""
    as_bytes = parsed(value_syntax.parse_size, f"a size ({value_syntax.SIZE_FORMS})")

    def convert(reader: Reader, node: yaml.Node, key: str) -> int | None | _Invalid:
        if zero_is_unlimited and isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
            return None
        result = as_bytes(reader, node, key)
        if result != 0:
            return result  # type: ignore[no-any-return]
        if zero_is_unlimited:
            return None
        return reader.problem(
            node, key, f"must be more than zero; expected {value_syntax.SIZE_FORMS}"
        )

    return convert


def file_path(expected: str) -> Converter:
    def convert(reader: Reader, node: yaml.Node, key: str) -> str | _Invalid:
        path = reader.text(node, key, expected)
        if path is INVALID or not path.strip():
            return path if path is INVALID else reader.problem(node, key, f"expected {expected}")
        return reader.path(path)

    return convert


def list_of(item: Converter, expected: str, min_items: int = 0) -> Converter:
    """A tuple of items, or INVALID if any item is (every item is still checked)."""

    def convert(reader: Reader, node: yaml.Node, key: str) -> tuple[Any, ...] | _Invalid:
        if not isinstance(node, yaml.SequenceNode):
            return reader.problem(node, key, f"expected {expected}; got {_describe(node)}")
        if len(node.value) < min_items:
            return reader.problem(node, key, f"must not be empty; expected {expected}")
        items = [item(reader, child, f"{key}[{index}]") for index, child in enumerate(node.value)]
        return INVALID if any(value is INVALID for value in items) else tuple(items)

    return convert


def record(fields: Sequence[Field], expected: str, cls: Callable[..., Any]) -> Converter:
    """A mapping read against ``fields`` and built into ``cls(**values)``."""
    return mapping(fields, expected, lambda _, found: cls(**found.values))


def section(fields: Sequence[Field], expected: str) -> Converter:
    """The Section itself, for builders that need several sections at once (routes)."""
    return lambda reader, node, key: read_section(reader, node, key, fields, expected)


def mapping(fields: Sequence[Field], expected: str, build: Callable[..., Any]) -> Converter:
    """``build(reader, section)`` once every field of the mapping is valid."""

    def convert(reader: Reader, node: yaml.Node, key: str) -> Any:
        found = read_section(reader, node, key, fields, expected)
        return build(reader, found) if found is not INVALID and found.valid else INVALID

    return convert


def read_section(
    reader: Reader, node: yaml.Node, key: str, fields: Sequence[Field], expected: str
) -> Section | _Invalid:
    if not isinstance(node, yaml.MappingNode):
        return reader.problem(node, key, f"expected {expected}; got {_describe(node)}")
    by_name = {field.name: field for field in fields}
    by_name.update({f"{field.name}_file": field for field in fields if field.secret})
    found = Section(node, key, {}, {})
    first_lines: dict[str, int] = {}
    for key_node, value_node in _pairs(reader, node, key, {id(node)}):
        name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(name, str) or not name:
            reader.problem(key_node, key, f"keys must be plain names; got {_describe(key_node)}")
            continue
        child, field = found.child(name), by_name.get(name)
        if name.startswith("x-"):
            continue  # a place for YAML anchors, as in docker-compose files
        if name in first_lines:
            reader.problem(
                key_node, child, f"duplicate key (first given on line {first_lines[name]})"
            )
        elif field is None:
            close = difflib.get_close_matches(name, by_name, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(by_name)
            reader.problem(key_node, child, f"unknown key {name!r}; {hint}")
        elif field.name in found.nodes:
            message = f"give either {field.name!r} or '{field.name}_file', not both"
            found.values[field.name] = reader.problem(key_node, child, message)
        else:
            source = _secret_file(reader, value_node, child) if name != field.name else value_node
            found.nodes[field.name] = value_node
            found.values[field.name] = (
                INVALID if source is INVALID else field.convert(reader, source, child)
            )
        first_lines.setdefault(name, key_node.start_mark.line + 1)
    for field in fields:
        if field.name in found.values:
            continue
        if not field.required:
            found.values[field.name] = field.default
            continue
        alternative = f" (or '{field.name}_file')" if field.secret else ""
        example = f", e.g. {field.example}" if field.example else ""
        message = f"missing required key {field.name!r}{alternative}{example}"
        found.values[field.name] = reader.problem(node, found.child(field.name), message)
    return found


def _pairs(
    reader: Reader, node: yaml.MappingNode, key: str, seen: set[int]
) -> list[tuple[yaml.Node, yaml.Node]]:
    """The mapping's own pairs, then those it lacks from YAML merge keys (<<: *defaults).

    ``seen`` holds the mappings being merged into, so that a cycle is refused.
    """
    own = [pair for pair in node.value if pair[0].tag != _MERGE]
    names = {key_node.value for key_node, _ in own}
    for key_node, value_node in node.value:
        if key_node.tag != _MERGE:
            continue
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode) or id(source) in seen:
                reader.problem(source, key, "<< must merge a mapping or a list of mappings")
                continue
            for pair in _pairs(reader, source, key, seen | {id(node)}):
                if pair[0].value not in names:  # explicit keys win, then earlier merges
                    names.add(pair[0].value)
                    own.append(pair)
    return own


def _secret_file(reader: Reader, node: yaml.Node, key: str) -> yaml.Node | _Invalid:
    path = _SECRET_PATH(reader, node, key)
    if path is INVALID:
        return INVALID
    try:
        contents = read_bounded(path, SECRET_FILE_LIMIT).decode("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError, FileTooOdd) as error:
        return reader.problem(node, key, read_problem(error))
    warning = loose_permissions(path, secret=True)
    if warning:
        reader.warnings.append(f"{key}: {warning}")
    return _LiteralScalar(_STR, contents, node.start_mark, node.end_mark, style='"')


# The most values a configuration may expand to through anchors, aliases and
# merge keys: a real one has a few thousand; a "billion laughs" file of a few
# hundred bytes expands to millions (and took seconds to check).
YAML_NODE_BUDGET = 100_000


def expanded_size(root: yaml.Node, budget: int) -> int:
    """How many nodes ``root`` stands for once every alias and merge is expanded.

    Aliases share node objects, so sizes are memoised per node: linear in the
    file, however far it would expand. A node inside its own expansion (a
    recursive anchor) adds nothing here: the schema refuses those cycles with
    its own message. Counting stops past ``budget``.
    """
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in visiting:
            return 0
        visiting.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > budget:
                    break
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                total += size(key_node) + size(value_node)
                if total > budget:
                    break
        visiting.discard(id(node))
        sizes[id(node)] = total
        return total

    try:
        return size(root)
    except RecursionError:
        return budget + 1


_SECRET_PATH = file_path("a file path, e.g. /run/credentials/idgateway.service/secret")
