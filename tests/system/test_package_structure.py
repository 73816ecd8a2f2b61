"""The package's structure: no import circle, no function-level import inside the package, and no
module above the size limit unless the documentation explains it."""
import ast
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple
from ..conftest import REPO

PACKAGE = REPO / "hkd_d2"
DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAX_LINES = 400


def _modules() -> Dict[str, Path]:
    """{dotted module name: file} of every module of the package (packages by their __init__)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported(module: str, node: ast.AST, modules: Dict[str, Path]) -> List[str]:
    """The package's modules an import statement loads (a ``from P import sub`` loads P.sub)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".")
        if modules[module].name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
    return [n for n in names if n in modules]


def _import_graph() -> Tuple[Dict[str, Set[str]], List[Tuple[str, int]]]:
    """Module-level import edges, and (module, line) of every import inside a function or class."""
    modules = _modules()
    edges, nested = {}, []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
               for n in ast.walk(stmt)}
        edges[module] = set()
        for node in ast.walk(tree):
            targets = _imported(module, node, modules)
            if targets and id(node) in top:
                edges[module].update(targets)
            elif targets:
                nested.append((module, node.lineno))
    return edges, nested


def _cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    state, stack, cycles = {}, [], []

    def visit(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(edges[u] - {u}):
            if state.get(v) == "open":
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return cycles


def test_the_graph_helpers_find_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_imports_have_no_circle():
    edges, _ = _import_graph()
    assert len(edges) > 50 and "hkd_d2.modeling.distill.hkd" in edges["hkd_d2.modeling.distill"]
    assert _cycles(edges) == []


def test_no_function_level_import_inside_the_package():
    _, nested = _import_graph()
    assert nested == []


def test_modules_above_the_size_limit_are_explained_in_the_docs():
    named = {m for page in DOC_PAGES for m in re.findall(r"`(hkd_d2/[\w/]+\.py)` \(about \d+ lines", page.read_text())}
    too_long = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                if len(p.read_text().splitlines()) > MAX_LINES}
    assert too_long <= named, f"modules above {MAX_LINES} lines not explained in README.md or docs/: {too_long - named}"
