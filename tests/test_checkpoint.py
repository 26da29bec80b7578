"""The checkpoint's rules: which saved pieces a rerun reuses, which it solves again from their
saved best, and what the summary says about them (in-process; the real interrupted run of
``oamip prune`` is tests/test_checkpoint_signals.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from oamip.adapters.extract import extract
from oamip.pipelines.report import _pieces_rows
from oamip.pipelines.results import piece_line
from oamip.solve import sweep
from oamip.solve.decompose import (
    Piece,
    PieceResult,
    is_final,
    never_worse,
    not_started,
    run_pieces,
)
from oamip.solve.options import ScoringOptions
from tests.nets import mlp

SETTINGS = {"scores": "binary", "loss": "hinge", "lam": 1.0}


def _pieces(time_limit: float | None = 20.0) -> list[Piece]:
    """Two per-class pieces of a small MLP, solved to optimality in well under a second."""
    options = ScoringOptions(**SETTINGS, time_limit=time_limit)
    options.validate()
    network = extract(mlp(6, sizes=(6, 4, 3)), np.zeros((1, 6))).network
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(6, 6)), np.arange(6) % 3
    return [Piece(network, x, y, options, label=0), Piece(network, x[:3], y[:3], options, label=2)]


def _rewrite(folder: Path, piece: Piece, **changes) -> dict:
    """Change the saved record of ``piece`` as an earlier run would have left it."""
    path = folder / f"piece-{piece.key}.json"
    record = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(record))
    return record


def test_the_key_leaves_the_time_limit_out_and_the_record_keeps_it(tmp_path):
    assert [p.key for p in _pieces(5.0)] == [p.key for p in _pieces(None)]
    (first, _) = run_pieces(_pieces(7.0), checkpoint=tmp_path)
    record = json.loads((tmp_path / f"piece-{first.key}.json").read_text())
    assert record["time_limit"] == 7.0 and record["status"] == "optimal"
    assert "resumed" not in record and "continued" not in record


def test_a_proven_piece_is_reused_whatever_the_time_limit(tmp_path):
    first = run_pieces(_pieces(20.0), checkpoint=tmp_path)
    assert all(r.status == "optimal" and not r.resumed for r in first)
    for limit in (5.0, 60.0, None):
        again = run_pieces(_pieces(limit), checkpoint=tmp_path)
        assert all(r.resumed and not r.continued for r in again)
        assert [r.objective for r in again] == [r.objective for r in first]


@pytest.mark.parametrize(
    ("saved_limit", "asked", "reused"),
    [(20.0, 20.0, True), (20.0, 10.0, True), (20.0, 40.0, False), (20.0, None, False)],
)
def test_a_piece_stopped_by_its_time_limit_is_reused_unless_given_more_time(
    tmp_path, saved_limit, asked, reused
):
    pieces = _pieces(saved_limit)
    run_pieces(pieces, checkpoint=tmp_path)
    _rewrite(tmp_path, pieces[0], status="time_limit", time_limit=saved_limit)
    first, second = run_pieces(_pieces(asked), checkpoint=tmp_path)
    assert second.resumed and not second.continued
    assert (first.resumed, first.continued) == (reused, not reused)
    assert first.status == ("time_limit" if reused else "optimal")


def test_an_interrupted_piece_is_solved_again_from_its_saved_best(tmp_path, monkeypatch):
    pieces = _pieces()
    (solved, _) = run_pieces(pieces, checkpoint=tmp_path)
    _rewrite(tmp_path, pieces[0], status="interrupted", bound=None)

    def no_warm_start(*args, **kwargs):
        raise AssertionError("a continued piece starts from its saved best, not a warm start")

    monkeypatch.setattr(sweep, "warm_start_scores", no_warm_start)
    first, second = run_pieces(_pieces(), checkpoint=tmp_path)
    assert first.continued and not first.resumed and second.resumed
    assert first.status == "optimal" and first.objective <= solved.objective + 1e-9
    third, _ = run_pieces(_pieces(), checkpoint=tmp_path)
    assert third.resumed and third.status == "optimal"


@pytest.mark.slow
def test_a_piece_continued_on_worker_processes_starts_from_its_saved_best(tmp_path):
    pieces = _pieces()
    solved = run_pieces(pieces, checkpoint=tmp_path)
    for piece in pieces:
        _rewrite(tmp_path, piece, status="interrupted", bound=None)
    again = run_pieces(_pieces(), n_jobs=2, checkpoint=tmp_path)
    assert all(r.continued and r.status == "optimal" for r in again)
    for a, b in zip(solved, again):
        assert b.objective <= a.objective + 1e-9


def _result(status: str, objective: float | None, scores: float | None, **more) -> PieceResult:
    return PieceResult(
        key="k",
        layer="1",
        label=None,
        samples=3,
        status=status,
        objective=objective,
        bound=None,
        seconds=1.0,
        scores={} if scores is None else {"1": np.full(4, scores)},
        **more,
    )


def test_a_continued_piece_never_ends_worse_than_its_saved_best():
    saved = _result("interrupted", 1.0, 1.0, time_limit=60.0)
    worse = never_worse(saved, _result("time_limit", 2.0, 0.0))
    assert worse.continued and worse.objective == 1.0 and worse.status == "time_limit"
    np.testing.assert_array_equal(worse.scores["1"], saved.scores["1"])
    assert "the checkpoint's best was better" in worse.note
    better = never_worse(saved, _result("optimal", 0.5, 0.0))
    assert better.continued and better.objective == 0.5 and better.scores["1"][0] == 0.0


def test_a_continued_piece_the_run_never_started_keeps_its_saved_best():
    piece = _pieces()[0]
    saved = _result("time_limit", 1.0, 1.0, time_limit=5.0)
    kept = never_worse(saved, not_started(piece))
    assert kept.status == "interrupted" and kept.continued and not kept.resumed
    assert kept.objective == 1.0 and "the scores are the checkpoint's best" in kept.note
    failed = never_worse(saved, _result("error", None, None, error="SolverError: boom"))
    assert failed.status == "time_limit" and failed.error is None
    assert "solving it again failed (SolverError: boom)" in failed.note


def test_is_final_judges_the_status_and_the_time_limit():
    assert is_final(_result("optimal", 1.0, 1.0, time_limit=1.0), 100.0)
    assert is_final(_result("feasible", 1.0, 1.0, time_limit=None), None)
    assert not is_final(_result("feasible", 1.0, 1.0, time_limit=5.0), None)
    assert not is_final(_result("interrupted", 1.0, 1.0, time_limit=60.0), 1.0)


def test_the_summary_counts_reused_continued_and_new_pieces_and_says_where_each_is_from():
    pieces = [
        _result("optimal", 1.0, 1.0, resumed=True),
        _result("time_limit", 1.0, 1.0, continued=True),
        _result("optimal", 1.0, 1.0),
    ]
    report = SimpleNamespace(decompose="layer", subproblems=pieces, layers=[])
    (row,) = _pieces_rows(report)
    assert row == (
        "decomposed (layer): 2 of 3 pieces proven optimal, 1 resumed from the checkpoint "
        "(final), 1 continued from their best in it, 1 solved anew"
    )
    lines = [piece_line(p) for p in pieces]
    assert lines[0] == "piece layer 1, all classes: optimal (1.0 s, reused from an earlier run)"
    assert lines[1].endswith("(1.0 s, continued from an earlier run's best)")
    assert lines[2] == "piece layer 1, all classes: optimal (1.0 s)"
