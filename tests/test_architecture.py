"""The package's layering, checked from its source: no import cycles in the library, the library
never imports the pipeline, ``import einsearch`` stays light, and structure names are compared
only by the structure handlers (docs/design.md section 10)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "einsearch"
PIPELINE = "einsearch.search"
#: modules allowed to compare a structure name with "btt_moe" / "moe": the handler registry
STRUCTURE_HANDLERS = {"einsearch.structures"}
MOE_NAMES = {"btt_moe", "moe"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _is_library(name: str) -> bool:
    return name.startswith("einsearch") and not (name == PIPELINE or name.startswith(PIPELINE + "."))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST):
    """Import nodes anywhere (module level and inside functions), except ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def imports_of(name: str) -> set[str]:
    """einsearch modules that module ``name`` imports (resolved, submodules included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from pkg import sub`` needs only the submodule; ``from pkg import name`` needs pkg
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        for target in targets:
            if not target.startswith("einsearch"):
                continue
            # the nearest known module (``import einsearch.search.train`` -> that module)
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target:
                out.add(target)
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def library_graph() -> dict[str, set[str]]:
    return {m: {t for t in imports_of(m) if _is_library(t)} for m in MODULES if _is_library(m)}


def test_import_resolution_sees_function_level_imports():
    # sanity check of the walker itself: layers imports fast inside a method
    assert "einsearch.fast" in imports_of("einsearch.layers")
    assert {"einsearch.layers", "einsearch.structures"} <= imports_of("einsearch")


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_library():
    cycles = _cycles(library_graph())
    assert not cycles, f"import cycles (module- or function-level) among library modules: {cycles}"


def package_graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in MODULES}


def test_no_import_cycles_anywhere_in_the_package():
    """Library and pipeline (function-level imports included): e.g. the cost model is a leaf
    that sweep specs and explore use, and runplan's lr check builds on the sweep, not the reverse."""
    cycles = _cycles(package_graph())
    assert not cycles, f"import cycles among einsearch modules: {cycles}"


def test_the_cost_model_is_a_leaf_of_the_pipeline():
    users = {"einsearch.search.spec", "einsearch.search.runplan", "einsearch.search.sweep",
             "einsearch.search.explore", "einsearch.search.driver", "einsearch.search.report"}
    reached = set()
    stack = ["einsearch.search.costmodel"]
    while stack:
        for t in imports_of(stack.pop()):
            if t not in reached:
                reached.add(t)
                stack.append(t)
    assert not {m for m in reached if any(m == u or m.startswith(u + ".") for u in users)}


def test_library_never_imports_the_pipeline():
    bad = {m: sorted(t for t in imports_of(m) if not _is_library(t))
           for m in MODULES if _is_library(m)}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, f"library modules importing einsearch.search: {bad}"


def test_import_einsearch_stays_light():
    code = ("import sys, einsearch\n"
            "heavy = ('einsearch.search', 'matplotlib', 'yaml', 'scipy', 'sqlite3')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy[0])))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import einsearch loaded: {out.stdout.strip()}"


def _compared_moe_names(tree: ast.AST) -> list[int]:
    """Line numbers of comparisons with "btt_moe" / "moe" (directly or in a literal tuple/list/set)."""

    def names(node: ast.expr) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value.strip().lower()}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*(names(e) for e in node.elts)) if node.elts else set()
        return set()

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(names(o) & MOE_NAMES for o in operands):
                lines.append(node.lineno)
    return lines


def test_moe_finder_finds_planted_comparisons():
    tree = ast.parse("a == 'btt_moe'\nb in ('dense', 'moe')\nc == 'monarch'\nd != 'moe'\n")
    assert _compared_moe_names(tree) == [1, 2, 4]


@pytest.mark.parametrize("module", sorted(set(MODULES) - STRUCTURE_HANDLERS))
def test_only_structure_handlers_compare_moe_names(module):
    path = MODULES[module]
    lines = _compared_moe_names(ast.parse(path.read_text(), str(path)))
    assert not lines, (f"{module} compares a structure name with 'btt_moe'/'moe' at lines {lines}; "
                       "ask einsearch.parse_structure(...) for is_moe / theta / baseline instead")
