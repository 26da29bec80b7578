"""Ctrl-C during a decomposed solve, with real signals sent to real processes.

A driver script scores an MLP 64-20-20-10 (trained briefly on digits; continuous scores and no
time limit, so no piece ends by itself within the test) with ``decompose="layer"``, one piece
after another or on two worker processes. It wraps the backend's ``solve_form`` to say on
stdout when a solver run starts in the driver's own process. The test sends SIGINT to the
driver's whole process group, as a terminal's Ctrl-C does: the call must return within seconds
with status "interrupted", the piece under way keeping its best solution, no piece started after
it and none reported as an error. The same holds for SIGINT or SIGTERM sent to the driver's
main process alone (as a scheduler or a parent process sends it), which must say on stderr at
once that it stops and stop the workers' solves within seconds, and for SIGTERM to the group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import oamip
from oamip import backends
from oamip.solve.decompose import NOT_STARTED
from oamip.training.data import load_data
from tests import nets
from tests.drivers import kill_group, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

RETURN_SECONDS = 30.0
"""The call must return within this many seconds of the SIGINT (on a busy machine)."""
START_SECONDS = 240.0
"""Start-up, heads and building, on a loaded machine."""
WORKER_SECONDS = 25.0
"""With worker processes, the SIGINT is sent this long after the call starts (spawned workers
import the package and build their pieces first)."""
STOP_SECONDS = 5.0
"""Every solver run must return within this many seconds of the signal (about two; more on a
busy machine)."""

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import oamip
    from oamip import backends

    solver = type(backends.get("highs"))
    solve_form = solver.solve_form

    def announced(self, *args, **kwargs):
        print("SOLVING", time.time(), flush=True)
        result = solve_form(self, *args, **kwargs)
        print("RETURNED", time.time(), result.status, flush=True)
        return result

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
    x = torch.as_tensor(data.x_train, dtype=torch.float32)
    model = nets.digits_mlp(x, torch.as_tensor(data.y_train), (20, 20))
    path = tmp_path_factory.mktemp("decompose-interrupt") / "mlp.pt"
    oamip.save_model(model, path)
    first = [int(np.flatnonzero(data.y_train == c)[0]) for c in range(10)]
    batch = {
        "x": data.x_train[first].tolist(),
        "y": data.y_train[first].tolist(),
        "aux_x": data.x_train.tolist(),
        "aux_y": data.y_train.tolist(),
    }
    path.with_name("mlp.pt.json").write_text(json.dumps(batch))
    return path


def _interrupted_run(
    path: Path, n_jobs: int, signum: int = signal.SIGINT, group: bool = True
) -> tuple[dict, float, list[str]]:
    """Run the driver, send ``signum`` to its process group (or, not ``group``, to its main
    process alone, two seconds after a worker's solve started) once a solve is under way; the
    driver's result, the seconds from the signal to its answer, and its output lines (the
    signal's time last)."""
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
        wait_for(process, lines, "START", START_SECONDS)
        if n_jobs == 1 or not group:
            wait_for(process, lines, "SOLVING", START_SECONDS)
            time.sleep(2.0)
        else:
            time.sleep(WORKER_SECONDS)
        if group:
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)
        sent = time.time()
        done = wait_for(process, lines, "DONE", RETURN_SECONDS)
        lines.append(f"SENT {sent}")
        return json.loads(done.split(" ", 2)[2]), float(done.split()[1]) - sent, lines
    finally:
        kill_group(process)


@pytest.mark.slow
def test_ctrl_c_stops_the_piece_under_way_and_starts_no_other(model_path):
    result, seconds, lines = _interrupted_run(model_path, n_jobs=1)
    assert seconds < RETURN_SECONDS
    assert result["status"] == "interrupted"
    first, rest = result["pieces"][0], result["pieces"][1:]
    assert first["status"] == "interrupted" and first["scored"] == [first["layer"]]
    assert first["error"] is None
    assert rest and all(p["status"] == "interrupted" and p["note"] == NOT_STARTED for p in rest)
    assert sum(line.startswith("SOLVING ") for line in lines) >= 1


@pytest.mark.slow
def test_ctrl_c_ends_a_run_on_worker_processes_without_errors(model_path):
    result, seconds, _ = _interrupted_run(model_path, n_jobs=2)
    assert seconds < RETURN_SECONDS
    assert result["status"] == "interrupted"
    for piece in result["pieces"]:
        assert piece["error"] is None
        assert piece["status"] == "interrupted"
        assert piece["scored"] == [piece["layer"]] or piece["note"] == NOT_STARTED


def _check_stopped_on_workers(result: dict, seconds: float, lines: list[str], name: str) -> None:
    """Acknowledged at once, every solver run ended within seconds, and the run interrupted
    with each piece's best solution or none started."""
    sent = float(lines[-1].split()[1])
    said = [line for line in lines if line.startswith(f"oamip: {name} received: stopping")]
    assert len(said) == 1
    returned = [float(line.split()[1]) for line in lines if line.startswith("RETURNED ")]
    assert returned and max(returned) - sent < STOP_SECONDS
    assert seconds < RETURN_SECONDS
    assert result["status"] == "interrupted"
    for piece in result["pieces"]:
        assert piece["error"] is None and piece["status"] == "interrupted"
        assert piece["scored"] == [piece["layer"]] or piece["note"] == NOT_STARTED


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_main_process_alone_stops_the_workers_solves(model_path, signum):
    result, seconds, lines = _interrupted_run(model_path, n_jobs=2, signum=signum, group=False)
    _check_stopped_on_workers(result, seconds, lines, signal.Signals(signum).name)


@pytest.mark.slow
def test_sigterm_to_the_process_group_ends_as_an_interrupted_run(model_path):
    result, seconds, lines = _interrupted_run(model_path, n_jobs=2, signum=signal.SIGTERM)
    assert result["status"] == "interrupted" and seconds < RETURN_SECONDS
    for piece in result["pieces"]:
        assert piece["error"] is None and piece["status"] == "interrupted"


@pytest.mark.slow
def test_sigint_to_a_run_on_dask_stops_the_pieces_under_way(model_path, monkeypatch, capfd):
    """An in-process Dask worker (one thread: two HiGHS solves cannot run in threads of one
    process): SIGINT to the process asks the piece under way (the one handed out first, the
    hardest), by a Dask event, to stop; it returns its best solution within seconds, and the
    other piece never starts."""
    distributed = pytest.importorskip("distributed")
    batch = json.loads(model_path.with_name("mlp.pt.json").read_text())
    highs = type(backends.get("highs"))
    solve_form, solving, returned, sent = highs.solve_form, threading.Event(), [], []

    def announced(self, *args, **kwargs):
        solving.set()
        result = solve_form(self, *args, **kwargs)
        returned.append(time.time())
        return result

    def signal_once_solving() -> None:
        if solving.wait(START_SECONDS):
            time.sleep(2.0)
            sent.append(time.time())
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(highs, "solve_form", announced)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        threading.Thread(target=signal_once_solving, daemon=True).start()
        found = oamip.score_neurons(
            oamip.load_model(model_path),
            batch["x"],
            batch["y"],
            scores="continuous",
            time_limit=None,
            decompose="layer",
            aux_data=(batch["aux_x"], batch["aux_y"]),
            executor=client,
        )
        ended = time.time()
    assert found.status == "interrupted" and ended - sent[0] < RETURN_SECONDS
    assert returned and max(returned) - sent[0] < STOP_SECONDS
    started = [piece for piece in found.subproblems if piece.scores]
    skipped = [piece for piece in found.subproblems if not piece.scores]
    assert len(started) == 1 and len(skipped) == 1
    (first,), (second,) = started, skipped
    assert first.status == "interrupted" and first.error is None
    assert sorted(first.scores) == [first.layer]
    assert second.status == "interrupted" and second.note == NOT_STARTED
    assert "oamip: SIGINT received: stopping the pieces under way" in capfd.readouterr().err
