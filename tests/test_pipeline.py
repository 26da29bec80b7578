"""``oamip.prune``: the report it returns, the model it leaves alone, the files it writes."""

from __future__ import annotations

import copy
import json
import typing

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip import cli
from oamip.errors import InvalidInputError, UnsupportedLayerError
from oamip.pipelines import prune as pipeline
from oamip.pipelines.inputs import count_params, describe_arch, read_model
from oamip.pipelines.report import summary_table, write_report
from oamip.pipelines.settings import PruneSettings
from oamip.training.criteria import criteria, is_global_only
from oamip.training.data import load_digits, make_dataset
from oamip.training.inference import evaluate
from oamip.training.models import TRAINING_DEFAULTS, build, mlp
from oamip.training.train import train

ISSUE_KEYS = {
    "dataset",
    "arch",
    "backend",
    "status",
    "lam",
    "loss",
    "threshold",
    "n_mip_samples",
    "units_total",
    "units_pruned",
    "params_total",
    "params_after",
    "accuracy_before",
    "accuracy_after",
    "accuracy_after_finetune",
    "solve_seconds",
    "build_seconds",
    "layers",
}
HIDDEN = (12, 8)

PER_LAYER = [name for name in criteria() if not is_global_only(name)]
"""The criteria compared with the MIP layer by layer (all but the global-only)."""


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build("mlp", digits, HIDDEN, seed=0)
    yield train(model, digits, epochs=8, lr=1e-2, progress=False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result(trained, digits):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    report = oamip.prune(trained, digits, time_limit=3.0, threads=1, seed=1)
    return report, before


def test_report_counts_units_of_scored_layers_and_their_parameters(result, trained):
    report, _ = result
    assert [layer.name for layer in report.layers] == ["1", "3"]
    assert [layer.units for layer in report.layers] == list(HIDDEN)
    assert report.units_total == sum(HIDDEN)
    assert report.units_pruned == sum(layer.units_pruned for layer in report.layers)
    assert all(len(layer.pruned) == layer.units_pruned for layer in report.layers)
    assert report.params_total == count_params(trained)
    assert report.params_after == count_params(report.model)
    widths = [m.out_features for m in report.model if isinstance(m, nn.Linear)]
    assert widths == [layer.units - layer.units_pruned for layer in report.layers] + [10]


def test_report_records_settings_batch_and_solve(result):
    report, _ = result
    assert (report.dataset, report.arch, report.backend) == ("digits", "mlp", "highs")
    assert (report.lam, report.loss, report.scores, report.threshold) == (
        5.0,
        "ce",
        "continuous",
        0.1,
    )
    assert report.n_mip_samples == 10 and report.samples_per_class == 1
    assert report.solver_heuristics is False
    assert report.status in ("optimal", "time_limit")
    assert report.solve_seconds > 0 and report.build_seconds > 0
    assert report.train_seconds is None


def test_pruned_model_gives_the_reported_fine_tuned_accuracy(result, digits):
    report, _ = result
    accuracy = evaluate(report.model, digits.x_test, digits.y_test)
    assert accuracy == pytest.approx(report.accuracy_after_finetune)


def test_prune_leaves_the_given_model_untouched(result, trained):
    _, before = result
    after = trained.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_baselines_are_compared_at_every_point_of_the_curve(result):
    report, _ = result
    assert [b.method for b in report.baselines] == PER_LAYER
    assert all(0 <= b.accuracy_after <= 1 for b in report.baselines)
    removed = [point.units_pruned for point in report.curve]
    assert removed == sorted(set(removed)) and removed[0] == 0
    assert report.units_pruned in removed
    first = report.curve[0]
    assert set(first.accuracy) == {"mip", *PER_LAYER}
    assert all(a == pytest.approx(report.accuracy_before) for a in first.accuracy.values())


def test_report_dict_has_the_issue_keys_and_is_json(result):
    report, _ = result
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) >= ISSUE_KEYS
    assert "model" not in data
    assert set(data["layers"][0]) >= {"name", "units", "units_pruned"}


def test_write_report_writes_a_loadable_model_and_plots(result, digits, tmp_path):
    report, _ = result
    written = write_report(report, tmp_path)
    assert all(path.is_file() and path.stat().st_size > 0 for path in written)
    assert {p.suffix for p in written} == {".json", ".pt", ".png"}
    loaded = oamip.load_model(tmp_path / "pruned.pt")
    x = torch.as_tensor(digits.x_test[:20])
    with torch.no_grad():
        assert torch.allclose(loaded(x), report.model(x))


def test_summary_table_lists_layers_and_methods(result):
    text = summary_table(result[0])
    for word in ("1", "3", "total", "dense", "mip", *PER_LAYER):
        assert word in text


def test_without_fine_tuning_the_accuracy_after_fine_tuning_is_none(trained, digits):
    report = oamip.prune(trained, digits, finetune_epochs=0, time_limit=1.0, threads=1)
    assert report.accuracy_after_finetune is None
    assert all(b.accuracy_after_finetune is None for b in report.baselines)
    assert evaluate(report.model, digits.x_test, digits.y_test) == pytest.approx(
        report.accuracy_after
    )


def test_prune_leaves_the_callers_random_state_alone(trained, digits):
    state = torch.get_rng_state()
    oamip.prune(trained, digits, finetune_epochs=1, time_limit=1.0, threads=1)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.fixture
def no_work(monkeypatch):
    """Make the pipeline's work (training, scoring) fail the test: refusals must come first."""

    def fail(*args, **kwargs):
        raise AssertionError("the pipeline started working on bad input")

    monkeypatch.setattr(pipeline, "_prune", fail)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": "0.1"}, "threshold"),
        ({"samples_per_class": 0}, "samples per class"),
        ({"samples_per_class": 1.5}, "samples per class"),
        ({"finetune_epochs": 1.5}, "fine-tuning epochs"),
        ({"threads": 1.5}, "threads"),
        ({"threads": 0}, "threads"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"seed": True}, "seed"),
        ({"lam": float("inf")}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"lam": 1e308}, "lam must be at most"),
        ({"loss": "mse"}, "loss"),
        ({"backend": "nope"}, "unknown backend"),
        ({"backend": ["highs"]}, "unknown backend"),
        ({"time_limit": 0}, "time_limit"),
        ({"time_limit": float("inf")}, "time_limit"),
        ({"arch": "resnet"}, "architecture"),
        ({"solver_heuristics": "no"}, "solver_heuristics"),
    ],
)
def test_bad_settings_are_refused_before_any_work(no_work, options, message):
    with pytest.raises(InvalidInputError, match=message):
        oamip.prune(None, "digits", **options)


def test_settings_check_makes_whole_floats_and_numpy_numbers_plain():
    settings = PruneSettings(
        samples_per_class=2.0, seed=np.int64(3), lam=np.float32(2), threads=2.0
    )
    settings.validate()
    assert (settings.samples_per_class, settings.seed, settings.threads) == (2, 3, 2)
    assert type(settings.seed) is int and type(settings.lam) is float


def _sigmoid_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Sigmoid(), nn.Linear(10, 10))


def _shifted(digits):
    return make_dataset(
        "shifted", digits.x_train, digits.y_train + 1, digits.x_test, digits.y_test + 1
    )


def _one_sample(digits):
    return make_dataset("one", digits.x_train[:1], digits.y_train[:1], digits.x_test, digits.y_test)


@pytest.mark.parametrize(
    "make_model, make_data, options, error, message",
    [
        (None, lambda d: 5, {}, InvalidInputError, "data must be"),
        (lambda: "/path/model.pt", None, {}, InvalidInputError, "oamip.load_model"),
        (lambda: mlp(4, (3,), 10), None, {}, InvalidInputError, "does not take inputs"),
        (lambda: mlp(64, (3,), 4), None, {}, InvalidInputError, "has 10 classes"),
        (_sigmoid_net, None, {}, UnsupportedLayerError, "Sigmoid"),
        (None, _shifted, {}, InvalidInputError, "class 0 has no training samples"),
        (None, _one_sample, {}, InvalidInputError, r"classes \[.*\] have no training samples"),
        (None, None, {"samples_per_class": 1000}, InvalidInputError, "samples per class"),
    ],
)
def test_bad_models_and_data_are_refused_before_any_work(
    no_work, digits, make_model, make_data, options, error, message
):
    model = make_model() if make_model else None
    data = make_data(digits) if make_data else digits
    with pytest.raises(error, match=message):
        oamip.prune(model, data, **options)


@pytest.mark.parametrize(
    "args",
    [
        ["--seed", "-1"],
        ["--seed", "99999999999999999999999"],
        ["--lam", "inf"],
        ["--lam", "1e400"],
        ["--lam", "1e308"],
    ],
)
def test_the_command_refuses_bad_seeds_and_weights_before_training(no_work, args, tmp_path, capsys):
    assert cli.main(["prune", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("seed" in err or "lam" in err)
    assert not (tmp_path / "out").exists()


def test_unknown_options_are_refused():
    with pytest.raises(
        InvalidInputError, match="unknown option.s. tresh; its options are: .*threshold"
    ):
        oamip.prune(None, "digits", tresh=0.2)


def test_help_lists_every_option():
    """The signature types the options (what editors show) and help() lists them with docs."""
    hint = typing.get_type_hints(oamip.prune, include_extras=True)["changes"]
    (keywords,) = typing.get_args(hint)
    assert {"lam", "loss", "threshold", "time_limit", "backend", "seed"} <= set(
        typing.get_type_hints(keywords)
    )
    assert "threshold = 0.1: units scoring below it are pruned" in oamip.prune.__doc__


def test_read_model_infers_mlp_widths_from_a_state_dict_with_any_names(digits, tmp_path):
    source = mlp(64, (20, 7), 10)
    named = dict(
        zip(
            ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.w", "out.b"],
            source.state_dict().values(),
        )
    )
    torch.save(named, tmp_path / "sd.pt")
    model = read_model(tmp_path / "sd.pt", "mlp", digits)
    widths = [m.out_features for m in model if isinstance(m, nn.Linear)]
    assert widths == [20, 7, 10]
    x = torch.as_tensor(digits.x_test[:5])
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_read_model_loads_files_of_save_model_without_arch(trained, digits, tmp_path):
    oamip.save_model(trained, tmp_path / "m.pt")
    model = read_model(tmp_path / "m.pt", None, digits)
    assert describe_arch(model) == "mlp"
    assert evaluate(model, digits.x_test, digits.y_test) == evaluate(
        trained, digits.x_test, digits.y_test
    )


def test_read_model_refuses_an_architecture_for_a_complete_model(trained, digits, tmp_path):
    """An --arch given with a file of save_model used to be ignored without a word."""
    oamip.save_model(trained, tmp_path / "m.pt")
    with pytest.raises(InvalidInputError, match="complete model .* for state dicts only"):
        read_model(tmp_path / "m.pt", "lenet5", digits)


def _write(path, content):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "make, arch, message",
    [
        (lambda p: p / "missing.pt", "mlp", "does not exist"),
        (lambda p: p, "mlp", "is a folder, not a model file"),
        (lambda p: _write(p / "bad.pt", b"not a torch file"), "mlp", "cannot read"),
        (lambda p: _save(p, mlp(64, (20,), 10).state_dict()), None, "--arch"),
        (lambda p: _save(p, mlp(64, (20,), 10).state_dict()), "lenet5", "does not fit"),
        (lambda p: _save(p, mlp(100, (20,), 10).state_dict()), "mlp", "does not take inputs"),
        (lambda p: _save(p, mlp(64, (20,), 3).state_dict()), "mlp", "classes"),
        (lambda p: _save(p, mlp(64, (20,), 10)), "mlp", "cannot read"),
        (lambda p: _save(p, [1, 2]), "mlp", "no state dict"),
    ],
)
def test_read_model_refuses_files_that_do_not_fit(digits, tmp_path, make, arch, message):
    with pytest.raises(InvalidInputError, match=message):
        read_model(make(tmp_path), arch, digits)


def _save(folder, obj):
    path = folder / "weights.pt"
    torch.save(obj, path)
    return path


def test_describe_arch_names_the_papers_architectures(digits):
    assert describe_arch(build("lenet5", digits)) == "lenet5"
    assert describe_arch(build("vgg", digits)) == "vgg"
    assert describe_arch(mlp(4, (3,), 2)) == "mlp"
    custom = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 10))
    assert describe_arch(custom) == "custom"
    assert count_params(custom) == (2 * 9 + 2) + (72 * 10 + 10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_is_pruned_and_left_as_it_was(trained, digits, dtype):
    half = copy.deepcopy(trained).to(dtype)
    report = oamip.prune(half, digits, time_limit=2.0, finetune_epochs=0, threads=1)
    assert next(half.parameters()).dtype == dtype
    assert report.accuracy_before > 0.8
    assert next(report.model.parameters()).dtype == torch.float32


def test_a_fresh_vgg_is_trained_with_its_own_recipe(digits, monkeypatch):
    seen = {}

    def recording(model, dataset, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train", recording)
    with pytest.raises(KeyboardInterrupt):
        oamip.prune(None, digits, arch="vgg")
    recipe = TRAINING_DEFAULTS["vgg"]
    assert (seen["epochs"], seen["lr"], seen["shift"], seen["cosine"]) == (
        recipe.epochs,
        recipe.lr,
        recipe.shift,
        recipe.cosine,
    )
