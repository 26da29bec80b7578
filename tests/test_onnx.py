"""ONNX in and out: graphs built with onnx.helper (and torch's exporter) load as equivalent
modules (outputs equal to 1e-5 to onnxruntime's), an unsupported operator is one line naming the
node, save_model writes ONNX that onnxruntime runs alike, and ``oamip prune`` takes an .onnx."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip.adapters import extract
from oamip.cli import main
from oamip.errors import InvalidInputError, UnsupportedLayerError
from oamip.training.data import load_digits
from oamip.training.train import train
from tests.torchvision_nets import VGG, ResNet18, randomised

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, numpy_helper = onnx.helper, onnx.numpy_helper
RNG = np.random.default_rng(0)


def _init(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
    values = RNG.uniform(0.5, 1.5, shape) if positive else RNG.normal(0, 0.5, shape)
    return numpy_helper.from_array(values.astype(np.float32), name)


def _constant(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values), name)


def _save(tmp_path, nodes, inits, in_shape, out_shape, name="net.onnx"):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", *out_shape])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _mlp(tmp_path):
    """Flatten, Gemm (transB), Relu, MatMul + Add, LeakyRelu, Dropout, Identity, Gemm."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["g1"], name="fc1", transB=1),
        helper.make_node("Relu", ["g1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
        helper.make_node("Add", ["m2", "b2"], ["a2"], name="fc2_bias"),
        helper.make_node("LeakyRelu", ["a2"], ["r2"], name="leaky", alpha=0.1),
        helper.make_node("Dropout", ["r2"], ["d2"], name="drop"),
        helper.make_node("Identity", ["d2"], ["i2"], name="same"),
        helper.make_node("Gemm", ["i2", "w3", "b3"], ["y"], name="out", transB=1),
    ]
    inits = [_init("w1", 6, 16), _init("b1", 6), _init("w2", 6, 5), _init("b2", 5)]
    inits += [_init("w3", 3, 5), _init("b3", 3)]
    return _save(tmp_path, nodes, inits, [1, 4, 4], [3], "mlp.onnx"), (1, 4, 4)


def _cnn(tmp_path):
    """Conv, BatchNormalization, Relu, MaxPool (padded), a residual Add, Clip(0, 6),
    AveragePool, Conv, Clip(0), GlobalAveragePool, Reshape to [0, -1], Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"], name="bn1", epsilon=1e-3
        ),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool",
            ["r1"],
            ["p1"],
            name="pool1",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Conv", ["p1", "c2w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "p1"], ["a2"], name="skip"),
        helper.make_node("Clip", ["a2", "zero", "six"], ["r2"], name="relu6"),
        helper.make_node(
            "AveragePool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Conv", ["p2", "c3w", "c3b"], ["c3"], name="conv3"),
        helper.make_node("Clip", ["c3", "zero"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = [_init("c1w", 4, 2, 3, 3), _init("c1b", 4), _init("s", 4, positive=True)]
    inits += [_init("bb", 4), _init("m", 4), _init("v", 4, positive=True)]
    inits += [_init("c2w", 4, 4, 3, 3), _init("c3w", 5, 4, 1, 1), _init("c3b", 5)]
    inits += [_init("fw", 3, 5), _init("fb", 3)]
    inits += [_constant("zero", np.float32(0)), _constant("six", np.float32(6))]
    inits += [_constant("shape", np.array([0, -1], dtype=np.int64))]
    return _save(tmp_path, nodes, inits, [2, 8, 8], [3], "cnn.onnx"), (2, 8, 8)


def _runtime(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).numpy()


@pytest.mark.parametrize("build", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_an_onnx_graph_built_by_hand_loads_as_an_equivalent_module(build, tmp_path):
    path, shape = build(tmp_path)
    model = oamip.load_model(path)
    x = RNG.uniform(-1, 1, (5, *shape)).astype(np.float32)
    np.testing.assert_allclose(_torch(model, x), _runtime(path, x), atol=1e-5)


def test_a_loaded_onnx_relu_network_is_scored(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = [_init("cw", 3, 1, 3, 3), _init("cb", 3), _init("fw", 2, 3), _init("fb", 2)]
    model = oamip.load_model(_save(tmp_path, nodes, inits, [1, 6, 6], [2]))
    x = RNG.uniform(0, 1, (2, 1, 6, 6))
    res = oamip.score_neurons(model, x, np.array([0, 1]), time_limit=5)
    assert set(res.scores) == set(extract(model, x).units) == {"conv"}


def test_an_unsupported_operator_is_one_line_naming_the_node(tmp_path):
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc1", transB=1),
        helper.make_node("Sigmoid", ["h"], ["y"], name="squash"),
    ]
    path = _save(tmp_path, nodes, [_init("w", 3, 4), _init("b", 3)], [4], [3])
    with pytest.raises(UnsupportedLayerError) as caught:
        oamip.load_model(path)
    message = str(caught.value)
    assert "'squash' (Sigmoid) is not supported" in message and "\n" not in message


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(InvalidInputError, match="cannot read"):
        oamip.load_model(path)


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_save_model_writes_onnx_that_onnxruntime_and_load_model_run_alike(name, tmp_path):
    """Torchvision-style networks exported with save_model: onnxruntime's outputs, and those of
    the module read back (an fx graph with the additions for the ResNet), equal torch's."""
    model = randomised(ResNet18() if name == "resnet18" else VGG(), 0).float()
    path = oamip.save_model(model, tmp_path / "net.onnx", input_shape=(3, 32, 32))
    x = RNG.uniform(0, 1, (3, 3, 32, 32)).astype(np.float32)
    expected = _torch(model, x)
    np.testing.assert_allclose(_runtime(path, x), expected, atol=1e-5)
    back = oamip.load_model(path)
    np.testing.assert_allclose(_torch(back, x), expected, atol=1e-5)
    assert len(extract(back, x, "both").units) == len(extract(model, x, "both").units)


def test_save_model_asks_for_the_input_shape_of_a_convolutional_network(tmp_path):
    with pytest.raises(InvalidInputError, match="input_shape"):
        oamip.save_model(nn.Sequential(nn.Conv2d(1, 2, 3)), tmp_path / "conv.onnx")


def _digits_net(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 10),
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_oamip_prune_takes_an_onnx_model_and_writes_one_back(kind, tmp_path):
    """An ONNX MLP and CNN pruned from the command line; ``--export-onnx`` writes pruned.onnx,
    which onnxruntime runs as the pruned.pt beside it."""
    model = _digits_net(kind)
    data = load_digits()
    train(model, data, epochs=10, lr=1e-2, progress=False)
    path = oamip.save_model(model, tmp_path / "net.onnx", input_shape=(1, 8, 8))
    out = tmp_path / "out"
    args = ["prune", "--model", str(path), "--data", "digits", "--time-limit", "2"]
    assert main([*args, "--finetune-epochs", "0", "--export-onnx", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    pruned = oamip.load_model(out / "pruned.pt")
    assert sum(p.numel() for p in pruned.parameters()) == report["params_after"]
    x = data.x_test[:20]
    np.testing.assert_allclose(_runtime(out / "pruned.onnx", x), _torch(pruned, x), atol=1e-5)


@pytest.mark.slow
def test_oamip_spr_writes_the_pruned_model_as_onnx_too(tmp_path):
    out = tmp_path / "out"
    args = ["spr", "--arch", "mlp", "--data", "digits", "--epochs", "2", "--finetune-epochs", "0"]
    assert main([*args, "--export-onnx", "--out", str(out)]) == 0
    pruned = oamip.load_model(out / "pruned.pt")
    x = load_digits().x_test[:20]
    np.testing.assert_allclose(_runtime(out / "pruned.onnx", x), _torch(pruned, x), atol=1e-5)


@pytest.mark.parametrize("build", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_onnx_leaky_relu_and_clip_units_are_scored_and_checked_against_torch(build, tmp_path):
    """LeakyRelu and Clip(0, 6) load as LeakyReLU and ReLU6 and are scored like Relu units."""
    path, shape = build(tmp_path)
    model = oamip.load_model(path)
    x = RNG.uniform(-1, 1, (2, *shape))
    res = oamip.score_neurons(model, x, np.array([0, 1]), scores="binary", time_limit=20)
    assert res.logit_error < 1e-6
    activations = {
        type(layer.activation).__name__
        for layer in extract(model, x).network.layers
        if getattr(layer, "activation", None) is not None
    }
    assert activations >= ({"LeakyReLU"} if build is _mlp else {"ReLU6"})
