"""The floor plan, checked: imports point down the layer order, no cycles, small files.

Layers (docs/ARCHITECTURE.md), lowest first; a module may import its own package and
any lower layer, never a higher one or a sibling on its own level:

    keys, consensus, subnet.logs, subnet.version   (consensus stays pure: it imports only itself)
    chain
    subnet.swarm, subnet.model
    hoster, validator, subnet.client   (roles never import each other)
    subnet.api
    subnet.node

A project import inside a function is allowed only with a `# deferred: <reason>` comment
on its line (start-up time of a heavy module): the reference codebases have almost none.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("keys", "chain", "consensus", "subnet", "hoster", "validator")
LAYERS: list[tuple[str, ...]] = [
    ("keys", "consensus", "subnet.logs", "subnet.version"),
    ("chain",),
    ("subnet.swarm", "subnet.model"),
    ("hoster", "validator", "subnet.client"),
    ("subnet.api",),
    ("subnet.node",),
]
MAX_LINES = 450


def _unit(module: str) -> str:
    """The layer unit a module belongs to (the longest matching prefix in LAYERS)."""
    best = ""
    for units in LAYERS:
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and len(unit) > len(best):
                best = unit
    return best


def _rank(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue  # annotations only: not a runtime edge
        yield node
        if isinstance(node, ast.If):
            yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _module_level(block)


def _targets(node: ast.stmt, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # `from pkg import submodule` is an edge to the submodule when one exists.
        out = []
        for alias in node.names:
            candidate = f"{prefix}.{alias.name}"
            rel = Path(*candidate.split("."))
            out.append(candidate if (ROOT / rel).is_dir() or (ROOT / rel).with_suffix(".py").exists() else prefix)
        return out
    return []


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def collect_imports() -> tuple[dict[str, set[str]], list[tuple[str, int, str, bool]]]:
    """(module -> imported project modules, [(module, line, target, module_level)])."""
    graph: dict[str, set[str]] = {}
    found: list[tuple[str, int, str, bool]] = []
    for path in project_files():
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {id(n) for n in _module_level(tree.body)}
        type_only = {id(n) for stmt in tree.body if isinstance(stmt, ast.If) and _is_type_checking(stmt)
                     for n in ast.walk(stmt)}
        graph.setdefault(module, set())
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            for target in _targets(node, module, path.name == "__init__.py"):
                if _is_project(target) and target != module:
                    graph[module].add(target)
                    found.append((module, node.lineno, target, id(node) in top))
    return graph, found


GRAPH, IMPORTS = collect_imports()


def _known(name: str) -> str:
    """Resolve an import target to a module in the graph (a package resolves to its __init__)."""
    while name and name not in GRAPH:
        name = name.rpartition(".")[0]
    return name


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, line, target, _ in IMPORTS:
        src, dst = _unit(module), _unit(target)
        if not src or not dst:
            wrong.append(f"{module}:{line} -> {target}: module outside the layer table")
        elif src != dst and _rank(dst) >= _rank(src):
            wrong.append(f"{module}:{line} -> {target} ({src} may not import {dst})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_consensus_is_pure() -> None:
    impure = [f"{m}:{line} -> {t}" for m, line, t, _ in IMPORTS if m.startswith("consensus")
              and not t.startswith("consensus")]
    assert not impure


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over every project import (deferred ones too)."""
    edges = {m: {_known(t) for t in targets} - {m, ""} for m, targets in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_deferred_project_imports_say_why() -> None:
    lines_of = {_module_name(p): p.read_text().splitlines() for p in project_files()}
    silent = [f"{m}:{line} -> {t}" for m, line, t, top in IMPORTS
              if not top and "# deferred:" not in lines_of[m][line - 1]]
    assert not silent, "project imports inside functions without a `# deferred: reason`:\n" + "\n".join(silent)


@pytest.mark.parametrize("folder", [*PACKAGES, "tests", "benchmarks", "scripts", "docker"])
def test_no_file_over_the_limit(folder: str) -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
