"""ONNX files in and out (``pip install 'oamip[onnx]'``): :func:`read_onnx` rebuilds an
``nn.Module`` from an ONNX graph of supported operators, :func:`write_onnx` exports a model.

Each node becomes a torch module (a ``MatMul`` followed by the ``Add`` of a constant becomes one
Linear; ``Identity`` disappears) and each ``Add`` of two tensors an addition, so the result is an
``nn.Sequential`` for a chain and, for a graph with additions, the ``fx.GraphModule`` that
:func:`oamip.adapters.residual.graph_module` builds, the form ``load_model`` gives residual
networks. ``onnx`` is imported only here, when a file is read or written, so the package imports
without it.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from oamip.adapters.residual import GraphOp, graph_module
from oamip.errors import InvalidInputError, UnsupportedLayerError

SUPPORTED = (
    "Gemm, MatMul+Add, Conv, Relu, Clip, LeakyRelu, MaxPool, AveragePool, GlobalAveragePool, "
    "Flatten, Reshape, BatchNormalization, Add, Dropout, Identity"
)
OPSET = 17
"""The opset :func:`write_onnx` writes."""


def onnx_module() -> ModuleType:
    """The ``onnx`` module; a clear error naming the extra when it is not installed."""
    try:
        import onnx
    except ImportError as exc:
        raise InvalidInputError(
            "ONNX files need the onnx package, which is not installed; install the extra with "
            "pip install 'oamip[onnx]'"
        ) from exc
    return onnx


def is_onnx(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix)."""
    return Path(path).suffix.lower() == ".onnx"


@dataclass
class _Reader:
    """The graph read so far: constants by name, the op index and rank of each tensor, layers
    and operations in the form :func:`graph_module` runs."""

    constants: dict[str, np.ndarray]
    index: dict[str, int] = field(default_factory=dict)
    rank: dict[str, int] = field(default_factory=dict)
    layers: dict[str, nn.Module] = field(default_factory=dict)
    ops: list[GraphOp] = field(default_factory=list)
    readers: dict[str, int] = field(default_factory=dict)

    def layer(self, name: str, module: nn.Module, source: str, output: str, rank: int) -> None:
        """Apply ``module`` (named ``name``, made unique) to ``source``, giving ``output``."""
        if name in self.layers:
            name = f"{name}_{len(self.ops)}"
        self.layers[name] = module
        self.ops.append(GraphOp("layer", name, (self.index[source],)))
        self.index[output], self.rank[output] = len(self.ops), rank

    def add(self, first: str, second: str, output: str) -> None:
        self.ops.append(GraphOp("add", None, (self.index[first], self.index[second])))
        self.index[output], self.rank[output] = len(self.ops), self.rank[first]

    def alias(self, output: str, source: str) -> None:
        """``output`` is ``source``'s value (Identity, Dropout, a bias folded into a Linear)."""
        self.index[output], self.rank[output] = self.index[source], self.rank[source]


def read_onnx(path: str | Path) -> nn.Module:
    """The ``nn.Module`` equal to the ONNX model at ``path`` (float32, eval mode): one input,
    one output, operators among :data:`SUPPORTED`; any other is refused naming the node."""
    onnx = onnx_module()
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise InvalidInputError(f"cannot read '{path}' as an ONNX model: {exc}") from exc
    graph = model.graph
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedLayerError(
            f"'{path}' has {len(inputs)} inputs and {len(graph.output)} outputs; only models with "
            "one input and one output are read"
        )
    reader = _Reader(constants)
    reader.index[inputs[0].name] = 0
    reader.rank[inputs[0].name] = len(inputs[0].type.tensor_type.shape.dim)
    for node in graph.node:
        for name in node.input:
            reader.readers[name] = reader.readers.get(name, 0) + 1
    for position, node in enumerate(graph.node):
        _read_node(reader, node, position, onnx)
    output = reader.index.get(graph.output[0].name)
    if output is None:
        raise InvalidInputError(f"'{path}': the graph's output is computed by no node")
    return _module(reader, output).float().eval()


def _module(reader: _Reader, output: int) -> nn.Module:
    """An ``nn.Sequential`` when the operations are a chain, else an ``fx.GraphModule``."""
    chain = all(op.kind == "layer" and op.inputs == (i,) for i, op in enumerate(reader.ops))
    if chain and output == len(reader.ops):
        return nn.Sequential(OrderedDict(reader.layers))
    return graph_module(reader.layers, reader.ops, output)


def _read_node(reader: _Reader, node, position: int, onnx) -> None:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    where = f"ONNX node '{node.name or position}' ({node.op_type})"
    if node.op_type == "Constant":
        reader.constants[node.output[0]] = onnx.numpy_helper.to_array(attrs["value"])
        return
    tensors = [name for name in node.input if name and name not in reader.constants]
    if any(name not in reader.index for name in tensors):
        raise InvalidInputError(f"{where} reads a tensor that no earlier node computes")
    if not tensors:
        raise UnsupportedLayerError(f"{where} computes on constants only; fold it into them")
    if node.op_type in ("Identity", "Dropout"):
        reader.alias(node.output[0], tensors[0])
    elif node.op_type == "Add" and len(tensors) == 2:
        reader.add(*tensors, node.output[0])
    elif node.op_type == "Add":
        _add_bias(reader, node, tensors[0], where)
    else:
        _read_layer(reader, node, attrs, tensors, position, where)


def _read_layer(reader: _Reader, node, attrs: dict, tensors: list[str], position, where) -> None:
    """A node of one tensor input that becomes a module (:data:`_BUILDERS`)."""
    build = _BUILDERS.get(node.op_type)
    if build is None or len(tensors) != 1:
        raise UnsupportedLayerError(f"{where} is not supported; supported operators: {SUPPORTED}")
    module, rank = build(node, attrs, reader.constants, reader.rank[tensors[0]], where)
    reader.layer(_layer_name(node, position), module, tensors[0], node.output[0], rank)


def _add_bias(reader: _Reader, node, source: str, where: str) -> None:
    """``MatMul(x, W) + b``: the bias of the Linear the MatMul became, read by nothing else."""
    constant = next(name for name in node.input if name in reader.constants)
    op = reader.ops[reader.index[source] - 1] if reader.index[source] else None
    linear = reader.layers.get(op.layer) if op is not None and op.kind == "layer" else None
    if not isinstance(linear, nn.Linear) or linear.bias is not None or reader.readers[source] > 1:
        raise UnsupportedLayerError(
            f"{where} adds a constant to something other than a MatMul; supported operators: "
            f"{SUPPORTED}"
        )
    bias = np.broadcast_to(reader.constants[constant], (linear.out_features,))
    linear.bias = nn.Parameter(_tensor(bias))
    reader.alias(node.output[0], source)


def _layer_name(node, position: int) -> str:
    """A module path from the node's name (``/layer1/conv/Conv`` -> ``layer1_conv_Conv``)."""
    name = re.sub(r"\W+", "_", node.name).strip("_")
    return name if name and name[0].isalpha() else f"{node.op_type.lower()}{position}"


def _tensor(value: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.array(value, dtype=np.float32))


def _constant(constants: dict, name: str, where: str) -> np.ndarray:
    if name not in constants:
        raise UnsupportedLayerError(
            f"{where} takes its weights as an input; only constants are read"
        )
    return constants[name]


def _pads(attrs: dict, where: str) -> tuple[int, int]:
    """ONNX's (top, left, bottom, right) padding as torch's symmetric (height, width) one."""
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedLayerError(f"{where} uses auto_pad; only explicit pads are read")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise UnsupportedLayerError(f"{where} pads {pads}: only 2-D symmetric padding is read")
    return pads[0], pads[1]


def _gemm(node, attrs, constants, rank, where):
    if attrs.get("transA", 0):
        raise UnsupportedLayerError(f"{where} transposes its input (transA); not supported")
    weight = _constant(constants, node.input[1], where) * attrs.get("alpha", 1.0)
    weight = weight if attrs.get("transB", 0) else weight.T
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=len(node.input) > 2)
    layer.weight = nn.Parameter(_tensor(weight))
    if len(node.input) > 2:
        bias = _constant(constants, node.input[2], where) * attrs.get("beta", 1.0)
        layer.bias = nn.Parameter(_tensor(np.broadcast_to(bias, (weight.shape[0],))))
    return layer, 2


def _matmul(node, attrs, constants, rank, where):
    weight = _constant(constants, node.input[1], where)
    if weight.ndim != 2:
        raise UnsupportedLayerError(f"{where} multiplies by a {weight.ndim}-D tensor; 2-D only")
    layer = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
    layer.weight = nn.Parameter(_tensor(weight.T))
    return layer, rank


def _conv(node, attrs, constants, rank, where):
    weight = _constant(constants, node.input[1], where)
    if weight.ndim != 4:
        raise UnsupportedLayerError(f"{where} is not a 2-D convolution")
    groups = attrs.get("group", 1)
    layer = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=tuple(attrs.get("strides", [1, 1])),
        padding=_pads(attrs, where),
        dilation=tuple(attrs.get("dilations", [1, 1])),
        groups=groups,
        bias=len(node.input) > 2,
    )
    layer.weight = nn.Parameter(_tensor(weight))
    if len(node.input) > 2:
        layer.bias = nn.Parameter(_tensor(_constant(constants, node.input[2], where)))
    return layer, 4


def _clip(node, attrs, constants, rank, where):
    """``Clip(x, 0)`` is a ReLU, ``Clip(x, 0, 6)`` a ReLU6, other bounds a Hardtanh."""
    bounds = [attrs.get("min"), attrs.get("max")]
    for i, name in enumerate(node.input[1:3]):
        if name:
            bounds[i] = float(_constant(constants, name, where))
    low, high = bounds
    if low == 0 and high is None:
        return nn.ReLU(), rank
    if low == 0 and high == 6:
        return nn.ReLU6(), rank
    if low is None or high is None:
        raise UnsupportedLayerError(f"{where} clips on one side only at {low}, {high}")
    return nn.Hardtanh(low, high), rank


def _pool(node, attrs, constants, rank, where):
    if attrs.get("ceil_mode", 0):
        raise UnsupportedLayerError(f"{where} uses ceil_mode; only floor sizes are read")
    kernel = tuple(attrs["kernel_shape"])
    stride = tuple(attrs.get("strides", [1, 1]))
    padding = _pads(attrs, where)
    if node.op_type == "MaxPool":
        dilation = tuple(attrs.get("dilations", [1, 1]))
        return nn.MaxPool2d(kernel, stride, padding, dilation), 4
    counted = bool(attrs.get("count_include_pad", 0))
    return nn.AvgPool2d(kernel, stride, padding, count_include_pad=counted), 4


def _flatten(node, attrs, constants, rank, where):
    if attrs.get("axis", 1) != 1:
        raise UnsupportedLayerError(f"{where} flattens from axis {attrs['axis']}; only axis 1")
    return nn.Flatten(), 2


def _reshape(node, attrs, constants, rank, where):
    """A reshape to ``(batch, -1)`` (``[0, -1]``, ``[-1, n]``, ...): a flatten per sample."""
    shape = [int(v) for v in _constant(constants, node.input[1], where)]
    if len(shape) != 2 or not (shape[1] == -1 or shape[0] in (0, -1)):
        raise UnsupportedLayerError(
            f"{where} reshapes to {shape}; only a flatten per sample ([0, -1]) is read"
        )
    return nn.Flatten(), 2


def _batchnorm(node, attrs, constants, rank, where):
    scale, bias, mean, var = (_constant(constants, n, where) for n in node.input[1:5])
    cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    layer = cls(len(scale), eps=attrs.get("epsilon", 1e-5))
    with torch.no_grad():
        layer.weight.copy_(_tensor(scale))
        layer.bias.copy_(_tensor(bias))
        layer.running_mean.copy_(_tensor(mean))
        layer.running_var.copy_(_tensor(var))
    return layer, rank


_BUILDERS = {
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Conv": _conv,
    "Relu": lambda node, attrs, constants, rank, where: (nn.ReLU(), rank),
    "LeakyRelu": lambda node, attrs, constants, rank, where: (
        nn.LeakyReLU(attrs.get("alpha", 0.01)),
        rank,
    ),
    "Clip": _clip,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": lambda node, attrs, constants, rank, where: (nn.AdaptiveAvgPool2d(1), 4),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "BatchNormalization": _batchnorm,
}
"""Per ONNX operator of one tensor input, the module it becomes and the rank of its output."""


def write_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> None:
    """Export ``model`` (inputs of ``input_shape`` per sample, any batch size) to ``path`` with
    torch's exporter, opset :data:`OPSET`."""
    onnx_module()
    example = torch.zeros(1, *input_shape)
    model = copy.deepcopy(model).cpu().float().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
