"""Units of residual networks, read from the forward with torch.fx, and masks for them.

A residual network is a graph of the layers a chain may hold (:mod:`oamip.adapters.chain`) plus
additions of two tensors (``x + y``, ``torch.add``, ``x.add(y)``). Its channels fall into
*channel sets*: a Linear or Conv2d starts one with its outputs; BatchNorm, activations, pooling,
dropout, flatten and identity carry it on unchanged; an addition ties the sets of its two inputs
into one, since its channel ``c`` is the sum of both inputs' channels ``c``. A channel set that some
Linear or Conv2d reads, and that is neither the model's input nor its output, is a *unit* of
:func:`residual_units`, the one definition of units for residual graphs (``chain.units`` stays
the definition for chains and refuses additions):

- ``"inner"``: a set no addition touches, made by one layer (in a ResNet BasicBlock, the output
  channels of ``conv1``, which go through BatchNorm and ReLU into ``conv2`` only);
- ``"group"``: a *coupled group*, the channels tied by additions. In a ResNet every block of a
  stage adds into the same channels, so the group holds each block's ``conv2`` and ``bn2``, the
  projection shortcut's convolution and BatchNorm, or, in a stage with identity shortcuts, the
  layer before the stage (the stem); its consumers are every block's ``conv1`` and the layers
  that read the stage's output.

Zeroing channel ``c`` in every producer (weights, bias) and every BatchNorm (scale, shift) of a
unit makes channel ``c`` exactly 0 everywhere in the set, additions included, which is what
:func:`oamip.adapters.masks.apply_masks` does and what physical removal relies on.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field

from torch import fx, nn

from oamip.adapters.chain import (
    is_addition,
    is_shape_query,
    step_of,
    trace_graph,
)
from oamip.errors import InvalidInputError, UnsupportedLayerError

UNIT_KINDS = ("inner", "group")
OP_KINDS = ("layer", "add")
_CARRY_KINDS = ("activation", "maxpool", "avgpool", "flatten", "dropout", "identity")


@dataclass(frozen=True)
class ResidualUnit:
    """One unit of a residual graph: a set of ``size`` channels pruned together.

    ``name`` is its first producer's module name. ``producers`` are the Linear/Conv2d modules
    whose output channels are the unit's channels, ``batchnorms`` the BatchNorms acting on them,
    ``consumers`` the Linear/Conv2d modules whose input channels they are (a Linear after a
    flatten reads each channel as a block of consecutive features), and ``additions`` the fx
    nodes of the additions that tie them (none for an ``"inner"`` unit). Names are in forward
    order.
    """

    name: str
    kind: str
    producers: tuple[str, ...]
    batchnorms: tuple[str, ...]
    consumers: tuple[str, ...]
    size: int
    additions: tuple[str, ...] = ()

    def row_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters of ``model`` with one row per channel of this unit: each producer's
        weight and bias, each BatchNorm's scale and shift (where present). Zeroing row ``c`` of
        all of them makes channel ``c`` output exactly 0."""
        modules = dict(model.named_modules())
        params = []
        for name in (*self.producers, *self.batchnorms):
            params += [modules[name].weight, modules[name].bias]
        return [p for p in params if p is not None]


@dataclass
class _ChannelSet:
    """What the graph walk learns about one channel set before sets are merged."""

    producers: list[str] = field(default_factory=list)
    batchnorms: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    additions: list[str] = field(default_factory=list)
    is_input: bool = False
    is_output: bool = False


def residual_units(model: nn.Module) -> list[ResidualUnit]:
    """The units of ``model``'s forward graph, ordered by their first producer's place in the
    forward (see the module docstring). Refuses, naming the culprit, any operation other than
    the supported layers and two-tensor additions, a forward with several inputs, and a layer
    whose channels a unit owns but which is applied more than once."""
    return _Walk(model).units()


class _Walk:
    """One pass over the fx graph that merges channel sets at additions (union-find)."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.parent: list[int] = []
        self.sets: list[_ChannelSet] = []
        self.of: dict[fx.Node, int] = {}
        self.uses: dict[str, int] = {}
        for node in trace_graph(model).nodes:
            self._visit(node)

    def _new(self, **flags: bool) -> int:
        self.parent.append(len(self.parent))
        self.sets.append(_ChannelSet(**flags))
        return len(self.parent) - 1

    def _root(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def _visit(self, node: fx.Node) -> None:
        if is_shape_query(node):
            return
        if node.op == "placeholder":
            if any(s.is_input for s in self.sets):
                raise UnsupportedLayerError("the model's forward takes more than one input")
            self.of[node] = self._new(is_input=True)
        elif node.op == "output":
            self.sets[self._root(self.of[_one_input(node, "the output")])].is_output = True
        elif is_addition(node):
            self._add(node)
        else:
            self._layer(node)

    def _add(self, node: fx.Node) -> None:
        inputs = _tensor_inputs(node)
        if len(inputs) != 2 or len(node.args) != 2 or node.kwargs:
            raise UnsupportedLayerError(
                f"addition '{node.name}' must add exactly two tensors (no alpha, no constants); "
                "write it as x + y"
            )
        first, second = (self._root(self.of[n]) for n in inputs)
        if first != second:
            self.parent[second] = first
            merged = self.sets[second]
            target = self.sets[first]
            for attr in ("producers", "batchnorms", "consumers", "additions"):
                getattr(target, attr).extend(getattr(merged, attr))
            target.is_input |= merged.is_input
            target.is_output |= merged.is_output
        self.sets[first].additions.append(node.name)
        self.of[node] = first

    def _layer(self, node: fx.Node) -> None:
        step = step_of(node, self.modules)
        source = self._root(self.of[_one_input(node, node.name)])
        if step.kind in ("linear", "conv"):
            self.sets[source].consumers.append(step.name)
            self.uses[step.name] = self.uses.get(step.name, 0) + 1
            self.of[node] = self._new()
            self.sets[self.of[node]].producers.append(step.name)
            return
        if step.kind == "bn":
            self.sets[source].batchnorms.append(step.name)
            self.uses[step.name] = self.uses.get(step.name, 0) + 1
        elif step.kind not in _CARRY_KINDS:
            raise UnsupportedLayerError(f"step '{step.name}' ({step.kind}) is not supported")
        self.of[node] = source

    def units(self) -> list[ResidualUnit]:
        found = []
        for index, cs in enumerate(self.sets):
            if self._root(index) != index or not cs.producers or not cs.consumers:
                continue
            if cs.is_input or cs.is_output:
                continue
            found.append(self._unit(cs))
        order = {name: i for i, name in enumerate(self.uses)}
        return sorted(found, key=lambda unit: order[unit.name])

    def _unit(self, cs: _ChannelSet) -> ResidualUnit:
        for name in (*cs.producers, *cs.batchnorms):
            if self.uses[name] > 1:
                raise UnsupportedLayerError(
                    f"layer '{name}' is applied {self.uses[name]} times in the forward; a "
                    "layer whose channels are pruned must be applied once (give each use a "
                    "module of its own)"
                )
        sizes = {self.modules[name].weight.shape[0] for name in cs.producers}
        sizes |= {self.modules[name].num_features for name in cs.batchnorms}
        if len(sizes) != 1:
            raise UnsupportedLayerError(
                f"the layers {cs.producers + cs.batchnorms} share channels but have "
                f"{sorted(sizes)} of them; a BatchNorm must act on channels, not flattened "
                "features"
            )
        order = {name: i for i, name in enumerate(self.uses)}
        producers = sorted(cs.producers, key=order.__getitem__)
        return ResidualUnit(
            name=producers[0],
            kind="group" if cs.additions else "inner",
            producers=tuple(producers),
            batchnorms=tuple(sorted(cs.batchnorms, key=order.__getitem__)),
            consumers=tuple(sorted(cs.consumers, key=order.__getitem__)),
            size=sizes.pop(),
            additions=tuple(cs.additions),
        )


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if not is_shape_query(a)]


def _one_input(node: fx.Node, where: str) -> fx.Node:
    inputs = _tensor_inputs(node)
    if len(inputs) != 1:
        raise UnsupportedLayerError(
            f"'{where}' takes {len(inputs)} tensors; apart from additions of two tensors, each "
            "step of a residual network must take one tensor and return one"
        )
    return inputs[0]


@dataclass(frozen=True)
class GraphOp:
    """One operation of a forward read as a graph: apply the layer named ``layer`` (kind
    ``"layer"``) or add two tensors (kind ``"add"``). ``inputs`` index earlier results: 0 is
    the model's input, ``i`` the result of the ``i``-th operation (from 1)."""

    kind: str
    layer: str | None
    inputs: tuple[int, ...]


def forward_ops(model: nn.Module) -> tuple[dict[str, nn.Module], list[GraphOp], int]:
    """``model``'s forward as layers (by module name; a function call such as ``F.relu`` becomes
    an equivalent module named after its node), operations, and the index of the result the
    model returns. Identity steps are dropped. Refuses what :func:`residual_units` refuses."""
    modules = dict(model.named_modules())
    layers: dict[str, nn.Module] = {}
    ops: list[GraphOp] = []
    index: dict[fx.Node, int] = {}
    output = 0
    for node in trace_graph(model).nodes:
        if is_shape_query(node):
            continue
        if node.op == "placeholder":
            index[node] = 0
        elif node.op == "output":
            output = index[_one_input(node, "the output")]
        elif is_addition(node):
            ops.append(GraphOp("add", None, tuple(index[n] for n in _tensor_inputs(node))))
            index[node] = len(ops)
        else:
            step = step_of(node, modules)
            source = index[_one_input(node, node.name)]
            if step.kind == "identity":
                index[node] = source
                continue
            name = step.name
            layers.setdefault(name, step.module)
            ops.append(GraphOp("layer", name, (source,)))
            index[node] = len(ops)
    return layers, ops, output


def graph_module(layers: dict[str, nn.Module], ops: list[GraphOp], output: int) -> fx.GraphModule:
    """The ``fx.GraphModule`` that runs ``ops`` (as :func:`forward_ops` gives them) with
    ``layers`` as its submodules, under their (dotted) names; refuses unknown layers, kinds and
    inputs, and names that are not plain module paths."""
    for name in layers:
        _check_layer_name(name, layers)
    graph = fx.Graph()
    results = [graph.placeholder("x")]
    for position, op in enumerate(ops, start=1):
        arity = 1 if op.kind == "layer" else 2
        if op.kind not in OP_KINDS or len(op.inputs) != arity:
            raise InvalidInputError(f"operation {position} is not a layer or an addition: {op}")
        if any(type(i) is not int or not 0 <= i < position for i in op.inputs):
            raise InvalidInputError(f"operation {position} reads a result not computed before it")
        args = tuple(results[i] for i in op.inputs)
        if op.kind == "add":
            results.append(graph.call_function(operator.add, args))
        elif op.layer in layers:
            results.append(graph.call_module(op.layer, args))
        else:
            raise InvalidInputError(f"operation {position} applies an unknown layer {op.layer!r}")
    if type(output) is not int or not 0 <= output < len(results):
        raise InvalidInputError(f"the model returns result {output!r}, which is not computed")
    graph.output(results[output])
    return fx.GraphModule(layers, graph)


_MODULE_PATH = re.compile(r"[A-Za-z0-9]\w*(\.[A-Za-z0-9]\w*)*")


def _check_layer_name(name, layers: dict[str, nn.Module]) -> None:
    """A layer name is a module path (``stage1.0.conv1``) that shadows no attribute of the
    module and holds no other layer."""
    if not isinstance(name, str) or not _MODULE_PATH.fullmatch(name):
        raise InvalidInputError(
            f"layer name {name!r} is not a module path such as 'stage1.0.conv1'"
        )
    if hasattr(fx.GraphModule, name.split(".")[0]) or name.split(".")[0] == "training":
        raise InvalidInputError(f"layer name {name!r} would hide an attribute of the module")
    if any(other.startswith(name + ".") for other in layers):
        raise InvalidInputError(f"layer {name!r} would hold other layers")
