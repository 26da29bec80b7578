"""The layering of DESIGN.md §6: a lower layer never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "oamip"
SOLVERS = {"highspy", "pyscipopt", "gurobipy"}

FORBIDDEN = {
    "checks.py": {"torch", "pyomo", *SOLVERS, "oamip.formulations", "oamip.backends"},
    "network.py": {"torch", "pyomo", *SOLVERS, "oamip.formulations", "oamip.backends"},
    "bounds.py": {"torch", "pyomo", *SOLVERS, "oamip.formulations", "oamip.backends"},
    "formulations": {"torch", *SOLVERS, "oamip.backends", "oamip.adapters", "oamip.scoring"},
    "backends": {"torch", "oamip.formulations", "oamip.adapters", "oamip.scoring"},
    "adapters": {*SOLVERS, "oamip.backends", "oamip.formulations", "oamip.scoring"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _files(target: str) -> list[Path]:
    path = PACKAGE / target
    return sorted(path.glob("*.py")) if path.is_dir() else [path]


@pytest.mark.parametrize("target", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(target):
    for path in _files(target):
        bad = {
            name
            for name in _imports(path)
            for banned in FORBIDDEN[target]
            if name == banned or name.startswith(banned + ".")
        }
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}"
