"""The package's import graph, read from the source with ``ast`` (every ``import`` of a bertops module, at module
level or inside a function; ``if TYPE_CHECKING:`` blocks left out, they never run).

- no import circle anywhere in ``bertops`` (a strongly connected component of more than one module);
- evaluation is a leaf of registry, orchestration, serving and the CLI: it imports none of them, and they (and
  training's reporting) import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "bertops"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str], here: str, is_package: bool) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".") if is_package else here.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif base in modules:
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(here)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {
        name: _imports(ast.parse(path.read_text(encoding="utf-8")), modules, name, path.name == "__init__.py")
        for name, path in files.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "bertops.evaluation.result" in graph["bertops.evaluation.ner"]
    assert (
        "bertops.evaluation.evaluate" in graph["bertops.registry.promote"]
    )  # function-level or top: both count


def test_no_import_circle() -> None:
    assert _cycles(import_graph()) == []


def test_a_circle_would_be_found() -> None:
    graph = import_graph()
    graph["bertops.evaluation.result"] = graph["bertops.evaluation.result"] | {"bertops.registry.promote"}
    assert any("bertops.evaluation.result" in c and "bertops.registry.promote" in c for c in _cycles(graph))


def test_evaluation_is_a_leaf() -> None:
    graph = import_graph()
    above = ("bertops.registry", "bertops.orchestration", "bertops.serving", "bertops.cli", "bertops.demo")
    for module, imported in graph.items():
        if module.startswith("bertops.evaluation"):
            wrong = sorted(m for m in imported if m.startswith(above))
            assert not wrong, f"{module} imports {wrong}: evaluation must not import what uses it"
    users = {m for m, imported in graph.items() if any(i.startswith("bertops.evaluation") for i in imported)}
    assert {"bertops.registry.promote", "bertops.registry.gate", "bertops.orchestration.retrain"} <= users
