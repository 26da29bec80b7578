"""Structured Perspective Regularization: the closed-form penalty (docs/mathematics.md §5.3).

``penalty(w, a, b, M)`` is ``sum_j R(w_j)`` over the rows of ``w``, where ``R`` is the perspective
relaxation of ``a ||w||^2 + b z`` (with ``||w||_inf <= M z``) minimised over ``z`` in closed form.
It works on numpy arrays and on torch tensors; in torch it is differentiable with no NaN gradient,
at ``w = 0`` or anywhere else. ``SPRRegularizer`` applies it to the units of a torch model, chain
or residual network; it also serves as Torch-Pruning's ``regularize`` hook (:func:`tp_regularize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from oamip.adapters.structure import RowGroup, row_groups
from oamip.errors import InvalidInputError
from oamip.formulations.spr import SPRParams

# A unit whose group has no entry larger than this (in absolute value) counts as removed.
ZERO_GROUP_TOL = 1e-3
RESIDUAL_UNITS = {"both": ("inner", "group"), "inner": ("inner",), "group": ("group",)}
"""Which units of a residual network SPR regularises and prunes: inner channels of blocks,
coupled groups (:mod:`oamip.adapters.residual`), or both."""
DEFAULT_RESIDUAL_UNITS = "inner"
"""Measured (benchmarks/bench_resnet.py, ResNet-20 / Fashion-MNIST at 2x fewer MACs, 3 seeds):
pruning inner channels only lost the least accuracy (+0.37 points against -1.35 for both kinds
and -1.98 for coupled groups only)."""


def group_penalty(
    w: np.ndarray | torch.Tensor, a: float, b: float, M: float
) -> np.ndarray | torch.Tensor:
    """``R(w_j)`` for every row ``w_j`` of the 2-D array or tensor ``w`` (same type back)."""
    return _group_penalty(w, SPRParams(float(a), float(b), float(M)))


def penalty(w: np.ndarray | torch.Tensor, a: float, b: float, M: float) -> float | torch.Tensor:
    """``sum_j R(w_j)`` over the rows of ``w``: a float for numpy, a 0-d tensor for torch."""
    values = group_penalty(w, a, b, M)
    return values.sum() if isinstance(values, torch.Tensor) else float(values.sum())


def _group_penalty(w, params: SPRParams):
    if isinstance(w, torch.Tensor):
        _check_groups(tuple(w.shape))
        return _TorchPenalty.apply(w, params)
    w = np.asarray(w, dtype=float)
    _check_groups(w.shape)
    return _from_norms((w * w).sum(axis=1), np.abs(w).max(axis=1), params, np)


class _TorchPenalty(torch.autograd.Function):
    """``R`` per row with a hand-written backward: one pass over the weights each way, where
    autograd through the formula would take many (training speed, issue 6). On the CPU the
    row norms and the slopes go through the same helpers as :class:`_CpuTotalPenalty`."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, params: SPRParams) -> torch.Tensor:
        data = w.detach()
        if data.device.type == "cpu":
            sq, ni, arg = _row_norms(data)
            slopes = _value_and_slopes(sq, ni, params, np)
            value, coef, extra = (torch.from_numpy(v).to(data.dtype) for v in slopes)
            arg = torch.from_numpy(arg)
        else:
            ni, arg = data.abs().max(dim=1)
            sq = torch.linalg.vector_norm(data, 2, dim=1) ** 2
            value, coef, extra = _value_and_slopes(sq, ni, params, torch)
        ctx.save_for_backward(w, coef, extra, arg)
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, coef, extra, arg = ctx.saved_tensors
        w = w.detach()
        out = w * (grad * coef)[:, None]
        if w.device.type == "cpu":
            _add_inf_norm_slope(out, w, (grad * extra).numpy(), arg.numpy())
            return out, None
        rows = torch.arange(len(arg), device=w.device)
        out[rows, arg] += grad * extra * torch.sign(w[rows, arg])
        return out, None


def _value_and_slopes(sq, ni, p: SPRParams, xp):
    """``R`` per group (docs/mathematics.md (3)) and its slopes ``coef`` and ``extra``.

    All three cases of the table are ``R = a ||w||^2 / z + b z`` at the minimiser
    ``z = min(1, max(ni / M, sqrt(a/b) n2))``, so one formula needs no case analysis; its
    gradient is ``(2a / z) w`` plus, where ``z = ni / M < 1``, ``(b - a n2^2 / z^2) / M`` at the
    entry of largest magnitude (where ``z = sqrt(a/b) n2`` that term vanishes, where ``z = 1``
    ``z`` is constant). A zero group has ``z = 0`` and ``R = 0``; the denominators are made
    safe, so no branch produces an infinity or a NaN. Few array operations: this runs at
    every training step (issue 6).
    """
    by_inf = ni / p.M
    if p.b == 0:
        z = xp.where(sq > 0, 1.0, 0.0)
        at_bound = by_inf < 0
    else:
        by_two = math.sqrt(p.a / p.b) * xp.sqrt(sq)
        z = xp.maximum(by_inf, by_two)
        at_bound = (by_inf > by_two) & (z < 1.0)
        z = xp.where(z < 1.0, z, 1.0)
    z_safe = xp.where(z > 0, z, 1.0)
    value = p.a * sq / z_safe + p.b * z
    coef = (2.0 * p.a) / z_safe
    extra = xp.where(at_bound, (p.b - p.a * (sq / z_safe) / z_safe) / p.M, 0.0)
    return value, coef, extra


def _check_groups(shape: tuple[int, ...]) -> None:
    if len(shape) != 2 or shape[1] == 0:
        raise InvalidInputError(
            f"SPR penalty needs a 2-D array with one group per row and at least one column, "
            f"got shape {shape}; reshape each unit's parameters into one row"
        )


def _from_norms(sq, ni, p: SPRParams, xp):
    """``R`` per group from its squared 2-norm and its inf-norm (docs/mathematics.md (3))."""
    return _value_and_slopes(sq, ni, p, xp)[0]


def unit_groups(unit: RowGroup) -> torch.Tensor:
    """One row per unit: incoming weights, bias, then the scale and shift of the BatchNorm that
    follows the layer (each part only where present); for a coupled group of a residual network,
    those of every producer, then of every BatchNorm, of the group."""
    return torch.cat([p.reshape(unit.size, -1) for p in unit.params], dim=1)


class SPRRegularizer:
    """The SPR term of a torch model: ``reg()`` returns the penalty to add to the training loss.

    Groups are the units (neurons, output channels) of every unit layer of
    :func:`oamip.adapters.chain.units` (the scored Linear and Conv2d layers, in forward order,
    so never the output layer). A unit's group is its incoming weights, its bias and, when a
    BatchNorm directly follows the layer, that BatchNorm's scale and shift. In a residual network
    the layers are the units of :func:`oamip.adapters.residual.residual_units` that ``units``
    names (a key of RESIDUAL_UNITS): a coupled group's channel ``j`` is one group, every
    convolution filter ``j``, BatchNorm scale and shift ``j`` of the group together. ``M`` of a
    layer is the largest absolute entry of its groups at construction time (weights, and bias and
    BatchNorm parameters when grouped) times ``M_scale``: with weights alone, a BatchNorm scale
    near 1 would exceed ``M`` in every group and leave only the ``z = 1`` case. A plain callable
    rather than an ``nn.Module``, so that the model's parameters are not registered a second
    time.
    """

    def __init__(
        self,
        model: nn.Module,
        lam: float,
        alpha: float,
        M_scale: float = 1.0,
        units: str = DEFAULT_RESIDUAL_UNITS,
    ) -> None:
        if not (math.isfinite(M_scale) and M_scale > 0):
            raise InvalidInputError(f"SPR needs M_scale > 0, got M_scale={M_scale}")
        self._layers = _grouped_layers(model, units)
        self.lam, self.alpha, self.M_scale, self.units = lam, alpha, M_scale, units
        self.params: dict[str, SPRParams] = {}
        for layer in self._layers:
            with torch.no_grad():
                largest = float(unit_groups(layer).abs().max())
            if largest == 0.0:
                raise InvalidInputError(
                    f"layer '{layer.name}' has only zero parameters, so M would be 0; "
                    "build the regulariser on an initialised or pretrained model"
                )
            self.params[layer.name] = SPRParams.from_lam_alpha(lam, alpha, largest * M_scale)

    def __call__(self) -> torch.Tensor:
        """The penalty ``sum`` over grouped layers of ``sum_j R(w_j)``, differentiable."""
        groups = [unit_groups(layer) for layer in self._layers]
        if all(g.device.type == "cpu" for g in groups):
            return _CpuTotalPenalty.apply(self._stacked_params(groups), *groups)
        terms = [
            _group_penalty(g, self.params[layer.name]).sum()
            for layer, g in zip(self._layers, groups)
        ]
        return torch.stack(terms).sum()

    def regularize(self, *_args, **_kwargs) -> None:
        """Add the penalty's gradient to the parameters' ``.grad``, after ``loss.backward()``
        and before the optimiser step: the place of Torch-Pruning's ``pruner.regularize(model)``
        hook, whose arguments are accepted and ignored (see :mod:`oamip.training.tp`)."""
        self().backward()

    def _stacked_params(self, groups: list[torch.Tensor]) -> _RowParams:
        """``a``, ``b`` and, row by row, the ``M`` of the row's layer."""
        first = self.params[self._layers[0].name]
        rows = [len(g) for g in groups]
        big_m = np.repeat([self.params[layer.name].M for layer in self._layers], rows)
        return _RowParams(first.a, first.b, big_m)

    def groups(self) -> dict[str, torch.Tensor]:
        """The group matrix (one row per unit) of every regularised layer, by module name."""
        return {layer.name: unit_groups(layer) for layer in self._layers}

    def masks(self, tol: float = ZERO_GROUP_TOL) -> dict[str, np.ndarray]:
        """Per regularised layer, True for units to keep: some group entry exceeds ``tol``."""
        with torch.no_grad():
            return {
                layer.name: (unit_groups(layer).abs().amax(dim=1) > tol).cpu().numpy()
                for layer in self._layers
            }


@dataclass(frozen=True)
class _RowParams:
    """``a`` and ``b`` (shared by every layer) and one ``M`` per row of the stacked groups."""

    a: float
    b: float
    M: np.ndarray


class _CpuTotalPenalty(torch.autograd.Function):
    """The whole regulariser in one call on the CPU: every layer's row norms, one evaluation of
    ``R`` and its slopes over all rows, one backward. Per-layer calls cost a fixed overhead
    each, which dominates for the small layers of convolutional networks, and every small
    array operation counts at this size (training speed, issue 6): each step below is the
    cheaper of numpy and torch on the CPU, and rows without an inf-norm term are skipped."""

    @staticmethod
    def forward(ctx, params: _RowParams, *groups: torch.Tensor) -> torch.Tensor:
        norms = [_row_norms(g.detach()) for g in groups]
        sq = np.concatenate([n[0] for n in norms])
        ni = np.concatenate([n[1] for n in norms])
        value, coef, extra = _value_and_slopes(sq, ni, params, np)
        ctx.coef = torch.from_numpy(coef.astype(_NUMPY_DTYPE[groups[0].dtype]))
        ctx.args, ctx.extra = [n[2] for n in norms], extra
        ctx.save_for_backward(*groups)
        return torch.tensor(float(value.sum()), dtype=groups[0].dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scale = float(grad)
        coef = ctx.coef if scale == 1.0 else ctx.coef * scale
        out, start = [], 0
        for w, arg in zip(ctx.saved_tensors, ctx.args):
            stop = start + len(w)
            g = w.detach() * coef[start:stop, None]
            _add_inf_norm_slope(g, w.detach(), scale * ctx.extra[start:stop], arg)
            out.append(g)
            start = stop
        return (None, *out)


_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _row_norms(w: torch.Tensor):
    """``||w_j||^2``, ``||w_j||_inf`` and where the largest magnitude is, per row (the 2-norm
    in torch, the largest magnitude in numpy: each the faster of the two)."""
    sq = torch.linalg.vector_norm(w, dim=1).numpy().astype(float) ** 2
    magnitude = np.abs(w.numpy())
    arg = magnitude.argmax(axis=1)
    return sq, magnitude[np.arange(len(arg)), arg].astype(float), arg


def _add_inf_norm_slope(g: torch.Tensor, w: torch.Tensor, extra: np.ndarray, arg) -> None:
    """``g_jk += extra_j sign(w_jk)`` at each row's largest entry ``k``, where ``extra_j != 0``."""
    rows = np.flatnonzero(extra)
    if len(rows):
        cols = arg[rows]
        target = g.numpy()
        target[rows, cols] += (extra[rows] * np.sign(w.numpy()[rows, cols])).astype(target.dtype)


def _grouped_layers(model: nn.Module, units: str) -> list[RowGroup]:
    """The model's unit layers of the kinds ``units`` names; at least one."""
    if units not in RESIDUAL_UNITS:
        raise InvalidInputError(
            f"SPR's units must be one of {', '.join(RESIDUAL_UNITS)}, got {units!r}"
        )
    layers = row_groups(model, RESIDUAL_UNITS[units])
    if not layers:
        raise InvalidInputError(
            "SPR needs at least one Linear or Conv2d layer followed by an activation before the "
            f"output layer (of the units '{units}' names, in a residual network); the model has "
            "none"
        )
    return layers
