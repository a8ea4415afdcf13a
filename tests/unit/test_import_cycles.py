"""No import cycles among forge's modules (module-level and function-level imports alike)."""

from __future__ import annotations

import ast
from pathlib import Path

import forge

ROOT = Path(forge.__file__).resolve().parent


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module → the forge modules it imports (``from forge.x import y`` counts ``forge.x.y``
    when that is a module, else ``forge.x``). A package's ``__init__`` importing its own
    submodules (registering CLI verbs) and a submodule importing its package's names are one
    unit, not a cycle: the edge child → own parent package is left out."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != name and t.startswith("forge") and not (name.startswith(t + ".")):
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)) is not None:
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)) is not None:
            return found
    return None


def test_detector_finds_a_planted_cycle(tmp_path: Path) -> None:
    """The detector itself: two modules importing each other (one lazily) are a cycle."""
    pkg = tmp_path / "forge"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("from forge.cli import daemons\n")
    (pkg / "cli" / "daemons.py").write_text("from forge.cli import cli\n")
    (pkg / "up.py").write_text("def f():\n    from forge.cli.daemons import g\n")
    assert find_cycle(import_graph(pkg)) is None  # a package and its own submodule: one unit
    (pkg / "cli" / "daemons.py").write_text(
        "from forge.cli import cli\n\ndef g():\n    from forge import up\n"
    )
    assert find_cycle(import_graph(pkg)) == ["forge.cli.daemons", "forge.up", "forge.cli.daemons"]


def test_forge_has_no_import_cycles() -> None:
    """forge's modules import one another without a cycle (lazy imports included)."""
    assert find_cycle(import_graph()) is None
