"""The layering DESIGN.md promises, read from the source with `ast` (every import, module-level, function-local
and TYPE_CHECKING alike):

- `spectral/ losses/ gating/` are math: nothing from methods, models, data, tracking or teachers;
- `models/ data/ adapters/` import nothing from methods;
- no import cycle among lowrank_lab modules.

An import names the deepest lowrank_lab module it reaches (`from lowrank_lab.a import b` is `lowrank_lab.a.b` when
that is a module, else the package `lowrank_lab.a`); the parent packages Python runs on the way are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lowrank_lab"
MATH = ("spectral", "losses", "gating")
MATH_FORBIDDEN = ("methods", "models", "data", "tracking", "teachers")
BELOW_METHODS = ("models", "data", "adapters")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """lowrank_lab module name -> its file."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The module an ImportFrom names, relative levels resolved against `name`."""
    if node.level == 0:
        return node.module or ""
    base = name.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _deepest(target: str, known: dict[str, Path]) -> str | None:
    """The longest prefix of dotted `target` that is a lowrank_lab module."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """lowrank_lab modules `name` imports -> the line of the first such import."""
    found: dict[str, int] = {}
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, path.name == "__init__.py")
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if not target.startswith("lowrank_lab"):
                continue
            module = _deepest(target, known)
            if module is not None and module != name:
                found.setdefault(module, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == f"lowrank_lab.{p}" or module.startswith(f"lowrank_lab.{p}.") for p in packages)


def _where(graph: dict[str, dict[str, int]], source: str, target: str) -> str:
    return f"{modules()[source].relative_to(PACKAGE.parent)}:{graph[source][target]}: {source} -> {target}"


@pytest.mark.parametrize(
    ("lower", "forbidden"),
    [(MATH, MATH_FORBIDDEN), (BELOW_METHODS, ("methods",))],
    ids=["math", "below-methods"],
)
def test_lower_layers_do_not_import_upper(lower: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    graph = import_graph()
    bad = [
        _where(graph, source, target)
        for source, targets in graph.items()
        if _in(source, lower)
        for target in targets
        if _in(target, forbidden)
    ]
    assert not bad, "imports across the layering:\n" + "\n".join(bad)


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_strongly_connected_finds_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert sorted(map(sorted, strongly_connected(graph))) == [["a", "b", "c"], ["d"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    report = []
    for cycle in cycles:
        members = set(cycle)
        edges = [_where(graph, s, t) for s in cycle for t in graph[s] if t in members]
        report.append("cycle " + " <-> ".join(cycle) + "\n  " + "\n  ".join(edges))
    assert not cycles, "import cycles:\n" + "\n".join(report)
