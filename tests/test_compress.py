"""Exact compression: units dead on a box are removed, active ones folded, outputs identical.

Planted networks check each kind of proof (interval bounds, LP, MILP) and that nothing unproven
goes; random networks check the promise itself: equal outputs at thousands of points of the
box and at every corner, every removed unit inactive and every folded unit active at every
point.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip import cli
from oamip.adapters import extract
from oamip.bounds import box_bounds
from oamip.errors import InvalidInputError
from oamip.pipelines.report import summary_table
from oamip.solve.stability import plain
from oamip.training.data import load_digits
from oamip.training.inference import evaluate
from oamip.training.models import build
from oamip.training.train import train
from tests.nets import convnet, mlp
from tests.test_residual import resnet8


def _chain(*weights_and_biases) -> nn.Sequential:
    """A float64 MLP with the given (weight, bias) per Linear layer, ReLUs between."""
    layers: list[nn.Module] = []
    for k, (weight, bias) in enumerate(weights_and_biases):
        weight = torch.tensor(weight, dtype=torch.float64)
        linear = nn.Linear(weight.shape[1], weight.shape[0]).double()
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(torch.tensor(bias, dtype=torch.float64))
        layers += [linear] if k == len(weights_and_biases) - 1 else [linear, nn.ReLU()]
    return nn.Sequential(*layers).eval()


def _planted() -> nn.Sequential:
    """Inputs in [0, 1]^2. First layer: h0 = h1 = ReLU(x0 - 0.5) (equal, each unstable),
    h2 = ReLU(x1 - 2) (dead on [0, 1]^2, alive for x1 > 2), h3 = ReLU(-x0 - x1 - 1) (dead by its
    bias), h4 = ReLU(x0 + x1 - 1.99) (positive only near the corner (1, 1)). Second layer:
    g0 = ReLU(h0 - h1 - 0.1) (dead by the correlation only), g1 = ReLU(h4) (alive), g2 =
    ReLU(h0 + 1) (active)."""
    first = (
        [[1, 0], [1, 0], [0, 1], [-1, -1], [1, 1]],
        [-0.5, -0.5, -2.0, -1.0, -1.99],
    )
    second = ([[1, -1, 0, 0, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0]], [-0.1, 0.0, 1.0])
    return _chain(first, second, ([[1, 2, 3], [-1, 0, 1]], [0.0, 0.5]))


def _grid_and_corners(lower: np.ndarray, upper: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` random points of the box and every corner (flat rows)."""
    rng = np.random.default_rng(seed)
    inside = lower + rng.random((n, len(lower))) * (upper - lower)
    corners = np.array(list(itertools.product(*zip(lower, upper))))
    return np.concatenate([inside, corners])


def _pre_activations(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per Linear/Conv2d module of ``model``, its outputs on ``x`` as (samples, units, ...)."""
    found, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            hook = (lambda n: lambda _m, _i, out: found.__setitem__(n, out.detach().numpy()))(name)
            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return found


def test_a_planted_network_loses_exactly_its_dead_units_and_keeps_the_rest():
    model = _planted()
    result = oamip.compress(model, 0.0, 1.0)
    assert result.status == "proven"
    assert result.removed == {"0": [2, 3], "2": [0]}
    assert result.undecided == {}
    x = torch.as_tensor(_grid_and_corners(np.zeros(2), np.ones(2), 4000, 0))
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), rtol=0, atol=1e-12)


def test_the_correlated_unit_is_dead_though_its_interval_bound_is_positive():
    model = _planted()
    network = plain(extract(model, np.zeros((1, 2))).network)
    upper = box_bounds(network, np.zeros((1, 2)), np.ones((1, 2))).layers[1].upper[0]
    assert upper[0] == pytest.approx(0.4)  # intervals: h0 - h1 - 0.1 may reach 0.4
    result = oamip.compress(model, 0.0, 1.0, fold=False)
    assert 0 in result.removed["2"]
    assert result.proofs["milp"] >= 1  # the LP relaxation cannot tell h0 from h1 either


def test_the_lp_relaxation_settles_a_correlation_of_active_units_without_a_milp():
    # h0 = h1 = ReLU(x0 + 1) are active on [0, 1]^2, so the LP knows h0 - h1 = 0 exactly
    model = _chain(
        ([[1, 0], [1, 0], [0, 1]], [1.0, 1.0, 0.0]),
        ([[1, -1, 0], [0, 0, 1]], [-0.1, 0.0]),
        ([[1, 1]], [0.0]),
    )
    result = oamip.compress(model, 0.0, 1.0, fold=False)
    assert result.removed == {"2": [0]}
    assert result.proofs["lp"] == 1 and result.milps == 0


def test_without_the_milp_the_correlated_unit_stays_and_the_proof_is_partial():
    result = oamip.compress(_planted(), 0.0, 1.0, milp=False, fold=False)
    assert result.status == "partial"
    assert result.removed == {"0": [2, 3]}
    assert result.undecided == {"2": [0]}


def test_a_time_limit_keeps_what_it_left_unproven():
    result = oamip.compress(_planted(), 0.0, 1.0, time_limit=1e-6)
    assert result.status == "partial"
    assert result.removed == {"0": [2, 3]}  # interval bounds and witnesses need no time
    assert 0 in result.undecided["2"]
    assert result.lps == result.milps == 0


def test_a_unit_dead_on_one_box_is_kept_on_a_box_where_it_fires():
    model = _planted()
    wide = oamip.compress(model, 0.0, 3.0, fold=False)
    assert 2 not in wide.removed.get("0", [])
    x = torch.as_tensor(_grid_and_corners(np.zeros(2), np.full(2, 3.0), 2000, 1))
    with torch.no_grad():
        assert torch.allclose(model(x), wide.model(x), rtol=0, atol=1e-12)


def test_a_unit_active_only_near_one_corner_is_kept():
    result = oamip.compress(_planted(), 0.0, 1.0)
    assert 4 not in result.removed["0"] and 1 not in result.removed["2"]
    with torch.no_grad():
        corner = torch.ones(1, 2, dtype=torch.float64)
        assert torch.allclose(_planted()(corner), result.model(corner), rtol=0, atol=1e-12)


def test_units_active_on_the_box_fold_into_the_next_layer():
    # three units active on [1, 2]^2 whose rows span a plane: one folds
    model = _chain(
        ([[1, 0], [0, 1], [1, 1]], [0.1, 0.2, 0.3]),
        ([[1, -2, 3], [0.5, 0.5, -1]], [0.0, 0.1]),
        ([[1, 1], [2, -1]], [0.0, 0.0]),
    )
    result = oamip.compress(model, 1.0, 2.0)
    assert sum(map(len, result.folded.values())) >= 1
    assert result.model[0].out_features == 2
    x = torch.as_tensor(_grid_and_corners(np.ones(2), np.full(2, 2.0), 4000, 2))
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_random_networks_compute_the_same_outputs_on_the_box(seed):
    model = mlp(seed, sizes=(5, 8, 8, 6, 3)).double()
    with torch.no_grad():  # shift some biases down so that some units die on the box
        for layer in (model[1], model[3], model[5]):
            layer.bias -= torch.rand(layer.out_features, dtype=torch.float64) * 1.5
    rng = np.random.default_rng(seed)
    lower = rng.uniform(-1, 0, 5)
    upper = lower + rng.uniform(0.1, 1, 5)
    result = oamip.compress(model, lower, upper, time_limit=30)
    assert result.status == "proven"
    assert result.units_removed > 0
    x = torch.as_tensor(_grid_and_corners(lower, upper, 5000, seed))
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), rtol=0, atol=1e-10)
    pre = _pre_activations(model, x)
    for name, units in result.removed.items():
        assert (pre[name][:, units] <= 0).all(), f"a removed unit of {name} fires"
    for name, units in result.folded.items():
        assert (pre[name][:, units] >= 0).all(), f"a folded unit of {name} is not active"


def test_a_convolution_channel_dead_at_every_position_is_removed():
    model = convnet(0).double()
    with torch.no_grad():
        model[4].bias[1] = -100.0  # channel 1 of the second convolution: dead everywhere
    result = oamip.compress(model, 0.0, 1.0, input_shape=(1, 8, 8), time_limit=30)
    assert 1 in result.removed["4"]
    assert "0" in result.not_folded and "4" in result.not_folded
    x = torch.rand(3000, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), rtol=0, atol=1e-10)


def test_a_residual_network_loses_a_dead_inner_channel_and_keeps_its_class():
    model = resnet8(0).double()
    inner = "stage1.0.conv1"
    with torch.no_grad():
        model.get_submodule("stage1.0.bn1").bias[2] = -1000.0
    result = oamip.compress(model, 0.0, 1.0, input_shape=(1, 8, 8), time_limit=30)
    assert 2 in result.removed[inner]
    assert type(result.model) is type(model)
    assert result.folded == {}
    x = torch.rand(1000, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), rtol=0, atol=1e-10)


def test_the_data_range_is_the_box_and_the_model_is_left_untouched():
    model = _planted()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = np.array([[0.0, 0.0], [1.0, 0.5], [0.2, 1.0]])
    result = oamip.compress(model, data=data)
    assert result.box["lower_min"] == 0.0 and result.box["upper_max"] == 1.0
    assert result.removed["0"] == [2, 3]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("lower", "upper", "words"),
    [
        (1.0, 0.0, "box is empty"),
        (0.0, float("nan"), "finite"),
        (np.zeros(3), 1.0, "expects 2 inputs"),
        (np.zeros(2), np.ones(3), "one number or one per input"),
        (0.0, None, "lower and upper"),
    ],
)
def test_bad_boxes_are_refused_with_a_clear_error(lower, upper, words):
    with pytest.raises(InvalidInputError, match=words):
        oamip.compress(_planted(), lower, upper)


def test_a_box_and_data_together_are_refused():
    with pytest.raises(InvalidInputError, match="not both"):
        oamip.compress(_planted(), 0.0, 1.0, data=np.zeros((2, 2)))


def test_the_command_writes_the_smaller_model_and_its_report(tmp_path, capsys):
    path = tmp_path / "model.pt"
    oamip.save_model(_planted(), path)
    out = tmp_path / "out"
    status = cli.main(["compress", "--model", str(path), "--box", "0,1", "--out", str(out)])
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    assert report["removed"] == {"0": [2, 3], "2": [0]} and report["status"] == "proven"
    small = oamip.load_model(out / "compressed.pt")
    x = torch.rand(500, 2, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(_planted()(x), small(x.to(small[0].weight.dtype)).double(), atol=1e-6)
    assert "3 of 8 units gone" in capsys.readouterr().out


@pytest.mark.parametrize("box", ["1,0", "0,nan", "1"])
def test_the_command_refuses_a_bad_box_in_one_line_and_writes_nothing(tmp_path, capsys, box):
    path = tmp_path / "model.pt"
    oamip.save_model(_planted(), path)
    out = tmp_path / "out"
    assert cli.main(["compress", "--model", str(path), "--box", box, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oamip: error:") and err.count("\n") == 1
    assert not out.exists()


def test_prune_with_compress_scores_the_smaller_network_with_the_same_accuracy():
    digits = load_digits()
    model = build("mlp", digits, (24, 8), seed=0)
    train(model, digits, epochs=4, lr=1e-2, progress=False)
    planted = model[3].weight.norm(dim=0).argsort()[:2].tolist()  # the least read units
    with torch.no_grad():
        model[1].bias[planted] = -100.0  # dead on every input in [0, 1]
    dense = evaluate(model, digits.x_test, digits.y_test)
    report = oamip.prune(model, digits, compress=True, time_limit=2.0, threads=1, finetune_epochs=0)
    assert set(planted) <= set(report.compression["removed"]["1"])
    assert report.compression["status"] == "proven"
    gone = report.compression["units_removed"]
    assert report.units_total == 32 - gone
    assert report.accuracy_before == dense  # exact on the data's range
    assert "compressed before scoring" in summary_table(report)


def test_compress_with_pruning_at_initialisation_is_refused():
    with pytest.raises(InvalidInputError, match="at_init"):
        oamip.prune(None, "digits", compress=True, at_init=True)


def test_the_command_takes_the_box_from_a_data_file(tmp_path):
    path = tmp_path / "model.pt"
    oamip.save_model(_planted(), path)
    rng = np.random.default_rng(0)
    x = rng.random((40, 2)).astype(np.float32)
    x[0], x[1] = 0.0, 1.0  # the range is [0, 1] in both features
    labels = np.arange(40) % 2
    data = tmp_path / "d.npz"
    np.savez(data, x_train=x[:30], y_train=labels[:30], x_test=x[30:], y_test=labels[30:])
    out = tmp_path / "out"
    argv = ["compress", "--model", str(path), "--data", f"npz:{data}", "--out", str(out)]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["removed"] == {"0": [2, 3], "2": [0]}
    assert report["box"] == {"lower_min": 0.0, "upper_max": 1.0, "inputs": 2}


@pytest.mark.parametrize("activation", [nn.LeakyReLU(0.1), nn.ReLU6()])
def test_activations_other_than_relu_are_refused_by_name(activation):
    """A unit proven inactive outputs 0 only under ReLU: other activations are refused before
    any proof, naming the layer."""
    model = nn.Sequential(nn.Linear(3, 4), activation, nn.Linear(4, 2))
    with pytest.raises(InvalidInputError, match="layer '0' is followed by .*ReLU only"):
        oamip.compress(model, 0.0, 1.0)
