"""Read a PyTorch module's forward as a chain of supported steps, with torch.fx.

A step is one Linear, Conv2d, BatchNorm, ReLU, pooling, flatten, dropout or identity, whether it
is a module or a function call. Anything else, or a forward that is not a chain, is refused with
the module path and type of the culprit.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from oamip.errors import UnsupportedLayerError

_MODULE_KINDS: list[tuple[type, str]] = [
    (nn.Linear, "linear"),
    (nn.Conv2d, "conv"),
    (nn.BatchNorm1d, "bn"),
    (nn.BatchNorm2d, "bn"),
    (nn.ReLU, "relu"),
    (nn.MaxPool2d, "maxpool"),
    (nn.AvgPool2d, "avgpool"),
    (nn.Flatten, "flatten"),
    (nn.Dropout, "dropout"),
    (nn.Dropout1d, "dropout"),
    (nn.Dropout2d, "dropout"),
    (nn.Identity, "identity"),
]
_FUNCTION_KINDS = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.flatten: "flatten",
    F.max_pool2d: "maxpool",
    F.avg_pool2d: "avgpool",
    F.dropout: "dropout",
}
_METHOD_KINDS = {"relu": "relu", "view": "flatten", "reshape": "flatten", "flatten": "flatten"}
_SHAPE_METHODS = {"size", "dim"}


@dataclass
class Step:
    """One step of the chain; ``module`` is the real module or an equivalent one for a call."""

    kind: str
    name: str
    module: nn.Module | None = None
    node: fx.Node | None = field(default=None, repr=False)


def read_chain(model: nn.Module) -> list[Step]:
    """The steps of ``model``'s forward, in order."""
    graph = _trace(model)
    modules = dict(model.named_modules())
    steps: list[Step] = []
    current = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise UnsupportedLayerError("the model's forward takes more than one input")
            current = node
            continue
        if _is_shape_query(node):
            continue
        if node.op == "output":
            _check_input(node, current, "the output")
            break
        _check_input(node, current, node.name)
        steps.append(_step(node, modules))
        current = node
    return [s for s in steps if s.kind != "identity"]


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return fx.symbolic_trace(model).graph
    except Exception as exc:
        raise UnsupportedLayerError(
            f"cannot read the forward of {type(model).__name__} with torch.fx ({exc}); "
            "write the model as an nn.Sequential or a plain chain of supported layers"
        ) from exc


def _is_shape_query(node: fx.Node) -> bool:
    """``x.size(...)``, ``x.shape`` and items of those: arguments of a reshape, not steps."""
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return node.args[1] == "shape"
    if node.target is operator.getitem:
        source = node.args[0]
        return isinstance(source, fx.Node) and _is_shape_query(source)
    return False


def _check_input(node: fx.Node, current: fx.Node | None, where: str) -> None:
    """Every step must consume the previous step's output, and nothing else that flows."""
    tensors = [a for a in node.all_input_nodes if not _is_shape_query(a)]
    if tensors != [current]:
        raise UnsupportedLayerError(
            f"the forward is not a chain of layers at '{where}' (it combines several tensors, "
            "e.g. a skip connection); only sequential networks are supported"
        )


def _step(node: fx.Node, modules: dict[str, nn.Module]) -> Step:
    if node.op == "call_module":
        module = modules[node.target]
        for cls, kind in _MODULE_KINDS:
            if type(module) is cls:
                return Step(kind, node.target, module, node)
        raise UnsupportedLayerError(
            f"layer '{node.target}' of type {type(module).__name__} is not supported; supported: "
            "Linear, Conv2d, BatchNorm1d/2d, ReLU, MaxPool2d, AvgPool2d, Flatten, Dropout, Identity"
        )
    if node.op == "call_function" and node.target in _FUNCTION_KINDS:
        kind = _FUNCTION_KINDS[node.target]
        return Step(kind, node.name, _module_for_call(kind, node), node)
    if node.op == "call_method" and node.target in _METHOD_KINDS:
        kind = _METHOD_KINDS[node.target]
        return Step(kind, node.name, _module_for_call(kind, node), node)
    what = getattr(node.target, "__name__", str(node.target))
    raise UnsupportedLayerError(
        f"operation '{what}' at '{node.name}' is not supported; supported activations and "
        "operations: ReLU, max/avg pooling, flatten/view/reshape, dropout"
    )


def _module_for_call(kind: str, node: fx.Node) -> nn.Module:
    """An equivalent module for a function call, so the chain can be rebuilt as modules."""
    args, kwargs = list(node.args[1:]), dict(node.kwargs)
    if kind == "relu":
        return nn.ReLU()
    if kind == "flatten":
        return nn.Flatten()
    if kind == "dropout":
        return nn.Dropout(kwargs.get("p", args[0] if args else 0.5))
    names = ["kernel_size", "stride", "padding"]
    params = dict(zip(names, args[: len(names)]))
    params.update({k: v for k, v in kwargs.items() if k in (*names, "ceil_mode")})
    return nn.MaxPool2d(**params) if kind == "maxpool" else nn.AvgPool2d(**params)


SCORED_PATTERNS = (
    ("relu",),
    ("bn", "relu"),
    ("dropout", "relu"),
    ("maxpool", "relu"),
    ("bn", "maxpool", "relu"),
)
"""What may follow a Linear or Conv2d for its units to be scored. A max pooling may come before
the ReLU: with the score term constant per channel, ``ReLU(maxpool(a) - c)`` equals
``maxpool(ReLU(a - c))``, so the unit is encoded as if the ReLU came first."""


def scored_steps(steps: list[Step]) -> dict[int, Step]:
    """For each ReLU that makes a Linear or Conv2d scored: its position -> that layer's step."""
    owners = {}
    for pos, step in enumerate(steps):
        if step.kind not in ("linear", "conv"):
            continue
        for pattern in SCORED_PATTERNS:
            after = tuple(s.kind for s in steps[pos + 1 : pos + 1 + len(pattern)])
            if after == pattern:
                owners[pos + len(pattern)] = step
                break
    return owners
