"""Data flows one way: no import cycle among recall's modules, nor among its packages.

The import graph is read from the source with `ast`, so nothing is imported: every `import` and
`from ... import` counts, at module level or inside a function (a function-level import still ties
the two modules together), except those under `if TYPE_CHECKING:`, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "recall"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Every module of `modules` an import statement in `tree` names (outside `if TYPE_CHECKING:`):
    `from X import y` imports the module X.y when there is one, else X."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names & modules


def import_graph() -> dict[str, set[str]]:
    """recall's modules, each with the recall modules it imports (a package counts as its __init__)."""
    files = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        names = imported_names(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py", set(files))
        graph[module] = names - {module}
    return graph


def package_of(module: str) -> str:
    """recall.merge.engine -> recall.merge; a top-level module (recall.errors) is a node of its own."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        edges = packages.setdefault(package_of(module), set())
        edges.update(package_of(t) for t in targets if package_of(t) != package_of(module))
    return packages


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_function_level_imports_and_skips_type_checking():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from recall.errors import RecallError\n"
        "if TYPE_CHECKING:\n    from recall.models import ModelInfo\n"
        "def f():\n    from recall.merge import engine\n    import recall.data\n"
    )
    modules = {"recall.errors", "recall.models", "recall.merge", "recall.merge.engine", "recall.data"}
    names = imported_names(ast.parse(source), "recall.x", False, modules)
    assert names == {"recall.errors", "recall.merge.engine", "recall.data"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("level", ["modules", "packages"])
def test_no_import_cycle(level):
    graph = import_graph()
    assert "recall.merge.engine" in graph and graph["recall.merge.engine"], "the graph reads recall's source"
    if level == "packages":
        graph = package_graph(graph)
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle among recall's {level}: {' -> '.join(cycle)}"
