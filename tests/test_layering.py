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


@pytest.mark.parametrize("layer", ["protocol", "vstack"])
def test_lower_layers_do_no_network_io(layer: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for name, line in imports_of(path)
        if name.split(".")[0] in IO_MODULES
    ]
    assert bad == []


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    planted = tmp_path / "bad.py"
    planted.write_text("import trio\nfrom nodes.storage.node import StorageNode\n")
    names = {n for n, _ in imports_of(planted)}
    assert "trio" in names
    assert "nodes.storage.node" in names
