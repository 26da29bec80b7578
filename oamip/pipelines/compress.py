"""``oamip.compress``: exact compression of a trained ReLU network on a box of inputs.

Units proven dead on the box (:mod:`oamip.solve.stability`) are removed and units proven active
are folded into the next Linear layer where the architecture allows (:mod:`oamip.solve.folding`);
the smaller model computes the same outputs at every input of the box. The answer is checked:
both models are run at the box's centre, random points, random corners and the data, and a
difference beyond rounding raises a VerificationError.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import nn

from oamip import checks
from oamip.adapters.compression import (
    Compressible,
    compressed_model,
    dead_masks,
    open_masks,
    read_compressible,
)
from oamip.errors import InvalidInputError, VerificationError
from oamip.files import plain
from oamip.pipelines.inputs import count_params, dataset_of, float_dtype
from oamip.solve.folding import Fold, plan_folds
from oamip.solve.stability import StabilityProof, box_points, checked_box, prove_stability
from oamip.training.data import Dataset
from oamip.training.inference import eval_mode, model_device

DEFAULT_TIME_LIMIT = 60.0
DEFAULT_OUT = "oamip-compressed"
"""The folder ``oamip compress`` writes by default."""
CHECK_POINTS = 2048
"""Random points of the box (half inside, half at corners) both models are compared at."""
CHECK_BATCH = 256
"""Points run through both models at once."""
DATA_WITNESSES = 2048
"""The most data rows run as witnesses of units that are not stable."""
ROUNDING = 1e3
"""The outputs may differ by this many machine epsilons of the model's dtype, times
``1 + max |output|`` (sums in another order, folded weights rounded to the dtype)."""


@dataclass
class CompressResult:
    """What :func:`compress` did: the smaller ``model``, the units ``removed`` (dead on the
    box) and ``folded`` (active, merged into the next layer) per unit name, and the proof.

    ``status`` is ``proven`` when every unit's question was settled, ``partial`` when the time
    limit left some open (``undecided``: kept). ``kept_dead`` lists dead units kept because a
    layer keeps one unit; ``not_folded`` says per unit name why its layer is not folded."""

    model: nn.Module = field(repr=False, compare=False)
    status: str
    removed: dict[str, list[int]]
    folded: dict[str, list[int]]
    undecided: dict[str, list[int]]
    kept_dead: dict[str, list[int]]
    not_folded: dict[str, str]
    sizes: dict[str, int]
    """Units (neurons or channels) of each unit name before compression."""
    units_total: int
    proofs: dict[str, int]
    params_before: int
    params_after: int
    max_difference: float
    checked_points: int
    lps: int
    milps: int
    seconds: float
    time_limit: float
    box: dict

    @property
    def units_removed(self) -> int:
        """Units gone: removed and folded."""
        return sum(map(len, self.removed.values())) + sum(map(len, self.folded.values()))

    def to_dict(self) -> dict:
        """Everything but the model, as plain data (report.json)."""
        out = {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "model"}
        return {**out, "units_removed": self.units_removed}


def compress(
    model: nn.Module,
    lower: float | np.ndarray | None = None,
    upper: float | np.ndarray | None = None,
    *,
    data: Dataset | str | np.ndarray | None = None,
    input_shape: tuple[int, ...] | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
    backend: str = "highs",
    milp: bool = True,
    fold: bool = True,
    threads: int | None = None,
    seed: int = 0,
) -> CompressResult:
    """Remove the units of ``model`` that are dead on a box of inputs and fold the active ones,
    with identical outputs on the box; ``model`` itself is left as it was.

    The box is ``[lower, upper]`` (numbers, or one value per input), or the per-feature range of
    ``data`` (a Dataset or data spec: all its splits; or an array of samples), whose rows also
    serve as witnesses. ``input_shape`` is needed only for numbers and a model that starts with
    a convolution. Proofs by interval bounds, then the LP relaxation, then (``milp``) the MILP,
    within ``time_limit`` seconds; what is not proven stays."""
    start = time.perf_counter()
    time_limit = checks.real("time_limit", time_limit, 0.0, open_low=True)
    checks.flag("milp", milp)
    checks.flag("fold", fold)
    lower, upper, points, shape = _box(model, lower, upper, data, input_shape)
    found = read_compressible(model, shape)
    network = found.extracted.network
    _check_relu_only(network)
    proof = prove_stability(
        network,
        lower,
        upper,
        active_layers=tuple(found.consumers) if fold else (),
        points=points,
        backend=backend,
        time_limit=time_limit,
        milp=milp,
        threads=threads,
        seed=seed,
    )
    plan = _plan(found, proof, fold)
    small = compressed_model(model, found, plan.gone, plan.folds)
    difference, checked = _check(model, small, lower, upper, points, shape, seed)
    return CompressResult(
        model=small,
        status=proof.status,
        removed=_indices(plan.dead),
        folded=_indices(plan.folded),
        undecided=_indices(open_masks(found, proof)),
        kept_dead=plan.kept_dead,
        not_folded=found.not_folded if fold else dict.fromkeys(plan.dead, "fold=False"),
        sizes={name: len(d) for name, d in plan.dead.items()},
        units_total=sum(len(d) for d in plan.dead.values()),
        proofs=proof.proofs(),
        params_before=count_params(model),
        params_after=count_params(small),
        max_difference=difference,
        checked_points=checked,
        lps=proof.lps,
        milps=proof.milps,
        seconds=time.perf_counter() - start,
        time_limit=time_limit,
        box={
            "lower_min": float(lower.min()),
            "upper_max": float(upper.max()),
            "inputs": len(lower),
        },
    )


@dataclass
class _Plan:
    """What goes, per unit name: ``dead`` units removed, ``folded`` ones and their ``folds``,
    and the dead units kept so that every layer keeps one."""

    dead: dict[str, np.ndarray]
    folded: dict[str, np.ndarray]
    folds: list[Fold]
    kept_dead: dict[str, list[int]]

    @property
    def gone(self) -> dict[str, np.ndarray]:
        return {name: self.dead[name] | self.folded[name] for name in self.dead}


def _plan(found: Compressible, proof: StabilityProof, fold: bool) -> _Plan:
    """The units removed and folded, from the proof."""
    dead = dead_masks(found, proof)
    kept_dead = {name: [0] for name, d in dead.items() if d.all()}
    for name in kept_dead:
        dead[name][0] = False
    network = found.extracted.network
    folds = plan_folds(network, proof, list(found.consumers)) if fold else []
    names = {unit.layer: name for name, unit in found.extracted.units.items()}
    folded = {name: np.zeros_like(d) for name, d in dead.items()}
    for f in folds:
        folded[names[f.layer]][f.unit] = True
    return _Plan(dead, folded, folds, kept_dead)


def _indices(masks: dict[str, np.ndarray]) -> dict[str, list[int]]:
    return {name: np.flatnonzero(m).tolist() for name, m in masks.items() if m.any()}


def _box(model, lower, upper, data, input_shape):
    """The box (flat), witness rows from the data (or None) and the input shape per sample."""
    if data is not None:
        if lower is not None or upper is not None:
            raise InvalidInputError("give a box (lower, upper) or data, not both")
        x = _samples(data)
        shape = tuple(x.shape[1:])
        flat = x.reshape(len(x), -1)
        rows = np.random.default_rng(0).permutation(len(x))[:DATA_WITNESSES]
        return flat.min(axis=0), flat.max(axis=0), flat[rows], shape
    if lower is None or upper is None:
        raise InvalidInputError("give the box as lower and upper bounds, or data to take it from")
    shape = _input_shape(model, lower, upper, input_shape)
    lower, upper = checked_box(lower, upper, int(np.prod(shape)))
    return lower, upper, None, shape


def _samples(data) -> np.ndarray:
    """Every input row of ``data``: an array of samples, or every split of a data set."""
    if isinstance(data, np.ndarray | torch.Tensor):
        x = np.asarray(data, dtype=float)
        if x.ndim < 2 or len(x) == 0:
            raise InvalidInputError(
                f"data has shape {x.shape}: give samples along the first axis, at least one"
            )
    else:
        found = dataset_of(data)
        splits = [found.x_train, found.x_test] + ([found.x_val] if found.x_val is not None else [])
        x = np.concatenate([np.asarray(s, dtype=float) for s in splits])
    if not np.isfinite(x).all():
        raise InvalidInputError("data contains NaN or infinite values")
    return x


def _input_shape(model, lower, upper, given) -> tuple[int, ...]:
    """The input shape per sample: ``given``, else the box's arrays' shape, else a first
    Linear layer's inputs."""
    if given is not None:
        return tuple(int(v) for v in given)
    for side in (lower, upper):
        side = np.asarray(side)
        if side.ndim >= 1:
            return tuple(side.shape)
    first = next((m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)), None)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise InvalidInputError(
        "the box is given as numbers and the model does not start with a Linear layer: give "
        "input_shape (e.g. (1, 28, 28)), arrays of bounds, or data"
    )


def _check(model, small, lower, upper, points, shape, seed) -> tuple[float, int]:
    """The largest output difference between ``model`` and ``small`` at points of the box;
    a VerificationError if it is beyond rounding."""
    x = box_points(lower, upper, CHECK_POINTS, seed + 1, points).reshape(-1, *shape)
    dtype = float_dtype(model)
    difference = largest = 0.0
    with torch.no_grad(), eval_mode(model), eval_mode(small):
        for batch in np.array_split(x, -(-len(x) // CHECK_BATCH)):
            inputs = torch.as_tensor(batch, dtype=dtype, device=model_device(model))
            before, after = model(inputs).double(), small(inputs).double()
            difference = max(difference, float((before - after).abs().max()))
            largest = max(largest, float(before.abs().max()))
    allowed = ROUNDING * torch.finfo(dtype).eps * (1 + largest)
    if not difference <= allowed:
        raise VerificationError(
            f"the compressed model's outputs differ from the model's by {difference:.3g} on "
            f"the box (more than rounding, {allowed:.3g}); please report this as a bug"
        )
    return difference, len(x)


def _check_relu_only(network) -> None:
    """Refuse a network with an activation other than ReLU: a unit proven inactive outputs 0
    only where its activation is 0 below 0 and linear above, as ReLU is."""
    for layer in network.layers:
        activation = getattr(layer, "activation", None)
        if activation is not None and not activation.is_relu:
            raise InvalidInputError(
                f"layer '{layer.name}' is followed by {activation}; compress proves units dead "
                "or always active for ReLU only: replace the activation or prune the network "
                "with oamip prune instead"
            )
