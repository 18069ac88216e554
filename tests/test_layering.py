"""The layout is the architecture: imports point down only, protocol/ stays sans-IO."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each layer may import itself and the layers listed for it, nothing above.
ALLOWED = {
    "protocol": {"protocol"},
    "vstack": {"vstack", "protocol"},
    "nodes": {"nodes", "vstack", "protocol"},
    "web": {"web", "nodes", "vstack", "protocol"},
    "tools": {"tools", "web", "nodes", "vstack", "protocol"},
}
IO_MODULES = {"trio", "socket", "asyncio", "selectors", "trio_websocket", "ssl"}


def imports_of(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down_only(layer: str) -> None:
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for name, line in imports_of(path):
            top = name.split(".")[0]
            if top in ALLOWED and top not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert bad == []


def dynamic_imports_of(path: Path) -> list[tuple[str, int]]:
    """Calls that import by name at run time (``importlib.import_module(...)``,
    ``__import__(...)``), which the import checks above cannot follow."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                found.append((name, node.lineno))
    return found


@pytest.mark.parametrize("layer", ["protocol", "vstack"])
def test_lower_layers_do_no_network_io(layer: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for name, line in imports_of(path)
        if name.split(".")[0] in IO_MODULES
    ]
    assert bad == []
    dynamic = [f"{path.relative_to(ROOT)}:{line} calls {name}"
               for path in sorted((ROOT / layer).rglob("*.py"))
               for name, line in dynamic_imports_of(path)]
    assert dynamic == []


def test_the_checker_sees_a_dynamic_import(tmp_path: Path) -> None:
    planted = tmp_path / "sneaky.py"
    planted.write_text("import importlib\nt = importlib.import_module('trio')\n")
    assert dynamic_imports_of(planted) == [("import_module", 2)]


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    planted = tmp_path / "bad.py"
    planted.write_text("import trio\nfrom nodes.storage.node import StorageNode\n")
    names = {n for n, _ in imports_of(planted)}
    assert "trio" in names
    assert "nodes.storage.node" in names


# -- import cycles, and the size of modules and functions ------------------------------

PACKAGES = ("protocol", "vstack", "nodes", "web", "tools", "benchmarks")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in it, lazy imports too)."""
    files = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
                targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
            for target in targets:
                # the longest prefix that is a project module
                parts = target.split(".")
                while parts and ".".join(parts) not in files:
                    parts.pop()
                if parts and ".".join(parts) != name:
                    graph[name].add(".".join(parts))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_anywhere() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 50
    assert cycles(graph) == []


def test_no_service_module_imports_its_entry_point_back() -> None:
    graph = import_graph(ROOT, ("nodes",))
    bad = [f"{mod} imports {mod.rsplit('.', 1)[0]}.service"
           for mod, deps in graph.items()
           if not mod.endswith(".service") and f"{mod.rsplit('.', 1)[0]}.service" in deps]
    assert bad == []


def test_the_cycle_checker_finds_a_planted_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f() -> None:\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import c\n")
    assert cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def long_functions(path: Path, limit: int) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
            f"({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > limit]


@pytest.mark.parametrize("layer", PACKAGES[:-1])
def test_modules_and_functions_stay_small(layer: str) -> None:
    too_long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in sorted((ROOT / layer).rglob("*.py"))
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert too_long == []
    functions = [f for p in sorted((ROOT / layer).rglob("*.py"))
                 for f in long_functions(p, MAX_FUNCTION_LINES)]
    assert functions == []
