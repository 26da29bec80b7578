"""The closed-form SPR penalty (oamip.training.spr) against brute force, and the regulariser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize_scalar
from torch import nn

from oamip.errors import InvalidInputError
from oamip.formulations.spr import SPRParams
from oamip.training.spr import (
    ZERO_GROUP_TOL,
    SPRRegularizer,
    _value_and_slopes,
    group_penalty,
    penalty,
)


def brute_force(row: np.ndarray, a: float, b: float, M: float) -> float:
    """min over z in [ni/M, 1] of a ||w||^2 / z + b z, by a dense grid and a bounded search."""
    sq, ni = float(row @ row), float(np.abs(row).max())
    if sq == 0.0:
        return 0.0
    if ni > M:
        return a * sq + b

    def f(z):
        return a * sq / z + b * z

    lo = ni / M
    grid = np.linspace(lo, 1.0, 20001)
    best = minimize_scalar(f, bounds=(lo, 1.0), method="bounded", options={"xatol": 1e-12})
    return float(min(f(grid).min(), best.fun, f(lo), f(1.0)))


def case_of(row: np.ndarray, a: float, b: float, M: float) -> str:
    """Which row of the table in docs/mathematics.md §5.3 applies (b > 0)."""
    n2, ni = float(np.linalg.norm(row)), float(np.abs(row).max())
    z_free = math.sqrt(a / b) * n2
    if max(ni / M, z_free) >= 1:
        return "keep"
    return "interior" if ni / M <= z_free else "bound"


def mixed_rows(rng: np.random.Generator, n: int = 60, d: int = 5) -> np.ndarray:
    """Rows of very different sizes and spreads, plus a zero row and a row above M."""
    rows = rng.normal(size=(n, d)) * rng.uniform(0.0, 1.5, size=(n, 1))
    rows[::3, 1:] *= 0.05  # one dominant entry: ni close to n2
    rows[0] = 0.0
    rows[1] = [1.8, 0.0, 0.0, 0.0, 0.0]
    return rows


A, B, M = 1.0, 4.0, 1.5


def test_penalty_equals_brute_force_in_every_case():
    rows = mixed_rows(np.random.default_rng(0))
    cases = {case_of(r, A, B, M) for r in rows if r.any()}
    assert cases == {"keep", "interior", "bound"}
    expected = np.array([brute_force(r, A, B, M) for r in rows])
    np.testing.assert_allclose(group_penalty(rows, A, B, M), expected, rtol=1e-7, atol=1e-12)
    assert penalty(rows, A, B, M) == pytest.approx(expected.sum(), rel=1e-7)


@settings(max_examples=40, deadline=None)
@given(
    rows=arrays(np.float64, (3, 4), elements=st.floats(-3, 3, allow_subnormal=False)),
    a=st.floats(0.0, 5.0),
    b=st.floats(0.0, 5.0),
    M=st.floats(0.1, 4.0),
)
def test_penalty_is_the_minimum_over_z(rows, a, b, M):
    expected = [brute_force(r, a, b, M) for r in rows]
    np.testing.assert_allclose(group_penalty(rows, a, b, M), expected, rtol=1e-6, atol=1e-9)


def test_zero_groups_cost_nothing():
    assert penalty(np.zeros((3, 4)), A, B, M) == 0.0
    assert penalty(np.zeros((3, 4)), 0.0, 0.0, M) == 0.0


def test_limits_a_zero_and_b_zero():
    rows = mixed_rows(np.random.default_rng(1))
    ni = np.abs(rows).max(axis=1)
    sq = (rows * rows).sum(axis=1)
    np.testing.assert_allclose(group_penalty(rows, 0.0, B, M), B * np.minimum(ni / M, 1.0))
    np.testing.assert_allclose(group_penalty(rows, A, 0.0, M), A * sq)


def test_group_above_M_takes_the_keep_case():
    row = np.array([[2.5, 0.1, 0.0]])
    assert penalty(row, A, B, M) == pytest.approx(A * (2.5**2 + 0.1**2) + B)


def test_numpy_and_torch_agree():
    rows = mixed_rows(np.random.default_rng(2))
    via_torch = group_penalty(torch.tensor(rows), A, B, M)
    assert isinstance(via_torch, torch.Tensor)
    np.testing.assert_allclose(via_torch.numpy(), group_penalty(rows, A, B, M), rtol=1e-12)
    assert float(penalty(torch.tensor(rows), A, B, M)) == pytest.approx(penalty(rows, A, B, M))


@pytest.mark.parametrize(("a", "b"), [(A, B), (0.0, B), (A, 0.0)])
def test_torch_arithmetic_of_the_accelerator_path_matches_numpy(a, b):
    """Off the CPU the penalty and its slopes are computed with torch operations; the same
    function runs here on CPU tensors, so that path is checked without a GPU."""
    rows = mixed_rows(np.random.default_rng(4))
    sq, ni = (rows * rows).sum(axis=1), np.abs(rows).max(axis=1)
    params = SPRParams(a, b, M)
    expected = _value_and_slopes(sq, ni, params, np)
    got = _value_and_slopes(torch.tensor(sq), torch.tensor(ni), params, torch)
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have.numpy(), want, rtol=1e-12, atol=1e-15)


def smooth_rows(rng: np.random.Generator) -> np.ndarray:
    """Rows away from every kink: nonzero, one clear largest entry, not near a case boundary."""
    rows = [r for r in mixed_rows(rng, n=200) if _away_from_kinks(r)]
    return np.array(rows[:30])


def _away_from_kinks(row: np.ndarray, margin: float = 0.05) -> bool:
    top = np.sort(np.abs(row))[::-1]
    if top[0] < margin or top[0] - top[1] < margin:
        return False
    n2, ni = np.linalg.norm(row), top[0]
    z_free = math.sqrt(A / B) * n2
    return min(abs(ni / M - 1), abs(z_free - 1), abs(z_free - ni / M)) > margin


def test_torch_gradient_matches_finite_differences():
    rows = smooth_rows(np.random.default_rng(3))
    cases = {case_of(r, A, B, M) for r in rows}
    assert cases == {"keep", "interior", "bound"}
    w = torch.tensor(rows, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: penalty(x, A, B, M), (w,), eps=1e-6, atol=1e-6)


def boundary_rows() -> tuple[np.ndarray, float, float, float]:
    """Rows exactly at each case boundary for a = 1, b = 4, M = 2, plus zero and tied rows."""
    a, b, M = 1.0, 4.0, 2.0  # sqrt(b / a) = M: a one-entry row sits on interior/bound
    rows = np.array(
        [
            [0.0, 0.0, 0.0],
            [0.5, 0.0, 0.0],  # interior / bound boundary
            [2.0, 0.0, 0.0],  # ni = M and n2 = sqrt(b / a): the keep boundary
            [1.2, 1.6, 0.0],  # n2 = 2 exactly
            [0.3, -0.3, 0.3],  # ties in the largest entry
        ]
    )
    return rows, a, b, M


@pytest.mark.parametrize("ab", [(1.0, 4.0), (0.0, 4.0), (1.0, 0.0), (0.0, 0.0)])
def test_no_nan_gradient_at_zero_and_at_boundaries(ab):
    rows, _, _, M2 = boundary_rows()
    w = torch.tensor(rows, requires_grad=True)
    value = penalty(w, *ab, M2)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(w.grad).all()
    assert (w.grad[0] == 0).all()


def test_penalty_is_continuous_across_boundaries():
    rows, a, b, M2 = boundary_rows()
    for row in rows[1:4]:
        values = [penalty(row[None] * s, a, b, M2) for s in (1 - 1e-9, 1.0, 1 + 1e-9)]
        assert max(values) - min(values) < 1e-7


def test_penalty_rejects_bad_input():
    with pytest.raises(InvalidInputError, match="2-D"):
        penalty(np.zeros(3), A, B, M)
    with pytest.raises(InvalidInputError, match="M > 0"):
        penalty(np.zeros((2, 3)), A, B, 0.0)
    with pytest.raises(InvalidInputError, match="b >= 0"):
        penalty(np.zeros((2, 3)), A, -1.0, M)


def small_net() -> nn.Sequential:
    """conv+BN (grouped with BN), conv without bias, linear, BN after a ReLU (not grouped), out."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),  # 0
        nn.BatchNorm2d(4),  # 1
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, bias=False),  # 3
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12, 5),  # 6
        nn.ReLU(),
        nn.BatchNorm1d(5),  # 8: follows the ReLU, not the Linear
        nn.Linear(5, 2),  # 9: output layer
    )


def test_regularizer_groups_the_right_parameters():
    net = small_net()
    reg = SPRRegularizer(net, lam=0.5, alpha=0.2)
    groups = reg.groups()
    assert {k: tuple(v.shape) for k, v in groups.items()} == {
        "0": (4, 9 + 1 + 2),
        "3": (3, 36),
        "6": (5, 12 + 1),
    }
    expected = torch.cat(
        [
            net[0].weight.reshape(4, -1),
            net[0].bias[:, None],
            net[1].weight[:, None],
            net[1].bias[:, None],
        ],
        dim=1,
    )
    assert torch.equal(groups["0"], expected)
    reg().backward()
    reached = {name for name, p in net.named_parameters() if p.grad is not None}
    assert reached == {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "6.weight", "6.bias"}


def test_regularizer_value_and_constants():
    net = small_net()
    reg = SPRRegularizer(net, lam=0.5, alpha=0.2, M_scale=2.0)
    assert reg.params["0"].M == 2.0  # the BatchNorm scale, 1, is the largest entry
    largest = float(net[6].weight.detach().abs().max().maximum(net[6].bias.detach().abs().max()))
    m_linear = reg.params["6"].M
    assert m_linear == 2.0 * largest
    assert (reg.params["3"].a, reg.params["3"].b) == pytest.approx((0.1, 0.4))
    expected = sum(
        penalty(g.detach().numpy(), 0.1, 0.4, reg.params[name].M)
        for name, g in reg.groups().items()
    )
    assert float(reg().detach()) == pytest.approx(expected, rel=1e-5)


def test_masks_mark_zero_groups():
    net = small_net()
    reg = SPRRegularizer(net, lam=1.0, alpha=0.5)
    with torch.no_grad():
        net[6].weight[1] = 0.0
        net[6].bias[1] = ZERO_GROUP_TOL / 2
        for p in (net[0].weight, net[0].bias, net[1].weight, net[1].bias):
            p[2] = 0.0
        net[3].weight[0] = 0.0  # no bias: the whole group is zero
        net[0].weight[3] = 0.0  # bias and BatchNorm still nonzero: kept
    masks = reg.masks()
    assert set(masks) == {"0", "3", "6"}
    assert all(m.dtype == np.bool_ for m in masks.values())
    np.testing.assert_array_equal(masks["0"], [True, True, False, True])
    np.testing.assert_array_equal(masks["3"], [False, True, True])
    np.testing.assert_array_equal(masks["6"], [True, False, True, True, True])


def test_only_unit_layers_are_regularised():
    """A Linear that no ReLU follows is no unit layer, wherever it sits."""
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    assert list(SPRRegularizer(net, lam=1.0, alpha=0.5).groups()) == ["1"]


def test_regularizer_rejects_unusable_models():
    with pytest.raises(InvalidInputError, match="before the output layer"):
        SPRRegularizer(nn.Sequential(nn.Linear(3, 2)), lam=1.0, alpha=0.5)
    with pytest.raises(InvalidInputError, match="alpha"):
        SPRRegularizer(small_net(), lam=1.0, alpha=1.5)
    zero = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    nn.init.zeros_(zero[0].weight)
    nn.init.zeros_(zero[0].bias)
    with pytest.raises(InvalidInputError, match="only zero parameters"):
        SPRRegularizer(zero, lam=1.0, alpha=0.5)


def test_regularizer_gradient_equals_the_per_layer_penalty_gradient():
    """The one-call CPU path of the regulariser and the per-layer penalty agree, gradients too."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
        nn.ReLU(),
        nn.Linear(6, 2),
    ).double()
    with torch.no_grad():
        model[4].weight[0] = 0.0  # a zero group
        model[4].bias[0] = 0.0
        model[4].weight[1] *= 8.0  # kept by its 2-norm alone: its inf-norm is never read
        model[4].weight[2] = 0.0  # one large entry: z* = ||w||_inf / M
        model[4].bias[2] = 0.0
        model[4].weight[2, 5] = 0.4
    reg = SPRRegularizer(model, lam=0.5, alpha=0.3, M_scale=0.7)
    p = reg.params["4"]
    rows = reg.groups()["4"].detach().numpy()
    n2, ni = np.linalg.norm(rows, axis=1), np.abs(rows).max(axis=1)
    ratio = np.sqrt(p.a / p.b)
    assert (ratio * n2 >= 1).any() and ((ni / p.M > ratio * n2) & (ni < p.M)).any()
    assert ((ratio * n2 < 1) & (ni / p.M < ratio * n2)).any() and (n2 == 0).any()
    total = reg()
    total.backward()
    fast = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    slow = sum(group_penalty(g, **_abm(reg, name)).sum() for name, g in reg.groups().items())
    slow.backward()
    assert total.item() == pytest.approx(slow.item(), rel=1e-12)
    slow_grads = [p.grad for p in model.parameters()]
    assert [g is None for g in fast] == [g is None for g in slow_grads]
    for a, b in zip(fast, slow_grads):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _abm(reg, name: str) -> dict:
    p = reg.params[name]
    return {"a": p.a, "b": p.b, "M": p.M}
