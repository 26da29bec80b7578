from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from oamip.adapters import extract
from oamip.adapters.chain import units
from oamip.errors import InvalidInputError
from oamip.training.data import Dataset, load_digits, make_dataset
from oamip.training.inference import evaluate, predict, resolve_device
from oamip.training.models import ARCHITECTURES, TRAINING_DEFAULTS, build, lenet5, mlp, vgg
from oamip.training.train import finetune, train
from oamip.training.zoo import Recipe


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


def _small_mlp(digits: Dataset, seed: int = 0) -> nn.Sequential:
    return build("mlp", digits, hidden=(24, 16), seed=seed)


def _masks() -> dict[str, np.ndarray]:
    return {"1": np.arange(24) % 3 != 0, "3": np.arange(16) >= 10}


def _outputs(model: nn.Module, x: np.ndarray, names: list[str]) -> dict[str, torch.Tensor]:
    modules, captured = dict(model.named_modules()), {}
    hooks = [
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: captured.__setitem__(n, out))
        for n in names
    ]
    with torch.no_grad():
        model(torch.as_tensor(x))
    for hook in hooks:
        hook.remove()
    return captured


def test_mlp_is_flatten_then_linear_relu_pairs_then_output_layer():
    model = mlp(64, hidden=(20, 10), num_classes=4)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 4)


@pytest.mark.parametrize("side", [4, 8, 14, 28, 32])
def test_lenet5_fits_inputs_of_every_usable_size(side):
    model = lenet5(in_channels=3, num_classes=7, input_size=side)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 16]
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [120, 84, 7]
    assert model(torch.zeros(2, 3, side, side)).shape == (2, 7)


def test_lenet5_keeps_the_classic_shape_on_28_pixels():
    assert lenet5()[7].in_features == 16 * 5 * 5


def test_lenet5_refuses_tiny_images():
    with pytest.raises(InvalidInputError, match="at least 4x4"):
        lenet5(input_size=3)


def test_build_gives_the_same_weights_for_the_same_seed(digits):
    first, second = _small_mlp(digits, seed=3), _small_mlp(digits, seed=3)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[1].weight, _small_mlp(digits, seed=4)[1].weight)


def test_build_refuses_unknown_architectures_and_images_on_flat_inputs(digits):
    with pytest.raises(InvalidInputError, match="unknown architecture 'resnet'.*vgg"):
        build("resnet", digits)
    flat = make_dataset("flat", np.zeros((4, 10)), [0, 1, 0, 1], np.zeros((2, 10)), [0, 1])
    for arch, name in [("lenet5", "LeNet-5"), ("vgg", "the VGG")]:
        with pytest.raises(InvalidInputError, match=f"{name} needs square images"):
            build(arch, flat)


def _images(side: int, n: int = 40, channels: int = 1) -> Dataset:
    rng = np.random.default_rng(side)
    x = rng.random((n, channels, side, side))
    return make_dataset(f"images{side}", x, np.arange(n) % 10, x[:10], np.arange(10))


def test_vgg_is_three_stages_of_two_conv_batchnorm_relu_then_two_linear_layers():
    model = build("vgg", _images(28))
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 8),
        (8, 8),
        (8, 16),
        (16, 16),
        (16, 32),
        (32, 32),
    ]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    for i, module in enumerate(model):
        if isinstance(module, nn.Conv2d):
            assert isinstance(model[i + 1], nn.BatchNorm2d) and isinstance(model[i + 2], nn.ReLU)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model) == 3
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32 * 3 * 3, 64), (64, 10)]
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


def test_vgg_fits_digits_and_refuses_images_below_eight_pixels(digits):
    model = build("vgg", digits)
    assert [m for m in model if isinstance(m, nn.Linear)][0].in_features == 32
    assert model(torch.as_tensor(digits.x_test[:3])).shape == (3, 10)
    assert vgg(in_channels=3, num_classes=4, input_size=9)(torch.zeros(2, 3, 9, 9)).shape == (2, 4)
    with pytest.raises(InvalidInputError, match="at least 8x8 pixels, got 7x7"):
        build("vgg", _images(7))
    with pytest.raises(InvalidInputError, match="at least 4x4 pixels"):
        vgg(input_size=3, widths=(4, 4))
    with pytest.raises(InvalidInputError, match="positive sizes"):
        vgg(widths=())


def test_vgg_is_read_by_the_mip_reader_with_its_convolutions_and_first_linear_scored(digits):
    some = make_dataset(
        "some", digits.x_train[:200], digits.y_train[:200], digits.x_test, digits.y_test
    )
    model = train(build("vgg", some), some, epochs=1, progress=False)
    scored = units(model)
    kinds = [type(u.module) for u in scored]
    assert kinds == [nn.Conv2d] * 6 + [nn.Linear]
    assert all(isinstance(u.batchnorm_module, nn.BatchNorm2d) for u in scored[:6])
    assert [u.size for u in scored] == [8, 8, 16, 16, 32, 32, 64]
    read = extract(model, digits.x_test[:4])
    assert list(read.units) == [u.name for u in scored]
    with torch.no_grad():
        logits = model.double()(torch.as_tensor(digits.x_test[:4], dtype=torch.float64))
    np.testing.assert_allclose(read.network.forward(digits.x_test[:4]), logits.numpy(), atol=1e-9)


def test_a_vgg_training_step_changes_the_weights_and_batchnorm_statistics():
    data = _images(28, n=16)
    model = build("vgg", data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, data, epochs=1, batch_size=16, progress=False, shift=2, cosine=True)
    after = model.state_dict()
    for key in ["0.weight", "1.running_mean", "1.running_var", "22.weight", "24.bias"]:
        assert not torch.equal(before[key], after[key]), key
    assert not model.training


def test_cosine_decay_changes_training_and_stays_deterministic(digits):
    def run(cosine: bool) -> nn.Module:
        return train(_small_mlp(digits), digits, epochs=2, lr=1e-2, progress=False, cosine=cosine)

    first, second, flat = run(True), run(True), run(False)
    assert torch.equal(first[1].weight, second[1].weight)
    assert not torch.equal(first[1].weight, flat[1].weight)


def test_training_defaults_name_known_architectures_and_usable_settings():
    assert set(TRAINING_DEFAULTS) <= set(ARCHITECTURES)
    assert "vgg" in TRAINING_DEFAULTS and "mlp" not in TRAINING_DEFAULTS
    for recipe in TRAINING_DEFAULTS.values():
        assert recipe.epochs >= 1 and recipe.lr > 0 and recipe.shift >= 0


def test_training_is_deterministic_on_cpu_and_learns(digits):
    first = train(_small_mlp(digits), digits, epochs=3, lr=1e-2, seed=5, progress=False)
    second = train(_small_mlp(digits), digits, epochs=3, lr=1e-2, seed=5, progress=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not first.training
    assert evaluate(first, digits.x_test, digits.y_test) > 0.8


def test_progress_bar_only_when_asked(digits, capsys):
    train(_small_mlp(digits), digits, epochs=1, progress=False)
    assert capsys.readouterr().err == ""
    train(_small_mlp(digits), digits, epochs=1, progress=True)
    assert "train" in capsys.readouterr().err


def test_evaluate_is_the_fraction_of_correct_predictions(digits):
    model = _small_mlp(digits)
    expected = np.mean(predict(model, digits.x_test) == digits.y_test)
    assert evaluate(model, digits.x_test, digits.y_test) == pytest.approx(expected)


def test_finetune_keeps_pruned_units_exactly_zero(digits):
    model = train(_small_mlp(digits), digits, epochs=1, progress=False)
    before = model[1].weight.detach().clone()
    masks = _masks()
    finetune(model, digits, masks, epochs=2, progress=False)
    outputs = _outputs(model, digits.x_test, list(masks))
    for name, keep in masks.items():
        layer = dict(model.named_modules())[name]
        assert torch.all(layer.weight[~keep] == 0) and torch.all(layer.bias[~keep] == 0)
        assert torch.all(outputs[name][:, ~keep] == 0)
        assert torch.any(outputs[name][:, keep] != 0)
    assert not torch.equal(model[1].weight[masks["1"]], before[masks["1"]])


def test_finetune_zeroes_a_following_batchnorm_too(digits):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10)
    )
    keep = np.arange(12) >= 4
    finetune(model, digits, {"1": keep}, epochs=1, progress=False)
    assert torch.all(model[2].weight[~keep] == 0) and torch.all(model[2].bias[~keep] == 0)
    assert torch.all(_outputs(model, digits.x_test, ["2"])["2"][:, ~keep] == 0)


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        ({"9": np.ones(3, dtype=bool)}, "not a unit layer"),
        ({"5": np.ones(10, dtype=bool)}, r"'5', which is not a unit layer.*\['1', '3'\]"),
        ({"1": np.ones(5, bool)}, "24 units"),
    ],
)
def test_finetune_refuses_masks_of_another_model(digits, masks, message):
    with pytest.raises(InvalidInputError, match=message):
        finetune(_small_mlp(digits), digits, masks, progress=False)


def test_unusable_devices_are_refused():
    with pytest.raises(InvalidInputError, match="use cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_and_finetuning_run_on_a_gpu(digits):
    model = train(build("lenet5", digits), digits, epochs=2, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda
    assert evaluate(model, digits.x_test, digits.y_test) > 0.5
    keep = np.arange(6) >= 2
    finetune(model, digits, {"0": keep}, epochs=1, device="cuda", progress=False)
    assert torch.all(model[0].weight[torch.as_tensor(~keep)] == 0)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"epochs": -1}, r"epochs must lie in \[0, inf\]"),
        ({"epochs": 1.5}, "epochs must be a whole number"),
        ({"lr": 0.0}, r"the learning rate must lie in \(0, inf\]"),
        ({"lr": float("nan")}, "the learning rate must be a finite number"),
        ({"batch_size": 0}, r"the batch size must lie in \[1, inf\]"),
    ],
)
def test_bad_training_settings_are_refused(digits, option, message):
    with pytest.raises(InvalidInputError, match=message):
        train(_small_mlp(digits), digits, progress=False, **option)


def test_the_zoo_trains_vgg_by_its_own_recipe_and_keeps_older_cache_keys(digits):
    recipe, own = Recipe.default("vgg", seed=2), TRAINING_DEFAULTS["vgg"]
    assert (recipe.arch, recipe.seed) == ("vgg", 2)
    assert (recipe.epochs, recipe.lr, recipe.shift, recipe.cosine) == (
        own.epochs,
        own.lr,
        own.shift,
        own.cosine,
    )
    assert Recipe.default("mlp") == Recipe("mlp")
    assert recipe.key(digits) != replace(recipe, cosine=not recipe.cosine).key(digits)
    # the keys (file names of cached networks) of recipes made before the cosine option
    assert Recipe("lenet5", epochs=3).key(digits) == "1bcc0561132a"
    assert Recipe("mlp", hidden=(256, 256), epochs=3).key(digits) == "2de6f04af52b"
