"""The house rules, checked on the code itself.

* Imports flow one way: no edgesr module imports, directly or through others, a module that imports
  it. Every import statement counts, including those inside functions (a function-level import that
  closes a loop is a cycle hidden from the interpreter, not removed); only `if TYPE_CHECKING:` blocks,
  which never run, are left out. Run this file as a script to print the graph's circles and counts.
* One place constructs ONNX Runtime sessions (`edgesr.backends.ort_session`).
* Every runner class implements the one Runner contract (`edgesr.backends.base`).
* tests/ mirrors the package: one folder per area (the map in docs/DEVELOPING.md), shared helpers
  only in tests/helpers (no test module defines a name a helper module defines), and tests use
  edgesr's public names (the few private ones left are listed below, each with its reason).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "edgesr"
TESTS_DIR = PACKAGE_DIR.parent / "tests"


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


# ------------------------------------------------------------------------------- the tests' own house

NOT_AREAS = {"data", "helpers", "__pycache__"}  # test data, shared helpers, bytecode


def area_folders() -> set[str]:
    """The area folders under tests/ (each holds test modules of one part of the package)."""
    return {p.name for p in TESTS_DIR.iterdir() if p.is_dir() and p.name not in NOT_AREAS}


def all_test_modules() -> list[Path]:
    return sorted(p for p in TESTS_DIR.rglob("*.py") if "data" not in p.relative_to(TESTS_DIR).parts
                  and "helpers" not in p.relative_to(TESTS_DIR).parts)


def documented_areas(text: str) -> set[str]:
    """Folders named as `tests/<area>/` in docs/DEVELOPING.md's tests map."""
    import re

    return set(re.findall(r"`tests/([a-z_]+)/`", text)) - NOT_AREAS


def test_tests_mirror_the_package_areas() -> None:
    """Every test module sits in an area folder, and the area folders are the documented ones."""
    loose = sorted(p.name for p in TESTS_DIR.glob("test_*.py"))
    assert not loose, f"test modules directly in tests/ (put each in its area folder): {loose}"
    doc = (PACKAGE_DIR.parent / "docs" / "DEVELOPING.md").read_text(encoding="utf-8")
    on_disk, documented = area_folders(), documented_areas(doc)
    assert on_disk == documented, (f"tests/ folders not in docs/DEVELOPING.md's tests map: {sorted(on_disk - documented)}; "
                                   f"documented but missing: {sorted(documented - on_disk)}")
    names = [p.name for p in all_test_modules()]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"test module names used twice (pytest imports them by file name): {twice}"


def top_level_names(path: Path) -> set[str]:
    """Functions, classes and assigned names a module defines at its top level."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_no_test_module_redefines_a_helper() -> None:
    helpers = {name: f"helpers.{p.stem}" for p in sorted((TESTS_DIR / "helpers").glob("*.py"))
               for name in top_level_names(p) if not name.startswith("__")}
    assert len(helpers) >= 10, "the walker found too few helpers"
    copies = [f"{p.relative_to(TESTS_DIR)}: {n} (import it from {helpers[n]})"
              for p in all_test_modules() for n in sorted(top_level_names(p) & helpers.keys())]
    assert not copies, "test modules define a name tests/helpers already defines:\n" + "\n".join(copies)


def test_test_modules_import_only_their_own_folders_modules() -> None:
    """pytest puts a test module's own folder on sys.path; a module of another area resolves only
    when that area is collected too (share it through tests/helpers instead)."""
    far = []
    for p in all_test_modules():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                if name.startswith("test_") and not (p.parent / f"{name.split('.')[0]}.py").is_file():
                    far.append(f"{p.relative_to(TESTS_DIR)} imports {name}")
    assert not far, f"test modules import another folder's test module: {far}"


# Private edgesr names the tests still use, each with why. A new one fails the test below: test
# through the public function that uses it, or make it public with a docstring.
PRIVATE_NAMES_USED_BY_TESTS = {
    "edgesr.backends.trt_flavour._cache": "emptied to test a missing TensorRT package after another test loaded it",
    "edgesr.export.litert._nhwc": "the NHWC wrapper alone, proved exact before LiteRT converts it",
    "edgesr.cli._warnings_as_notes": "how the CLI turns warnings into notes, without a command that warns",
}


def private_names_used(path: Path) -> set[str]:
    """edgesr names starting with one underscore that a test module imports, reads as an attribute
    of an edgesr module or object, or patches by name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound: dict[str, str] = {}  # local name -> dotted edgesr name
    found: set[str] = set()

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgesr":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if private(a.name):
                    found.add(full)
                bound[a.asname or a.name] = full
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "edgesr":
                    bound[a.asname or "edgesr"] = a.name if a.asname else "edgesr"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                found.add(".".join([bound[base.id], *reversed(chain)]))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("setattr", "delattr", "setitem"):
            args = node.args
            if len(args) >= 2 and isinstance(args[0], ast.Name) and args[0].id in bound:
                if isinstance(args[1], ast.Constant) and isinstance(args[1].value, str) and private(args[1].value):
                    found.add(f"{bound[args[0].id]}.{args[1].value}")
            if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                parts = args[0].value.split(".")
                if parts[0] == "edgesr" and any(private(x) for x in parts):
                    found.add(args[0].value)
    return found


def test_tests_use_public_names() -> None:
    used: dict[str, list[str]] = {}
    for p in all_test_modules():
        for name in private_names_used(p):
            used.setdefault(name, []).append(str(p.relative_to(TESTS_DIR)))
    new = {n: files for n, files in used.items() if n not in PRIVATE_NAMES_USED_BY_TESTS}
    assert not new, f"tests use private edgesr names: {new}"
    gone = sorted(set(PRIVATE_NAMES_USED_BY_TESTS) - set(used))
    assert not gone, f"no test uses these any more: remove them from PRIVATE_NAMES_USED_BY_TESTS: {gone}"


def test_house_checks_can_fail(tmp_path: Path) -> None:
    # The walkers above must see what they look for.
    probe = tmp_path / "test_probe.py"
    probe.write_text("import edgesr.cli as c\nfrom edgesr.publish import _x, ok\nfrom edgesr import imaging\n"
                     "def run_cli(): pass\nc._y\nimaging._z.w\nmonkeypatch.setattr(imaging, '_v', 1)\n"
                     "monkeypatch.setattr('edgesr.bench._u', 1)\n")
    assert private_names_used(probe) == {"edgesr.publish._x", "edgesr.cli._y", "edgesr.imaging._z",
                                         "edgesr.imaging._v", "edgesr.bench._u"}
    assert "run_cli" in top_level_names(probe)
    assert documented_areas("| `tests/quant/` | x |\n`tests/helpers/` `tests/data/`") == {"quant"}


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
