"""Extract a framework-free :class:`~oamip.network.Network` from a PyTorch module.

The model is never touched: a float64 CPU copy in eval mode is read (GPU, float16 and bfloat16
models work), BatchNorm layers are folded into the Linear or Conv2d they follow, and the module
names of the scored layers are kept so scores can be written back by name. A model in training
mode is read in eval mode too, with a warning when that changes what its BatchNorm or dropout
layers compute.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from oamip.adapters.chain import Step, Unit, chain_units, read_chain
from oamip.errors import InvalidInputError, UnsupportedLayerError
from oamip.network import AffineLayer, Conv, MaxPoolLayer, Network, max_pool_windows

_EVAL_MEANING = {  # what a layer left in training mode computes in eval mode
    "bn": "BatchNorm '{}' uses its running statistics",
    "dropout": "dropout '{}' drops nothing",
}


@dataclass
class ScoredUnit:
    """A scored layer of the torch model: its module, the BatchNorm that follows it (if any) and
    its index among the network's layers."""

    module: str
    batchnorm: str | None
    layer: int


@dataclass
class Extracted:
    """A network read from a torch model, with the way back to the model's modules."""

    network: Network
    units: dict[str, ScoredUnit]
    reference: nn.Module

    def scores_by_layer(self, scores: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
        return {u.layer: np.asarray(scores[name], dtype=float) for name, u in self.units.items()}

    def scores_by_name(self, scores: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.asarray(scores[u.layer]) for name, u in self.units.items()}


def reference_copy(model: nn.Module) -> nn.Module:
    """A float64 CPU copy in eval mode; the user's model is left exactly as it was."""
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise InvalidInputError(
            "the model has tensors on the meta device, which hold no values; load its "
            "weights (e.g. load_state_dict(..., assign=True)) before scoring it"
        )
    clone = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    return clone.eval()


def extract(model: nn.Module, x: np.ndarray) -> Extracted:
    """Read ``model`` (any device, any floating dtype) as a Network, checking weights and the
    input shape; always in eval mode (a ``UserWarning`` says so for a model in training mode
    whose BatchNorm or dropout layers would compute something else)."""
    ref = reference_copy(model)
    _check_finite(ref)
    steps = read_chain(ref)
    owners = {unit.relu: unit for unit in chain_units(steps)}
    shape = _sample_shape(x)
    network = Network(input_shape=shape)
    units: dict[str, ScoredUnit] = {}
    pending: AffineLayer | None = None
    for pos, step in enumerate(steps):
        prev = steps[pos - 1].kind if pos else None
        if step.kind in ("linear", "conv", "avgpool"):
            pending = _affine(step, shape)
            _check_units(pending)
            network.layers.append(pending)
            shape = pending.out_shape
        elif step.kind == "bn":
            _fold_batchnorm(step, prev, pending)
        elif step.kind == "relu":
            owner = _mark_relu(step, owners.get(pos), pending)
            index = next(i for i, layer in enumerate(network.layers) if layer is pending)
            units[owner.name] = ScoredUnit(owner.name, owner.batchnorm, index)
        elif step.kind == "maxpool":
            layer = _max_pool(step, shape, len(network.layers))
            network.layers.append(layer)
            shape = layer.out_shape
        elif step.kind == "flatten":
            shape = (int(np.prod(shape)),)
    _check_output(network)
    _warn_if_training(model, steps)
    return Extracted(network, units, ref)


def _warn_if_training(model: nn.Module, steps: list[Step]) -> None:
    """Warn that BatchNorm and dropout layers left in training mode are read in eval mode: with
    their running statistics and no dropout, the function the model computes after
    ``model.eval()``. A functional dropout follows the mode of the model itself."""
    modules = dict(model.named_modules())
    changed = [
        _EVAL_MEANING[step.kind].format(step.name)
        for step in steps
        if step.kind in _EVAL_MEANING and _mode_owner(step, modules, model).training
    ]
    if changed:
        warnings.warn(
            f"the model is in training mode but is scored in eval mode, as after model.eval() "
            f"({'; '.join(changed)}); call model.eval() first to silence this warning",
            UserWarning,
            stacklevel=3,
        )


def _mode_owner(step: Step, modules: dict[str, nn.Module], model: nn.Module) -> nn.Module:
    """The module whose ``training`` flag decides what ``step`` computes."""
    return modules.get(step.name, model) if step.node.op == "call_module" else model


def _sample_shape(x) -> tuple[int, ...]:
    shape = tuple(np.shape(x))
    if len(shape) < 2:
        raise InvalidInputError(
            f"x has shape {shape}: give a batch, samples along the first axis "
            "(x[None] for a single sample)"
        )
    return shape[1:]


def _check_units(layer: AffineLayer) -> None:
    if 0 in layer.out_shape:
        raise InvalidInputError(
            f"layer '{layer.name}' has output shape {layer.out_shape}, with no units; "
            "remove it from the model"
        )


def _check_finite(model: nn.Module) -> None:
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InvalidInputError(
                f"parameter '{name}' contains NaN or infinite values; fix or retrain the model"
            )


def _affine(step: Step, shape: tuple[int, ...]) -> AffineLayer:
    m = step.module
    if step.kind == "linear":
        if shape != (m.in_features,):
            raise InvalidInputError(
                f"layer '{step.name}' expects {m.in_features} inputs but receives shape {shape}"
            )
        bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_features)
        return AffineLayer(step.name, "linear", shape, (m.out_features,), _np(m.weight), bias)
    if len(shape) != 3:
        raise InvalidInputError(
            f"layer '{step.name}' needs (channels, height, width) inputs, got {shape}"
        )
    geometry = _geometry(step)
    out_h, out_w = geometry.out_size(shape[1], shape[2])
    if step.kind == "avgpool":
        k = geometry.kernel
        weight = np.full((shape[0], 1, *k), 1.0 / (k[0] * k[1]))
        return AffineLayer(
            step.name,
            "avgpool",
            shape,
            (shape[0], out_h, out_w),
            weight,
            np.zeros(shape[0]),
            geometry,
        )
    if m.in_channels != shape[0]:
        raise InvalidInputError(
            f"layer '{step.name}' expects {m.in_channels} channels but receives {shape[0]}"
        )
    bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_channels)
    out_shape = (m.out_channels, out_h, out_w)
    return AffineLayer(step.name, "conv", shape, out_shape, _np(m.weight), bias, geometry)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(int(v) for v in value)


def _geometry(step: Step) -> Conv:
    """Kernel, stride, padding, dilation of a Conv2d or pooling; refuses what we can't encode."""
    m = step.module
    if step.kind == "conv":
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedLayerError(
                f"layer '{step.name}' (Conv2d) uses groups, a padding mode or a string padding; "
                "only groups=1 with numeric zero padding is supported"
            )
        return Conv(_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), _pair(m.dilation))
    if m.ceil_mode:
        raise UnsupportedLayerError(f"layer '{step.name}' uses ceil_mode=True; use ceil_mode=False")
    stride = m.stride if m.stride is not None else m.kernel_size
    if step.kind == "avgpool":
        padding = _pair(m.padding)
        if m.divisor_override or (any(padding) and not m.count_include_pad):
            raise UnsupportedLayerError(
                f"layer '{step.name}' (AvgPool2d) uses divisor_override or excludes padding "
                "from the count; only the plain average is supported"
            )
        return Conv(_pair(m.kernel_size), _pair(stride), padding)
    return Conv(_pair(m.kernel_size), _pair(stride), _pair(m.padding), _pair(m.dilation))


def _fold_batchnorm(step: Step, prev: str | None, layer: AffineLayer | None) -> None:
    """``bn(Wh + b) = (g/sd) W h + (g/sd)(b - mean) + beta``, folded into the layer before."""
    bn = step.module
    if prev not in ("linear", "conv") or layer is None:
        raise UnsupportedLayerError(
            f"BatchNorm '{step.name}' must directly follow a Linear or Conv2d layer"
        )
    if bn.running_mean is None:
        raise UnsupportedLayerError(
            f"BatchNorm '{step.name}' has no running statistics (track_running_stats=False)"
        )
    scale = _np(bn.weight) if bn.weight is not None else np.ones(bn.num_features)
    shift = _np(bn.bias) if bn.bias is not None else np.zeros(bn.num_features)
    factor = scale / np.sqrt(_np(bn.running_var) + bn.eps)
    layer.weight = layer.weight * factor.reshape(-1, *([1] * (layer.weight.ndim - 1)))
    layer.bias = (layer.bias - _np(bn.running_mean)) * factor + shift


def _mark_relu(step: Step, owner: Unit | None, layer: AffineLayer | None) -> Unit:
    """Make ``layer`` scored, if this ReLU closes the scored pattern of its unit ``owner``."""
    if owner is None or layer is None or owner.name != layer.name:
        raise UnsupportedLayerError(
            f"ReLU '{step.name}' must follow a Linear or Conv2d layer (optionally with BatchNorm, "
            "dropout or a max pooling in between); a ReLU after average pooling, after another "
            "ReLU or at the start is not supported"
        )
    layer.relu = True
    return owner


def _max_pool(step: Step, shape, position: int) -> MaxPoolLayer:
    if len(shape) != 3:
        raise InvalidInputError(f"max pooling '{step.name}' needs (channels, height, width) inputs")
    geometry = _geometry(step)
    out_h, out_w = geometry.out_size(shape[1], shape[2])
    return MaxPoolLayer(
        step.name, shape, (shape[0], out_h, out_w), max_pool_windows(shape, geometry)
    )


def _check_output(network: Network) -> None:
    last = network.layers[-1] if network.layers else None
    if not isinstance(last, AffineLayer) or last.relu or last.kind == "avgpool":
        raise UnsupportedLayerError(
            "the network must end with a Linear (or Conv2d) layer that gives the logits, "
            "with no ReLU or pooling after it"
        )


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().to(torch.float64).numpy().copy()
