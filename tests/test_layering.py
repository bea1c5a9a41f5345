"""The package layering of DESIGN.md: no import cycle between surgeon's top-level packages and modules
(imports inside functions count), and no private name imported from another module."""

from __future__ import annotations

import ast
from pathlib import Path

import surgeon

ROOT = Path(surgeon.__file__).resolve().parent


def _units() -> set[str]:
    """The top-level packages and modules of surgeon (``surgeon.X``)."""
    return {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
            if (p.is_file() and p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}


def _imports(path: Path):
    """``(imported module's dotted name, imported names)`` for every import in ``path``, at any depth."""
    rel = path.relative_to(ROOT.parent).with_suffix("").parts
    package = list(rel[:-1])  # the package a relative import starts from (for __init__.py: its own)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            yield module, [a.name for a in node.names]


def _graph() -> dict[str, set[str]]:
    units = _units()
    graph: dict[str, set[str]] = {u: set() for u in units}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if len(parts) == 1 and parts[0] == "__init__.py":
            continue  # surgeon/__init__.py re-exports surgeon.load lazily; it is the root, not a unit
        source = Path(parts[0]).stem
        for module, names in _imports(path):
            parts_m = module.split(".")
            if parts_m[0] != "surgeon":
                continue
            targets = [parts_m[1]] if len(parts_m) > 1 else [n for n in names if n in units]
            graph[source].update(t for t in targets if t in units and t != source)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_the_graph_sees_function_level_imports():
    g = _graph()
    assert "loading" in g["commands"]  # commands/output.py imports surgeon.load inside a function
    assert "manifest" in g["loading"]  # loading.py reads the manifest inside load()
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_cycle_between_top_level_packages():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle between surgeon packages: " + " -> ".join(cycle)


def test_no_private_name_imported_across_modules():
    bad = []
    for path in ROOT.rglob("*.py"):
        for module, names in _imports(path):
            if not module.startswith("surgeon"):
                continue
            target = ROOT.parent.joinpath(*module.split("."))
            for n in names:
                is_module = (target / f"{n}.py").is_file() or (target / n / "__init__.py").is_file()
                if n.startswith("_") and not n.startswith("__") and not is_module:
                    bad.append(f"{path.relative_to(ROOT.parent)} imports {n} from {module}")
    assert not bad, "private names imported across modules (make them public or move them): " + "; ".join(bad)
