"""Ctrl-C during a decomposed solve, with real signals sent to real processes.

A driver script scores an MLP 64-20-20-10 (trained briefly on digits; continuous scores and no
time limit, so no piece ends by itself within the test) with ``decompose="layer"``, one piece
after another or on two worker processes. It wraps the backend's ``solve_form`` to say on
stdout when a solver run starts in the driver's own process. The test sends SIGINT to the
driver's whole process group, as a terminal's Ctrl-C does: the call must return within seconds
with status "interrupted", the piece under way keeping its best solution, no piece started after
it and none reported as an error.
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

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip.solve.decompose import NOT_STARTED
from oamip.training.data import load_data

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

RETURN_SECONDS = 30.0
"""The call must return within this many seconds of the SIGINT (on a busy machine)."""
START_SECONDS = 240.0
"""Start-up, heads and building, on a loaded machine."""
WORKER_SECONDS = 25.0
"""With worker processes, the SIGINT is sent this long after the call starts (spawned workers
import the package and build their pieces first)."""

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import oamip
    from oamip import backends

    solver = type(backends.get("highs"))
    solve_form = solver.solve_form

    def announced(self, *args, **kwargs):
        print("SOLVING", time.time(), flush=True)
        return solve_form(self, *args, **kwargs)

    solver.solve_form = announced
    if __name__ == "__main__":  # spawned workers import this file: they must not run it
        path, n_jobs = sys.argv[1], int(sys.argv[2])
        batch = json.loads(open(path + ".json").read())
        print("START", time.time(), flush=True)
        found = oamip.score_neurons(
            oamip.load_model(path), batch["x"], batch["y"], scores="continuous", time_limit=None,
            decompose="layer", aux_data=(batch["aux_x"], batch["aux_y"]), n_jobs=n_jobs,
        )
        pieces = [
            {"layer": p.layer, "status": p.status, "note": p.note, "error": p.error,
             "scored": sorted(p.scores)} for p in found.subproblems
        ]
        done = json.dumps({"status": found.status, "pieces": pieces})
        print("DONE", time.time(), done, flush=True)
    """
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """An MLP 64-20-20-10 trained briefly on digits, ten samples (one per class) and the
    training split for the heads, saved for the driver."""
    data = load_data("digits")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 10)
    )
    x = torch.as_tensor(data.x_train, dtype=torch.float32)
    y = torch.as_tensor(data.y_train)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    path = tmp_path_factory.mktemp("decompose-interrupt") / "mlp.pt"
    oamip.save_model(model.eval(), path)
    first = [int(np.flatnonzero(data.y_train == c)[0]) for c in range(10)]
    batch = {
        "x": data.x_train[first].tolist(),
        "y": data.y_train[first].tolist(),
        "aux_x": data.x_train.tolist(),
        "aux_y": data.y_train.tolist(),
    }
    path.with_name("mlp.pt.json").write_text(json.dumps(batch))
    return path


def _interrupted_run(path: Path, n_jobs: int) -> tuple[dict, float, list[str]]:
    """Run the driver, send SIGINT to its process group once a solve is under way; the
    driver's result, the seconds from the SIGINT to its answer, and its output lines."""
    script = path.with_name("driver.py")
    script.write_text(DRIVER)
    process = subprocess.Popen(
        [sys.executable, str(script), str(path), str(n_jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        _wait_for(process, lines, "START")
        if n_jobs == 1:
            _wait_for(process, lines, "SOLVING")
            time.sleep(2.0)
        else:
            time.sleep(WORKER_SECONDS)
        os.killpg(process.pid, signal.SIGINT)
        sent = time.time()
        done = _wait_for(process, lines, "DONE", RETURN_SECONDS)
        return json.loads(done.split(" ", 2)[2]), float(done.split()[1]) - sent, lines
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_for(process, lines: list[str], word: str, seconds: float = START_SECONDS) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith(word + " "):
            return line
    raise AssertionError(f"no {word} line within {seconds} s; output:\n" + "\n".join(lines))


def test_ctrl_c_stops_the_piece_under_way_and_starts_no_other(model_path):
    result, seconds, lines = _interrupted_run(model_path, n_jobs=1)
    assert seconds < RETURN_SECONDS
    assert result["status"] == "interrupted"
    first, rest = result["pieces"][0], result["pieces"][1:]
    assert first["status"] == "interrupted" and first["scored"] == [first["layer"]]
    assert first["error"] is None
    assert rest and all(p["status"] == "interrupted" and p["note"] == NOT_STARTED for p in rest)
    assert sum(line.startswith("SOLVING ") for line in lines) >= 1


def test_ctrl_c_ends_a_run_on_worker_processes_without_errors(model_path):
    result, seconds, _ = _interrupted_run(model_path, n_jobs=2)
    assert seconds < RETURN_SECONDS
    assert result["status"] == "interrupted"
    for piece in result["pieces"]:
        assert piece["error"] is None
        assert piece["status"] == "interrupted"
        assert piece["scored"] == [piece["layer"]] or piece["note"] == NOT_STARTED
