"""House rules checked on the source: no import cycle (imports inside functions included), no private name
imported across packages, and the docstring examples of the shared modules run."""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fabric_lite"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {sub.lineno for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))}
    return lines


def _imports(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {fabric_lite module it imports (at import time or inside a function): line}."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.module and node.level == 0:
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = submodules + ([node.module] if len(submodules) < len(node.names) else [])
            else:
                continue
            for target in targets:
                found = owner(target)
                if found and found != module and found.startswith("fabric_lite"):
                    edges.setdefault(found, node.lineno)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    result: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return result


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = _imports(_modules())
    report = [
        " / ".join(f"{a} -> {b} (line {graph[a][b]})" for a in cycle for b in graph[a] if b in cycle)
        for cycle in _cycles(graph)
    ]
    assert not report, "import cycles: " + "; ".join(report)


def test_the_cycle_check_sees_an_import_inside_a_function():
    graph = {"a": {"b": 1}, "b": {"a": 9}, "c": {"a": 2}}
    assert _cycles(graph) == [["a", "b"]]


def test_no_private_name_is_imported_across_packages():
    modules = _modules()
    offences = []
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("fabric_lite"):
                continue
            source = node.module if node.module in modules and modules[node.module].name == "__init__.py" \
                else node.module.rpartition(".")[0]
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and source != package:
                    offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {alias.name} "
                                    f"from {node.module}")
    assert not offences, "\n".join(offences)


@pytest.mark.parametrize("name", [
    "fabric_lite.fabric",
    "fabric_lite.checkpoint.orchestrate",
    "fabric_lite.loggers.base",
    "fabric_lite.loggers.csv",
    "fabric_lite.loggers.tensorboard",
    "fabric_lite.utilities.distributed",
    "fabric_lite.utilities.hooks",
    "fabric_lite.utilities.rng_state",
])
def test_docstring_examples_run(name):
    pytest.importorskip("tensorboardX") if name.endswith("tensorboard") else None
    failed, attempted = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0
