"""``score_neurons``: the public entry point, its result and its refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import oamip
from oamip import backends
from oamip.adapters import extract, scored_logits, scoring
from oamip.formulations import Hinge
from tests.nets import convnet, mlp


@pytest.fixture(scope="module")
def small():
    model = mlp(11, (6, 5, 4, 3))
    x = np.random.default_rng(11).uniform(size=(5, 6))
    y = np.array([0, 1, 2, 1, 0])
    return model, x, y


def test_result_holds_scores_per_scored_module_and_the_exact_objective(small):
    model, x, y = small
    res = oamip.score_neurons(model, x, y, lam=2.0)
    assert set(res.scores) == {"1", "3"}
    assert all(((s >= 0) & (s <= 1)).all() for s in res.scores.values())
    assert res.status == "optimal" and res.backend == "highs"
    extracted = extract(model, x)
    by_layer = extracted.scores_by_layer(res.big_m)
    z = scored_logits(extracted, x, res.scores, by_layer)
    ce = logsumexp(z, axis=1) - z[np.arange(len(y)), y]
    sparsity = sum(s.sum() / len(s) for s in res.scores.values())
    assert res.objective == pytest.approx(sparsity + 2.0 * ce.mean(), abs=1e-9)
    assert res.bound <= res.objective + 1e-9
    assert res.gap <= 1e-4
    assert res.model is res.formulation.model


def test_masks_follow_the_threshold_and_keep_min_keep_units():
    model = mlp(12, (6, 5, 4, 3))
    x = np.random.default_rng(12).uniform(size=(3, 6))
    res = oamip.score_neurons(model, x, [0, 1, 2], loss=Hinge(margin=0.0), min_keep=2)
    for name, mask in res.masks(0.5).items():
        assert mask.sum() >= 2
        assert np.all(mask[res.scores[name] >= 0.5])
    assert all(m.all() for m in res.masks(0.0).values())
    with pytest.raises(oamip.InvalidInputError, match=r"threshold must lie in \[0, 1\]"):
        res.masks(1.5)


def test_the_users_model_is_not_modified(small):
    model, x, y = small
    model.train()
    before = copy.deepcopy(model.state_dict())
    oamip.score_neurons(model, torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32


def test_conv_network_scores_channels():
    model = convnet(3)
    x = np.random.default_rng(3).uniform(size=(3, 1, 8, 8))
    res = oamip.score_neurons(model, x, [0, 1, 2], loss="hinge", lam=1.0, scores="binary")
    assert [len(res.scores[k]) for k in ("0", "4", "7")] == [3, 4, 5]


def test_time_limit_returns_the_best_solution_with_its_status():
    torch.manual_seed(0)
    model = mlp(0, (64, 40, 40, 10))
    x = np.random.default_rng(0).uniform(size=(20, 64))
    y = np.arange(20) % 10
    res = oamip.score_neurons(model, x, y, scores="binary", loss="hinge", time_limit=0.2)
    assert res.status == "time_limit"
    assert res.gap is None or res.gap > 0
    assert np.isfinite(res.objective)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m, x, y: (m, x[:0], y[:0]), "batch is empty"),
        (lambda m, x, y: (m, x[:, :4], y), r"expects 6 inputs but receives shape \(4,\)"),
        (lambda m, x, y: (m, np.where(x > 0.5, np.nan, x), y), "x contains NaN"),
        (lambda m, x, y: (m, x, y[:3]), "labels have shape"),
        (lambda m, x, y: (m, x, y + 5), r"labels must lie in 0..2"),
        (lambda m, x, y: (_poisoned(m), x, y), "parameter '1.weight' contains NaN"),
        (lambda m, x, y: (m, x[0], y[:1]), r"x has shape \(6,\): give a batch"),
        (lambda m, x, y: (m, [[0.0] * 6, [0.0] * 5], y[:2]), "x is ragged"),
        (lambda m, x, y: (m, x.astype(complex), y), "x must be a real numeric array"),
        (lambda m, x, y: (m, x, y.astype(str)), "y must be a real numeric array"),
        (lambda m, x, y: (m, x, y.astype(bool)), "labels must be whole class indices"),
        (lambda m, x, y: (m, x, y + 0.5), "labels must be whole class indices"),
        (lambda m, x, y: (mlp(0, (6, 0, 3)), x, y), "has output shape \\(0,\\), with no units"),
        (lambda m, x, y: (copy.deepcopy(m).to("meta"), x, y), "tensors on the meta device"),
    ],
)
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_bad_input_gets_a_clear_error(small, change, message):
    model, x, y = change(*small)
    with pytest.raises(oamip.InvalidInputError, match=message):
        oamip.score_neurons(model, x, y)


def test_a_loss_refuses_bad_parameters_when_made():
    with pytest.raises(oamip.InvalidInputError, match="margin must be a finite number"):
        Hinge(margin=float("nan"))


def test_an_unknown_option_is_named():
    with pytest.raises(oamip.InvalidInputError, match="unknown option.s. margn; its options"):
        oamip.score_neurons(None, [[0.0]], [0], margn=1.0)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"lam": "5"}, "lam must be a finite number, got '5'"),
        ({"lam": -1.0}, r"lam must lie in \[0, inf\]"),
        ({"loss": "logistic"}, "unknown loss 'logistic'; use one of ce, fidelity, hinge"),
        ({"min_keep": None}, "min_keep must be a whole number, got None"),
        ({"min_keep": 1.5}, "min_keep must be a whole number"),
        ({"loss": 3}, "unknown loss 3"),
        ({"mip_gap": float("nan")}, "mip_gap must be a finite number"),
        ({"mip_gap": -1.0}, r"mip_gap must lie in \[0, 1\]"),
        ({"mip_gap": 2.0}, r"mip_gap must lie in \[0, 1\]"),
        ({"threads": 0}, r"threads must lie in \[1, 1024\]"),
        ({"threads": 1.5}, "threads must be a whole number"),
        ({"threads": True}, "threads must be a whole number"),
        ({"root_cuts": -1}, r"root_cuts must lie in \[0, inf\]"),
        ({"time_limit": float("nan")}, r"time_limit \(seconds\) must be a finite number"),
        ({"time_limit": 0}, r"time_limit \(seconds\) must lie in \(0, inf\]"),
        ({"time_limit": "5"}, r"time_limit \(seconds\) must be a finite number"),
    ],
)
def test_bad_options_are_refused_before_any_work(small, option, message, monkeypatch):
    monkeypatch.setattr(scoring, "extract", _never)
    with pytest.raises(oamip.InvalidInputError, match=message):
        oamip.score_neurons(*small, **{"loss": "hinge", **option})


@pytest.mark.parametrize(
    ("lams", "message"),
    [
        ("15", "lams must be a list of loss weights, got '15'"),
        (5.0, "lams must be a list of loss weights, got 5.0"),
        ([1.0, float("inf")], "every loss weight in lams must be a finite number"),
        ([1.0, -2.0], r"every loss weight in lams must lie in \[0, inf\]"),
        ([], "lams is empty"),
    ],
)
def test_bad_loss_weights_of_a_sweep_are_refused(small, lams, message):
    with pytest.raises(oamip.InvalidInputError, match=message):
        oamip.score_sweep(*small, lams)


def test_loss_weights_may_come_as_an_array(small):
    results = oamip.score_sweep(*small, np.array([1.0, 2.0]), loss="hinge", scores="binary")
    assert [r.status for r in results] == ["optimal", "optimal"]


def test_a_threshold_must_be_a_number_in_0_1(small):
    res = oamip.score_neurons(*small, loss="hinge", scores="binary")
    for bad in ("0.1", float("nan"), 1.5):
        with pytest.raises(oamip.InvalidInputError, match="threshold must"):
            res.masks(bad)


def _never(*args, **kwargs):
    raise AssertionError("the options should have been refused before extracting the model")


def _poisoned(model):
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[1].weight[0, 0] = float("nan")
    return bad


def test_unknown_backend_lists_the_known_ones(small):
    with pytest.raises(oamip.BackendUnavailableError, match="known backends: .*highs"):
        oamip.score_neurons(*small, backend="cplex")


def test_missing_backend_says_how_to_install_it(small, monkeypatch):
    class Missing(backends.Backend):
        name = "missing"
        install_hint = "pip install missing-solver"

        @classmethod
        def is_installed(cls):
            return False

        def solve_form(self, form, options, warm_start):
            raise AssertionError("never called")

    monkeypatch.setitem(backends._REGISTRY, "missing", Missing)
    with pytest.raises(oamip.BackendUnavailableError, match="pip install missing-solver"):
        oamip.score_neurons(*small, backend="missing")


def test_a_solution_that_disagrees_with_pytorch_is_never_returned(small, monkeypatch):
    real = scoring.scored_logits
    monkeypatch.setattr(scoring, "scored_logits", lambda *a: real(*a) + 1e-3)
    with pytest.raises(oamip.VerificationError, match="differ from PyTorch"):
        oamip.score_neurons(*small)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_models_kept_on_a_gpu_work_and_stay_there(small):
    model, x, y = small
    gpu = copy.deepcopy(model).cuda()
    res = oamip.score_neurons(gpu, torch.as_tensor(x).cuda(), torch.as_tensor(y).cuda())
    cpu = oamip.score_neurons(model, x, y)
    assert next(gpu.parameters()).is_cuda
    assert res.objective == pytest.approx(cpu.objective, rel=1e-6)
    pruned = oamip.apply_masks(gpu, res.masks())
    assert next(pruned.parameters()).is_cuda


@pytest.mark.parametrize("solver_heuristics", [False, True])
def test_solver_heuristics_reach_the_backend_and_leave_the_optimum(
    small, monkeypatch, solver_heuristics
):
    seen = []
    highs = backends.get("highs")
    real = type(highs).solve_form

    def recording(self, form, options, warm_start):
        seen.append(options.heuristics)
        return real(self, form, options, warm_start)

    monkeypatch.setattr(type(highs), "solve_form", recording)
    found = oamip.score_neurons(*small, scores="binary", solver_heuristics=solver_heuristics)
    assert seen and set(seen) == {solver_heuristics}
    monkeypatch.setattr(type(highs), "solve_form", real)
    other = oamip.score_neurons(*small, scores="binary", solver_heuristics=not solver_heuristics)
    assert found.objective == pytest.approx(other.objective, abs=1e-6)


def test_the_coefficient_range_is_reported_and_follows_the_weights(small):
    model, x, y = small
    res = oamip.score_neurons(model, x, y, loss="hinge", scores="binary")
    low, high = res.coefficient_range
    assert 0 < low <= high
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(1000.0)
    big = oamip.score_neurons(scaled, x, y, loss="hinge", scores="binary")
    assert big.coefficient_range[1] > 100 * high
