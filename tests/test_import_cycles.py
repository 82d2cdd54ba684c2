"""No import cycles inside ``align3gr_kit/``: the package reads as layers, each importing only below it.

The graph is built from the source with ``ast`` (nothing is imported), at module granularity: an edge
``a -> b`` for every ``import align3gr_kit.b`` / ``from align3gr_kit.b import x`` in ``a``, at module
level or inside a function (a lazy import is still a dependency, and the cycles it hides are the ones
that grow unnoticed). ``from align3gr_kit.pkg import name`` points at ``pkg.name`` when that is a module,
else at the package's ``__init__``. The implicit import of a parent package's ``__init__`` is not an
edge: a package that re-exports its modules would otherwise be a cycle with each of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "align3gr_kit"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` under ``root`` (``pkg/__init__.py`` -> ``pkg``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is a module of the package, or None if outside it."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: {package modules it imports}}`` over every module under ``root``, self-edges dropped."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: climb from this module's package
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import name`: the module pkg.name if there is one, else pkg itself
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                resolved = _resolve(target, modules) if target.split(".")[0] == PACKAGE else None
                if resolved and resolved != module:
                    graph[module].add(resolved)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each a set of modules in a
    cycle), sorted; iterative, so a deep package cannot hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def _cycle_edges(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """The import edges inside one component, ``a -> b`` each, for the failure message."""
    members = set(component)
    return [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]


def test_tarjan_finds_a_planted_cycle_and_nothing_in_a_line():
    """The detector itself: a -> b -> c -> a is one component, d -> a and the line e -> f none."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"e": {"f"}, "f": set()}) == []


def test_graph_reads_lazy_and_from_imports(tmp_path):
    """A function-level import is an edge, ``from pkg import module`` points at the module."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "low.py").write_text("X = 1\n")
    (pkg / "top.py").write_text(
        "from align3gr_kit.sub import low\n"
        "def f():\n    import align3gr_kit.mid\n")
    (pkg / "mid.py").write_text("def g():\n    from align3gr_kit.top import f\n")
    graph = import_graph(pkg)
    assert graph[f"{PACKAGE}.top"] == {f"{PACKAGE}.sub.low", f"{PACKAGE}.mid"}
    assert strongly_connected(graph) == [[f"{PACKAGE}.mid", f"{PACKAGE}.top"]]


def test_no_import_cycles_in_the_package():
    """Every module of align3gr_kit/ imports only modules that never import it back, even lazily."""
    graph = import_graph()
    assert len(graph) > 50, f"only {len(graph)} modules found under {ROOT}: is the package path right?"
    cycles = strongly_connected(graph)
    if cycles:
        lines = []
        for component in cycles:
            lines.append(f"cycle among {len(component)} modules: " + ", ".join(component))
            lines += [f"    {edge}" for edge in _cycle_edges(component, graph)]
        pytest.fail("import cycles in align3gr_kit/ (move the shared code below both sides):\n"
                    + "\n".join(lines))
