"""Decomposition end to end (issue 13): ``oamip.prune(decompose=...)``, its report and the
``oamip prune`` flags, and the retry and checkpoint rules of the pieces.

Small throughout: a digits MLP of widths 8 and 6, three seconds per piece, no fine-tuning.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import oamip
from oamip import cli
from oamip.pipelines import solving as prune_pipeline
from oamip.pipelines.report import summary_table
from oamip.solve import decompose
from oamip.training.data import load_data
from oamip.training.models import build
from oamip.training.train import train
from tests.nets import mlp

FAST = {"time_limit": 3.0, "finetune_epochs": 0, "scores": "binary", "loss": "hinge"}
SETTINGS = {"scores": "binary", "loss": "hinge", "lam": 1.0}


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def small_model(digits):
    """A digits MLP 64-8-6-10, seeded and trained briefly."""
    model = build("mlp", digits, (8, 6), seed=0)
    train(model, digits, epochs=10, lr=1e-2, seed=0, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def model_file(small_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.pt"
    oamip.save_model(small_model, path)
    return path


def test_prune_by_layer_fits_heads_on_the_training_split_and_reports_the_pieces(
    digits, small_model, monkeypatch, capsys
):
    seen = []
    solve = prune_pipeline.score_decomposed

    def spy(model, x, y, options, lams, on_done=None, aux_data=None, executor=None):
        seen.append(aux_data)
        return solve(model, x, y, options, lams, on_done, aux_data, executor)

    monkeypatch.setattr(prune_pipeline, "score_decomposed", spy)
    report = oamip.prune(small_model, digits, decompose="layer", **FAST)
    ((aux_x, aux_y),) = seen
    assert aux_x is digits.x_train and aux_y is digits.y_train
    first, last = report.subproblems
    assert (first.layer, last.layer) == ("1", "3")
    assert 0.0 <= first.head_accuracy <= 1.0 and last.head_accuracy is None
    assert all(p.label is None and p.samples == 10 and not p.resumed for p in report.subproblems)
    assert all(p.error is None and p.seconds > 0 for p in report.subproblems)
    plain = report.to_dict()
    assert plain["decompose"] == "layer"
    assert [row["layer"] for row in plain["subproblems"]] == ["1", "3"]
    assert set(plain["subproblems"][0]) == {
        "layer",
        "label",
        "samples",
        "status",
        "objective",
        "bound",
        "seconds",
        "head_accuracy",
        "resumed",
        "error",
        "continued",
        "relu_entries",
    }
    entries = plain["subproblems"][0]["relu_entries"]
    assert set(entries) <= {"dead", "linear", "equality", "gated", "binary", "folded"} and entries
    json.dumps(plain)
    optimal = sum(p.status == "optimal" for p in report.subproblems)
    assert f"decomposed (layer): {optimal} of 2 pieces proven optimal" in summary_table(report)
    assert capsys.readouterr() == ("", "")


def test_prune_by_class_has_a_piece_per_class_and_a_line_per_piece_with_progress(
    digits, small_model, capsys
):
    report = oamip.prune(small_model, digits, decompose="class", progress=True, **FAST)
    assert [p.label for p in report.subproblems] == list(range(10))
    assert all(p.layer is None and p.samples == 1 for p in report.subproblems)
    assert report.status == (
        "optimal" if all(p.status == "optimal" for p in report.subproblems) else "feasible"
    )
    out, err = capsys.readouterr()
    assert out == ""
    for label in range(10):
        assert f"piece all layers, class {label}: " in err
    undecomposed = oamip.prune(small_model, digits, **FAST)
    assert undecomposed.decompose is None and undecomposed.subproblems == []
    assert "decomposed" not in summary_table(undecomposed)


def test_a_piece_that_fails_twice_is_reported_and_the_others_kept(digits, small_model, monkeypatch):
    solve = decompose.solve_piece

    def broken(piece):
        if piece.label == 3:
            raise RuntimeError("solver crashed")
        return solve(piece)

    monkeypatch.setattr(decompose, "solve_piece", broken)
    report = oamip.prune(small_model, digits, decompose="class", **FAST)
    assert report.status == "error"
    bad = report.subproblems[3]
    assert (bad.status, bad.error) == ("error", "RuntimeError: solver crashed")
    assert all(p.error is None for i, p in enumerate(report.subproblems) if i != 3)
    summary = summary_table(report)
    assert "piece all layers, class 3: error (0.0 s): RuntimeError: solver crashed" in summary
    assert summary.count("solver crashed") == 1


def _prune_args(model_file, out, checkpoint) -> list[str]:
    return [
        "prune",
        "--model",
        str(model_file),
        "--decompose",
        "class",
        "--workers",
        "2",
        "--checkpoint",
        str(checkpoint),
        "--time-limit",
        "3",
        "--finetune-epochs",
        "0",
        "--scores",
        "binary",
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_the_cli_runs_pieces_on_workers_and_a_rerun_resumes_every_piece(
    model_file, tmp_path, capsys
):
    checkpoint = tmp_path / "pieces"
    assert cli.main(_prune_args(model_file, tmp_path / "first", checkpoint)) == 0
    out, err = capsys.readouterr()
    first = json.loads((tmp_path / "first" / "report.json").read_text())
    assert first["decompose"] == "class" and len(first["subproblems"]) == 10
    assert not any(row["resumed"] for row in first["subproblems"])
    assert len(list(checkpoint.glob("piece-*.json"))) == 10
    optimal = sum(row["status"] == "optimal" for row in first["subproblems"])
    assert f"{optimal} of 10 pieces proven optimal" in out
    assert err.count("piece all layers, class ") == 10
    assert cli.main(_prune_args(model_file, tmp_path / "again", checkpoint)) == 0
    out, _ = capsys.readouterr()
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert all(row["resumed"] for row in again["subproblems"])
    assert "10 resumed from the checkpoint" in out
    for a, b in zip(first["subproblems"], again["subproblems"]):
        assert (a["label"], a["status"], a["objective"]) == (
            b["label"],
            b["status"],
            b["objective"],
        )
    assert [layer["scores"] for layer in first["layers"]] == [
        layer["scores"] for layer in again["layers"]
    ]


def test_an_unreachable_scheduler_fails_in_seconds_with_one_line_and_writes_nothing(
    model_file, tmp_path, capsys
):
    pytest.importorskip("distributed")
    out, checkpoint = tmp_path / "out", tmp_path / "pieces"
    args = ["prune", "--model", str(model_file), "--decompose", "class"]
    started = time.perf_counter()
    status = cli.main(
        [*args, "--scheduler", "tcp://127.0.0.1:9", "--checkpoint", str(checkpoint)]
        + ["--out", str(out)]
    )
    assert status == 2 and time.perf_counter() - started < 20
    stdout, stderr = capsys.readouterr()
    assert stdout == ""
    assert stderr.count("\n") == 1 and "cannot reach the Dask scheduler" in stderr
    assert not out.exists() and not checkpoint.exists()


def test_the_cli_runs_pieces_on_a_dask_scheduler(model_file, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        args = ["prune", "--model", str(model_file), "--decompose", "layer", "--scores", "binary"]
        args += ["--scheduler", cluster.scheduler_address, "--finetune-epochs", "0"]
        assert cli.main([*args, "--time-limit", "3", "--out", str(tmp_path / "out")]) == 0
        log = cluster.scheduler.transition_log
        ran = {
            key for key, _, end, *_ in log if str(key).startswith("solve_piece") and end == "memory"
        }
    assert len(ran) == 2
    capsys.readouterr()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [row["layer"] for row in report["subproblems"]] == ["1", "3"]
    assert all(row["error"] is None for row in report["subproblems"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--decompose", "rows"], "unknown decompose 'rows'"),
        (["--decompose", "class", "--workers", "2", "--scheduler", "tcp://h:1"], "not allowed"),
        (["--decompose", "class", "--workers", "0"], "n_jobs"),
        (["--workers", "2"], "only apply to a decomposed solve"),
    ],
)
def test_bad_decomposition_flags_give_one_line_and_status_2(flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["prune", *flags, "--out", str(out)]) == 2
    stdout, stderr = capsys.readouterr()
    assert stdout == "" and stderr.count("\n") == 1 and message in stderr
    assert not out.exists()


def _class_pieces(model, x, y) -> list[decompose.Piece]:
    from oamip.adapters.decompose import check_decomposition, decomposed_pieces
    from oamip.adapters.extract import extract
    from oamip.solve.options import ScoringOptions

    options = ScoringOptions(decompose="class", **SETTINGS)
    options.validate()
    network = extract(model, x).network
    return decomposed_pieces(
        network, x, y, options, check_decomposition(network, x, y, options, None)
    )


def _batch(seed: int, n: int = 6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)), np.arange(n) % 3


def test_a_piece_that_fails_once_is_solved_on_its_retry(monkeypatch):
    x, y = _batch(0)
    pieces = _class_pieces(mlp(0, sizes=(6, 4, 3)), x, y)
    expected = decompose.run_pieces(pieces)
    calls: list[str] = []
    solve = decompose.solve_piece

    def flaky(piece):
        calls.append(piece.key)
        if calls.count(piece.key) == 1:
            raise RuntimeError("worker lost")
        return solve(piece)

    monkeypatch.setattr(decompose, "solve_piece", flaky)
    results = decompose.run_pieces(pieces)
    assert calls == [p.key for p in pieces for _ in range(2)]
    for got, want in zip(results, expected):
        assert got.error is None and got.status == want.status == "optimal"
        assert got.objective == want.objective
        np.testing.assert_array_equal(got.scores["1"], want.scores["1"])


def test_a_checkpoint_of_another_model_is_never_mixed_in(tmp_path):
    x, y = _batch(1, n=9)
    first, other = mlp(1, sizes=(6, 4, 3)), mlp(2, sizes=(6, 4, 3))
    oamip.score_neurons(first, x, y, decompose="class", checkpoint=tmp_path, **SETTINGS)
    mixed = oamip.score_neurons(other, x, y, decompose="class", checkpoint=tmp_path, **SETTINGS)
    alone = oamip.score_neurons(other, x, y, decompose="class", **SETTINGS)
    assert not any(p.resumed for p in mixed.subproblems)
    assert len(list(tmp_path.glob("piece-*.json"))) == 6
    for a, b in zip(mixed.subproblems, alone.subproblems):
        assert (a.key, a.objective) == (b.key, b.objective)
    np.testing.assert_array_equal(mixed.scores["1"], alone.scores["1"])
    assert not np.array_equal(
        mixed.scores["1"],
        oamip.score_neurons(first, x, y, decompose="class", **SETTINGS).scores["1"],
    )
