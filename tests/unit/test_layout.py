"""The package layout keeps its promises: imports go one way, layers stay apart.

Every import counts here, including those under ``TYPE_CHECKING`` and inside
functions: a cycle hidden there is still a cycle for the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import idgateway

PACKAGE = Path(idgateway.__file__).parent
# Layers that describe the configuration: they may not import what runs it.
CONFIG_LAYERS = ("idgateway.config", "idgateway.http")
# Only these may sit directly in idgateway/: everything else lives in the
# subpackage of the request stage it serves.
TOP_LEVEL = {"__init__", "cli", "tap"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The idgateway modules ``name`` imports, anywhere in its text."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # A submodule imported by name from its package counts as imported.
            targets = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in MODULES
                else node.module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "idgateway":
                continue
            while target not in MODULES:  # "import idgateway.x.y as z" -> nearest module
                target = target.rpartition(".")[0]
            if target != "idgateway" and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(GRAPH[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def test_the_scan_sees_the_imports_it_must() -> None:
    # Guards the scanner itself: known edges of each kind are found.
    assert "idgateway.gate.endpoints" in GRAPH["idgateway.routing.resource"]  # from pkg import mod
    assert "idgateway.config.model" in GRAPH["idgateway.routing.state"]  # from mod import name
    assert "idgateway.server.channel" in GRAPH["idgateway.gate.session_check"]  # TYPE_CHECKING
    assert "idgateway.importers.oauth2_proxy" in GRAPH["idgateway.importers"]  # in a function


def test_no_import_cycles() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(CONFIG_LAYERS)), ids=str)
def test_the_config_layer_imports_nothing_that_runs(name: str) -> None:
    outside = {t for t in GRAPH[name] if not t.startswith(CONFIG_LAYERS)}
    assert outside == set(), f"{name} imports runtime modules"


def test_the_top_level_holds_only_the_entry_points() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL


def test_only_the_twistd_plugin_touches_the_global_reactor() -> None:
    users = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "twisted.internet":
                if any(alias.name == "reactor" for alias in node.names):
                    users.append(name)
            elif isinstance(node, ast.Import):
                if any(alias.name == "twisted.internet.reactor" for alias in node.names):
                    users.append(name)
    # tap.py builds the service on twistd's reactor; a worker process's entry
    # point (workers.process) installs its event loop and hands it to main();
    # demo.echo is a separate program (the demo back end), not the gateway.
    expected = ["idgateway.demo.echo", "idgateway.tap", "idgateway.workers.process"]
    assert sorted(set(users)) == expected
