"""Ctrl-C during a solve, with real signals sent to real processes.

A driver script loads a small MLP (64-40-10 on digits, ten samples, hinge loss so that each
solve is one solver run; the fastest backend, Gurobi, needs about 18 s to prove it, the others
more than 30 s) and runs ``score_neurons`` or the ``oamip prune`` command, one call after
another. It wraps the backend's ``solve_form`` and the loop's ``certify`` only to say on
stdout, with a time stamp, when the solver starts and returns and when its answer is certified
(and, for the second signal, to wait there): nothing in the library knows it is being tested.
This test sends SIGINT once the solver has run a few seconds (and has not returned): the solve
must end within seconds, no solver run start after it, and the call return its best solution,
status "interrupted", with its bound; a second SIGINT aborts (KeyboardInterrupt; exit 130
writing nothing).
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import oamip
from oamip import backends
from oamip.solve.loop import Solution
from oamip.solve.sweep import Line, _Known
from oamip.training.data import load_data
from tests import nets

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

BACKENDS = [name for name in ("highs", "scip", "gurobi", "cbc") if name in backends.available()]
RUNNING_SECONDS = 3.0
"""How long the solver runs before the first SIGINT."""
STOP_SECONDS = 3.0
"""The solve must end within this many seconds of the SIGINT (about two; a little more on a
busy machine)."""
RETURN_SECONDS = 20.0
"""The call must end within this many seconds of the SIGINT (it then checks its scores
against PyTorch, and ``oamip prune`` evaluates, compares with baselines and writes)."""
START_SECONDS = 180.0
"""Start-up (imports) and building, on a loaded machine."""

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import oamip
    from oamip import backends
    from oamip.cli import main
    from oamip.solve import loop, sweep

    sweep.WARM_START_SECONDS = 0.5  # the solver, not the warm start, is what is interrupted
    hold = [0.0]

    def announce(cls):
        solve_form = cls.solve_form

        def announced(self, *args, **kwargs):
            print("SOLVING", time.time(), flush=True)
            result = solve_form(self, *args, **kwargs)
            print("RETURNED", time.time(), result.status, flush=True)
            return result

        cls.solve_form = announced

    certify = loop.certify

    def certifying(*args, **kwargs):
        print("CERTIFYING", time.time(), flush=True)
        time.sleep(hold[0])
        return certify(*args, **kwargs)

    loop.certify = certifying

    def score(backend, path):
        batch = json.loads(open(path + ".json").read())
        found = oamip.score_neurons(
            oamip.load_model(path), batch["x"], batch["y"], backend=backend, loss="hinge",
            time_limit=None,
        )
        return {
            "status": found.status, "solver_status": found.solver_status,
            "objective": found.objective, "bound": found.bound, "gap": found.gap,
            "kept": sum(int(s.sum()) for s in found.scores.values()),
        }

    for name in backends.available():
        announce(type(backends.get(name)))
    for job in json.loads(sys.argv[1]):
        print("JOB", job["name"], flush=True)
        hold[0] = job["hold"]
        try:
            if job["kind"] == "cli":
                done = {"exit": main(job["args"])}
            else:
                done = score(*job["args"])
        except KeyboardInterrupt:
            done = {"aborted": "KeyboardInterrupt"}
        print("DONE", json.dumps(done), flush=True)
    """
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """An MLP 64-40-10 trained briefly on digits, and the ten samples of its MIP (one per
    class), saved for the driver."""
    data = load_data("digits")
    x = torch.as_tensor(data.x_train, dtype=torch.float32)
    model = nets.digits_mlp(x, torch.as_tensor(data.y_train), (40,))
    path = tmp_path_factory.mktemp("interrupt") / "mlp.pt"
    oamip.save_model(model, path)
    first = [int(np.flatnonzero(data.y_train == c)[0]) for c in range(10)]
    batch = {"x": data.x_train[first].tolist(), "y": data.y_train[first].tolist()}
    path.with_name("mlp.pt.json").write_text(json.dumps(batch))
    return path


@dataclass
class Job:
    """One call in the driver, the signals it was sent and when, and what it printed."""

    name: str
    signals: int
    lines: list[str] = field(default_factory=list)
    interrupted_at: float = 0.0
    ended_at: float = 0.0
    done: dict = field(default_factory=dict)

    def after_signal(self, word: str) -> list[list[str]]:
        """The words after the time stamp of each ``word`` line printed after the SIGINT."""
        found = [line.split()[1:] for line in self.lines if line.startswith(word + " ")]
        return [rest[1:] for rest in found if float(rest[0]) > self.interrupted_at]

    def stop_seconds(self) -> float:
        """Seconds from the SIGINT until the answer went to be certified (the solve ended)."""
        stamps = [line.split()[1] for line in self.lines if line.startswith("CERTIFYING ")]
        return min(float(t) for t in stamps if float(t) > self.interrupted_at) - self.interrupted_at

    def end_seconds(self) -> float:
        return self.ended_at - self.interrupted_at

    def check_stopped(self) -> None:
        """The solver run under way stopped "interrupted" within STOP_SECONDS, none started
        after it, and its answer was certified once (no careful retry)."""
        assert self.after_signal("SOLVING") == []
        assert self.after_signal("RETURNED") in ([], [["interrupted"]])
        assert len(self.after_signal("CERTIFYING")) == 1
        assert self.stop_seconds() < STOP_SECONDS


def _drive(jobs: list[dict], cwd: Path) -> dict[str, Job]:
    """Run the driver on ``jobs``: in each, SIGINT once the solver has run RUNNING_SECONDS and,
    for two signals, again once its answer is being certified; a driver that outlives every
    limit is killed."""
    stderr = cwd / "stderr.txt"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(jobs)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=cwd,
        )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read, args=(process.stdout, lines), daemon=True).start()
    deadline = time.time() + START_SECONDS + len(jobs) * (RUNNING_SECONDS + RETURN_SECONDS)
    done: dict[str, Job] = {}
    try:
        for spec in jobs:
            job = done[spec["name"]] = Job(spec["name"], spec["signals"])
            _until(lines, "SOLVING", job.lines, deadline, stderr)
            assert _until(lines, "RETURNED", job.lines, time.time() + RUNNING_SECONDS) is None, (
                f"{job.name}: the solver returned before the signal; make the instance harder"
            )
            job.interrupted_at = time.time()
            process.send_signal(signal.SIGINT)
            if job.signals == 2:
                while not job.after_signal("CERTIFYING"):
                    _until(lines, "CERTIFYING", job.lines, deadline, stderr)
                process.send_signal(signal.SIGINT)
            last = _until(lines, "DONE", job.lines, deadline, stderr)
            job.done = json.loads(last.split(" ", 1)[1])
            job.ended_at = time.time()
    finally:
        process.kill()
        process.wait()
    return done


def _read(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _until(
    lines: queue.Queue, word: str, seen: list[str], deadline: float, stderr: Path | None = None
) -> str | None:
    """The next line starting with ``word`` (every line read goes to ``seen``); None at
    ``deadline`` when no ``stderr`` is given, else an AssertionError with its end."""
    while (left := deadline - time.time()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith(word):
            return line
    if stderr is None:
        return None
    raise AssertionError(f"no {word} from the driver: {seen[-8:]} {stderr.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def jobs(model_path, tmp_path_factory) -> tuple[dict[str, Job], Path]:
    """score_neurons on every installed backend sent one SIGINT, and on HiGHS two; then
    ``oamip prune`` on HiGHS sent one SIGINT, and two; all in one driver process."""
    folder = tmp_path_factory.mktemp("interrupt-runs")
    path = str(model_path)
    specs = [
        {"name": b, "kind": "score", "args": [b, path], "signals": 1, "hold": 0.0} for b in BACKENDS
    ]
    specs.append(
        {"name": "score twice", "kind": "score", "args": ["highs", path], "signals": 2, "hold": 10}
    )
    for signals in (1, 2):
        args = ["prune", "--model", path, "--data", "digits", "--loss", "hinge"]
        args += ["--finetune-epochs", "0"]
        specs.append(
            {
                "name": f"cli {signals}",
                "kind": "cli",
                "args": [*args, "--out", str(folder / f"out{signals}")],
                "signals": signals,
                "hold": 10.0 * (signals - 1),
            }
        )
    return _drive(specs, folder), folder


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.slow
def test_sigint_stops_the_solver_and_score_neurons_returns_its_best_solution(jobs, backend):
    job = jobs[0][backend]
    job.check_stopped()
    assert job.end_seconds() < RETURN_SECONDS
    result = job.done
    assert result["status"] == result["solver_status"] == "interrupted"
    assert np.isfinite(result["objective"])
    assert result["bound"] is not None and result["bound"] <= result["objective"]
    assert result["gap"] > 0
    assert result["kept"] >= 1


@pytest.mark.slow
def test_a_second_sigint_aborts_score_neurons(jobs):
    job = jobs[0]["score twice"]
    assert job.after_signal("SOLVING") == []
    assert job.done == {"aborted": "KeyboardInterrupt"}


@pytest.mark.slow
def test_oamip_prune_goes_on_with_the_interrupted_solve_and_writes_its_results(jobs):
    job, folder = jobs[0]["cli 1"], jobs[1]
    assert job.done == {"exit": 0}
    job.check_stopped()
    report = json.loads((folder / "out1" / "report.json").read_text())
    assert report["status"] == "interrupted"
    assert report["bound"] is not None and report["gap"] > 0
    said = [line for line in job.lines if line.startswith("solve interrupted (Ctrl-C or SIGTERM)")]
    assert len(said) == 1 and "best solution found" in said[0]


@pytest.mark.slow
def test_a_second_sigint_stops_oamip_prune_writing_nothing(jobs):
    job, folder = jobs[0]["cli 2"], jobs[1]
    assert job.done == {"exit": 130}
    assert not (folder / "out2").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".out2")]
    assert (
        (folder / "stderr.txt")
        .read_text()
        .endswith("oamip: error: interrupted by SIGINT; no partial output was written\n")
    )


def _solved(objective: float, bound: float, status: str) -> Solution:
    return Solution(
        scores={0: np.ones(2)},
        objective=objective,
        bound=bound,
        status=status,
        seconds=0.0,
        rounds=1,
        nodes=0,
        start_objective=objective,
        solver_status=status,
        solver_objective=objective,
    )


def test_a_stopped_sweep_claims_optimal_only_where_concavity_proves_it():
    """Weights a stopped sweep did not solve get the best solution known: "optimal" where the
    bound of the solved weights proves it, "interrupted" with that bound where it does not, and
    no bound where there is none (below every solved weight)."""
    lams = [0.5, 1.0, 2.0]
    loose = _Known(lams, mip_gap=1e-4)
    loose.add_solved(1.0, _solved(1.5, 1.0, "interrupted"), 0.0, [Line(1.0, 0.5, {0: np.ones(2)})])
    above, below = loose.point(2.0), loose.point(0.5)
    assert (above.status, above.bound, above.objective) == ("interrupted", 1.0, 2.0)
    assert (below.status, below.bound) == ("interrupted", None)
    tight = _Known(lams, mip_gap=1e-4)
    tight.add_solved(1.0, _solved(1.0, 1.0, "optimal"), 0.0, [Line(1.0, 0.0, {0: np.ones(2)})])
    assert (tight.point(2.0).status, tight.point(2.0).bound) == ("optimal", 1.0)
