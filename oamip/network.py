"""The framework-free description of a network: layers as numpy arrays acting on flat vectors.

Every layer maps a batch of flat vectors ``(N, n_in)`` to ``(N, n_out)``; images are flattened in
C order (channel, row, column), as ``torch.flatten`` does, so Flatten and reshapes are no-ops here.
Affine layers (Linear, Conv2d with folded BatchNorm, AvgPool2d) are sparse matrices plus an offset;
an affine layer followed by an activation (ReLU or another of :mod:`oamip.activations`) is a
*scored* layer whose units carry importance scores. A residual block's addition is a
:class:`ResidualLayer`, an affine layer of two inputs; its activation may be plain or share the
scores of a coupled group (docs/mathematics.md §4.10).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from oamip.activations import Activation
from oamip.errors import InvalidInputError


@dataclass(frozen=True)
class Conv:
    """Geometry of a 2-D convolution or pooling window; ``groups`` splits a convolution's input
    and output channels into that many groups, each output channel reading its own group's input
    channels only (``groups`` = channels: a depthwise convolution, as torch's ``Conv2d``)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        dims = []
        for size, k, s, p, d in zip(
            (height, width), self.kernel, self.stride, self.padding, self.dilation
        ):
            dims.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        return dims[0], dims[1]

    def taps(self, height: int, width: int):
        """Yield ``(ky, kx, out_pos, in_pos)``: flat output and input positions each tap links."""
        out_h, out_w = self.out_size(height, width)
        oy, ox = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
        for ky in range(self.kernel[0]):
            for kx in range(self.kernel[1]):
                iy = oy * self.stride[0] - self.padding[0] + ky * self.dilation[0]
                ix = ox * self.stride[1] - self.padding[1] + kx * self.dilation[1]
                ok = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
                yield ky, kx, (oy * out_w + ox)[ok], (iy * width + ix)[ok]


@dataclass
class AffineLayer:
    """``a = A h + c``: a Linear layer, a Conv2d (channels are its units) or an AvgPool2d.

    ``name`` is the module path of the layer in the original model; ``activation`` is the
    activation that follows (None: none), which makes the layer a scored one, unless ``scored``
    is False (a plain activation) or ``share`` names the layer whose scores its units use (a
    coupled group, §4.10).
    """

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray
    bias: np.ndarray
    geometry: Conv | None = None
    activation: Activation | None = None
    scored: bool = True
    share: int | None = None

    @property
    def n_in(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def n_units(self) -> int:
        """Neurons of a Linear layer, output channels of a convolution or a pooling layer."""
        return int(self.out_shape[0])

    @cached_property
    def unit_of(self) -> np.ndarray:
        """The unit (neuron or channel) that each flat output belongs to."""
        positions = self.n_out // self.n_units
        return np.repeat(np.arange(self.n_units), positions)

    @cached_property
    def matrix(self) -> sp.csr_matrix:
        """The layer's linear part as a sparse ``(n_out, n_in)`` matrix."""
        if self.kind == "linear":
            return sp.csr_matrix(self.weight)
        groups = self.in_shape[0] if self.kind == "avgpool" else self.geometry.groups
        return _conv_matrix(self.weight, self.in_shape, self.out_shape, self.geometry, groups)

    @cached_property
    def offset(self) -> np.ndarray:
        """The layer's constant part, one value per flat output."""
        return self.bias[self.unit_of]

    def forward(self, h: np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix @ h.T).T + self.offset


@dataclass
class MaxPoolLayer:
    """``y_o = max_{i in window(o)} h_i``; ``windows`` lists each output's inputs (-1: padding)."""

    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    windows: np.ndarray

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))

    def forward(self, h: np.ndarray) -> np.ndarray:
        padded = np.concatenate([h, np.full((h.shape[0], 1), -np.inf)], axis=1)
        return padded[:, self.windows].max(axis=2)


@dataclass
class ResidualLayer:
    """``a = A h + c + S g + d``: the last affine layer of a residual block (``main``, fed by the
    previous layer's output ``h``) plus the block's shortcut from the output ``g`` of the earlier
    layer ``source``: ``shortcut`` is a 1x1 convolution with folded BatchNorm, or None for the
    identity. It acts on the concatenation ``[h, g]`` of its two inputs (docs/mathematics.md
    §4.10); ``activation``, ``scored`` and ``share`` mean what they mean for an
    :class:`AffineLayer`.
    """

    name: str
    main: AffineLayer
    shortcut: AffineLayer | None
    source: int
    activation: Activation | None = None
    scored: bool = True
    share: int | None = None
    kind: str = "residual"

    def __post_init__(self) -> None:
        into = self.main.out_shape if self.shortcut is None else self.shortcut.out_shape
        if tuple(into) != tuple(self.main.out_shape):
            raise InvalidInputError(
                f"residual layer '{self.name}': the shortcut gives shape {tuple(into)} but the "
                f"block's last layer gives {tuple(self.main.out_shape)}; they must match"
            )

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.main.in_shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.main.out_shape

    @property
    def n_in(self) -> int:
        """Inputs of the concatenation: the previous layer's outputs, then the source's."""
        source = self.main.n_out if self.shortcut is None else self.shortcut.n_in
        return self.main.n_in + source

    @property
    def n_out(self) -> int:
        return self.main.n_out

    @property
    def n_units(self) -> int:
        return self.main.n_units

    @property
    def unit_of(self) -> np.ndarray:
        return self.main.unit_of

    @cached_property
    def matrix(self) -> sp.csr_matrix:
        """``[A | S]`` over the concatenated inputs (``S = I`` for an identity shortcut)."""
        if self.shortcut is None:
            return sp.hstack([self.main.matrix, sp.identity(self.n_out)], format="csr")
        return sp.hstack([self.main.matrix, self.shortcut.matrix], format="csr")

    @cached_property
    def offset(self) -> np.ndarray:
        extra = 0.0 if self.shortcut is None else self.shortcut.offset
        return self.main.offset + extra

    def forward(self, h: np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix @ h.T).T + self.offset


Affine = AffineLayer | ResidualLayer
Layer = AffineLayer | ResidualLayer | MaxPoolLayer


@dataclass
class Trace:
    """One layer's values on a batch: ``pre`` its output before any activation, ``shift`` the
    score term ``(1 - s) M`` of each output (0 where none), ``out`` what it hands to the next
    layer."""

    pre: np.ndarray
    shift: np.ndarray
    out: np.ndarray

    @property
    def arg(self) -> np.ndarray:
        """A ReLU's argument: ``pre`` lowered by the score term."""
        return self.pre - self.shift


FOLD_VALUES = 20_000_000
"""Values one batched pass of :meth:`Network.score_affine` holds (units times samples times
the widest layer after the scored one), about 160 MB."""


@dataclass(frozen=True)
class ScoreAffine:
    """A network's logits on a fixed batch as an affine map of one layer's binary scores:
    ``logits(s) = base + slope @ s`` for every ``s`` in ``{0, 1}^units``, exactly.

    It exists when the network's only scored layer reads constants (the batch, through
    unscored layers) and only affine layers (and a max pooling right after it) follow: each of
    its outputs then depends on one score, and any function of one binary value is affine in
    it, so the logits are affine in the score vector (docs/mathematics.md §4.8)."""

    key: int
    """The scored layer."""
    base: np.ndarray
    """``(N, classes)``: the logits with every score 0."""
    slope: np.ndarray
    """``(N, classes, units)``: how much switching each unit on adds to each logit."""

    def logits(self, rows: np.ndarray) -> np.ndarray:
        """The logits ``(R, N, classes)`` of each binary score vector of ``rows`` ``(R, units)``."""
        return self.base[None] + np.einsum("nku,ru->rnk", self.slope, rows)


@dataclass
class Network:
    """A chain of layers; the last one is affine and gives the logits."""

    input_shape: tuple[int, ...]
    layers: list[Layer] = field(default_factory=list)

    @property
    def scored(self) -> list[int]:
        """The keys of the score vectors: indices of the scored layers that own their scores
        (the first layer of each coupled group)."""
        return [i for i in range(len(self.layers)) if self.score_key(i) == i]

    def score_key(self, index: int) -> int | None:
        """The key of the scores that layer ``index``'s activation uses; None where no scored
        activation."""
        layer = self.layers[index]
        if isinstance(layer, MaxPoolLayer) or layer.activation is None or not layer.scored:
            return None
        return index if layer.share is None else layer.share

    def layer_input(self, index: int, outputs: list[np.ndarray]) -> np.ndarray:
        """What layer ``index`` acts on, given the outputs of the layers before it (index-aligned;
        entries that are not needed may be None): the previous output, concatenated with the
        source's output for a residual layer."""
        h = outputs[index - 1]
        layer = self.layers[index]
        if not isinstance(layer, ResidualLayer):
            return h
        if not 0 <= layer.source < index or outputs[layer.source] is None:
            raise InvalidInputError(
                f"residual layer '{layer.name}' reads layer {layer.source}, which is not an "
                f"earlier layer whose output is available (layers 0..{index - 1})"
            )
        return np.concatenate([h, outputs[layer.source]], axis=1)

    @property
    def num_classes(self) -> int:
        return self.layers[-1].n_out

    def trace(
        self,
        x: np.ndarray,
        scores: dict[int, np.ndarray] | None = None,
        big_m: dict[int, np.ndarray] | None = None,
    ) -> list[Trace]:
        """Every layer's values on batch ``x``; given scores, units follow docs/mathematics.md (1).

        A layer's scores are one value per unit or one row per sample of ``x``."""
        h = x.reshape(x.shape[0], -1).astype(float)
        return self.resume(0, self.layers[0].forward(h), scores, big_m)

    def resume(
        self,
        start: int,
        pre: np.ndarray,
        scores: dict[int, np.ndarray] | None = None,
        big_m: dict[int, np.ndarray] | None = None,
        before: list[Trace] | None = None,
    ) -> list[Trace]:
        """The trace of layers ``start`` onward from layer ``start``'s output before its activation,
        which stays fixed while only the scores of that layer and later ones change.

        A residual layer reading a layer before ``start`` takes that layer's output from
        ``before`` (the trace of layers ``0..start-1``; rows repeated to match ``pre``)."""
        outputs: list[np.ndarray | None] = [None] * len(self.layers)
        for i, t in enumerate((before or [])[:start]):
            outputs[i] = np.tile(t.out, (len(pre) // len(t.out), 1))
        record = []
        for i in range(start, len(self.layers)):
            layer = self.layers[i]
            if i > start:
                pre = layer.forward(self.layer_input(i, outputs))
            shift, term = np.broadcast_to(0.0, pre.shape), 0.0
            key = self.score_key(i)
            if key is not None and scores is not None:
                term = ((1.0 - scores[key]) * big_m[i])[..., layer.unit_of]
                shift = np.broadcast_to(term, pre.shape)
            h = pre
            if not isinstance(layer, MaxPoolLayer) and layer.activation is not None:
                h = layer.activation.scored(pre, term)
            record.append(Trace(pre=pre, shift=shift, out=h))
            outputs[i] = h
        return record

    def forward(
        self,
        x: np.ndarray,
        scores: dict[int, np.ndarray] | None = None,
        big_m: dict[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Logits for a batch ``x``; with scores, scored units compute docs/mathematics.md (1)."""
        return self.trace(x, scores, big_m)[-1].out

    def score_affine(self, x: np.ndarray, big_m: dict[int, np.ndarray]) -> ScoreAffine | None:
        """The logits on batch ``x`` as an affine map of the binary scores (:class:`ScoreAffine`),
        or None where they are not one: more than one scored layer, or an activation (or a
        max pooling not right after the scored layer) after it."""
        key = self.foldable()
        if key is None:
            return None
        before = self.trace(x)[: key + 1]
        units = self.layers[key].n_units
        base = self.resume(key, before[key].pre, {key: np.zeros(units)}, big_m, before)[-1].out
        widest = max(layer.n_out for layer in self.layers[key:])
        chunk = max(1, FOLD_VALUES // (len(x) * widest))
        slope = np.empty((*base.shape, units))
        for first in range(0, units, chunk):
            rows = np.eye(units)[first : first + chunk]
            scores = {key: np.repeat(rows, len(x), axis=0)}
            pre = np.tile(before[key].pre, (len(rows), 1))
            out = self.resume(key, pre, scores, big_m, before)[-1].out
            on = out.reshape(len(rows), *base.shape) - base[None]
            slope[..., first : first + len(rows)] = np.moveaxis(on, 0, -1)
        return ScoreAffine(key, base, slope)

    def foldable(self) -> int | None:
        """The one scored layer, where the logits are affine in its binary scores on any batch
        (see :meth:`score_affine`); None where they are not."""
        keyed = [i for i in range(len(self.layers)) if self.score_key(i) is not None]
        if len(keyed) != 1 or not self._affine_after(keyed[0]):
            return None
        return keyed[0]

    def _affine_after(self, key: int) -> bool:
        """Whether every layer after ``key`` is affine without activation, but for a max pooling
        right after it (each of its windows lies in one channel, so under one score)."""
        for i in range(key + 1, len(self.layers)):
            layer = self.layers[i]
            if isinstance(layer, MaxPoolLayer):
                if i != key + 1:
                    return False
            elif layer.activation is not None:
                return False
        return True

    def crossed(self, index: int) -> bool:
        """Whether a residual layer after layer ``index`` reads a layer before it, so that the
        network cannot be cut after layer ``index`` (its output is not all that later layers
        read)."""
        return any(
            isinstance(layer, ResidualLayer) and layer.source < index
            for layer in self.layers[index + 1 :]
        )

    def segment(self, start: int, stop: int) -> Network:
        """Layers ``start..stop - 1`` as a network whose input is layer ``start - 1``'s output
        (refused where a residual layer of the segment reads an earlier layer). Residual sources
        and shared scores are renumbered; a group whose first layer lies before ``start`` is
        owned by its first layer in the segment; a residual layer reading the segment's input
        reads an identity layer put first (constants in the MIP, so free)."""
        if start > 0 and self.crossed(start - 1):
            raise InvalidInputError(
                f"cannot cut the network before layer {start}: a residual layer after it reads "
                "an earlier layer"
            )
        layers = self.layers[start:stop]
        out: list[Layer] = []
        if any(isinstance(layer, ResidualLayer) and layer.source == start - 1 for layer in layers):
            out.append(_identity(self.layers[start - 1]))
        shift = len(out) - start
        owners: dict[int, int] = {}
        for index, layer in enumerate(layers, start):
            changes = {}
            if isinstance(layer, ResidualLayer) and shift:
                changes["source"] = layer.source + shift
            key = self.score_key(index)
            if key is not None:
                first = owners.setdefault(key, index + shift)
                share = None if first == index + shift else first
                if share != layer.share:
                    changes["share"] = share
            out.append(replace(layer, **changes) if changes else layer)
        return Network(tuple(out[0].in_shape), out)

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` as a float array of shape ``(N, *input_shape)``, or a clear error."""
        x = np.asarray(x, dtype=float)
        if x.ndim == 0 or x.shape[0] == 0:
            raise InvalidInputError("the batch is empty: give at least one sample")
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise InvalidInputError(
                f"input shape {tuple(x.shape[1:])} does not match the network's input shape "
                f"{tuple(self.input_shape)}"
            )
        if not np.isfinite(x).all():
            raise InvalidInputError("the batch contains NaN or infinite values")
        return x


def _identity(layer: Layer) -> AffineLayer:
    """An affine layer that hands ``layer``'s output on unchanged: a 1x1 average pooling of
    images, an identity matrix for flat vectors."""
    shape = tuple(layer.out_shape)
    name = f"{layer.name}.output"
    if len(shape) == 3:
        weight = np.ones((shape[0], 1, 1, 1))
        one = Conv((1, 1), (1, 1), (0, 0))
        return AffineLayer(name, "avgpool", shape, shape, weight, np.zeros(shape[0]), one)
    n = int(np.prod(shape))
    return AffineLayer(name, "linear", shape, shape, np.eye(n), np.zeros(n))


def _conv_matrix(weight, in_shape, out_shape, geometry: Conv, groups: int) -> sp.csr_matrix:
    """A convolution of ``groups`` groups as a matrix: column ``ci`` of output channel ``o``'s
    filter reads input channel ``ci`` of ``o``'s group (an average pooling is depthwise, channel
    ``c`` to channel ``c``)."""
    c_in, height, width = in_shape
    c_out = out_shape[0]
    out_area = out_shape[1] * out_shape[2]
    channels = np.arange(c_out)
    first = channels // (c_out // groups) * (c_in // groups)
    rows, cols, vals = [], [], []
    for ky, kx, out_pos, in_pos in geometry.taps(height, width):
        for ci in range(weight.shape[1]):
            src = first + ci
            rows.append((channels[:, None] * out_area + out_pos[None, :]).ravel())
            cols.append((src[:, None] * height * width + in_pos[None, :]).ravel())
            vals.append(np.repeat(weight[:, ci, ky, kx], len(out_pos)))
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(c_out * out_area, c_in * height * width),
    )
    matrix.eliminate_zeros()
    return matrix


def max_pool_windows(in_shape: tuple[int, int, int], geometry: Conv) -> np.ndarray:
    """For each flat output of a max pooling, the flat inputs of its window (-1 = padding)."""
    channels, height, width = in_shape
    out_h, out_w = geometry.out_size(height, width)
    area = out_h * out_w
    taps = geometry.kernel[0] * geometry.kernel[1]
    windows = np.full((channels, area, taps), -1, dtype=np.int64)
    for t, (_, _, out_pos, in_pos) in enumerate(geometry.taps(height, width)):
        windows[:, out_pos, t] = np.arange(channels)[:, None] * height * width + in_pos[None, :]
    return windows.reshape(channels * area, taps)
