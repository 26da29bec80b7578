"""The command line starts fast: ``--version``, ``--help`` and argument errors answer without
importing torch, Pyomo, numpy or the solvers, and the defaults its help shows (copies, in
:mod:`oamip.cli.defaults`) equal those of the modules that own them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from importlib import import_module

import pytest

from oamip import backends
from oamip.cli import defaults

SOLVERS = ("highspy", "pyscipopt", "gurobipy")
HEAVY = ("torch", "pyomo", "numpy", "scipy", "sklearn", "matplotlib", *SOLVERS)
"""Modules that must not be loaded before a subcommand runs."""
PROBE = """
import sys
from oamip.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
heavy = sorted(name for name in {heavy} if name in sys.modules)
print("STATUS", status, "HEAVY", ",".join(heavy), file=sys.stderr)
"""


def _probe(argv: list[str]) -> tuple[int, str]:
    """Run ``oamip argv`` in a fresh interpreter: its exit status and the heavy modules loaded."""
    code = PROBE.format(heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120
    )
    last = done.stderr.strip().splitlines()[-1].split()
    assert last[0] == "STATUS", done.stderr
    return int(last[1]), last[3] if len(last) > 3 else ""


@pytest.mark.parametrize(
    "argv, status",
    [
        (["--version"], 0),
        (["--help"], 0),
        *(([name, "--help"], 0) for name in ("prune", "spr", "transfer", "bench", "export")),
        (["prune", "--lam", "x"], 2),
        (["prune", "--no-such-option"], 2),
        (["no-such-command"], 2),
        ([], 2),
    ],
)
def test_answers_without_importing_the_heavy_stack(argv, status):
    assert _probe(argv) == (status, "")


def _source(where: str):
    module, name = where.split(":")
    return getattr(import_module(module), name)


@pytest.mark.parametrize("name", sorted(defaults.SOURCES))
def test_each_copied_default_equals_its_source(name):
    source = _source(defaults.SOURCES[name])
    expected = tuple(source) if isinstance(source, dict) else source
    assert getattr(defaults, name) == expected


@pytest.mark.parametrize("name", sorted(defaults.SETTINGS))
def test_each_copied_settings_default_equals_the_settings_class(name):
    cls = _source(defaults.SETTINGS[name])
    copied = vars(getattr(defaults, name))
    assert set(copied) <= {field.name for field in fields(cls)}
    real = cls()
    assert {key: getattr(real, key) for key in copied} == copied


def test_the_backend_names_are_those_the_library_knows():
    assert defaults.backend_names() == backends.known()
