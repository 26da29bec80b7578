"""A solver that crashes is retried carefully, then without the start, then answered honestly.

The crashing solver is a real process that dies: a CBC backend whose executable is a script
that kills itself with SIGABRT (as CBC did on an internal assertion), or that does so only when
it is not asked for a careful solve. Every registered backend goes through the same retry path
(:func:`oamip.solve.loop.solver_run`), checked by making its ``solve_form`` raise.
"""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import oamip
from oamip import backends
from oamip.backends.cbc import CbcBackend
from oamip.errors import InvalidInputError, LicenceLimitError
from tests.nets import mlp

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
CBC = shutil.which("cbc")


def _batch(seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(6, 6)
    return x, mlp(seed)(x).argmax(dim=1)


def _script(folder: Path, body: str) -> str:
    path = folder / "cbc-wrapper.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _cbc_running(executable: str) -> CbcBackend:
    """A CBC backend whose solver is ``executable``."""
    return type("WrappedCbc", (CbcBackend,), {"name": "wrapped-cbc", "executable": executable})()


def test_a_solver_that_always_dies_answers_the_start_as_feasible_with_its_words(tmp_path):
    solver = _cbc_running(_script(tmp_path, "echo 'Assertion failed: crunch' >&2\nkill -ABRT $$"))
    x, y = _batch()
    found = oamip.score_neurons(mlp(0), x, y, backend=solver, time_limit=30)
    assert found.status == "feasible"
    assert found.bound is None
    assert "exited with status -6" in found.note
    assert "Assertion failed: crunch" in found.note
    assert "solved again carefully" in found.note
    assert "solved again carefully without the start" in found.note
    assert all(np.isin(s, (0.0, 1.0)).all() for s in found.scores.values())


@pytest.mark.skipif(CBC is None, reason="cbc not installed")
def test_a_solver_that_dies_unless_careful_is_answered_by_its_careful_solve(tmp_path):
    body = f'case "$*" in *"-preprocess off"*) exec {CBC} "$@";; esac\nkill -ABRT $$'
    solver = _cbc_running(_script(tmp_path, body))
    x, y = _batch()
    found = oamip.score_neurons(mlp(0), x, y, backend=solver, time_limit=30)
    exact = oamip.score_neurons(mlp(0), x, y, backend="cbc", time_limit=30)
    assert found.status == "optimal"
    assert found.objective == pytest.approx(exact.objective, rel=1e-6, abs=1e-9)
    assert "exited with status -6" in found.note and "solved again carefully" in found.note


@pytest.mark.parametrize("name", backends.available())
def test_every_backend_goes_through_the_same_retry_path(name, monkeypatch):
    solver = backends.get(name)
    calls = []

    def crash(self, form, options, warm_start):
        calls.append((options.careful, warm_start))
        raise RuntimeError(f"{name} library failure")

    monkeypatch.setattr(type(solver), "solve_form", crash)
    x, y = _batch()
    found = oamip.score_neurons(mlp(0), x, y, backend=name, time_limit=30)
    assert found.status == "feasible"
    assert f"RuntimeError: {name} library failure" in found.note
    warm = solver.capabilities.warm_start
    assert calls == [(False, warm), (True, warm), (True, False)]


@pytest.mark.parametrize("error", [InvalidInputError("bad option"), LicenceLimitError("size")])
def test_errors_no_retry_can_mend_are_raised(error, monkeypatch):
    def refuse(self, form, options, warm_start):
        raise error

    monkeypatch.setattr(backends.get("highs").__class__, "solve_form", refuse)
    x, y = _batch()
    with pytest.raises(type(error)):
        oamip.score_neurons(mlp(0), x, y, backend="highs", time_limit=30)
