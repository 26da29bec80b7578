"""``oamip.transfer`` and pruning at initialisation: masks held at zero through training, counts
matched per layer, the rewind, the seeds, the command end to end, and bad input refused first."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import oamip
from oamip import cli
from oamip.adapters.chain import has_additions, units
from oamip.adapters.residual import residual_units
from oamip.adapters.structure import row_groups
from oamip.errors import InvalidInputError
from oamip.pipelines.transfer import (
    METHODS,
    TransferSettings,
    compared_masks,
    initial_network,
    target_accuracy,
)
from oamip.training.criteria import get_criterion
from oamip.training.data import load_digits, make_dataset, mip_batch
from oamip.training.inference import evaluate
from oamip.training.train import train
from oamip.training.transfer import random_batch, rewind, with_classes

HIDDEN = (12, 8)
QUICK = {"hidden": HIDDEN, "epochs": 3, "time_limit": 2, "threads": 1}
METHOD_KEYS = {"method", "accuracies", "mean", "std", "units_pruned"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def flipped(digits):
    """A second data set of the same input shape: digits mirrored, labels folded to 5 classes."""
    return make_dataset(
        "digits-mirrored",
        digits.x_train[..., ::-1].copy(),
        digits.y_train % 5,
        digits.x_test[..., ::-1].copy(),
        digits.y_test % 5,
    )


def _masks_pruning(model, fraction: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = {}
    for unit in row_groups(model):
        keep = np.ones(unit.size, dtype=bool)
        keep[rng.choice(unit.size, size=int(fraction * unit.size), replace=False)] = False
        masks[unit.name] = keep
    return masks


def _differ(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def _watched(model) -> list[tuple[str, torch.nn.Module]]:
    """(unit name, module whose output carries the unit's channels last before the ReLU): the
    BatchNorm after a VGG convolution, every BatchNorm of a ResNet unit (a group has several)."""
    if has_additions(model):
        found = residual_units(model)
        return [(u.name, model.get_submodule(b)) for u in found for b in u.batchnorms]
    return [(u.name, model.get_submodule(u.batchnorm or u.name)) for u in units(model)]


@pytest.mark.parametrize("arch", ["mlp", "vgg", "resnet8"])
def test_pruned_units_stay_exactly_zero_at_every_training_step(digits, flipped, arch):
    """A hook on every unit layer (the BatchNorm after a VGG convolution, every BatchNorm of a
    ResNet unit) sees the pruned units output exactly 0 in every forward pass of the target
    training, train mode included."""
    settings = TransferSettings(arch=arch, hidden=HIDDEN)
    start = with_classes(initial_network(digits, settings, 0), flipped.num_classes, 0)
    masks = _masks_pruning(start, 0.5, seed=1)
    seen: list[float] = []
    live: list[float] = []
    watched = _watched(start)
    for name, layer in watched:
        pruned = torch.as_tensor(~masks[name])

        def record(_module, _inputs, output, pruned=pruned):
            seen.append(output[:, pruned].abs().max().item())
            live.append(output[:, ~pruned].abs().max().item())

        layer.register_forward_hook(record)
    accuracy = target_accuracy(start, flipped, masks, 1, 1e-2, 0, settings)
    batches = int(np.ceil(len(flipped.y_train) / 64))
    assert len(seen) >= len(watched) * batches  # every training step, then the evaluation
    assert max(seen) == 0.0
    assert max(live) > 0.0
    assert 0.0 <= accuracy <= 1.0


def test_baseline_masks_prune_as_many_units_per_layer_as_the_mip(digits, flipped):
    settings = TransferSettings(hidden=HIDDEN)
    init = initial_network(digits, settings, 0)
    initial = copy.deepcopy(init.state_dict())
    trained = train(copy.deepcopy(init), digits, epochs=3, lr=1e-2, progress=False)
    batch = mip_batch(trained, digits, 1, 0)
    result = oamip.score_neurons(trained, batch.x, batch.y, time_limit=3, threads=1)
    mip = result.masks(0.1)
    assert any((~keep).any() for keep in mip.values())
    start = with_classes(rewind(trained, initial), flipped.num_classes, 0)
    by_method = compared_masks(mip, trained, start, flipped, 1, seed=0)
    assert list(by_method) == list(METHODS)
    for method in ("random", "magnitude", "snip"):
        for name, keep in mip.items():
            assert (~by_method[method][name]).sum() == (~keep).sum(), (method, name)
    assert all(keep.all() for keep in by_method["dense"].values())
    magnitude = get_criterion("magnitude").scores(trained, None, None, 0)
    for name, keep in by_method["magnitude"].items():  # the weakest units of the trained net
        if (~keep).any() and keep.any():
            assert magnitude[name][~keep].max() <= magnitude[name][keep].min()


def test_rewind_restores_the_initial_weights_and_leaves_the_trained_network(digits):
    init = initial_network(digits, TransferSettings(hidden=HIDDEN), 3)
    initial = copy.deepcopy(init.state_dict())
    trained = train(copy.deepcopy(init), digits, epochs=1, lr=1e-2, progress=False)
    after = copy.deepcopy(trained.state_dict())
    assert _differ(after, initial)
    reset = rewind(trained, initial)
    assert not _differ(reset.state_dict(), initial)
    assert not _differ(trained.state_dict(), after)


def test_output_layer_made_anew_only_for_another_number_of_classes(digits):
    init = initial_network(digits, TransferSettings(hidden=HIDDEN), 0)
    same = with_classes(init, 10, seed=0)
    assert not _differ(same.state_dict(), init.state_dict())
    five = with_classes(init, 5, seed=0)
    assert five(torch.as_tensor(digits.x_test[:3])).shape == (3, 5)
    hidden = {k: v for k, v in init.state_dict().items() if not k.startswith("5.")}
    assert not _differ({k: five.state_dict()[k] for k in hidden}, hidden)
    again = with_classes(init, 5, seed=0)
    other = with_classes(init, 5, seed=1)
    assert not _differ(again.state_dict(), five.state_dict())
    assert _differ(other.state_dict(), five.state_dict())


def test_different_seeds_give_different_initialisations(digits):
    settings = TransferSettings(hidden=HIDDEN)
    first = initial_network(digits, settings, 0).state_dict()
    assert not _differ(first, initial_network(digits, settings, 0).state_dict())
    assert _differ(first, initial_network(digits, settings, 1).state_dict())


def test_random_batch_draws_each_class_and_follows_the_seed(digits):
    batch = random_batch(digits, 2, seed=0)
    assert batch.y.tolist() == sorted(list(range(10)) * 2)
    assert np.array_equal(digits.y_train[batch.indices], batch.y)
    assert not np.array_equal(random_batch(digits, 2, seed=1).indices, batch.indices)


def test_transfer_command_end_to_end(tmp_path, digits, flipped):
    data = tmp_path / "mirrored.npz"
    np.savez(
        data,
        x_train=flipped.x_train,
        y_train=flipped.y_train,
        x_test=flipped.x_test,
        y_test=flipped.y_test,
    )
    out = tmp_path / "out"
    args = ["--source", "digits", "--target", f"npz:{data}", "--hidden", "12,8", "--seeds", "2"]
    quick = ["--epochs", "3", "--time-limit", "2", "--out", str(out), "--export-onnx"]
    pytest.importorskip("onnx")
    assert cli.main(["transfer", *args, *quick]) == 0
    written = ["pruned.onnx", "pruned.pt", "report.json", "transfer_accuracy.png"]
    assert sorted(p.name for p in out.iterdir()) == written
    report = json.loads((out / "report.json").read_text())
    assert report["source"] == "digits" and report["target"] == "mirrored"
    assert report["arch"] == "mlp" and report["seeds"] == [0, 1]
    assert report["output_reinitialised"] is True
    assert [entry["method"] for entry in report["methods"]] == list(METHODS)
    for entry in report["methods"]:
        assert set(entry) == METHOD_KEYS
        assert len(entry["accuracies"]) == 2 and all(0 <= a <= 1 for a in entry["accuracies"])
        assert entry["mean"] == pytest.approx(np.mean(entry["accuracies"]))
        assert entry["std"] == pytest.approx(np.std(entry["accuracies"], ddof=1))
    by = {entry["method"]: entry for entry in report["methods"]}
    assert by["dense"]["units_pruned"] == [0, 0]
    pruned = [sum(layers.values()) for layers in report["layers_pruned"]]
    for method in ("mip", "random", "magnitude", "snip"):
        assert by[method]["units_pruned"] == pruned
    _check_pruned_files(out, flipped, report)


def _check_pruned_files(out, target, report: dict) -> None:
    """pruned.pt is the first seed's MIP-masked network trained on the target, smaller by the
    units the MIP pruned and as accurate as reported; onnxruntime runs pruned.onnx alike."""
    ort = pytest.importorskip("onnxruntime")
    model = oamip.load_model(out / "pruned.pt")
    kept = sum(m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    pruned = sum(report["layers_pruned"][0].values())
    assert kept == report["units_total"] - pruned + target.num_classes
    accuracy = report["methods"][0]["accuracies"][0]
    assert evaluate(model, target.x_test, target.y_test) == pytest.approx(accuracy, abs=1e-9)
    x = target.x_test[:16].astype(np.float32)
    session = ort.InferenceSession(str(out / "pruned.onnx"), providers=["CPUExecutionProvider"])
    runtime = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(runtime, model(torch.as_tensor(x)).numpy(), atol=1e-5)


def test_transfer_from_python_same_classes(digits):
    state = torch.random.get_rng_state()
    report = oamip.transfer(digits, "digits", seeds=[4], **QUICK)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert isinstance(report, oamip.TransferReport)
    assert report.seeds == [4] and report.output_reinitialised is False
    assert report.method("dense").std == 0.0
    assert report.to_dict()["methods"][0]["method"] == "mip"


def test_different_input_shapes_refused_before_any_work(tmp_path, digits, monkeypatch):
    small = make_dataset(
        "tiny",
        digits.x_train[:, :, :4, :4],
        digits.y_train,
        digits.x_test[:, :, :4, :4],
        digits.y_test,
    )
    monkeypatch.setattr("oamip.pipelines.transfer._one_seed", _no_work)
    with pytest.raises(
        InvalidInputError,
        match=r"'digits' has inputs of shape \(1, 8, 8\).*"
        r"'tiny' has inputs of shape \(1, 4, 4\)",
    ):
        oamip.transfer(digits, small, **QUICK)
    data = tmp_path / "tiny.npz"
    np.savez(
        data, x_train=small.x_train, y_train=small.y_train, x_test=small.x_test, y_test=small.y_test
    )
    out = tmp_path / "new" / "out"
    status = cli.main(
        ["transfer", "--source", "digits", "--target", f"npz:{data}", "--out", str(out)]
    )
    assert status == 2
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "digits", "--out", "afile/sub"], "--out 'afile/sub' cannot be a folder"),
        (["--target", "npz:missing.npz"], "does not exist"),
        (["--target", "digits", "--seeds", "0"], "number of seeds"),
        (["--target", "digits", "--arch", "lenet"], "lenet"),
    ],
)
def test_transfer_command_refuses_bad_input_in_one_line(
    tmp_path, monkeypatch, capsys, args, message
):
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("oamip.pipelines.transfer._one_seed", _no_work)
    assert cli.main(["transfer", "--source", "digits", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def _no_work(*_args, **_kwargs):
    raise AssertionError("work started before the input was refused")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": 0}, "number of seeds"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"seeds": "3"}, "number of seeds or a list"),
        ({"arch": "resnet"}, "architecture"),
        ({"epochs": 0}, "epochs"),
        ({"hidden": ()}, "hidden"),
        ({"threshold": 2.0}, "threshold"),
        ({"samples_per_class": 400}, "samples per class"),
        ({"lam": float("nan")}, "lam"),
        ({"unknown": 1}, "unknown option"),
    ],
)
def test_bad_settings_refused_before_any_work(digits, monkeypatch, change, message):
    monkeypatch.setattr("oamip.pipelines.transfer._one_seed", _no_work)
    with pytest.raises(InvalidInputError, match=message):
        oamip.transfer(digits, digits, **{**QUICK, **change})


def test_settings_of_another_type_refused(digits):
    with pytest.raises(InvalidInputError, match="TransferSettings"):
        oamip.transfer(digits, digits, oamip.ScoringOptions())


def test_at_init_small_run(digits):
    report = oamip.prune(
        None, digits, at_init=True, lam=1, threshold=0.2, finetune_epochs=2, time_limit=2, threads=1
    )
    data = report.to_dict()
    assert data["at_init"] is True
    assert data["n_mip_samples"] == 10 and data["finetune_epochs"] == 2
    assert {b["method"] for b in data["baselines"]} >= {"random", "snip"}
    for value in [data["accuracy_before"], data["accuracy_after_finetune"]]:
        assert 0.0 <= value <= 1.0
    assert data["accuracy_before"] > 0.5  # the dense network, trained from the same start
    kept = data["units_total"] - data["units_pruned"]
    assert (
        sum(p.shape[0] for n, p in report.model.named_parameters() if n.endswith("bias"))
        == kept + 10
    )


def test_at_init_needs_training(digits):
    with pytest.raises(InvalidInputError, match="finetune_epochs"):
        oamip.prune(None, digits, at_init=True, finetune_epochs=0, time_limit=2)


def test_prune_command_at_init(tmp_path):
    out = tmp_path / "out"
    args = ["--at-init", "--lam", "1", "--threshold", "0.2", "--finetune-epochs", "1"]
    assert cli.main(["prune", *args, "--time-limit", "2", "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["at_init"] is True


def test_transfer_with_a_decomposed_mip(digits, flipped):
    """``decompose="layer"`` reaches the MIP on the source (its heads fit on the source's
    training split), and the masks it gives travel like the whole MIP's."""
    report = oamip.transfer(digits, flipped, seeds=1, decompose="layer", **QUICK)
    assert report.decompose == "layer"
    pruned = sum(report.layers_pruned[0].values())
    assert [entry.units_pruned for entry in report.methods] == [[pruned], [0], *[[pruned]] * 3]


@pytest.mark.slow
def test_a_resnet_transfers_to_a_data_set_with_other_classes(digits, flipped):
    """ResNet-8: its ``fc`` is made anew for 5 classes, and every method prunes as many units as
    the MIP."""
    settings = TransferSettings(arch="resnet8", seeds=1, epochs=1, time_limit=3, threads=1)
    start = initial_network(digits, settings, 0)
    five = with_classes(start, flipped.num_classes, 0)
    assert five.fc.out_features == 5 and start.fc.out_features == 10
    assert not _differ(
        {k: v for k, v in five.state_dict().items() if not k.startswith("fc.")},
        {k: v for k, v in start.state_dict().items() if not k.startswith("fc.")},
    )
    report = oamip.transfer(digits, flipped, settings)
    units_total = sum(u.size for u in residual_units(start))
    assert report.units_total == units_total
    pruned = {m.method: m.units_pruned for m in report.methods}
    assert pruned["dense"] == [0]
    assert pruned["random"] == pruned["magnitude"] == pruned["snip"] == pruned["mip"]
