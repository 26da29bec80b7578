"""Read a PyTorch module's forward as a chain of supported steps, with torch.fx.

A step is one Linear, Conv2d, BatchNorm, activation, pooling, flatten, dropout or identity, whether
it is a module or a function call. Anything else, or a forward that is not a chain, is refused with
the module path and type of the culprit. An activation is any elementwise one of ACTIVATION_ARGS
(or a registered piecewise-linear one, :mod:`oamip.activations`) that maps 0 to 0, so that a unit
whose weights are zeroed outputs 0; OAMIP encodes only the piecewise-linear ones, SPR and the
baseline criteria take them all.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from oamip import activations
from oamip.errors import UnsupportedLayerError

_MODULE_KINDS: list[tuple[type, str]] = [
    (nn.Linear, "linear"),
    (nn.Conv2d, "conv"),
    (nn.BatchNorm1d, "bn"),
    (nn.BatchNorm2d, "bn"),
    (nn.MaxPool2d, "maxpool"),
    (nn.AvgPool2d, "avgpool"),
    (nn.AdaptiveMaxPool2d, "maxpool"),
    (nn.AdaptiveAvgPool2d, "avgpool"),
    (nn.Flatten, "flatten"),
    (nn.Dropout, "dropout"),
    (nn.Dropout1d, "dropout"),
    (nn.Dropout2d, "dropout"),
    (nn.Identity, "identity"),
]
ACTIVATION_ARGS: dict[type, tuple[str, ...]] = {
    nn.ReLU: (),
    nn.ReLU6: (),
    nn.Hardtanh: ("min_val", "max_val"),
    nn.LeakyReLU: ("negative_slope",),
    nn.GELU: ("approximate",),
    nn.Tanh: (),
    nn.SiLU: (),
    nn.ELU: ("alpha",),
    nn.CELU: ("alpha",),
    nn.SELU: (),
    nn.Mish: (),
    nn.Hardswish: (),
    nn.Softsign: (),
    nn.Softshrink: ("lambd",),
    nn.Tanhshrink: (),
    nn.Sigmoid: (),
    nn.Softplus: ("beta", "threshold"),
    nn.Hardsigmoid: (),
}
"""Elementwise activation modules read as steps, with the arguments that rebuild them (Sigmoid,
Softplus and Hardsigmoid are read to be refused by name: they do not map 0 to 0)."""
_ACTIVATION_CALLS = {
    F.relu: nn.ReLU,
    torch.relu: nn.ReLU,
    F.relu6: nn.ReLU6,
    F.hardtanh: nn.Hardtanh,
    F.leaky_relu: nn.LeakyReLU,
    F.gelu: nn.GELU,
    F.tanh: nn.Tanh,
    torch.tanh: nn.Tanh,
    F.silu: nn.SiLU,
    F.elu: nn.ELU,
    F.mish: nn.Mish,
    F.hardswish: nn.Hardswish,
    F.sigmoid: nn.Sigmoid,
    torch.sigmoid: nn.Sigmoid,
}
"""Activation calls and the module each equals (the call's arguments after the input are the
module's, in the same order)."""
_ACTIVATION_METHODS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
_FUNCTION_KINDS = {
    **dict.fromkeys(_ACTIVATION_CALLS, "activation"),
    torch.flatten: "flatten",
    F.max_pool2d: "maxpool",
    F.avg_pool2d: "avgpool",
    F.adaptive_max_pool2d: "maxpool",
    F.adaptive_avg_pool2d: "avgpool",
    F.dropout: "dropout",
}
_ADAPTIVE_POOLS: dict[type, type] = {
    nn.AdaptiveMaxPool2d: nn.MaxPool2d,
    nn.AdaptiveAvgPool2d: nn.AvgPool2d,
}
"""Each adaptive pooling and the fixed pooling it equals when its output size divides its input
size (:func:`fixed_pool`)."""
_ADAPTIVE_CALLS = {
    F.adaptive_max_pool2d: nn.AdaptiveMaxPool2d,
    F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
}
_METHOD_KINDS = {
    **dict.fromkeys(_ACTIVATION_METHODS, "activation"),
    "view": "flatten",
    "reshape": "flatten",
    "flatten": "flatten",
}
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")
_SHAPE_METHODS = {"size", "dim"}
GRAPH_CACHE_SIZE = 64
"""How many traced architectures :func:`trace_graph` keeps (least recently used goes first)."""
_GRAPHS: OrderedDict[tuple, fx.Graph] = OrderedDict()
_GRAPHS_LOCK = threading.Lock()


@dataclass
class Step:
    """One step of the chain; ``module`` is the real module or an equivalent one for a call."""

    kind: str
    name: str
    module: nn.Module | None = None
    node: fx.Node | None = field(default=None, repr=False)


def read_chain(model: nn.Module) -> list[Step]:
    """The steps of ``model``'s forward, in order."""
    graph = trace_graph(model)
    modules = dict(model.named_modules())
    steps: list[Step] = []
    current = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise UnsupportedLayerError("the model's forward takes more than one input")
            current = node
            continue
        if is_shape_query(node):
            continue
        if node.op == "output":
            _check_input(node, current, "the output")
            break
        _check_input(node, current, node.name)
        steps.append(step_of(node, modules))
        current = node
    return [s for s in steps if s.kind != "identity"]


def is_addition(node: fx.Node) -> bool:
    """Whether ``node`` adds tensors (``x + y``, ``torch.add``, ``x.add(y)``): the one operation
    of residual networks (:mod:`oamip.adapters.residual`) that a chain does not have."""
    if node.op == "call_function":
        return node.target in _ADD_FUNCTIONS
    return node.op == "call_method" and node.target in _ADD_METHODS


def has_additions(model: nn.Module) -> bool:
    """Whether ``model``'s forward adds tensors (a residual network) rather than being a chain."""
    return any(is_addition(node) for node in trace_graph(model).nodes)


def trace_graph(model: nn.Module) -> fx.Graph:
    """``model``'s forward as an fx graph, traced once per architecture.

    A graph names modules rather than holding them, so it is the graph of every model with the
    same classes, module tree and plain attributes (:func:`architecture_key`): copies of a model
    reuse it. The graph returned is shared; callers read it and never change it."""
    key = architecture_key(model)
    with _GRAPHS_LOCK:
        graph = None if key is None else _GRAPHS.get(key)
        if graph is not None:
            _GRAPHS.move_to_end(key)
            return graph
    graph = _trace(model)
    if key is not None:
        with _GRAPHS_LOCK:
            _GRAPHS[key] = graph
            while len(_GRAPHS) > GRAPH_CACHE_SIZE:
                _GRAPHS.popitem(last=False)
    return graph


def architecture_key(model: nn.Module) -> tuple | None:
    """What a traced forward depends on: every module's name, class and plain attributes
    (sizes, strides, flags such as ``training``). None, so that nothing is shared, when a module
    carries an attribute the key cannot compare (a ``forward`` replaced on the instance)."""
    parts = []
    for name, module in model.named_modules():
        attrs = vars(module)
        if "forward" in attrs:
            return None
        plain = tuple(
            sorted((k, v) for k, v in attrs.items() if not k.startswith("_") and _plain(v))
        )
        parts.append((name, type(module), plain))
    return tuple(parts)


def _plain(value) -> bool:
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return fx.symbolic_trace(model).graph
    except Exception as exc:
        raise UnsupportedLayerError(
            f"cannot read the forward of {type(model).__name__} with torch.fx ({exc}); "
            "write the model as an nn.Sequential or a plain chain of supported layers"
        ) from exc


def is_shape_query(node: fx.Node) -> bool:
    """``x.size(...)``, ``x.shape`` and items of those: arguments of a reshape, not steps."""
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return node.args[1] == "shape"
    if node.target is operator.getitem:
        source = node.args[0]
        return isinstance(source, fx.Node) and is_shape_query(source)
    return False


def _check_input(node: fx.Node, current: fx.Node | None, where: str) -> None:
    """Every step must consume the previous step's output, and nothing else that flows."""
    tensors = [a for a in node.all_input_nodes if not is_shape_query(a)]
    if tensors != [current]:
        raise UnsupportedLayerError(
            f"the forward is not a chain of layers at '{where}' (it combines several tensors, "
            "e.g. a skip connection); only sequential networks are read as chains (residual "
            "networks are read by oamip.adapters.residual.residual_units)"
        )


def step_of(node: fx.Node, modules: dict[str, nn.Module]) -> Step:
    if node.op == "call_module":
        module = modules[node.target]
        if is_activation(module):
            return _activation_step(Step("activation", node.target, module, node))
        for cls, kind in _MODULE_KINDS:
            if type(module) is cls:
                return Step(kind, node.target, module, node)
        raise UnsupportedLayerError(
            f"layer '{node.target}' of type {type(module).__name__} is not supported; supported: "
            "Linear, Conv2d, BatchNorm1d/2d, elementwise activations (ReLU, LeakyReLU, GELU, "
            "Tanh, ...), MaxPool2d, AvgPool2d, AdaptiveMaxPool2d, AdaptiveAvgPool2d, Flatten, "
            "Dropout, Identity"
        )
    if node.op == "call_function" and node.target in _FUNCTION_KINDS:
        kind = _FUNCTION_KINDS[node.target]
        return _activation_step(Step(kind, node.name, _module_for_call(kind, node), node))
    if node.op == "call_method" and node.target in _METHOD_KINDS:
        kind = _METHOD_KINDS[node.target]
        return _activation_step(Step(kind, node.name, _module_for_call(kind, node), node))
    what = getattr(node.target, "__name__", str(node.target))
    raise UnsupportedLayerError(
        f"operation '{what}' at '{node.name}' is not supported; supported activations and "
        "operations: elementwise activations (relu, leaky_relu, gelu, tanh, ...), max/avg "
        "pooling (fixed or adaptive), flatten/view/reshape, dropout"
    )


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is an elementwise activation a step may be (ACTIVATION_ARGS, or a
    registered piecewise-linear activation's module)."""
    return type(module) in ACTIVATION_ARGS or type(module).__name__ in activations.ACTIVATIONS


def _activation_step(step: Step) -> Step:
    """``step``, refused if it is an activation that does not map 0 to 0 (a unit whose weights
    are zeroed would not output 0, so masks and removal would change the network)."""
    if step.kind != "activation":
        return step
    with torch.no_grad():
        zero = float(step.module(torch.zeros(1)).abs().max())
    if zero != 0.0:
        raise UnsupportedLayerError(
            f"activation '{step.name}' ({type(step.module).__name__}) maps 0 to {zero:g}, so a "
            "pruned unit would not output 0; use an activation with f(0) = 0 (ReLU, LeakyReLU, "
            "GELU, Tanh, ...)"
        )
    return step


def _module_for_call(kind: str, node: fx.Node) -> nn.Module:
    """An equivalent module for a function call, so the chain can be rebuilt as modules."""
    args, kwargs = list(node.args[1:]), dict(node.kwargs)
    if node.target in _ADAPTIVE_CALLS:
        return _ADAPTIVE_CALLS[node.target](kwargs.get("output_size", args[0] if args else None))
    if node.target in _ACTIVATION_CALLS:
        return _ACTIVATION_CALLS[node.target](*args, **kwargs)
    if kind == "activation":
        return _ACTIVATION_METHODS[node.target]()
    if kind == "flatten":
        return nn.Flatten()
    if kind == "dropout":
        return nn.Dropout(kwargs.get("p", args[0] if args else 0.5))
    names = ["kernel_size", "stride", "padding"]
    params = dict(zip(names, args[: len(names)]))
    params.update({k: v for k, v in kwargs.items() if k in (*names, "ceil_mode")})
    return nn.MaxPool2d(**params) if kind == "maxpool" else nn.AvgPool2d(**params)


def fixed_pool(step: Step, shape: tuple[int, ...]) -> nn.Module:
    """The pooling module of ``step`` for inputs of ``shape`` (channels, height, width): an
    adaptive pooling becomes the fixed pooling it equals (kernel = stride = input / output
    size), which exists exactly when the output size divides the input size; any other pooling
    is returned as it is."""
    module = step.module
    fixed = _ADAPTIVE_POOLS.get(type(module))
    if fixed is None:
        return module
    size = module.output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    inputs = tuple(int(v) for v in shape[-2:])
    outputs = tuple(i if o is None else int(o) for i, o in zip(inputs, size))
    if any(o <= 0 or i % o for i, o in zip(inputs, outputs)):
        raise UnsupportedLayerError(
            f"layer '{step.name}' ({type(module).__name__}) pools {inputs[0]}x{inputs[1]} inputs "
            f"to {outputs[0]}x{outputs[1]}; the output size must divide the input size (then it "
            "is a fixed pooling, encoded exactly)"
        )
    kernel = tuple(i // o for i, o in zip(inputs, outputs))
    return fixed(kernel_size=kernel, stride=kernel)


SCORED_PATTERNS = (
    ("activation",),
    ("bn", "activation"),
    ("dropout", "activation"),
    ("maxpool", "activation"),
    ("bn", "maxpool", "activation"),
)
"""What may follow a Linear or Conv2d for its units to be scored. A max pooling may come before
the activation: the activations OAMIP encodes are non-decreasing and the score term is constant
per channel, so ``ReLU(maxpool(a) - c)`` equals ``maxpool(ReLU(a - c))`` (and likewise for the
others), and the unit is encoded as if the activation came first."""


@dataclass(eq=False)
class Unit:
    """A scored layer: a Linear or Conv2d whose outputs reach an activation by one of
    SCORED_PATTERNS.

    Its units (neurons, output channels) are what every criterion scores and every mask prunes.
    ``batchnorm`` is the BatchNorm directly after the layer, if any: it acts on the same units,
    so pruning a unit zeroes its scale and shift too. ``position`` and ``activation`` are the
    places of the layer and of its activation in the chain the unit was read from.
    """

    name: str
    module: nn.Linear | nn.Conv2d
    batchnorm: str | None
    batchnorm_module: nn.BatchNorm1d | nn.BatchNorm2d | None
    position: int
    activation: int

    @property
    def size(self) -> int:
        """The number of units (output features or channels)."""
        return self.module.weight.shape[0]

    def row_parameters(self) -> list[nn.Parameter]:
        """The parameters with one row per unit: the layer's weight and bias, then the scale and
        shift of its BatchNorm (each where present). Zeroing a unit's rows silences it."""
        params = [self.module.weight, self.module.bias]
        if self.batchnorm_module is not None:
            params += [self.batchnorm_module.weight, self.batchnorm_module.bias]
        return [p for p in params if p is not None]


def units(model: nn.Module) -> list[Unit]:
    """The scored layers of ``model``, in forward order: the one definition of units.

    The output layer is never one (no activation follows it), whatever order ``__init__``
    declares the modules in. Refuses, like :func:`read_chain`, a forward that is not a
    supported chain.
    """
    return chain_units(read_chain(model))


def chain_units(steps: list[Step]) -> list[Unit]:
    """The scored layers of a chain read by :func:`read_chain`, in order."""
    found: list[Unit] = []
    for pos, step in enumerate(steps):
        pattern = _scored_pattern(steps, pos)
        if pattern is None:
            continue
        norm = steps[pos + 1] if pattern[0] == "bn" else None
        found.append(
            Unit(
                step.name,
                step.module,
                norm.name if norm else None,
                norm.module if norm else None,
                pos,
                pos + len(pattern),
            )
        )
    _check_used_once(found, steps)
    return found


def _scored_pattern(steps: list[Step], pos: int) -> tuple[str, ...] | None:
    """The pattern of SCORED_PATTERNS that follows the Linear or Conv2d at ``pos``, if any."""
    if steps[pos].kind not in ("linear", "conv"):
        return None
    for pattern in SCORED_PATTERNS:
        if tuple(s.kind for s in steps[pos + 1 : pos + 1 + len(pattern)]) == pattern:
            return pattern
    return None


def _check_used_once(found: list[Unit], steps: list[Step]) -> None:
    """A unit is named by its module, so that module must appear once in the forward."""
    for unit in found:
        uses = sum(1 for step in steps if step.name == unit.name)
        if uses > 1:
            raise UnsupportedLayerError(
                f"layer '{unit.name}' is applied {uses} times in the forward; a scored layer "
                "must be applied once (give each use a module of its own)"
            )
