"""The importance MIP on residual networks (docs/mathematics.md §4.10): with scores fixed it
reproduces PyTorch's forward with the scores applied at every ReLU of a unit, its bounds hold for
every score vector, and on tiny networks its binary optimum equals the enumeration of every mask
(objectives computed by PyTorch on the masked model)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip import backends
from oamip.adapters.decompose import blocks
from oamip.adapters.extract import extract
from oamip.adapters.masks import apply_masks, scored_logits
from oamip.adapters.structure import row_groups
from oamip.bounds import interval_bounds
from oamip.errors import InvalidInputError, UnsupportedLayerError
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.network import MaxPoolLayer
from oamip.solve.tightening import tighten_bounds
from oamip.training.models import resnet
from oamip.training.tp_importance import oamip_importance
from tests.nets import random_bn

SOLVE_ATOL = 1e-6
KINDS = ("both", "inner", "group")


class Block(nn.Module):
    """A BasicBlock: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, the shortcut a
    1x1 convolution with BatchNorm when the channels or the stride change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = random_bn(nn.BatchNorm2d(c_out))
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = random_bn(nn.BatchNorm2d(c_out))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), random_bn(nn.BatchNorm2d(c_out))
            )
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(
            self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.shortcut(x)
        )


class TinyResNet(nn.Module):
    """Stem, a stage of identity blocks, a stage opened by a projection block, pooling, Linear."""

    def __init__(self, seed: int, widths=(2, 3), blocks=(1, 1), side: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1)
        self.stem_bn = random_bn(nn.BatchNorm2d(widths[0]))
        self.stem_relu = nn.ReLU()
        first = [Block(widths[0], widths[0]) for _ in range(blocks[0])]
        second = [Block(widths[0], widths[1], 2)]
        second += [Block(widths[1], widths[1]) for _ in range(blocks[1] - 1)]
        self.stage1 = nn.Sequential(*first)
        self.stage2 = nn.Sequential(*second)
        self.pool = nn.AvgPool2d(side // 2)
        self.fc = nn.Linear(widths[1], 3)
        self.eval()

    def forward(self, x):
        x = self.stage2(self.stage1(self.stem_relu(self.stem_bn(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _setup(seed: int, n: int, kind: str, **shape):
    model = TinyResNet(seed, **shape)
    side = shape.get("side", 4)
    x = np.random.default_rng(seed).uniform(-1, 1, size=(n, 1, side, side))
    return model, x, extract(model, x, kind)


def _random_scores(network, rng, binary: bool) -> dict[int, np.ndarray]:
    out = {}
    for i in network.scored:
        n = network.layers[i].n_units
        out[i] = rng.integers(0, 2, n).astype(float) if binary else rng.uniform(0, 1, n)
    return out


def _torch_scored(extracted, x, scores: dict[int, np.ndarray], big_m) -> np.ndarray:
    """PyTorch's logits with every scored ReLU's argument lowered by ``(1 - s) M``
    (docs/mathematics.md (1)), through hooks on the ReLU modules: a coupled group's score
    acts at each of its ReLUs with that ReLU's own ``M``. Scores are one value per unit or one
    row per sample of ``x``."""
    ref = extracted.reference
    modules = dict(ref.named_modules())
    network = extracted.network
    handles = []
    for i, relu in extracted.relus.items():
        key = network.score_key(i)
        if key is None:
            continue
        shift = torch.from_numpy((1.0 - scores[key]) * big_m[i])
        shift = shift.reshape(-1, network.layers[i].n_units, 1, 1)
        hook = modules[relu].register_forward_pre_hook(lambda _m, args, s=shift: args[0] - s)
        handles.append(hook)
    try:
        with torch.no_grad():
            return ref(torch.as_tensor(x)).numpy()
    finally:
        for handle in handles:
            handle.remove()


def _masked_torch(model, extracted, x, scores: dict[int, np.ndarray]) -> np.ndarray:
    """PyTorch's logits of the model with the units of zero score removed (their channels set
    to 0 in every producer and BatchNorm) by ``apply_masks``."""
    masks = {name: scores[u.layer] > 0.5 for name, u in extracted.units.items()}
    with torch.no_grad():
        return apply_masks(model, masks).double()(torch.as_tensor(x)).numpy()


def test_extraction_reads_blocks_groups_and_inner_units():
    """One ResidualLayer per block, a projection only where the shape changes, the stem in the
    first stage's group, and each kind of unit scored only when asked for."""
    model, x, both = _setup(0, 2, "both", blocks=(2, 2))
    with torch.no_grad():
        expected = model.double()(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(both.network.forward(x), expected, atol=1e-12)
    assert set(both.units) == {
        "stem",
        "stage1.0.conv1",
        "stage1.1.conv1",
        "stage2.0.conv1",
        "stage2.0.conv2",
        "stage2.1.conv1",
    }
    network = both.network
    residual = [i for i, layer in enumerate(network.layers) if layer.kind == "residual"]
    assert [network.layers[i].shortcut is None for i in residual] == [True, True, False, True]
    stem = both.units["stem"].layer
    assert [network.score_key(i) for i in residual] == [stem, stem, residual[2], residual[2]]
    inner = extract(model, x, "inner")
    assert set(inner.units) == {n for n in both.units if n.endswith("conv1")}
    assert all(inner.network.score_key(i) is None for i in residual)
    group = extract(model, x, "group")
    assert set(group.units) == {"stem", "stage2.0.conv2"}
    assert group.network.scored == [stem, residual[2]]


@pytest.mark.parametrize("encoding", ["tight", "big-m"])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_scores_reproduce_scored_torch_forward(seed, kind, binary, encoding):
    model, x, extracted = _setup(seed, 2, kind, blocks=(2, 1))
    y = np.random.default_rng(seed + 1).integers(0, 3, len(x))
    settings = ImportanceSettings(
        "hinge", scores="binary" if binary else "continuous", min_keep=0, encoding=encoding
    )
    im = build_importance_model(extracted.network, x, y, settings)
    scores = _random_scores(extracted.network, np.random.default_rng(seed + 2), binary)
    im.fix_scores(scores)
    result = backends.get("highs").solve(im.model)
    assert result.status == "optimal"
    expected = _torch_scored(extracted, x, scores, im.big_m)
    np.testing.assert_allclose(im.logit_values(), expected, atol=SOLVE_ATOL)
    np.testing.assert_allclose(im.forward(scores), expected, atol=1e-10)
    by_name = extracted.scores_by_name(scores)
    np.testing.assert_allclose(scored_logits(extracted, x, by_name, im.big_m), expected, atol=1e-10)
    if binary:
        np.testing.assert_allclose(_masked_torch(model, extracted, x, scores), expected, atol=1e-9)


def test_scores_change_the_forward():
    """The torch references above are not blind to the scores: switching a group off changes
    the logits, and the MIP follows."""
    _, x, extracted = _setup(3, 2, "group")
    ones = {i: np.ones(extracted.network.layers[i].n_units) for i in extracted.network.scored}
    off = {i: s.copy() for i, s in ones.items()}
    off[extracted.units["stem"].layer][0] = 0.0
    big_m = interval_bounds(extracted.network, x).big_m
    assert not np.allclose(
        _torch_scored(extracted, x, ones, big_m), _torch_scored(extracted, x, off, big_m)
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_bounds_contain_every_value_for_every_score_vector(seed, kind):
    _, x, extracted = _setup(seed, 3, kind, blocks=(2, 2))
    network = extracted.network
    bounds = interval_bounds(network, network.check_input(x))
    rng = np.random.default_rng(seed)
    for binary in (True, True, False, False):
        trace = network.trace(x, _random_scores(network, rng, binary), bounds.big_m)
        for i, (layer, values, b) in enumerate(zip(network.layers, trace, bounds.layers)):
            seen = values.out if isinstance(layer, MaxPoolLayer) else values.pre
            assert np.all(seen >= b.lower - 1e-9) and np.all(seen <= b.upper + 1e-9)
            out = bounds.output_bounds(network, i)
            assert np.all(values.out >= out.lower - 1e-9) and np.all(values.out <= out.upper + 1e-9)


def test_tightened_bounds_of_a_residual_network_contain_every_value():
    """Bound tightening (LPs over the relaxation, then propagation through the additions) keeps
    every value the network takes under sampled score vectors."""
    _, x, extracted = _setup(7, 2, "both")
    network = extracted.network
    y = np.array([0, 1])
    tightened = tighten_bounds(network, x, y, time_budget=30).bounds
    big_m = interval_bounds(network, x).big_m
    rng = np.random.default_rng(7)
    for binary in (True, False, False):
        trace = network.trace(x, _random_scores(network, rng, binary), big_m)
        for layer, values, b in zip(network.layers, trace, tightened.layers):
            seen = values.out if isinstance(layer, MaxPoolLayer) else values.pre
            assert np.all(seen >= b.lower - 1e-6) and np.all(seen <= b.upper + 1e-6)


def _hinge(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    other = z.copy()
    other[np.arange(len(y)), y] = -np.inf
    return np.maximum(0.0, 1.0 + other.max(axis=1) - z[np.arange(len(y)), y])


def _enumerate(extracted, x, y, lam: float) -> float:
    """The best objective (2) over every binary mask keeping at least one channel per unit,
    by one batched PyTorch forward with the masks applied at the ReLUs (the fixed-score test
    shows this equals the forward of ``apply_masks``)."""
    keys = [u.layer for u in extracted.units.values()]
    sizes = [extracted.network.layers[i].n_units for i in keys]
    choices = [
        [np.array(bits, dtype=float) for bits in itertools.product([0, 1], repeat=n) if any(bits)]
        for n in sizes
    ]
    combos = list(itertools.product(*choices))
    scores = {i: np.repeat([c[k] for c in combos], len(x), axis=0) for k, i in enumerate(keys)}
    big_m = interval_bounds(extracted.network, x).big_m
    repeated = np.concatenate([x] * len(combos))
    z = _torch_scored(extracted, repeated, scores, big_m).reshape(len(combos), len(x), -1)
    losses = np.array([_hinge(zc, y).mean() for zc in z])
    sparsity = np.array([sum(s.mean() for s in c) for c in combos])
    return float((sparsity + lam * losses).min())


@pytest.mark.parametrize(
    ("kind", "lam", "seed"),
    [("both", 1.0, 0), ("both", 3.0, 1), ("inner", 2.0, 2), ("group", 2.0, 3)],
)
def test_binary_optimum_equals_enumeration_over_all_masks(kind, lam, seed):
    model, x, extracted = _setup(seed, 3, kind, widths=(2, 2))
    assert sum(extracted.network.layers[u.layer].n_units for u in extracted.units.values()) <= 8
    y = np.random.default_rng(seed + 5).integers(0, 3, len(x))
    settings = ImportanceSettings("hinge", lam=lam, scores="binary", min_keep=1)
    im = build_importance_model(extracted.network, x, y, settings)
    result = backends.get("highs").solve(im.model)
    assert result.status == "optimal"
    best = _enumerate(extracted, x, y, lam)
    assert result.objective == pytest.approx(best, abs=1e-6)
    found = {i: np.round(s) for i, s in im.score_values().items()}
    z = _masked_torch(model, extracted, x, found)
    value = sum(s.mean() for s in found.values()) + lam * _hinge(z, y).mean()
    assert value == pytest.approx(best, abs=1e-6)


def test_addition_of_the_input_is_refused():
    class InputSkip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.fc = nn.Linear(16, 2)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.conv(x) + x), 1))

    with pytest.raises(UnsupportedLayerError, match="adds the network's input"):
        extract(InputSkip().eval(), np.zeros((1, 1, 4, 4)))


def _resnet8(seed: int) -> nn.Module:
    """A ResNet-8 of the package (oamip.training.models) with tiny widths and random BatchNorms."""
    torch.manual_seed(seed)
    model = resnet(1, num_classes=3, input_size=4, widths=(2, 2, 2))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            random_bn(module)
    return model.eval()


@pytest.mark.parametrize("root_cuts", [0, 3])
def test_score_neurons_on_a_resnet8_is_exact_and_its_masks_prune_the_model(root_cuts):
    """Whole-network scoring of a ResNet-8: certified against PyTorch (logit error), and the
    binary optimum is the objective of the model pruned by ``apply_masks``, at most
    that of keeping every unit."""
    model = _resnet8(0)
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 1, 4, 4))
    y = np.array([0, 2])
    res = oamip.score_neurons(
        model,
        x,
        y,
        loss="hinge",
        lam=2.0,
        scores="binary",
        mip_gap=1e-9,
        root_cuts=root_cuts,
        residual="both",
    )
    assert res.status == "optimal" and res.logit_error < 1e-6
    extracted = extract(model, x)
    assert set(res.scores) == set(extracted.units)
    masks = res.masks(0.5)
    with torch.no_grad():
        z = apply_masks(model, masks).double()(torch.as_tensor(x)).numpy()
    value = sum(m.mean() for m in masks.values()) + 2.0 * _hinge(z, y).mean()
    assert value == pytest.approx(res.objective, abs=1e-6)
    with torch.no_grad():
        dense = model.double()(torch.as_tensor(x)).numpy()
    assert res.objective <= len(masks) + 2.0 * _hinge(dense, y).mean() + 1e-6


def test_layer_pieces_of_a_resnet_are_its_residual_blocks_and_reproduce_its_values():
    """decompose='layer' cuts a ResNet between residual blocks only (never inside one, where
    the shortcut crosses); each piece, with the scores of its units (a group's shared with the
    blocks before it), reproduces the whole network's values at its end."""
    model = TinyResNet(4, blocks=(2, 1))
    x = np.random.default_rng(4).uniform(-1, 1, size=(3, 1, 4, 4))
    network = extract(model, x).network
    names = [layer.name for layer in network.layers]
    cut = blocks(network)
    assert [names[b.stop - 1] for b in cut] == ["stem", "stage1.0.conv2", "stage1.1.conv2", "fc"]
    big_m = interval_bounds(network, x).big_m
    scores = _random_scores(network, np.random.default_rng(5), binary=False)
    trace = network.trace(x, scores, big_m)
    for block in cut[1:]:
        piece = network.segment(block.start, block.stop)
        local = {}
        for j, layer in enumerate(piece.layers):
            key = piece.score_key(j)
            if key is not None:
                i = names.index(layer.name)
                local.setdefault(key, (scores[network.score_key(i)], {}))
                local[key][1][j] = big_m[i]
        piece_scores = {k: s for k, (s, _) in local.items()}
        piece_m = {j: m for _, ms in local.values() for j, m in ms.items()}
        inputs = trace[block.start - 1].out.reshape(len(x), *piece.input_shape)
        out = piece.forward(inputs, piece_scores, piece_m)
        np.testing.assert_allclose(out, trace[block.stop - 1].out, atol=1e-12)
    with pytest.raises(InvalidInputError, match="cannot cut"):
        network.segment(names.index("stage1.0.conv2"), len(names))


def test_decomposed_scoring_of_a_resnet8_is_certified_against_pytorch():
    model = _resnet8(1)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-1, 1, size=(3, 1, 4, 4)), np.array([0, 1, 2])
    aux = (rng.uniform(-1, 1, size=(30, 1, 4, 4)), rng.integers(0, 3, 30))
    res = oamip.score_neurons(
        model,
        x,
        y,
        loss="hinge",
        lam=1.0,
        decompose="layer",
        aux_data=aux,
        time_limit=20,
        residual="both",
    )
    assert res.status == "optimal" and res.logit_error < 1e-6
    units = extract(model, x).units
    assert set(res.scores) == set(units)
    assert all(np.all((s >= 0) & (s <= 1)) for s in res.scores.values())
    assert len(res.subproblems) == len(blocks(extract(model, x).network)) == 4


@pytest.mark.parametrize("global_pruning", [False, True])
def test_oamip_scores_as_a_torch_pruning_importance_remove_the_lowest_scored_channels(
    global_pruning,
):
    """Torch-Pruning with the OAMIP importance removes, in every unit (inner channels and
    coupled groups), the channels of lowest score: the pruned model computes exactly what the
    model masked by ``apply_masks`` (keeping the top-scored channels) computes."""
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(6)
    model = resnet(1, num_classes=3, input_size=8, widths=(4, 4, 6)).double().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            random_bn(module)
    rng = np.random.default_rng(6)
    found = {group.name: group.size for group in row_groups(model)}
    scores = {name: rng.permutation(size) / size for name, size in found.items()}
    x = torch.as_tensor(rng.uniform(-1, 1, size=(3, 1, 8, 8)))
    pruned = copy.deepcopy(model)
    pruner = tp.pruner.BasePruner(
        pruned,
        x[:1],
        importance=oamip_importance(pruned, scores),
        pruning_ratio=0.5,
        global_pruning=global_pruning,
        ignored_layers=[pruned.fc],
    )
    pruner.step()
    modules = dict(pruned.named_modules())
    masks = {}
    for name, size in found.items():
        kept = modules[name].out_channels
        masks[name] = scores[name] >= np.sort(scores[name])[size - kept]
    assert sum(m.sum() for m in masks.values()) < sum(found.values())
    assert global_pruning or all(masks[name].sum() < size for name, size in found.items())
    with torch.no_grad():
        expected = apply_masks(model, masks)(x).numpy()
        np.testing.assert_allclose(pruned(x).numpy(), expected, atol=1e-10)


def test_the_torch_pruning_importance_refuses_unknown_units_and_wrong_sizes():
    pytest.importorskip("torch_pruning")
    model = _resnet8(0)
    with pytest.raises(InvalidInputError, match="not a unit"):
        oamip_importance(model, {"fc": np.ones(3)})
    with pytest.raises(InvalidInputError, match="has 2 channels"):
        oamip_importance(model, {"stem": np.ones(3)})


def test_an_unknown_choice_of_residual_units_is_refused():
    with pytest.raises(InvalidInputError, match="residual must be one of"):
        extract(_resnet8(0), np.zeros((1, 1, 4, 4)), "blocks")


@pytest.mark.parametrize("residual", ["inner", "group"])
def test_score_neurons_scores_the_residual_units_asked_for(residual):
    """``residual=`` reaches the extraction: only that kind of unit gets scores, and the
    answer is still certified against PyTorch."""
    model = _resnet8(1)
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, 1, 4, 4))
    res = oamip.score_neurons(model, x, np.array([1, 0]), scores="binary", residual=residual)
    assert set(res.scores) == set(extract(model, x, residual).units)
    assert res.logit_error < 1e-6


def test_score_neurons_refuses_an_unknown_choice_of_residual_units_before_any_work():
    with pytest.raises(InvalidInputError, match="residual must be one of both, inner, group"):
        oamip.score_neurons(_resnet8(0), np.zeros((1, 1, 4, 4)), [0], residual="blocks")
