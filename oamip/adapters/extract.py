"""Extract a framework-free :class:`~oamip.network.Network` from a PyTorch module.

The model is never touched: a float64 CPU copy in eval mode is read (GPU, float16 and bfloat16
models work), BatchNorm layers are folded into the Linear or Conv2d they follow, and the module
names of the scored layers are kept so scores can be written back by name. A model in training
mode is read in eval mode too, with a warning when that changes what its BatchNorm or dropout
layers compute. A residual network (a graph with additions) is read into a chain with
:class:`~oamip.network.ResidualLayer` additions, its units as :func:`residual_units` defines them
(docs/mathematics.md §4.10).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn

from oamip.activations import activation_of
from oamip.adapters.chain import (
    Step,
    Unit,
    chain_units,
    fixed_pool,
    is_addition,
    is_shape_query,
    read_chain,
    step_of,
    trace_graph,
)
from oamip.adapters.residual import residual_units
from oamip.errors import InvalidInputError, UnsupportedLayerError
from oamip.network import (
    AffineLayer,
    Conv,
    MaxPoolLayer,
    Network,
    ResidualLayer,
    max_pool_windows,
)
from oamip.solve.options import RESIDUAL_SCORES

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
    """A network read from a torch model, with the way back to the model's modules.

    ``relus`` names the activation step after each layer that has one. A coupled group's unit has no
    single module: its ``module`` is the group's name, ``layer`` its first layer, and
    ``targets`` lists where its score acts (see :meth:`shift_targets`)."""

    network: Network
    units: dict[str, ScoredUnit]
    reference: nn.Module
    relus: dict[int, str] = field(default_factory=dict)
    targets: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def shift_targets(self, name: str) -> list[tuple[int, str]]:
        """Where unit ``name``'s score term enters the reference model: per ReLU its score acts
        on, the network layer of that ReLU and the module whose output is the ReLU's argument
        (a residual block's: its main branch's, the term ``(1 - s) M`` being additive)."""
        if name in self.targets:
            return self.targets[name]
        unit = self.units[name]
        return [(unit.layer, unit.batchnorm or unit.module)]

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


def extract(model: nn.Module, x: np.ndarray, residual: str = "both") -> Extracted:
    """Read ``model`` (any device, any floating dtype) as a Network, checking weights and the
    input shape; always in eval mode (a ``UserWarning`` says so for a model in training mode
    whose BatchNorm or dropout layers would compute something else). ``residual`` says which
    units of a residual network are scored (one of RESIDUAL_SCORES; chains ignore it)."""
    ref = reference_copy(model)
    _check_finite(ref)
    if residual not in RESIDUAL_SCORES:
        raise InvalidInputError(
            f"residual must be one of {', '.join(RESIDUAL_SCORES)}, got {residual!r}"
        )
    graph = trace_graph(ref)
    if any(is_addition(node) for node in graph.nodes):
        return _extract_residual(model, ref, graph, _sample_shape(x), residual)
    steps = read_chain(ref)
    owners = {unit.activation: unit for unit in chain_units(steps)}
    shape = _sample_shape(x)
    network = Network(input_shape=shape)
    units: dict[str, ScoredUnit] = {}
    relus: dict[int, str] = {}
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
        elif step.kind == "activation":
            owner = _mark_activation(step, owners.get(pos), pending)
            index = next(i for i, layer in enumerate(network.layers) if layer is pending)
            units[owner.name] = ScoredUnit(owner.name, owner.batchnorm, index)
            relus[index] = step.name
        elif step.kind == "maxpool":
            layer = _max_pool(step, shape, len(network.layers))
            network.layers.append(layer)
            shape = layer.out_shape
        elif step.kind == "flatten":
            shape = (int(np.prod(shape)),)
    _check_output(network)
    _warn_if_training(model, steps)
    return Extracted(network, units, ref, relus)


@dataclass
class _Pending:
    """An affine or residual layer read from the graph but not yet placed in the network: a
    BatchNorm may still fold into it, a ReLU follow it or an addition take it in. ``reads`` is
    the index of the layer its (main) input comes from (-1: the network's input)."""

    layer: AffineLayer | ResidualLayer
    reads: int


@dataclass
class _Value:
    """What a graph node holds: a placed layer's output (an index, -1 for the input) or a pending
    layer, and its shape per sample."""

    ref: int | _Pending
    shape: tuple[int, ...]


class _ResidualReader:
    """Walks the fx graph of a residual network in order, placing each layer when something
    reads its output, so that a residual layer's main branch is the layer placed just before
    it (the network stays a chain whose residual layers also read one earlier output)."""

    def __init__(self, ref: nn.Module, shape: tuple[int, ...]) -> None:
        self.modules = dict(ref.named_modules())
        self.network = Network(input_shape=shape)
        self.relus: dict[int, str] = {}
        self.steps: list[Step] = []
        self.values: dict[fx.Node, _Value] = {}
        self.tails: dict[str, str] = {}
        """Per Linear/Conv2d, the last module applied to its output (its BatchNorm, if any)."""

    def tail(self, layer: AffineLayer | ResidualLayer) -> str:
        """The module whose output is ``layer``'s value (a residual layer's main branch's)."""
        name = layer.main.name if isinstance(layer, ResidualLayer) else layer.name
        return self.tails.get(name, name)

    def read(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            if is_shape_query(node):
                continue
            if node.op == "placeholder":
                self.values[node] = _Value(-1, self.network.input_shape)
            elif node.op == "output":
                self._place(self._input(node))
            elif is_addition(node):
                self.values[node] = self._add(node)
            else:
                step = step_of(node, self.modules)
                self.steps.append(step)
                self.values[node] = self._step(step, self._input(node))

    def _input(self, node: fx.Node) -> _Value:
        tensors = [a for a in node.all_input_nodes if not is_shape_query(a)]
        return self.values[tensors[0]]

    def _step(self, step: Step, value: _Value) -> _Value:
        if step.kind in ("linear", "conv", "avgpool"):
            reads = self._place(value)
            layer = _affine(step, value.shape)
            _check_units(layer)
            return _Value(_Pending(layer, reads), layer.out_shape)
        if step.kind == "bn":
            layer = value.ref.layer if isinstance(value.ref, _Pending) else None
            plain = isinstance(layer, AffineLayer) and layer.activation is None
            prev = layer.kind if plain else None
            _fold_batchnorm(step, prev, layer)
            self.tails[layer.name] = step.name
            return value
        if step.kind == "activation":
            return _Value(self._place(value, step), value.shape)
        if step.kind == "maxpool":
            self._place(value)
            layer = _max_pool(step, value.shape, len(self.network.layers))
            self.network.layers.append(layer)
            return _Value(len(self.network.layers) - 1, layer.out_shape)
        if step.kind == "flatten":
            return _Value(value.ref, (int(np.prod(value.shape)),))
        return value

    def _add(self, node: fx.Node) -> _Value:
        """``main + shortcut``: the pending layer read later is the block's main branch; the
        other is a pending affine shortcut or an earlier layer's output (the identity)."""
        first, second = (self.values[a] for a in node.all_input_nodes)
        pending = [v.ref for v in (first, second) if isinstance(v.ref, _Pending)]
        plain = all(
            isinstance(p.layer, AffineLayer) and p.layer.activation is None for p in pending
        )
        if not pending or not plain:
            raise UnsupportedLayerError(
                f"the forward is not a chain of residual blocks at addition '{node.name}': it "
                "must add the output of a Linear or Conv2d (optionally with BatchNorm) to a "
                "shortcut (an earlier output, or a 1x1 Conv2d with BatchNorm)"
            )
        main = max(pending, key=lambda p: p.reads)
        other = second if main is first.ref else first
        if isinstance(other.ref, _Pending):
            shortcut, source = other.ref.layer, other.ref.reads
        else:
            shortcut, source = None, other.ref
        if source < 0:
            raise UnsupportedLayerError(
                f"addition '{node.name}' adds the network's input; put a layer before the "
                "first residual block"
            )
        layer = ResidualLayer(main.layer.name, main.layer, shortcut, source)
        return _Value(_Pending(layer, main.reads), first.shape)

    def _place(self, value: _Value, activation: Step | None = None) -> int:
        """Put a pending layer into the network (with its activation) and return its index."""
        if not isinstance(value.ref, _Pending):
            if activation is not None:
                raise UnsupportedLayerError(
                    f"activation '{activation.name}' must follow a Linear, a Conv2d (optionally "
                    "with BatchNorm) or a residual addition"
                )
            return value.ref
        pending = value.ref
        last = len(self.network.layers) - 1
        if pending.reads != last:
            raise UnsupportedLayerError(
                f"layer '{pending.layer.name}' reads the output of layer {pending.reads} while "
                f"layer {last} was the last one computed; apart from residual shortcuts the "
                "forward must be a chain"
            )
        if activation is not None:
            pending.layer.activation = _residual_activation(activation, pending.layer)
            self.relus[last + 1] = activation.name
        self.network.layers.append(pending.layer)
        value.ref = last + 1
        return last + 1


def _extract_residual(
    model: nn.Module, ref: nn.Module, graph: fx.Graph, shape: tuple[int, ...], residual: str
) -> Extracted:
    """Read a residual network; score its units of kind ``residual`` (docs/mathematics.md
    §4.10): an inner unit's ReLU, or every ReLU of a coupled group, sharing one score vector."""
    found = residual_units(ref)
    reader = _ResidualReader(ref, shape)
    reader.read(graph)
    network = reader.network
    _check_output(network)
    for i in reader.relus:
        network.layers[i].scored = False
    units, targets = {}, {}
    for unit in found:
        if residual not in ("both", unit.kind):
            continue
        sites = _unit_sites(network, unit)
        for i in sites:
            network.layers[i].scored = True
            network.layers[i].share = sites[0] if i != sites[0] else None
        bn = unit.batchnorms[0] if unit.kind == "inner" and unit.batchnorms else None
        units[unit.name] = ScoredUnit(unit.name, bn, sites[0])
        targets[unit.name] = [(i, reader.tail(network.layers[i])) for i in sites]
    _warn_if_training(model, reader.steps)
    return Extracted(network, units, ref, reader.relus, targets)


def _unit_sites(network: Network, unit) -> list[int]:
    """The layers whose ReLU outputs ``unit``'s channels; every producer and addition of the
    unit must reach one, or the unit cannot be scored exactly."""
    sites, covered, additions = [], set(), 0
    for i, layer in enumerate(network.layers):
        if isinstance(layer, MaxPoolLayer) or layer.activation is None:
            continue
        parts = [layer] if isinstance(layer, AffineLayer) else [layer.main, layer.shortcut]
        names = {p.name for p in parts if p is not None}
        if names & set(unit.producers):
            sites.append(i)
            covered |= names
            additions += isinstance(layer, ResidualLayer)
    if not sites or covered != set(unit.producers) or additions != len(unit.additions):
        raise UnsupportedLayerError(
            f"unit '{unit.name}' ({unit.kind}): its channels must pass a ReLU right after each "
            f"producer {list(unit.producers)} (after the addition for a residual block) to be "
            "scored; other layouts (e.g. pre-activation blocks) are not supported"
        )
    return sites


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
    geometry = _geometry(step, shape)
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


def _geometry(step: Step, shape: tuple[int, ...]) -> Conv:
    """Kernel, stride, padding, dilation of a Conv2d or pooling (an adaptive one as the fixed
    pooling it equals on inputs of ``shape``); refuses what we can't encode."""
    m = step.module
    if step.kind == "conv":
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedLayerError(
                f"layer '{step.name}' (Conv2d) uses groups, a padding mode or a string padding; "
                "only groups=1 with numeric zero padding is supported"
            )
        return Conv(_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), _pair(m.dilation))
    m = fixed_pool(step, shape)
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


def _mark_activation(step: Step, owner: Unit | None, layer: AffineLayer | None) -> Unit:
    """Make ``layer`` scored, if this activation closes the scored pattern of its unit
    ``owner``."""
    if owner is None or layer is None or owner.name != layer.name:
        raise UnsupportedLayerError(
            f"activation '{step.name}' must follow a Linear or Conv2d layer (optionally with "
            "BatchNorm, dropout or a max pooling in between); an activation after average "
            "pooling, after another activation or at the start is not supported"
        )
    layer.activation = activation_of(step.module, step.name)
    return owner


def _residual_activation(step: Step, layer: AffineLayer | ResidualLayer):
    """The activation of ``step``; after an addition only one that is 0 below 0: the score term
    then acts on the block's main branch alone (:meth:`Extracted.shift_targets`), which a
    two-sided activation's soft threshold does not allow."""
    activation = activation_of(step.module, step.name)
    if isinstance(layer, ResidualLayer) and activation.two_sided:
        raise UnsupportedLayerError(
            f"activation '{step.name}' ({type(step.module).__name__}) follows the residual "
            f"addition of '{layer.name}'; after an addition only activations that are 0 below 0 "
            "(ReLU, ReLU6, Hardtanh(0, t)) are encoded"
        )
    return activation


def _max_pool(step: Step, shape, position: int) -> MaxPoolLayer:
    if len(shape) != 3:
        raise InvalidInputError(f"max pooling '{step.name}' needs (channels, height, width) inputs")
    geometry = _geometry(step, shape)
    out_h, out_w = geometry.out_size(shape[1], shape[2])
    return MaxPoolLayer(
        step.name, shape, (shape[0], out_h, out_w), max_pool_windows(shape, geometry)
    )


def _check_output(network: Network) -> None:
    last = network.layers[-1] if network.layers else None
    if not isinstance(last, AffineLayer) or last.activation is not None or last.kind == "avgpool":
        raise UnsupportedLayerError(
            "the network must end with a Linear (or Conv2d) layer that gives the logits, "
            "with no activation or pooling after it"
        )


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().to(torch.float64).numpy().copy()
