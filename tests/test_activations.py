"""Piecewise-linear activations (ReLU6, Hardtanh, LeakyReLU): the maths against torch, the MIP
against torch with fixed scores and against every mask, masks against removal, a CLI run; SPR on
networks whose activations OAMIP does not encode."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import oamip
from oamip import activations, backends, cli
from oamip.activations import ACTIVATIONS, Hardtanh, LeakyReLU, ReLU6, activation_of
from oamip.adapters import apply_masks, extract, scored_logits
from oamip.adapters.chain import units
from oamip.bounds import interval_bounds
from oamip.errors import UnsupportedLayerError
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.formulations.size import estimate_size
from oamip.network import AffineLayer
from oamip.pipelines.spr import spr_prune
from oamip.solve.tightening import tighten_bounds
from oamip.training.data import load_digits
from oamip.training.train import train
from tests.nets import random_bn

ACTS = {
    "relu6": nn.ReLU6,
    "hardtanh": lambda: nn.Hardtanh(-0.3, 0.4),
    "hardtanh_neg": lambda: nn.Hardtanh(-0.2, 0.0),
    "leaky": lambda: nn.LeakyReLU(0.2),
}
"""Small bounds, so that the samples reach every piece of each activation."""
EXTENDING = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


class _Functional(nn.Module):
    """The activations as calls: F.leaky_relu, F.hardtanh, F.relu6."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc1 = nn.Linear(18, 4)
        self.fc2 = nn.Linear(4, 3)
        self.out = nn.Linear(3, 3)

    def forward(self, x):
        x = F.max_pool2d(F.leaky_relu(self.conv(x), 0.1), 2)
        x = F.hardtanh(self.fc1(x.flatten(1)), -0.5, 0.5)
        return self.out(F.relu6(self.fc2(x)))


def _conv(act, seed: int = 0) -> nn.Sequential:
    """Activation before a max pooling and after one, with BatchNorm, then a Linear unit."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        random_bn(nn.BatchNorm2d(2)),
        act(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 2),
        nn.MaxPool2d(2),
        act(),
        nn.Flatten(),
        nn.Linear(2, 4),
        act(),
        nn.Linear(4, 3),
    ).eval()


def _mlp(act, seed: int = 0, sizes=(4, 4, 3, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(n_in, n_out), act()]
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1])).eval()


@pytest.mark.parametrize(
    "module",
    [
        nn.ReLU(),
        nn.ReLU6(),
        nn.Hardtanh(-0.3, 0.4),
        nn.Hardtanh(0.0, 2.0),
        nn.Hardtanh(-1.5, 0.0),
        nn.LeakyReLU(0.2),
        nn.LeakyReLU(0.0),
        nn.LeakyReLU(1.5),
    ],
)
def test_each_activation_computes_its_torch_module_and_a_score_of_0_silences_it(module):
    z = np.linspace(-8, 8, 1601)
    act = activation_of(module, "act")
    expected = module(torch.as_tensor(z)).numpy()
    np.testing.assert_allclose(act(z), expected, atol=1e-12)
    np.testing.assert_array_equal(act.scored(z, act.reach(z, z)), 0.0)
    t = 0.7
    soft = z - np.clip(z, -t, t)
    np.testing.assert_allclose(act.scored(z, t), module(torch.as_tensor(soft)).numpy(), atol=1e-12)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.Hardtanh(0.5, 2.0), r"does not map 0 to 0"),
        (nn.LeakyReLU(-0.1), r"decreasing"),
    ],
)
def test_activations_that_masks_or_pooling_cannot_handle_are_refused(module, message):
    with pytest.raises(UnsupportedLayerError, match=message):
        activation_of(module, "act")


def test_the_registry_holds_the_four_built_in_activations():
    assert {"ReLU", "ReLU6", "Hardtanh", "LeakyReLU"} <= set(ACTIVATIONS)
    assert ReLU6().ramps == Hardtanh(0.0, 6.0).ramps
    assert LeakyReLU(0.0).is_relu


def _setups():
    rng = np.random.default_rng(5)
    for name, act in ACTS.items():
        yield f"mlp_{name}", _mlp(act), rng.uniform(-2, 2, size=(3, 4))
        yield f"conv_{name}", _conv(act), rng.uniform(-1, 3, size=(2, 1, 6, 6))
    yield "functional", _Functional(), rng.uniform(-1, 2, size=(2, 1, 6, 6))


SETUPS = {name: (model, x) for name, model, x in _setups()}


@pytest.mark.parametrize("encoding", ["tight", "big-m"])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("name", sorted(SETUPS))
def test_fixed_scores_reproduce_the_torch_model(name, binary, encoding):
    """The MIP's logits with scores fixed equal the torch model's, the score term applied by
    hooks; binary scores equal the masked model's forward."""
    model, x = SETUPS[name]
    extracted = extract(model, x)
    rng = np.random.default_rng(len(name))
    y = rng.integers(0, 3, len(x))
    mode = "binary" if binary else "continuous"
    settings = ImportanceSettings("hinge", scores=mode, min_keep=0, encoding=encoding)
    im = build_importance_model(extracted.network, x, y, settings)
    scores = {}
    for i in extracted.network.scored:
        n = extracted.network.layers[i].n_units
        scores[i] = rng.integers(0, 2, n).astype(float) if binary else rng.uniform(0, 1, n)
    im.fix_scores(scores)
    assert backends.get("highs").solve(im.model).status == "optimal"
    by_name = extracted.scores_by_name(scores)
    expected = scored_logits(extracted, x, by_name, im.big_m)
    np.testing.assert_allclose(im.logit_values(), expected, atol=1e-6)
    np.testing.assert_allclose(im.forward(scores), expected, atol=1e-10)
    if binary:
        masks = {k: v > 0.5 for k, v in by_name.items()}
        with torch.no_grad():
            pruned = apply_masks(model, masks).double()(torch.as_tensor(x)).numpy()
        np.testing.assert_allclose(pruned, expected, atol=1e-10)


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_bounds_hold_and_the_warm_start_is_feasible_for_any_scores(name):
    model, x = SETUPS[name]
    network = extract(model, x).network
    bounds = interval_bounds(network, network.check_input(x))
    settings = ImportanceSettings(min_keep=0)
    im = build_importance_model(network, x, np.zeros(len(x), dtype=int), settings)
    rng = np.random.default_rng(0)
    for binary in (True, False, False):
        scores = {}
        for i in network.scored:
            n = network.layers[i].n_units
            scores[i] = rng.integers(0, 2, n).astype(float) if binary else rng.uniform(0, 1, n)
        trace = network.trace(x, scores, bounds.big_m)
        for index, (layer, values, b) in enumerate(zip(network.layers, trace, bounds.layers)):
            seen = values.pre if isinstance(layer, AffineLayer) else values.out
            assert np.all(seen >= b.lower - 1e-9) and np.all(seen <= b.upper + 1e-9)
            out = bounds.output_bounds(network, index)
            assert np.all(values.out >= out.lower - 1e-9) and np.all(values.out <= out.upper + 1e-9)
        im.assign(scores)
        form = backends.compile_model(im.model)
        start = form.start_values()
        assert np.all(start >= form.col_lower - 1e-9) and np.all(start <= form.col_upper + 1e-9)
        activity = form.A @ start
        assert np.all(activity >= form.row_lower - 1e-7)
        assert np.all(activity <= form.row_upper + 1e-7)


@pytest.mark.parametrize("encoding", ["tight", "big-m"])
@pytest.mark.parametrize("scores", ["binary", "continuous"])
@pytest.mark.parametrize("name", sorted(SETUPS))
def test_the_size_estimate_bounds_the_model_built(name, scores, encoding):
    model, x = SETUPS[name]
    network = extract(model, x).network
    settings = ImportanceSettings(scores=scores, encoding=encoding)
    settings.validate()
    im = build_importance_model(network, x, np.zeros(len(x), dtype=int), settings)
    form = backends.compile_model(im.model)
    estimate = estimate_size(network, len(x), settings)
    assert form.num_cols <= estimate.variables and form.num_rows <= estimate.constraints


@pytest.mark.parametrize("name", ["hardtanh", "leaky"])
def test_tightened_bounds_hold_and_keep_the_optimum(name):
    model = _mlp(ACTS[name], seed=2, sizes=(4, 6, 5, 4, 3))
    rng = np.random.default_rng(6)
    x = rng.uniform(-2, 2, size=(3, 4))
    y = rng.integers(0, 3, len(x))
    network = extract(model, x).network
    settings = ImportanceSettings("hinge", lam=1.0, scores="binary")
    tight = tighten_bounds(network, x, y, settings, time_budget=30)
    assert tight.lps > 0 and tight.entries
    for _ in range(100):
        scores = {i: rng.uniform(0, 1, network.layers[i].n_units) for i in network.scored}
        trace = network.trace(x, scores, tight.bounds.big_m)
        for values, b in zip(trace, tight.bounds.layers):
            assert np.all(values.pre >= b.lower - 1e-9) and np.all(values.pre <= b.upper + 1e-9)
    optima = []
    for bounds in (None, tight.bounds):
        im = build_importance_model(network, x, y, settings, bounds)
        result = backends.get("highs").solve(im.model, backends.SolveOptions(mip_gap=1e-9))
        assert result.status == "optimal"
        optima.append(result.objective)
    assert optima[1] == pytest.approx(optima[0], abs=1e-7)


def _hinge_objective(model, x, y, masks, lam: float) -> float:
    with torch.no_grad():
        z = apply_masks(model, masks).double()(torch.as_tensor(x)).numpy()
    true = z[np.arange(len(y)), y]
    other = z.copy()
    other[np.arange(len(y)), y] = -np.inf
    losses = np.maximum(0.0, 1.0 + other.max(axis=1) - true)
    return float(sum(m.mean() for m in masks.values()) + lam * losses.mean())


def _best_by_enumeration(model, x, y, sizes: dict[str, int], lam: float) -> float:
    choices = [
        [np.array(bits, dtype=bool) for bits in itertools.product([0, 1], repeat=n) if any(bits)]
        for n in sizes.values()
    ]
    return min(
        _hinge_objective(model, x, y, dict(zip(sizes, combo)), lam)
        for combo in itertools.product(*choices)
    )


@pytest.mark.parametrize("backend", backends.available())
@pytest.mark.parametrize("name", sorted(ACTS))
def test_binary_optimum_equals_the_enumeration_of_every_masked_torch_model(name, backend):
    model = _mlp(ACTS[name], seed=len(name))
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, size=(4, 4))
    y = rng.integers(0, 3, len(x))
    res = oamip.score_neurons(
        model, x, y, loss="hinge", lam=2.0, scores="binary", mip_gap=1e-9, backend=backend
    )
    assert res.status == "optimal"
    sizes = {unit: len(s) for unit, s in res.scores.items()}
    assert res.objective == pytest.approx(_best_by_enumeration(model, x, y, sizes, 2.0), abs=1e-6)
    found = {unit: s > 0.5 for unit, s in res.scores.items()}
    assert _hinge_objective(model, x, y, found, 2.0) == pytest.approx(res.objective, abs=1e-9)


@pytest.mark.parametrize("name", ["hardtanh", "leaky"])
def test_ideal_cuts_on_every_ramp_keep_the_binary_optimum(name):
    """Root cuts separate on each ramp (weights ``d A``, offset ``d c - b``); a wrong cut would
    cut off the enumerated optimum."""
    model = _mlp(ACTS[name], seed=len(name) + 1, sizes=(4, 5, 4, 3))
    rng = np.random.default_rng(4)
    x = rng.uniform(-2, 2, size=(3, 4))
    y = rng.integers(0, 3, len(x))
    res = oamip.score_neurons(
        model, x, y, loss="hinge", lam=3.0, scores="binary", mip_gap=1e-9, root_cuts=4
    )
    assert res.status == "optimal" and res.formulation.cut_blocks > 0
    sizes = {unit: len(s) for unit, s in res.scores.items()}
    assert res.objective == pytest.approx(_best_by_enumeration(model, x, y, sizes, 3.0), abs=1e-6)


@pytest.mark.parametrize("name", ["conv_leaky", "conv_hardtanh", "functional"])
def test_masks_and_physical_removal_give_the_same_outputs(name):
    model, x = SETUPS[name]
    rng = np.random.default_rng(1)
    masks = {u.name: rng.random(u.size) < 0.6 for u in units(model)}
    for mask in masks.values():
        mask[0] = True
    xt = torch.as_tensor(x, dtype=torch.float32)
    small = oamip.remove_pruned(model, masks)
    with torch.no_grad():
        np.testing.assert_allclose(
            small(xt).numpy(), apply_masks(model, masks)(xt).numpy(), atol=1e-5
        )
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


class _ResidualLeaky(nn.Module):
    """A residual block whose inner activation is a LeakyReLU; after the addition, ``after``."""

    def __init__(self, after: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.stem = nn.Linear(4, 3)
        self.inner = nn.Linear(3, 3)
        self.back = nn.Linear(3, 3)
        self.out = nn.Linear(3, 2)
        self.act = nn.LeakyReLU(0.1)
        self.after = after

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.out(self.after(self.back(self.act(self.inner(h))) + h))


def test_a_residual_block_with_leaky_relu_inside_is_scored_exactly():
    model = _ResidualLeaky(nn.ReLU6()).eval()
    x = np.random.default_rng(0).uniform(-1, 1, size=(3, 4))
    res = oamip.score_neurons(model, x, np.array([0, 1, 0]), scores="binary", residual="both")
    assert res.status == "optimal"
    assert res.logit_error < 1e-6


def test_a_two_sided_activation_after_an_addition_is_refused_by_name():
    model = _ResidualLeaky(nn.LeakyReLU(0.1)).eval()
    with pytest.raises(UnsupportedLayerError, match="'after' .*follows the residual addition"):
        extract(model, np.zeros((1, 4)))


@pytest.mark.parametrize("act", [nn.GELU, nn.Tanh, nn.SiLU])
def test_oamip_refuses_an_activation_that_is_not_piecewise_linear_in_one_line(act):
    model = _mlp(act)
    with pytest.raises(UnsupportedLayerError) as info:
        oamip.score_neurons(model, np.zeros((2, 4)), np.array([0, 1]))
    message = str(info.value)
    assert "\n" not in message
    assert f"layer '1' ({act.__name__})" in message
    assert "encoded: Hardtanh, LeakyReLU, ReLU, ReLU6" in message


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.mark.parametrize("act", [nn.GELU, nn.Tanh])
def test_spr_trains_and_prunes_a_network_oamip_cannot_encode(act, digits, tmp_path):
    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 24), act(), nn.Linear(24, 16), act(), nn.Linear(16, 10)
    )
    dense = train(dense, digits, epochs=5, lr=1e-2, progress=False)
    report = spr_prune(
        dense,
        digits,
        out=tmp_path / "out",
        epochs=6,
        finetune_epochs=0,
        lam=0.1,
        lr=1e-2,
        progress=False,
        group_lasso_scales=(),
    )
    assert report.units_pruned > 0
    assert report.params_after < report.params_total
    assert report.accuracy_before > 0.9 and report.accuracy_after > 0.8
    small = oamip.load_model(tmp_path / "out" / "pruned.pt")
    assert any(isinstance(m, act) for m in small.modules())
    x = torch.as_tensor(digits.x_test[:16])
    with torch.no_grad():
        np.testing.assert_allclose(small(x).numpy(), report.model(x).numpy(), atol=1e-6)


@pytest.mark.parametrize("act", [lambda: nn.LeakyReLU(0.05), nn.ReLU6])
def test_oamip_prune_runs_on_a_saved_leaky_relu_or_relu6_model(act, digits, tmp_path, capsys):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), act(), nn.Linear(16, 10))
    dense = train(dense, digits, epochs=5, lr=1e-2, progress=False)
    path = oamip.save_model(dense, tmp_path / "dense.pt")
    out = tmp_path / "out"
    args = ["--model", str(path), "--finetune-epochs", "0", "--time-limit", "5"]
    status = cli.main(["prune", *args, "--out", str(out)])
    assert status == 0, capsys.readouterr().err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["units_total"] == 16
    small = oamip.load_model(out / "pruned.pt")
    assert type(small[2]) is type(act())
    assert small[1].out_features == 16 - report["units_pruned"]


@pytest.fixture
def documented_activation(monkeypatch):
    """Run the activation class of docs/extending.md against a copy of the registry."""
    monkeypatch.setattr(activations, "ACTIVATIONS", dict(ACTIVATIONS))
    text = EXTENDING.read_text()
    section = text[text.index("**An activation** is one class") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    # dont_inherit: the page's code runs without this file's ``from __future__`` imports
    exec(compile(code, "docs/extending.md (An activation)", "exec", dont_inherit=True), namespace)
    return namespace["Softshrink"]


def test_the_documented_activation_is_exact_and_solves_to_the_enumerated_optimum(
    documented_activation,
):
    module = nn.Softshrink(0.3)
    z = np.linspace(-3, 3, 601)
    act = activation_of(module, "act")
    assert isinstance(act, documented_activation)
    np.testing.assert_allclose(act(z), module(torch.as_tensor(z)).numpy(), atol=1e-12)
    model = _mlp(lambda: nn.Softshrink(0.3), seed=1)
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, size=(4, 4))
    y = rng.integers(0, 3, len(x))
    res = oamip.score_neurons(model, x, y, loss="hinge", lam=2.0, scores="binary", mip_gap=1e-9)
    assert res.status == "optimal" and res.logit_error < 1e-6
    sizes = {unit: len(s) for unit, s in res.scores.items()}
    assert res.objective == pytest.approx(_best_by_enumeration(model, x, y, sizes, 2.0), abs=1e-6)


def test_without_registration_softshrink_is_refused(monkeypatch):
    monkeypatch.setattr(activations, "ACTIVATIONS", dict(ACTIVATIONS))
    activations.ACTIVATIONS.pop("Softshrink", None)
    with pytest.raises(UnsupportedLayerError, match=r"layer '1' \(Softshrink\) is not"):
        extract(_mlp(nn.Softshrink), np.zeros((1, 4)))
