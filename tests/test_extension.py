"""The README's extension examples, kept honest by running them.

1. A formulation variant: the importance MIP with an L1 multi-class margin loss
   ``sum_{j != y} max(0, margin + z_j - z_y)`` instead of cross-entropy, built from the
   formulation's own pieces (variable table, row blocks, logit and score handles) and solved by
   every installed backend, checked against brute force over all binary score vectors.
2. A backend: scipy's ``milp`` as one class plus one ``register`` call.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pyomo.environ as pyo
import pytest
from pyomo.core.expr.numeric_expr import LinearExpression

from oamip import backends
from oamip.adapters import extract
from oamip.backends import Backend, Capabilities, SolveOptions, SolveResult, Status
from oamip.formulations.blocks import RowBlock
from oamip.formulations.importance import (
    ImportanceModel,
    ImportanceSettings,
    build_importance_model,
    sparsity_term,
)
from tests import nets

MARGIN = 1.0
LAM = 2.0


# --- 1. a formulation variant ----------------------------------------------------------------


def l1_margin_values(logits: np.ndarray, labels: np.ndarray, margin: float) -> np.ndarray:
    """``sum_{j != y} max(0, margin + z_j - z_y)`` per sample."""
    rows = np.arange(len(labels))
    terms = np.maximum(0.0, margin + logits - logits[rows, labels][:, None])
    terms[rows, labels] = 0.0
    return terms.sum(axis=1)


def build_l1_margin_model(network, x, y, settings: ImportanceSettings) -> ImportanceModel:
    """The importance MIP with the L1 margin loss: build the standard model, switch off its
    cross-entropy cuts, add one epigraph variable per (sample, wrong class) and a new objective."""
    im = build_importance_model(network, x, y, settings)
    im.model.ce_cuts.deactivate()
    im.model.objective.deactivate()
    n, classes = im.logit_ids.shape
    k, j = np.nonzero(np.arange(classes)[None, :] != im.y[:, None])
    u = im.table.add("l1_margin", np.zeros(len(k)), np.full(len(k), np.inf))
    rows = RowBlock()
    r = rows.new_rows(np.full(len(k), settings.margin), np.inf)
    rows.terms(r, u, 1.0)
    rows.terms(r, im.logit_ids[k, j], -1.0)
    rows.terms(r, im.logit_ids[k, im.y[k]], 1.0)
    rows.attach(im.table, "l1_margin_rows")
    ids, coefs = [], []
    for layer, score in im.score_ids.items():
        ids += score.tolist()
        coefs += [1.0 / network.layers[layer].n_units] * len(score)
    ids += u.tolist()
    coefs += [settings.lam / n] * len(u)
    im.model.l1_objective = pyo.Objective(
        expr=LinearExpression(
            constant=0.0, linear_coefs=coefs, linear_vars=[im.table.variables[i] for i in ids]
        )
    )
    return im


def brute_force(im: ImportanceModel, margin: float, lam: float) -> float:
    """The variant's optimum over every binary score vector keeping ``min_keep`` units a layer."""
    sizes = {i: len(ids) for i, ids in im.score_ids.items()}
    best = np.inf
    for bits in itertools.product((0.0, 1.0), repeat=sum(sizes.values())):
        scores, start = {}, 0
        for i, size in sizes.items():
            scores[i] = np.array(bits[start : start + size])
            start += size
        if min(v.sum() for v in scores.values()) < im.settings.min_keep:
            continue
        loss = l1_margin_values(im.forward(scores), im.y, margin)
        best = min(best, sparsity_term(im.network, scores) + lam * float(np.mean(loss)))
    return best


@pytest.fixture(scope="module")
def variant():
    model = nets.mlp(seed=3, sizes=(4, 4, 3, 3))
    x = np.random.default_rng(3).uniform(0, 1, (5, 4))
    y = np.array([0, 1, 2, 0, 1])
    network = extract(model, x).network
    settings = ImportanceSettings(margin=MARGIN, lam=LAM, scores="binary")
    im = build_l1_margin_model(network, x, y, settings)
    return im, brute_force(im, MARGIN, LAM)


@pytest.mark.parametrize("name", backends.available())
def test_l1_margin_variant_matches_brute_force_on_every_backend(variant, name):
    im, optimum = variant
    result = backends.get(name).solve(im.model, SolveOptions(time_limit=30))
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(optimum, abs=1e-5)
    scores = im.score_values()
    loss = l1_margin_values(im.forward(scores), im.y, MARGIN)
    assert sparsity_term(im.network, scores) + LAM * loss.mean() == pytest.approx(optimum, abs=1e-5)


# --- 2. a backend ----------------------------------------------------------------------------


class ScipyMilpBackend(Backend):
    """scipy.optimize.milp (HiGHS inside scipy): linear models, integer or not."""

    name = "scipy"
    capabilities = Capabilities(integer=True)
    install_hint = "pip install 'scipy>=1.9'"
    python_module = "scipy"

    def solve_form(self, form, options: SolveOptions, warm_start: bool) -> SolveResult:
        from scipy.optimize import Bounds, LinearConstraint, milp

        sign = -1.0 if form.maximize else 1.0
        start = time.perf_counter()
        answer = milp(
            sign * form.c,
            integrality=form.integer.astype(int),
            bounds=Bounds(form.col_lower, form.col_upper),
            constraints=LinearConstraint(form.A, form.row_lower, form.row_upper),
            options={"time_limit": options.time_limit, "mip_rel_gap": options.mip_gap},
        )
        status = {0: Status.OPTIMAL, 1: Status.TIME_LIMIT, 2: Status.INFEASIBLE}
        solution = answer.x if answer.x is not None else None
        objective = None if solution is None else form.objective_value(solution)
        bound = getattr(answer, "mip_dual_bound", None)
        return SolveResult(
            backend=self.name,
            status=status.get(
                answer.status, Status.UNBOUNDED if answer.status == 3 else Status.ERROR
            ),
            objective=objective,
            bound=None if bound is None else form.c0 + sign * bound,
            seconds=time.perf_counter() - start,
            solution=solution,
        )


@pytest.fixture
def scipy_registered(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    backends.register(ScipyMilpBackend)


def test_a_registered_backend_is_available_and_solves_the_variant(variant, scipy_registered):
    im, optimum = variant
    assert "scipy" in backends.available()
    result = backends.get("scipy").solve(im.model)
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(optimum, abs=1e-5)
