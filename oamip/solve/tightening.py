"""LP-based bound tightening (OBBT) for the importance MIP, with a time budget.

The interval bounds of :mod:`oamip.bounds` hold for every score vector. For a layer fed by
variables, the continuous relaxation of the importance MIP (every score in ``[0, 1]``, every
binary relaxed) contains every value the network can take, so minimising and maximising a
pre-activation over it gives bounds that still hold for every score vector, and are often
tighter. Layers are tightened in order; each tightened layer is propagated to the later ones by
interval arithmetic before the next is tightened. The score constants ``M`` never change
(docs/mathematics.md §4.1): only the encoding's big-M constants shrink, never the problem.

Where it cannot help: the layer right after the first scored layer has exact interval bounds
already (each first-layer unit ranges over ``[0, ReLU(a)]`` on its own, and interval
arithmetic of one affine layer over a box is exact), so ``tighten_bounds`` skips it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from oamip import backends
from oamip.backends import SolveOptions
from oamip.bounds import LayerBounds, NetworkBounds, interval_bounds, propagate_after
from oamip.errors import InvalidInputError
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.network import Affine, Network

SAFETY = 1e-6
"""LP values are only accurate to the solver's tolerances: tightened bounds are widened by
``SAFETY * (1 + |bound|)`` so that no value the network takes is cut off."""


@dataclass
class TighteningResult:
    """Tightened bounds, what it cost, and how much moved per layer."""

    bounds: NetworkBounds
    seconds: float
    lps: int
    entries: dict[int, int] = field(default_factory=dict)
    """Per tightened layer: how many (sample, output) pre-activations were optimised over."""
    width_before: dict[int, float] = field(default_factory=dict)
    width_after: dict[int, float] = field(default_factory=dict)
    """Per tightened layer: the mean width ``upper - lower`` of those entries, before/after."""


def tighten_bounds(
    network: Network,
    x: np.ndarray,
    y: np.ndarray,
    settings: ImportanceSettings | None = None,
    *,
    backend: str = "highs",
    time_budget: float = 60.0,
    layers: list[int] | None = None,
    threads: int | None = None,
) -> TighteningResult:
    """Tighten the bounds of ``layers`` (default: every affine layer whose inputs are not a
    box, i.e. after the second affine layer) within ``time_budget`` seconds.

    Returns bounds to pass to :func:`~oamip.formulations.build_importance_model`; entries the
    budget did not reach keep their interval bounds."""
    if not np.isfinite(time_budget) or time_budget <= 0:
        raise InvalidInputError(f"time_budget must be positive seconds, got {time_budget}")
    start = time.perf_counter()
    deadline = start + time_budget
    x = network.check_input(x)
    bounds = interval_bounds(network, x)
    targets = _default_layers(network) if layers is None else _check_layers(network, layers)
    solver = backends.get(backend)
    result = TighteningResult(bounds, 0.0, 0)
    for index in targets:
        if time.perf_counter() >= deadline:
            break
        bounds = _tighten_layer(
            network, x, y, settings, bounds, index, solver, threads, deadline, result
        )
        result.bounds = bounds
    result.seconds = time.perf_counter() - start
    return result


def _default_layers(network: Network) -> list[int]:
    affine = [i for i, layer in enumerate(network.layers) if isinstance(layer, Affine)]
    return affine[2:]


def _check_layers(network: Network, layers: list[int]) -> list[int]:
    for index in layers:
        if not (0 <= index < len(network.layers)) or not isinstance(network.layers[index], Affine):
            raise InvalidInputError(
                f"layer {index} is not an affine layer of the network; give indices of "
                f"Linear/Conv2d layers (0..{len(network.layers) - 1})"
            )
    return sorted(layers)


def _tighten_layer(network, x, y, settings, bounds, index, solver, threads, deadline, result):
    """Optimise every pre-activation variable of layer ``index`` over the relaxation."""
    im = build_importance_model(network, x, y, settings, bounds, fold=False)
    ids = im.pre_ids.get(index)
    if ids is None or not (ids >= 0).any():
        return bounds
    form = backends.compile_model(im.model)
    sample, output = np.nonzero(ids >= 0)
    columns = form.columns_of([im.table.variables[v] for v in ids[sample, output]])
    options = SolveOptions(threads=threads)
    lo, hi = solver.column_ranges(form, columns, options, deadline)
    result.lps += int(np.isfinite(lo).sum() + np.isfinite(hi).sum())
    old = bounds.layers[index]
    lower, upper = old.lower.copy(), old.upper.copy()
    lower[sample, output] = np.maximum(old.lower[sample, output], lo - SAFETY * (1 + np.abs(lo)))
    upper[sample, output] = np.minimum(old.upper[sample, output], hi + SAFETY * (1 + np.abs(hi)))
    result.entries[index] = len(sample)
    result.width_before[index] = float(np.mean(old.upper - old.lower, where=ids >= 0))
    result.width_after[index] = float(np.mean(upper - lower, where=ids >= 0))
    layers = list(bounds.layers)
    layers[index] = LayerBounds(lower, upper)
    return propagate_after(network, NetworkBounds(layers, bounds.big_m), index)
