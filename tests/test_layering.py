"""The layering of the package: each folder imports only the layers listed before it.

The order (README, "Layout"): errors/checks/files -> network/bounds -> formulations -> backends
-> solve -> adapters -> training -> pipelines -> integrations -> cli. Folders are checked by their
source (every module, every import statement); the lowest layers are also imported in a fresh
interpreter to prove that they load no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "oamip"
SOLVERS = {"highspy", "pyscipopt", "gurobipy"}
ORDER = [
    ["errors", "checks", "files", "version", "progress"],
    ["network", "activations", "bounds", "sparse"],
    ["formulations"],
    ["backends"],
    ["solve"],
    ["adapters"],
    ["training"],
    ["pipelines"],
    ["integrations"],
    ["cli"],
]
THIRD_PARTY = {
    # what each layer may not import from outside the package
    "errors": {"torch", "pyomo", "numpy", *SOLVERS},
    "version": {"torch", "pyomo", "numpy", *SOLVERS},
    "progress": {"torch", "pyomo", "numpy", *SOLVERS},
    "checks": {"torch", "pyomo", *SOLVERS},
    "files": {"torch", "pyomo", *SOLVERS},
    "network": {"torch", "pyomo", *SOLVERS},
    "activations": {"torch", "pyomo", *SOLVERS},
    "bounds": {"torch", "pyomo", *SOLVERS},
    "sparse": {"torch", "pyomo", *SOLVERS},
    "formulations": {"torch", *SOLVERS},
    "backends": {"torch"},
    "solve": {"torch"},
}


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    if parts[0] != "oamip" or len(parts) < 2:
        return None
    for rank, group in enumerate(ORDER):
        if parts[1] in group:
            return rank
    return None


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "oamip":
                names.update(f"oamip.{alias.name}" for alias in node.names)
    return names


def _files(target: str) -> list[Path]:
    folder = PACKAGE / target
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{target}.py"]


def test_every_module_belongs_to_a_layer():
    known = {name for group in ORDER for name in group}
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    stray = top - known - {"__init__", "__main__", "__pycache__"}
    assert not stray, f"modules outside the layers: {sorted(stray)}; place them in ORDER"


@pytest.mark.parametrize("target", [name for group in ORDER for name in group])
def test_layer_imports_nothing_above_it(target):
    rank = _layer_of(f"oamip.{target}")
    for path in _files(target):
        if not path.exists():
            continue
        names = _imports(path)
        higher = sorted(n for n in names if (_layer_of(n) or 0) > rank)
        assert not higher, f"{path.relative_to(PACKAGE.parent)} imports higher layers {higher}"
        banned = THIRD_PARTY.get(target, set())
        bad = sorted(n for n in names for b in banned if n == b or n.startswith(b + "."))
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"


@pytest.mark.parametrize(
    "module", ["oamip", "oamip.network", "oamip.bounds", "oamip.formulations", "oamip.backends"]
)
def test_lower_layers_load_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"import {module} loads torch"


def test_the_package_imports_and_reads_models_without_onnx():
    """onnx is imported only when an .onnx file is read or written; without it, that is an
    error naming the extra."""
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "import oamip, oamip.adapters, oamip.pipelines.inputs, oamip.cli.commands\n"
        "try:\n    oamip.load_model('net.onnx')\n"
        "except oamip.InvalidInputError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "oamip[onnx]" in out.stdout


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (top level, inside functions, under
    TYPE_CHECKING): ``from a import b`` names the module ``a.b`` where there is one, else ``a``."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in paths else node.module)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a path that ends where it starts), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_anywhere():
    """No circle of imports, late and type-only imports included, between folders or inside
    one; the package's top (``oamip/__init__``) imports everything lazily and nothing imports
    it back."""
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
