"""The library's layers, checked: no import circle and no upward import (``make``-free; used by
Testing/test_architecture.py and runnable alone: ``.venv/bin/python scripts/check_architecture.py``).

Reads every module of XDiffusionLib with ``ast`` (nothing is imported or run), counting imports at
module level and inside functions alike: an import deferred into a function is still a dependency.

The same layers are import-linter contracts in pyproject.toml (``.venv/bin/lint-imports``), which
also refuse a circle between packages; keep ``LAYERS`` and those contracts the same (the test
reads both). This script stays for what import-linter does not say: a module outside every layer
named as such, and circles listed module by module.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "XDiffusionLib"
PACKAGE = LIBRARY.name

# Bottom to top; a module may import its own layer and the layers below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "records", "settings", "maps"),
    ("io", "inputs"),
    ("geometry", "transforms", "metrics", "data", "uncertainty"),
    ("baselines", "synth", "model"),
    ("sampling",),
    ("methods", "evaluation", "training"),
    ("worker", "slicer"),
    ("app",),
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def modules(library: Path = LIBRARY) -> dict[str, Path]:
    found = {}
    for path in sorted(library.rglob("*.py")):
        parts = path.relative_to(library.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the library modules it imports (a package's own __init__ is not counted for
    ``from .sub import x``: Python loads it anyway, and it is not a dependency of the importer)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in found]
                targets = subs if len(subs) == len(node.names) else [target, *subs]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in found:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER_OF.get(parts[1]) if len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = layer(source), layer(target)
            if low is not None and high is not None and high > low:
                bad.append((source, target))
    return bad


def unlayered(found: dict[str, Path]) -> list[str]:
    return sorted(m for m in found if m != PACKAGE and layer(m) is None)


def main() -> int:
    found = modules()
    graph = import_graph(found)
    problems = [f"import circle: {' <-> '.join(group)}" for group in cycles(graph)]
    problems += [f"upward import: {a} (layer {layer(a)}) imports {b} (layer {layer(b)})" for a, b in upward_imports(graph)]
    problems += [f"module outside every layer: {m} (add its package to LAYERS)" for m in unlayered(found)]
    for line in problems:
        print(line)
    print(f"{len(found)} modules, {sum(len(t) for t in graph.values())} imports: "
          f"{'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
