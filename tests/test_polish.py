"""Consistent output and early refusals (issue 14): progress only on a terminal, the HiGHS
banner only with --verbose, results that carry their lam, one percentage format, data read by
extension, models that do not fit the data, and Gurobi's size-limited licence refused before
training."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pyomo.environ as pyo
import pytest
import torch
from torch import nn

import oamip
from oamip import backends
from oamip.adapters import extract
from oamip.adapters.decompose import check_decomposition, decomposed_pieces, largest_piece_size
from oamip.backends import compile_model
from oamip.cli import main
from oamip.cli.bench import summary_table as bench_table
from oamip.errors import InvalidInputError, SolverError
from oamip.formulations.importance import ImportanceSettings, build_importance_model
from oamip.formulations.size import estimate_size
from oamip.pipelines import bench
from oamip.pipelines.limits import check_size_limit
from oamip.pipelines.report import percent
from oamip.solve.options import ScoringOptions
from oamip.solve.sweep import point_line
from oamip.training.data import load_digits, mip_batch
from oamip.training.models import build
from oamip.training.train import train
from tests import nets

BANNER = b"Running HiGHS"
GUROBI = "gurobi" in backends.available()


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    """An MLP 64-12-10 on digits (the batch of one sample per class as MIP data)."""
    model = build("mlp", digits, hidden=(12,), seed=0)
    return train(model, digits, epochs=3, lr=1e-2, seed=0, progress=False)


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, **kwargs)


# --- progress only on a terminal -------------------------------------------------------------


def _bench_argv(cache: Path, out: Path) -> list[str]:
    return [
        *("-m", "oamip", "bench", "--sizes", "1", "--scores", "binary", "--backends", "highs"),
        *("--time-limit", "0.5", "--gap-points", "1", "--cache-dir", str(cache), "--out", str(out)),
    ]


def _on_a_terminal(argv: list[str]) -> tuple[int, bytes]:
    """Run ``python argv`` with stderr on a pseudo-terminal of 24 x 120 characters; its exit
    status and stderr."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=side)
    os.close(side)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return process.wait(timeout=300), b"".join(chunks)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Where the bench's reference network is trained once for this module."""
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.slow
def test_bench_shows_a_bar_with_time_left_on_a_terminal_and_none_in_a_log(cache, tmp_path, capfd):
    status, terminal = _on_a_terminal(_bench_argv(cache, tmp_path / "a"))
    assert status == 0, terminal[-2000:]
    bars = [line for line in terminal.split(b"\r") if line.startswith(b"bench:")]
    assert bars and b"/2 [" in bars[-1] and b"run" in bars[-1]
    assert b"<" in bars[-1]  # tqdm's estimate of the time left: [elapsed<left]
    assert main(_bench_argv(cache, tmp_path / "b")[2:]) == 0  # stderr is no terminal here
    logged = capfd.readouterr().err
    assert "\r" not in logged and "bench:" not in logged


@pytest.mark.slow
def test_the_bench_bar_counts_every_solve_and_gap_point(cache, monkeypatch):
    counted = []

    class Bar:
        def __init__(self, total, **kwargs):
            counted.append(total)
            self.n = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            counted.append(self.n)

        def set_postfix_str(self, text, refresh):
            pass

        def update(self, runs=1):
            self.n += runs

    monkeypatch.setattr(bench, "tqdm", Bar)
    result = bench.benchmark(
        sizes=(1,),
        scores=("binary",),
        backend_names=["highs"],
        time_limit=0.5,
        gap_points=2,
        repeats=2,
        cache_dir=cache,
        progress=True,
    )
    assert counted == [1 * 1 * (2 + 2), 4]
    assert len(result.rows) == 2


# --- the HiGHS banner ------------------------------------------------------------------------


def test_stdout_is_restored_after_an_exception_in_the_silenced_block():
    code = (
        "from oamip.backends.highs import stdout_silenced\n"
        "print('before', flush=True)\n"
        "try:\n    with stdout_silenced():\n        print('hidden', flush=True)\n"
        "        raise ValueError\nexcept ValueError:\n    pass\nprint('after')"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"before\nafter\n"


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.slow
def test_oamip_prune_prints_the_highs_banner_only_with_verbose(trained, tmp_path, verbose):
    model = tmp_path / "model.pt"
    oamip.save_model(trained, model)
    argv = [sys.executable, "-m", "oamip", "prune", "--model", str(model), "--time-limit", "2"]
    argv += ["--finetune-epochs", "0", "--out", str(tmp_path / "out")]
    done = subprocess.run(argv + ["--verbose"] * verbose, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (BANNER in done.stdout) == verbose
    assert b"\r" not in done.stderr


# --- consistent results and output -----------------------------------------------------------


def test_sweep_and_single_results_carry_their_lam():
    model = nets.mlp(0)
    x = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.as_tensor(x)).argmax(1).numpy()
    lams = [8.0, 0.5, 2.0]
    reported = []
    results = oamip.score_sweep(model, x, y, lams, time_limit=10, on_solved=reported.append)
    assert [r.lam for r in results] == lams
    solved = {r.lam for r in results if not r.by_concavity}
    assert [p.lam for p in reported][:2] == [0.5, 8.0] and {p.lam for p in reported} == solved
    assert len(reported) == len(solved)
    for point in reported:
        result = results[lams.index(point.lam)]
        line = point_line(point)
        assert line.startswith(f"lam {point.lam:g}: {result.status} (objective ")
        assert f"{result.objective:.6g}" in line
    assert oamip.score_neurons(model, x, y, lam=3.0, time_limit=10).lam == 3.0


def test_percentages_are_printed_one_way():
    assert percent(0.931) == "93.10%"
    assert percent(1.0) == "100.00%"
    assert percent(None) == "-"
    row = bench.BenchRow(
        "digits-mlp-k1-binary", "highs", 0, "time_limit", 1.0, 0.5, 0.125, 1.0, 3, 0.1, 0.0,
        0.0, 10, 10, 1.0,
    )  # fmt: skip
    assert " 12.50% " in bench_table([row])


# --- data by extension, and models that do not fit -------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)),
            ["Linear(64 -> 8)", "1x8x8", "add nn.Flatten() before it"],
        ),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10)),
            ["Linear(784 -> 8)", "takes 784 values", "1x8x8 (64 values)", "with 64 inputs"],
        ),
        (
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10)),
            ["Conv2d(3 -> 4)", "3-channel images", "1x8x8", "1 input channels"],
        ),
    ],
)
def test_a_model_that_does_not_fit_says_which_shapes_disagree_and_what_to_do(
    digits, model, expected
):
    with pytest.raises(InvalidInputError, match="does not take inputs") as caught:
        oamip.prune(model, digits)
    assert all(text in str(caught.value) for text in expected), str(caught.value)


def test_too_few_logits_say_one_per_class(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(InvalidInputError, match=r"one logit per class \(10\)"):
        oamip.prune(model, digits)


# --- the size-limited licence ----------------------------------------------------------------


def _compiled_size(model: nn.Module, x: np.ndarray, y: np.ndarray, settings) -> tuple[int, int]:
    network = extract(model, x).network
    form = compile_model(build_importance_model(network, x, y, settings).model)
    return form.num_cols, form.num_rows


@pytest.mark.parametrize("scores", ["binary", "continuous"])
@pytest.mark.parametrize("encoding", ["tight", "big-m"])
@pytest.mark.parametrize(
    ("make", "in_shape"),
    [
        (lambda: nets.mlp(3), (6,)),
        (lambda: nets.convnet(1), (1, 8, 8)),
        (lambda: nets.deep_pool_net(0), (1, 6, 6)),
    ],
)
def test_the_size_estimate_bounds_the_model_built(make, in_shape, scores, encoding):
    model = make()
    x = np.random.default_rng(0).random((6, *in_shape)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.as_tensor(x)).argmax(1).numpy()
    settings = ImportanceSettings(scores=scores, encoding=encoding)
    settings.validate()
    variables, constraints = _compiled_size(model, x, y, settings)
    estimate = estimate_size(extract(model, x).network, len(x), settings)
    assert variables <= estimate.variables and constraints <= estimate.constraints


@pytest.mark.parametrize("scores", ["binary", "continuous"])
@pytest.mark.parametrize(
    ("make", "in_shape"),
    [
        (lambda: nets.mlp(3), (6,)),
        (lambda: nets.convnet(1), (1, 8, 8)),
        (lambda: nets.deep_pool_net(0), (1, 6, 6)),
    ],
)
def test_the_piece_size_estimate_bounds_every_piece_built(make, in_shape, scores):
    """Every per-layer piece, its head fit, compiles to no more variables than
    ``largest_piece_size`` estimates (an upper bound, as the whole network's estimate is)."""
    model = make()
    rng = np.random.default_rng(1)
    x = rng.random((6, *in_shape)).astype(np.float32)
    aux_x = rng.random((40, *in_shape)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.as_tensor(x)).argmax(1).numpy()
        aux_y = model(torch.as_tensor(aux_x)).argmax(1).numpy()
    options = ScoringOptions(scores=scores, decompose="layer")
    options.validate()
    network = extract(model, x).network
    aux = check_decomposition(network, x, y, options, (aux_x, aux_y))
    built = []
    for piece in decomposed_pieces(network, x, y, options, aux):
        piece = piece.with_head()
        form = compile_model(build_importance_model(piece.network, piece.x, piece.y, options).model)
        built.append(form.num_cols)
    estimate = largest_piece_size(network, len(x), options).variables
    assert max(built) <= estimate


def test_the_size_estimate_of_the_default_mlp_is_close_from_above(trained, digits):
    batch = mip_batch(trained, digits, 1, 0)
    for scores in ("binary", "continuous"):
        settings = ImportanceSettings(scores=scores)
        settings.validate()
        variables, constraints = _compiled_size(trained, batch.x, batch.y, settings)
        estimate = estimate_size(extract(trained, batch.x).network, len(batch.y), settings)
        assert variables <= estimate.variables <= 1.3 * variables
        assert constraints <= estimate.constraints <= 1.3 * constraints


def test_backends_without_a_licence_limit_declare_none():
    assert backends.get("highs").size_limit() is None


@pytest.mark.skipif(not GUROBI, reason="gurobipy not installed")
def test_gurobi_declares_its_limit_exactly_when_it_refuses_a_model_over_it():
    gurobi = backends.get("gurobi")
    limit = gurobi.size_limit()
    model = pyo.ConcreteModel()
    model.x = pyo.Var(range(2001), bounds=(0, 1))
    model.one = pyo.Constraint(expr=model.x[0] + model.x[1] >= 1)
    model.cost = pyo.Objective(expr=sum(model.x.values()))
    if limit is None:
        assert gurobi.solve(model).status == "optimal"
    else:
        assert limit == (2000, 2000)
        with pytest.raises(SolverError, match="2000 variables"):
            gurobi.solve(model)


@pytest.mark.skipif(not GUROBI, reason="gurobipy not installed")
def test_gurobi_over_its_licence_is_refused_before_training(digits, monkeypatch):
    if backends.get("gurobi").size_limit() is None:
        pytest.skip("this Gurobi has a full licence")

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr("oamip.pipelines.prune.train", no_training)
    start = time.perf_counter()
    with pytest.raises(InvalidInputError) as caught:
        oamip.prune(None, digits, backend="gurobi")
    message = str(caught.value)
    assert "2000 variables and 2000 constraints" in message and "10 samples" in message
    assert "'highs'" in message
    assert time.perf_counter() - start < 10


@pytest.mark.skipif(not GUROBI, reason="gurobipy not installed")
@pytest.mark.slow
def test_a_model_under_the_licence_is_not_refused_and_solves_with_gurobi(digits):
    if backends.get("gurobi").size_limit() is None:
        pytest.skip("this Gurobi has a full licence")
    small = build("mlp", digits, hidden=(8,), seed=0)
    train(small, digits, epochs=5, lr=1e-2, seed=0, progress=False)
    check_size_limit(small, digits, ScoringOptions(backend="gurobi"))
    report = oamip.prune(small, digits, backend="gurobi", finetune_epochs=0, time_limit=10)
    assert report.backend == "gurobi" and report.status in ("optimal", "time_limit")


def test_a_decomposed_solve_is_not_checked_whole(digits):
    options = ScoringOptions(backend="gurobi" if GUROBI else "highs", decompose="layer")
    check_size_limit(None, digits, options, "mlp", samples_per_class=50)
