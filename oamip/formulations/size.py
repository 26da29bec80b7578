"""How large an importance MIP will be, from the network's sizes and the batch size alone.

Before a network is trained (or its bounds computed) nothing says which units will be stably on
or off for a sample, so :func:`estimate_size` counts every ReLU as undecided in every sample:
for a network of affine layers this is an upper bound on the model that
:func:`oamip.formulations.build_importance_model` builds (stable units, and the gated ones of
binary scores, one variable and at most four rows, only remove variables and rows), before any
cut is added. A model that folds (binary scores, one scored layer: docs/mathematics.md §4.8) is
counted as folded. It lets a size-limited solver be refused before any work.
"""

from __future__ import annotations

from dataclasses import dataclass

from oamip.formulations.importance import ImportanceSettings, folded_layer
from oamip.formulations.losses import Loss
from oamip.network import MaxPoolLayer, Network

BIG_M_ROWS = 3
"""Rows of one undecided scored ReLU in the big-M encoding: ``h >= arg``, ``h <= arg - L (1 - v)``
and ``h <= U v`` (docs/mathematics.md (1))."""
FACET_ROWS = 2
"""Rows the tight encoding adds to an undecided ReLU (two facets of its convex hull); the first
facet needs a pre-activation variable, so a first layer (constant inputs) gets only one."""


@dataclass(frozen=True)
class ModelSize:
    """Variables and constraints (rows) of a MIP."""

    variables: int
    constraints: int


def estimate_size(network: Network, samples: int, settings: ImportanceSettings) -> ModelSize:
    """The size of the importance MIP of ``network`` on ``samples`` samples, with every ReLU
    undecided (see the module's docstring): per sample and ReLU entry an output and a binary
    (a binary score on a constant input needs neither binary nor big-M rows), a pre-activation
    variable and its row where the inputs are variables; per sample and pooled output one
    variable, one binary per tap and two rows per tap plus one; per sample one variable and
    row per logit, one loss variable and at least one loss row; one score per unit and one
    ``min_keep`` row per scored layer."""
    tight = settings.encoding == "tight"
    binary = settings.scores == "binary"
    key = folded_layer(network, settings)
    if key is not None:
        return _folded(network, key, samples, settings.loss_fn)
    layers = network.layers
    variables = constraints = 0
    constant = True
    skip = False
    for i, layer in enumerate(layers):
        if skip:
            skip = False
            continue
        if isinstance(layer, MaxPoolLayer):
            variables, constraints = _pooling(layer, variables, constraints)
            continue
        pool = layers[i + 1] if i + 1 < len(layers) else None
        entries = layer.n_out
        pre = 0 if constant else entries
        act = getattr(layer, "activation", None)
        if act is not None:
            if tight and isinstance(pool, MaxPoolLayer):
                entries, skip = pool.n_out, True
                if not constant:
                    variables, constraints = _pooling(pool, variables, constraints)
            if constant and binary and tight:
                relu_vars, relu_rows = entries, entries
            else:
                facets = (FACET_ROWS - constant) if tight else 0
                relu_vars, relu_rows = 2 * entries, (BIG_M_ROWS + facets) * entries
            ramps, total = len(act.ramps), 0 if act.is_relu else entries
            variables += pre + ramps * relu_vars + total
            constraints += pre + ramps * relu_rows + total
        else:
            variables += entries
            constraints += entries
        constant = False
    scores = sum(layers[i].n_units for i in network.scored)
    per_sample = ModelSize(variables + 1, constraints + 1)
    return ModelSize(
        samples * per_sample.variables + scores,
        samples * per_sample.constraints + len(network.scored),
    )


def _folded(network: Network, key: int, samples: int, loss: Loss) -> ModelSize:
    """The size of a folded model (docs/mathematics.md §4.8): per sample a variable and a row
    per logit, one loss variable and the loss's first rows; one score per unit and one
    ``min_keep`` row."""
    classes = network.num_classes
    rows = classes + loss.rows_per_sample(classes)
    return ModelSize(samples * (classes + 1) + network.layers[key].n_units, samples * rows + 1)


def _pooling(pool: MaxPoolLayer, variables: int, constraints: int) -> tuple[int, int]:
    """The counts with one sample's max pooling added: per output a variable, one binary per
    tap, two rows per tap and one more."""
    taps = int(pool.windows.shape[1])
    return variables + pool.n_out * (1 + taps), constraints + pool.n_out * (2 * taps + 1)
