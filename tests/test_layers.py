"""The package's layers (sendreturn_mood/__init__.py): imports only go down, and no module imports itself back.

The import graph is read from the source with `ast`, every import counted wherever it is (module level, inside a
function, under TYPE_CHECKING): a lazy import is still a dependency, it only fails later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sendreturn_mood

PACKAGE = Path(sendreturn_mood.__file__).parent
ROOT = PACKAGE.name

# Bottom to top. A module may import modules of its own unit and of units on lower rungs; units sharing a rung are
# siblings and may not import each other. The base modules are one unit.
LAYERS: list[tuple[str, ...]] = [
    ("base", "static"),  # base: __init__, errors, config, protocol, metrics, contract, shipped; static: the page (data)
    ("audio",),
    ("model",),
    ("room",),
    ("broker",),
    ("outputs",),
    ("server", "client"),
    ("bench", "hostile"),
    ("cli",),
    ("__main__",),
]
BASE = {"__init__", "errors", "config", "protocol", "metrics", "contract", "shipped"}
RUNG = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    parts = module.split(".")
    first = parts[1] if len(parts) > 1 else "__init__"
    return "base" if first in BASE else first


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (a `from X import name` counts X.name when that is a module)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target, *(f"{target}.{a.name}" for a in node.names)]
            else:
                continue
            found |= {t for t in targets if t in files and t != module}
        graph[module] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_unit_has_a_layer():
    assert {unit(m) for m in import_graph()} <= set(RUNG)


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_imports_only_go_down():
    wrong = [
        f"{a} ({unit(a)}) imports {b} ({unit(b)})"
        for a, targets in import_graph().items()
        for b in sorted(targets)
        if unit(a) != unit(b) and RUNG[unit(b)] >= RUNG[unit(a)]
    ]
    assert wrong == []


def test_the_checks_see_circles_and_upward_imports():
    graph = {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": set()}
    assert cycles(graph) == [["p.a", "p.b"]]
    assert RUNG[unit(f"{ROOT}.audio.pcm")] < RUNG[unit(f"{ROOT}.room.rooms")] < RUNG[unit(f"{ROOT}.server.app")]
    assert unit(f"{ROOT}.config") == unit(ROOT) == "base"
