"""Piecewise-linear activations: one class each plus one registration (docs/mathematics.md §4.11).

An activation ``sigma`` with ``sigma(0) = 0`` that is continuous, non-decreasing and piecewise
linear is a sum of *ramps* ``sigma(z) = sum_t c_t ReLU(d_t z - b_t)`` with ``d_t = +1`` (a ramp
of the side ``z >= 0``) or ``-1`` (of the side ``z <= 0``) and ``b_t >= 0``. A scored unit with
pre-activation ``a``, score ``s`` and constant ``M`` computes every ramp on a shifted argument,

    h = sum_t c_t ReLU(d_t a - b_t - (1 - s) M),

which is ``sigma(a)`` at ``s = 1`` and 0 at ``s = 0`` once ``M >= d_t a - b_t`` for every ramp;
it equals ``sigma`` of ``a`` soft-thresholded by ``(1 - s) M`` (``a - clip(a, -t, t)``), and for
ReLU it is the paper's ``ReLU(a - (1 - s) M)``. Each ramp is encoded exactly like a scored ReLU
(one binary per ramp that can change sign), so a new activation only states its ramps.

A new activation is a frozen dataclass subclass of :class:`Activation` (its fields are its
parameters) that names the torch module it reads (``torch_module``, the class name), builds
itself from one (``from_torch``) and lists its ramps, decorated with
:func:`register_activation`. This module imports no torch: modules are read by attribute.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from oamip.errors import InvalidInputError, UnsupportedLayerError


@dataclass(frozen=True)
class Ramp:
    """``coef * ReLU(side * z - offset)``: ``side`` is +1 or -1, ``offset >= 0``."""

    side: int
    offset: float
    coef: float


ACTIVATIONS: dict[str, type[Activation]] = {}
"""Registered activations by the name of the torch module they read."""


@dataclass(frozen=True)
class Activation(abc.ABC):
    """A continuous, non-decreasing, piecewise-linear ``sigma`` with ``sigma(0) = 0``."""

    torch_module: ClassVar[str] = ""
    """The class name of the torch module (``nn.<name>``) this activation reads."""

    @classmethod
    @abc.abstractmethod
    def from_torch(cls, module: Any) -> Activation:
        """The activation computed by a torch module of class ``torch_module``."""

    @property
    @abc.abstractmethod
    def ramps(self) -> tuple[Ramp, ...]:
        """The ramps whose sum is the activation (see the module docstring)."""

    def __post_init__(self) -> None:
        ramps = self.ramps
        if any(r.side not in (1, -1) or not r.offset >= 0 for r in ramps):
            raise InvalidInputError(
                f"{self}: every ramp needs side +1 or -1 and an offset >= 0, got {ramps}"
            )
        if any(slope < 0 for slope in self.slopes()):
            raise UnsupportedLayerError(
                f"{self} is decreasing somewhere; only non-decreasing activations are encoded "
                "(max pooling must commute with them)"
            )

    def slopes(self) -> list[float]:
        """The slope on every piece, from left to right."""
        left = sorted((r for r in self.ramps if r.side < 0), key=lambda r: -r.offset)
        right = sorted((r for r in self.ramps if r.side > 0), key=lambda r: r.offset)
        out = [-sum(r.coef for r in left[i:]) for i in range(len(left) + 1)]
        return out + [sum(r.coef for r in right[: i + 1]) for i in range(len(right))]

    @property
    def two_sided(self) -> bool:
        """Whether the activation is nonzero somewhere below 0 (then ``M`` covers both sides)."""
        return any(r.side < 0 for r in self.ramps)

    def scored(self, pre: np.ndarray, shift: np.ndarray | float = 0.0) -> np.ndarray:
        """``sum_t c_t ReLU(d_t pre - b_t - shift)``: the activation of ``pre`` (``shift = 0``)
        or of a scored unit (``shift = (1 - s) M``)."""
        out = None
        for r in self.ramps:
            arg = pre if r.side > 0 else -pre
            value = np.asarray(arg - (r.offset + shift), dtype=float)
            np.maximum(value, 0.0, out=value)
            if r.coef != 1.0:
                value *= r.coef
            out = value if out is None else np.add(out, value, out=out)
        return np.zeros(np.shape(pre)) if out is None else out

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return self.scored(np.asarray(z, dtype=float))

    def range(self, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of the activation over ``[lower, upper]`` (it is non-decreasing)."""
        return self(lower), self(upper)

    def scored_range(self, lower: np.ndarray, upper: np.ndarray):
        """Bounds of a scored unit's output for every score: the soft threshold takes ``a`` to
        any value between 0 and ``a``, so ``sigma(min(lower, 0)) .. sigma(max(upper, 0))``."""
        return self(np.minimum(lower, 0.0)), self(np.maximum(upper, 0.0))

    def reach(self, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Per entry, the largest ``d_t a - b_t`` of any ramp over ``[lower, upper]`` (at least
        0): ``M`` must cover it for a score of 0 to silence the unit."""
        out = np.zeros(np.shape(upper))
        for r in self.ramps:
            out = np.maximum(out, (upper if r.side > 0 else -lower) - r.offset)
        return out

    @property
    def is_relu(self) -> bool:
        """Whether the activation is one ramp ``ReLU(z)`` (its output is the ramp's variable)."""
        return self.ramps == (Ramp(1, 0.0, 1.0),)


def register_activation(cls: type[Activation]) -> type[Activation]:
    """Make an activation class read from its torch module (usable as a class decorator)."""
    if not cls.torch_module or "torch_module" in {f.name for f in fields(cls)}:
        raise InvalidInputError(
            f"activation class {cls.__name__} must name its torch module in a class variable "
            "(torch_module: ClassVar[str] = 'ReLU6')"
        )
    ACTIVATIONS[cls.torch_module] = cls
    return cls


def activation_names() -> list[str]:
    """The torch modules of every registered activation."""
    return sorted(ACTIVATIONS)


def activation_of(module: Any, where: str) -> Activation:
    """The registered activation computed by torch ``module`` (found at ``where``), or a
    one-line error naming the layer and the activations that are encoded."""
    cls = ACTIVATIONS.get(type(module).__name__)
    if cls is None:
        raise UnsupportedLayerError(
            f"layer '{where}' ({type(module).__name__}) is not a piecewise-linear activation "
            f"that OAMIP encodes; encoded: {', '.join(activation_names())} (SPR and the "
            "baseline criteria take any activation)"
        )
    return cls.from_torch(module)


@register_activation
@dataclass(frozen=True)
class ReLU(Activation):
    """``max(z, 0)``."""

    torch_module: ClassVar[str] = "ReLU"

    @classmethod
    def from_torch(cls, module: Any) -> ReLU:
        return cls()

    @property
    def ramps(self) -> tuple[Ramp, ...]:
        return (Ramp(1, 0.0, 1.0),)


@register_activation
@dataclass(frozen=True)
class Hardtanh(Activation):
    """``clip(z, min_val, max_val)``; 0 must lie in ``[min_val, max_val]``, so that a unit whose
    weights are zeroed (a pruned one) outputs 0."""

    min_val: float = -1.0
    max_val: float = 1.0
    torch_module: ClassVar[str] = "Hardtanh"

    def __post_init__(self) -> None:
        if not self.min_val <= 0.0 <= self.max_val:
            raise UnsupportedLayerError(
                f"{type(self).__name__}({self.min_val}, {self.max_val}) does not map 0 to 0, so "
                "a pruned unit would not output 0; only bounds with min_val <= 0 <= max_val are "
                "supported"
            )
        super().__post_init__()

    @classmethod
    def from_torch(cls, module: Any) -> Hardtanh:
        return cls(float(module.min_val), float(module.max_val))

    @property
    def ramps(self) -> tuple[Ramp, ...]:
        ramps = []
        if self.max_val > 0:
            ramps += [Ramp(1, 0.0, 1.0), Ramp(1, self.max_val, -1.0)]
        if self.min_val < 0:
            ramps += [Ramp(-1, 0.0, -1.0), Ramp(-1, -self.min_val, 1.0)]
        return tuple(ramps)


@register_activation
@dataclass(frozen=True)
class ReLU6(Hardtanh):
    """``clip(z, 0, 6)``."""

    min_val: float = 0.0
    max_val: float = 6.0
    torch_module: ClassVar[str] = "ReLU6"

    @classmethod
    def from_torch(cls, module: Any) -> ReLU6:
        return cls()


@register_activation
@dataclass(frozen=True)
class LeakyReLU(Activation):
    """``z`` above 0, ``negative_slope * z`` below (a slope >= 0: non-decreasing)."""

    negative_slope: float = 0.01
    torch_module: ClassVar[str] = "LeakyReLU"

    @classmethod
    def from_torch(cls, module: Any) -> LeakyReLU:
        return cls(float(module.negative_slope))

    @property
    def ramps(self) -> tuple[Ramp, ...]:
        if self.negative_slope == 0:
            return (Ramp(1, 0.0, 1.0),)
        return (Ramp(1, 0.0, 1.0), Ramp(-1, 0.0, -self.negative_slope))
