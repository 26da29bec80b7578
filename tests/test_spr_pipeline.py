"""SPR training and pruning end to end (oamip.pipelines.spr): report, removal, refusals."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from oamip import load_model, remove_pruned, save_model
from oamip.adapters import apply_masks
from oamip.cli.spr import add_arguments, run
from oamip.errors import InvalidInputError, OamipError
from oamip.pipelines.inputs import count_params
from oamip.pipelines.spr import (
    SPRReport,
    spr_prune,
    train_penalised,
    zero_group_masks,
)
from oamip.training.data import Dataset, load_digits
from oamip.training.inference import evaluate
from oamip.training.models import build
from oamip.training.spr import SPRRegularizer
from oamip.training.train import train

FAST = dict(epochs=3, finetune_epochs=1, lam=0.3, lr=1e-2, progress=False)
REPORT_KEYS = {
    "dataset",
    "arch",
    "lam",
    "alpha",
    "M_scale",
    "M",
    "epochs",
    "finetune_epochs",
    "lr",
    "seed",
    "units_total",
    "units_pruned",
    "params_total",
    "params_after",
    "accuracy_before",
    "accuracy_after",
    "accuracy_after_finetune",
    "train_seconds",
    "layers",
    "group_lasso",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, and do not slow down on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def dense(digits):
    return train(build("mlp", digits, hidden=(24, 16)), digits, epochs=3, progress=False)


@pytest.fixture(scope="module")
def pruned_run(digits, tmp_path_factory) -> tuple[SPRReport, object]:
    out = tmp_path_factory.mktemp("spr") / "out"
    report = spr_prune(None, digits, out=out, group_lasso_scales=(0.5, 2.0), **FAST)
    return report, out


def test_report_json_has_the_prune_keys_plus_spr_settings(pruned_run):
    report, out = pruned_run
    saved = json.loads((out / "report.json").read_text())
    assert set(saved) == REPORT_KEYS
    assert saved["lam"] == 0.3 and saved["dataset"] == "digits" and saved["arch"] == "mlp"
    settings = (saved["epochs"], saved["finetune_epochs"], saved["lr"], saved["seed"])
    assert settings == (3, 1, 1e-2, 0)
    assert [layer["name"] for layer in saved["layers"]] == ["1", "3"]
    assert saved["units_total"] == 64 + 32 == sum(layer["units"] for layer in saved["layers"])
    assert set(saved["M"]) == {"1", "3"} and all(m > 0 for m in saved["M"].values())
    assert sorted(p.name for p in out.iterdir()) == ["pruned.pt", "report.json"]


def test_training_removes_units_and_parameters(pruned_run):
    report, _ = pruned_run
    assert report.units_pruned > 0
    assert report.units_pruned == sum(layer.units_pruned for layer in report.layers)
    assert report.params_after < report.params_total
    assert 0.5 < report.accuracy_before <= 1.0
    assert report.accuracy_after_finetune is not None


def test_the_report_holds_the_pruned_model_and_to_dict_is_report_json(pruned_run, digits):
    report, out = pruned_run
    assert count_params(report.model) == report.params_after
    assert evaluate(report.model, digits.x_test, digits.y_test) == report.accuracy_after_finetune
    saved = json.loads((out / "report.json").read_text())
    assert set(report.to_dict()) == REPORT_KEYS
    assert json.loads(json.dumps(report.to_dict())) == saved


def test_saved_pruned_model_is_physically_smaller_and_scores_as_reported(pruned_run, digits):
    report, out = pruned_run
    model = load_model(out / "pruned.pt")
    widths = [m.out_features for m in model if isinstance(m, torch.nn.Linear)][:-1]
    assert widths == [layer.units - layer.units_pruned for layer in report.layers]
    assert count_params(model) == report.params_after
    assert evaluate(model, digits.x_test, digits.y_test) == report.accuracy_after_finetune


def test_group_lasso_is_matched_to_spr_accuracy(pruned_run):
    report, _ = pruned_run
    gl = report.group_lasso
    assert [run.scale for run in gl.grid] == [0.5, 2.0]
    target = report.accuracy_after_finetune
    reaching = [run for run in gl.grid if run.accuracy_after_finetune >= target]
    if reaching:
        assert gl.accuracy_after_finetune >= target
        assert gl.units_pruned == max(run.units_pruned for run in reaching)
    else:
        assert gl.accuracy_after_finetune == max(run.accuracy_after_finetune for run in gl.grid)
    assert gl.strength == pytest.approx(gl.scale * 2 * 0.3 * 0.5)


def test_pruned_model_loads_and_equals_the_masked_model(dense, digits, tmp_path):
    model = build("mlp", digits, hidden=(24, 16))
    model.load_state_dict(dense.state_dict())
    reg = SPRRegularizer(model, lam=0.5, alpha=0.5)
    train_penalised(model, digits, reg, epochs=3, lr=1e-2, progress=False)
    masks = zero_group_masks(reg)
    assert sum((~keep).sum() for keep in masks.values()) > 0
    masked = apply_masks(model, masks)
    loaded = load_model(save_model(remove_pruned(masked, masks), tmp_path / "m.pt"))
    x = torch.as_tensor(digits.x_test)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), masked(x), rtol=1e-5, atol=1e-5)


def test_a_layer_with_every_group_zero_keeps_its_largest_unit(dense):
    model = build("mlp", load_digits(), hidden=(24, 16))
    model.load_state_dict(dense.state_dict())
    reg = SPRRegularizer(model, lam=0.1, alpha=0.5)
    with torch.no_grad():
        model[3].weight.mul_(1e-6)
        model[3].bias.zero_()
        model[3].weight[7, 0] = 1e-4
    masks = zero_group_masks(reg)
    assert np.flatnonzero(masks["3"]).tolist() == [7]
    assert masks["1"].all()


def test_starting_from_a_checkpoint_leaves_it_and_the_random_state_unchanged(dense, digits):
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    rng_state = torch.get_rng_state()
    report = spr_prune(dense, digits, group_lasso_scales=(), **FAST)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert report.accuracy_before == evaluate(dense, digits.x_test, digits.y_test)
    assert report.units_total == 24 + 16 and report.group_lasso is None
    for key, value in dense.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize(
    "bad",
    [
        {"lam": -1.0},
        {"alpha": 1.5},
        {"M_scale": 0.0},
        {"epochs": -1},
        {"epochs": float("nan")},
        {"finetune_epochs": 1.5},
        {"lr": 0.0},
        {"lr": True},
        {"lam": "0.1"},
        {"lam": float("inf")},
        {"epochs": 1.5},
        {"seed": -1},
        {"seed": 2**32},
        {"progress": "no"},
        {"arch": "resnet"},
        {"device": "tpu"},
        {"group_lasso_scales": (1.0, -2.0)},
        {"group_lasso_scales": 1.0},
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(bad, dense, digits, tmp_path):
    settings = {**FAST, **bad}
    with pytest.raises(OamipError):
        spr_prune(dense, digits, out=tmp_path / "out", **settings)
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_does_not_fit_the_data_fails_and_writes_nothing(digits, tmp_path):
    wrong = build("mlp", load_digits(), hidden=(8, 4))
    other = Dataset(
        np.zeros((20, 1, 4, 4), np.float32),
        np.arange(20) % 10,
        np.zeros((10, 1, 4, 4), np.float32),
        np.arange(10),
        "tiny",
        10,
    )
    with pytest.raises(OamipError, match="does not take inputs"):
        spr_prune(wrong, other, out=tmp_path / "out", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_cannot_be_pruned_unit_by_unit_is_refused_before_training(digits, tmp_path):
    sigmoid = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Sigmoid(), torch.nn.Linear(16, 10)
    )
    with pytest.raises(OamipError, match="Sigmoid"):
        spr_prune(sigmoid, digits, out=tmp_path / "out", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_bad_data_spec_is_refused(tmp_path):
    with pytest.raises(OamipError):
        spr_prune(None, f"npz:{tmp_path / 'missing.npz'}", **FAST)


@pytest.mark.parametrize(
    "model, data, message", [(None, 5, "data must be"), ("m.pt", "digits", "oamip.load_model")]
)
def test_data_and_models_of_the_wrong_type_are_refused(model, data, message):
    with pytest.raises(InvalidInputError, match=message):
        spr_prune(model, data, **FAST)


def _args(tmp_path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--epochs", "1", "--out", str(tmp_path / "out"), *extra])


def test_command_defaults_are_the_documented_ones(tmp_path):
    args = _args(tmp_path)
    assert (args.data, args.arch, args.model, args.device) == ("digits", None, None, "cpu")


def test_command_prunes_a_state_dict_checkpoint(dense, tmp_path, capsys):
    torch.save(build("mlp", load_digits()).state_dict(), tmp_path / "sd.pt")
    args = _args(tmp_path, "--model", str(tmp_path / "sd.pt"), "--arch", "mlp", "--lam", "0.3")
    assert run(args) == 0
    assert (tmp_path / "out" / "pruned.pt").is_file()
    assert "units kept per layer" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"not a model", None])
def test_command_refuses_a_missing_or_corrupt_model_file(tmp_path, content):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(OamipError):
        run(_args(tmp_path, "--model", str(path)))
    assert not (tmp_path / "out").exists()


def test_command_reports_the_architecture_of_the_model_given(tmp_path, capsys):
    save_model(build("lenet5", load_digits()), tmp_path / "lenet.pt")
    args = ["--model", str(tmp_path / "lenet.pt"), "--epochs", "0", "--finetune-epochs", "0"]
    assert run(_args(tmp_path, *args)) == 0
    assert "SPR on lenet5 / digits" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["arch"] == "lenet5"


def test_command_refuses_a_state_dict_of_another_architecture(tmp_path):
    torch.save(build("lenet5", load_digits()).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(OamipError, match="does not fit"):
        run(_args(tmp_path, "--model", str(tmp_path / "sd.pt"), "--arch", "mlp"))
    with pytest.raises(OamipError, match="--arch mlp"):
        run(_args(tmp_path, "--model", str(tmp_path / "sd.pt")))
