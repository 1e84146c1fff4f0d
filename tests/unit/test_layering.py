"""The package's layering: no import circle, and no import that runs back up.

Every ``import dbmazz.…`` in ``dbmazz/`` is read with ``ast`` (module level, inside
functions and under ``TYPE_CHECKING`` alike: a lazy or type-only import is still a
dependency). Two rules:

* **No upward import.** Each top-level module or package of ``dbmazz`` has a layer
  (:data:`LAYERS`, lowest first); a module may import only from its own layer or below.
  Data flows one way: source → pipeline → sink → engine (docs/architecture.md).
* **No circle** between modules, lazy imports included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dbmazz"

#: Lowest first. A name is a top-level module or package of dbmazz ("" is dbmazz/__init__).
LAYERS: tuple[frozenset[str], ...] = (
    # Leaves every layer may use: names, errors, settings, the batch contract.
    frozenset({"_version", "errors", "lsn", "log", "memory", "config", "contract", "lazy",
               "retry", "signals"}),
    # The PostgreSQL side: replication, decoding, catalog, setup, and the state dbmazz
    # keeps in the source database (checkpoints).
    frozenset({"source", "state"}),
    frozenset({"pipeline"}),  # chunks → flushes → merged Arrow batches
    frozenset({"sink"}),  # targets
    frozenset({"snapshot"}),  # copying existing rows through a sink
    frozenset({"engine"}),  # orchestration and the one builder
    # Beside a running engine; the gRPC control plane; the argparse front door (it imports
    # only leaves and names its commands' modules as strings, so command modules below the
    # front ends — verify's — may reuse its config loading).
    frozenset({"verify", "api", "cli"}),
    # Front ends and test tooling.
    frozenset({"ui", "commands", "demo", "configdoc", "testing", "__main__", ""}),
)

#: Generated code (protobuf stubs) is not ours to layer.
EXCLUDED = ("dbmazz.api._proto",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: path for name, path in found.items() if not name.startswith(EXCLUDED)}


def _resolve(imported: str, modules: dict[str, Path]) -> str | None:
    """The module an import names: ``from dbmazz.x import y`` may name module x.y."""
    while imported and imported not in modules:
        imported = imported.rpartition(".")[0]
    return imported or None


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for target in targets:
            if target == "dbmazz" or target.startswith("dbmazz."):
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    yield resolved


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set(_imports(name, path, modules)) for name, path in modules.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int:
    top = _top(module)
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module}: dbmazz.{top} has no layer in LAYERS; give it one")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in graph.items() for target in targets
        if _layer(target) > _layer(module)
    )


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for nxt in sorted(graph.get(node, ())):
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_package_has_a_layer() -> None:
    for module in _graph():
        _layer(module)


def test_no_import_runs_back_up() -> None:
    assert upward_imports(_graph()) == []


def test_no_import_circle() -> None:
    assert circles(_graph()) == []


def test_the_checks_catch_what_they_are_for() -> None:
    """The rules fire on a made-up graph with one upward import and one circle."""
    graph = {
        "dbmazz.source.a": {"dbmazz.pipeline.b"},
        "dbmazz.pipeline.b": {"dbmazz.pipeline.c"},
        "dbmazz.pipeline.c": {"dbmazz.pipeline.b", "dbmazz.errors"},
        "dbmazz.errors": set(),
    }
    assert upward_imports(graph) == [
        "dbmazz.source.a (layer 1) imports dbmazz.pipeline.b (layer 2)"]
    assert circles(graph) == [["dbmazz.pipeline.b", "dbmazz.pipeline.c"]]
