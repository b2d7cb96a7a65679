"""The shape of the package: modules a reader can take in, and imports that run one way.

These hold the layout to what docs/architecture.md describes: no module grows past what
one concept needs, no module reaches into the private state of asyncio, and the modules
import each other without a cycle when the package loads.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import daebus

PACKAGE = Path(daebus.__file__).parent
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def test_no_module_is_longer_than_one_concept_needs() -> None:
    long = {
        name: count
        for name, path in _modules().items()
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_module_uses_private_state_of_asyncio() -> None:
    # Handle._run() and loop._ready are asyncio's own; they change without notice.
    private = re.compile(r"\._ready\b|\._run\(")
    users = [name for name, path in _modules().items() if private.search(path.read_text())]
    assert not users


def _imports_at_load(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``name`` imports when it is loaded.

    Imports inside functions and under ``if TYPE_CHECKING:`` do not run at load time.
    """
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for statement in ast.walk(node):
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
                break
            targets: list[str] = []
            if isinstance(statement, ast.Import):
                targets = [alias.name for alias in statement.names]
            elif isinstance(statement, ast.ImportFrom):
                base = statement.module or ""
                if statement.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (statement.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{alias.name}" for alias in statement.names]
            found.update(target for target in targets if target in modules and target != name)
    return found


def test_modules_import_each_other_without_a_cycle() -> None:
    modules = _modules()
    names = set(modules)
    graph = {name: _imports_at_load(name, path, names) for name, path in modules.items()}
    # A package imports its submodules to re-export them: an edge from a submodule up to
    # its own package is how Python loads it, not a cycle between concepts.
    for name, edges in graph.items():
        graph[name] = {e for e in edges if not name.startswith(e + ".")}

    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
