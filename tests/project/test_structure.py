"""The house rules, checked on the code itself.

* Imports flow one way: no edgesr module imports, directly or through others, a module that imports
  it. Every import statement counts, including those inside functions (a function-level import that
  closes a loop is a cycle hidden from the interpreter, not removed); only `if TYPE_CHECKING:` blocks,
  which never run, are left out. Run this file as a script to print the graph's circles and counts.
* One place constructs ONNX Runtime sessions (`edgesr.backends.ort_session`).
* Every runner class implements the one Runner contract (`edgesr.backends.base`).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "edgesr"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def edgesr_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Collects (target module, inside a function?) for every import of an edgesr module."""

    def __init__(self, name: str, is_package: bool, modules: dict[str, Path]) -> None:
        self.package = name if is_package else name.rpartition(".")[0]
        self.modules = modules
        self.depth = 0
        self.found: list[tuple[str, bool]] = []

    def _add(self, target: str) -> None:
        while target and target not in self.modules:  # `from .a import b` where b is a name in a
            target = target.rpartition(".")[0]
        if target:
            self.found.append((target, self.depth > 0))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "edgesr" or alias.name.startswith("edgesr."):
                self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
            if not (mod == "edgesr" or mod.startswith("edgesr.")):
                return
        for alias in node.names:
            sub = f"{mod}.{alias.name}"
            self._add(sub if sub in self.modules else mod)


def import_graph(include_functions: bool = True) -> dict[str, set[str]]:
    modules = edgesr_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        graph[name] = {t for t, inside in visitor.found if t != name and (include_functions or not inside)}
    return graph


def imports_inside_functions() -> tuple[int, int]:
    """(all, edgesr-internal) import statements whose nearest enclosing scope is a function."""
    counts = [0, 0]

    class Counter(ast.NodeVisitor):
        depth = 0

        def _function(self, node: ast.AST) -> None:
            self.depth += 1
            self.generic_visit(node)
            self.depth -= 1

        visit_FunctionDef = visit_AsyncFunctionDef = _function

        def _import(self, node: ast.Import | ast.ImportFrom) -> None:
            if self.depth:
                counts[0] += 1
                name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                internal = (isinstance(node, ast.ImportFrom) and node.level > 0) or (name or "").startswith("edgesr")
                counts[1] += internal

        visit_Import = visit_ImportFrom = _import

    for path in edgesr_modules().values():
        Counter().visit(ast.parse(path.read_text(encoding="utf-8")))
    return counts[0], counts[1]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); returns the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _describe(graph: dict[str, set[str]], comp: list[str]) -> str:
    members = set(comp)
    arrows = [f"{a} -> {b}" for a in comp for b in sorted(graph[a] & members)]
    return f"{len(comp)} modules: " + "; ".join(arrows)


def test_no_import_cycle() -> None:
    graph = import_graph(include_functions=True)
    assert len(graph) > 50, "the walker found too few edgesr modules"
    circles = strongly_connected(graph)
    assert not circles, "import cycles in edgesr:\n" + "\n".join(_describe(graph, c) for c in circles)


def test_one_place_constructs_ort_sessions() -> None:
    # The only InferenceSession( call in edgesr and its benchmarks is the factory's; everything else calls
    # ort_session() (tests build their own sessions on purpose: an independent reference).
    allowed = PACKAGE_DIR / "backends" / "ort_session.py"
    files = sorted(PACKAGE_DIR.rglob("*.py")) + sorted((PACKAGE_DIR.parent / "benchmarks").glob("*.py"))
    found = [f"{p.relative_to(PACKAGE_DIR.parent)}:{i}" for p in files
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if "InferenceSession(" in line and not line.lstrip().startswith("#") and p != allowed]
    assert not found, "ort.InferenceSession constructed outside edgesr.backends.ort_session: " + ", ".join(found)


def _runner_classes() -> list[str]:
    """module:Class of every class in edgesr named *Runner (the contract's own module aside)."""
    out = []
    for name, path in edgesr_modules().items():
        if name == "edgesr.backends.base":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Runner"):
                out.append(f"{name}:{node.name}")
    return out


def test_every_runner_class_implements_the_contract() -> None:
    import importlib

    from edgesr.backends.base import BaseRunner

    names = _runner_classes()
    assert len(names) >= 10, names  # torch, torch-cuda, ORT x2, OpenVINO, TensorRT, LiteRT, ncnn, ExecuTorch, ...
    outside = []
    for item in names:
        module, cls = item.split(":")
        try:
            obj = getattr(importlib.import_module(module), cls)
        except ImportError:  # a module whose optional dependency is absent here is still checked by name
            continue
        if not issubclass(obj, BaseRunner):
            outside.append(item)
    assert not outside, f"runner classes outside the Runner contract: {outside}"


def test_base_runner_contract() -> None:
    import numpy as np

    from edgesr.backends.base import BaseRunner, Runner, TensorMeta

    class Doubler(BaseRunner):
        name = "doubler:int8"
        closed = False

        def run(self, x: np.ndarray) -> np.ndarray:
            return 2 * x

        def close(self) -> None:
            self.closed = True

    with Doubler() as r:
        assert isinstance(r, Runner)
        assert r.precision == "int8"  # from the name, when the runner has nothing better
        r.precision = "fp32"
        assert r.precision == "fp32"
        assert r.spec is None and r.input_metadata() == (TensorMeta("input", (None, None, None, None)),)
        assert r.run(np.ones((1, 3, 2, 2), np.float32)).sum() == 24
    assert r.closed


def test_walker_sees_a_cycle() -> None:
    # The checker itself must be able to fail.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


if __name__ == "__main__":
    for functions in (False, True):
        g = import_graph(include_functions=functions)
        comps = strongly_connected(g)
        print(f"{'all imports' if functions else 'module-level imports'}: {len(g)} modules, "
              f"{sum(map(len, g.values()))} arrows, {len(comps)} circles")
        if "-v" in sys.argv:
            for c in comps:
                print("  ", _describe(g, c))
        else:
            for c in comps:
                print("   ", len(c), "modules:", ", ".join(c[:8]) + (" ..." if len(c) > 8 else ""))
    inside, internal = imports_inside_functions()
    print(f"imports inside functions: {inside} ({internal} of edgesr's own modules)")
