"""The package imports only downward: the module import graph of ``src/diffsat`` has no cycle.

Every module is parsed with :mod:`ast`; imports anywhere in a module count (top level and inside functions),
absolute and relative. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg`` (its ``__init__``). Imports of other packages (torch, tensorboard, ...) are not part of the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import diffsat

PACKAGE_DIR = Path(diffsat.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _absolute(base: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The module a ``from ... import`` names, resolved against ``base`` for relative imports."""
    if node.level == 0:
        return node.module or ""
    parts = base.split(".") if is_package else base.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` (file ``path``) imports anywhere in its body."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(name, node, is_package)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
    return {m for m in out if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_finds_a_cycle_and_accepts_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_imports_resolve() -> None:
    modules = package_modules()
    graph = import_graph()
    assert "diffsat.samplers.ancestral" in graph["diffsat.samplers"]  # from . import ancestral
    assert "diffsat.diffusion.schedules" in graph["diffsat.samplers"]  # from ..diffusion import schedules
    assert "diffsat.samplers.common" in graph["diffsat.samplers.ancestral"]  # from .common import ...
    assert len(modules) > 40


def test_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between the top-level parts of the package (``diffsat.training``, ``diffsat.report``, ...)."""
    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(part(module), set()).update(part(t) for t in targets if part(t) != part(module))
    return out


def test_subpackages_have_no_import_cycle() -> None:
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "import cycle between parts of the package: " + " -> ".join(cycle)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_change_detection_trains_on_the_one_trainer_without_the_diffusion_task() -> None:
    graph = import_graph()
    cd = {m for m in graph if m.startswith("diffsat.cd")}
    assert "diffsat.training.trainer" in set().union(*(graph[m] for m in cd))
    for module in cd:
        assert not {"diffsat.training.diffusion", "diffsat.training.runs"} & reachable(graph, module), module


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, path in package_modules().items() if (n := len(path.read_text().splitlines())) > 600}
    assert not long, long


def test_only_the_precision_module_enters_autocast() -> None:
    """Precision is decided once: every bf16 autocast goes through :func:`diffsat.precision.autocast`."""
    for name, path in package_modules().items():
        if name != "diffsat.precision":
            assert "torch.autocast(" not in path.read_text(), name
