"""An interrupted ``oamip prune --decompose layer --checkpoint`` run and its reruns, with a
real SIGINT sent to a real process; and a script without the main guard that asks for worker
processes.

The driver runs the ``oamip`` command in-process on an MLP 64-20-20-10 (trained briefly on
digits; continuous scores, so that no piece ends by itself before the signal) and says on stdout
when a solver run starts. The first run is sent SIGINT while its first piece solves: it writes
its results, status "interrupted". The reruns must solve that piece again from its saved best
(never worse), solve the piece never started anew, and say so, never repeating the old
interruption; a rerun with the same time limit reuses the pieces that ended by it, and one
with more time solves them again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import oamip
from oamip.training.data import load_data
from tests import nets
from tests.drivers import kill_group, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

START_SECONDS = 240.0
"""Start-up, heads and building, on a loaded machine."""
RUN_SECONDS = 300.0
"""A whole rerun (two pieces of a few seconds each, heads, baselines and writing)."""

DRIVER = textwrap.dedent(
    """
    import sys, time
    from oamip import backends
    from oamip.cli import main

    solver = type(backends.get("highs"))
    solve_form = solver.solve_form

    def announced(self, *args, **kwargs):
        print("SOLVING", time.time(), flush=True)
        return solve_form(self, *args, **kwargs)

    solver.solve_form = announced
    if __name__ == "__main__":
        print("EXIT", main(sys.argv[1:]), flush=True)
    """
)

UNGUARDED = textwrap.dedent(
    """
    import numpy as np
    import torch
    import oamip

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = np.random.default_rng(0).normal(size=(4, 4))
    oamip.score_neurons(model.eval(), x, np.array([0, 1, 0, 1]), decompose="class", n_jobs=2)
    print("SOLVED")
    """
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """An MLP 64-20-20-10 trained briefly on digits, saved for the driver."""
    data = load_data("digits")
    x = torch.as_tensor(data.x_train, dtype=torch.float32)
    model = nets.digits_mlp(x, torch.as_tensor(data.y_train), (20, 20))
    path = tmp_path_factory.mktemp("checkpoint-signals") / "mlp.pt"
    oamip.save_model(model, path)
    return path


def _prune(model_path: Path, out: Path, checkpoint: Path, time_limit: float) -> list[str]:
    """``oamip prune`` by layer with ``checkpoint`` (continuous scores, hinge loss)."""
    return [
        "prune",
        *("--model", str(model_path), "--data", "digits", "--loss", "hinge"),
        *("--scores", "continuous", "--finetune-epochs", "0", "--decompose", "layer"),
        *("--time-limit", str(time_limit), "--checkpoint", str(checkpoint), "--out", str(out)),
    ]


def _run(script: Path, args: list[str], interrupt: bool) -> list[str]:
    """Run the driver (SIGINT to its process group two seconds after its first solver run
    started, if ``interrupt``); its output lines."""
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        if interrupt:
            wait_for(process, lines, "SOLVING", START_SECONDS)
            time.sleep(2.0)
            os.killpg(process.pid, signal.SIGINT)
        wait_for(process, lines, "EXIT", RUN_SECONDS)
        return lines
    finally:
        kill_group(process)


def _pieces(out: Path) -> list[dict]:
    return json.loads((out / "report.json").read_text())["subproblems"]


@pytest.mark.slow
def test_reruns_continue_interrupted_and_short_pieces_and_reuse_final_ones(model_path):
    folder = model_path.parent
    script, checkpoint = folder / "driver.py", folder / "pieces"
    script.write_text(DRIVER)

    lines = _run(script, _prune(model_path, folder / "first", checkpoint, 60), interrupt=True)
    assert "EXIT 0" in lines
    assert sum(line.startswith("solve interrupted (Ctrl-C or SIGTERM)") for line in lines) == 1
    first = _pieces(folder / "first")
    assert [p["status"] for p in first] == ["interrupted", "interrupted"]
    assert len(list(checkpoint.glob("piece-*.json"))) == 1  # the piece never started is not

    lines = _run(script, _prune(model_path, folder / "second", checkpoint, 3), interrupt=False)
    second = _pieces(folder / "second")
    assert not any(line.startswith("solve interrupted") for line in lines)
    assert "interrupted" not in [p["status"] for p in second]
    assert [(p["continued"], p["resumed"]) for p in second] == [(True, False), (False, False)]
    assert second[0]["objective"] <= first[0]["objective"] + 1e-9
    assert any("1 continued from their best in it, 1 solved anew" in line for line in lines), lines
    assert any("continued from an earlier run's best" in line for line in lines)

    lines = _run(script, _prune(model_path, folder / "third", checkpoint, 3), interrupt=False)
    third = _pieces(folder / "third")
    assert all(p["resumed"] for p in third)
    assert [p["objective"] for p in third] == [p["objective"] for p in second]
    assert not any(line.startswith("SOLVING") or "solve interrupted" in line for line in lines)
    assert any("2 resumed from the checkpoint (final), 0 continued" in line for line in lines)

    lines = _run(script, _prune(model_path, folder / "fourth", checkpoint, 6), interrupt=False)
    fourth = _pieces(folder / "fourth")
    for before, after in zip(third, fourth):
        assert after["resumed"] == (before["status"] == "optimal")
        assert after["continued"] == (before["status"] != "optimal")
        assert after["objective"] <= before["objective"] + 1e-9


def test_worker_processes_from_a_script_without_the_main_guard_are_refused_in_one_line(
    tmp_path,
):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=START_SECONDS
    )
    assert done.returncode == 1 and "SOLVED" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("oamip.errors.InvalidInputError: worker processes (n_jobs > 1)")
    assert 'if __name__ == "__main__":' in last
    assert "bootstrapping" not in done.stderr
