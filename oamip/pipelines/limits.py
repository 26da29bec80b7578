"""The size of a pipeline's MIP: refused, before any training, when it is over its solver's
size limit; solved in per-layer pieces when the whole network's MIP would not fit in memory.

A solver under a size-limited licence (the pip package of Gurobi:
:meth:`oamip.backends.Backend.size_limit`) would otherwise refuse the model only once the
network is trained and the MIP built. The MIP's size is estimated from the network's sizes and
the batch size (:func:`oamip.formulations.size.estimate_size`, an upper bound: every ReLU
counted as undecided).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TYPE_CHECKING

from torch import nn

from oamip import backends
from oamip.adapters import extract
from oamip.adapters.decompose import can_cut_by_layer
from oamip.errors import InvalidInputError
from oamip.formulations.size import ModelSize, estimate_size
from oamip.network import Network
from oamip.solve.options import ScoringOptions
from oamip.training.data import Dataset
from oamip.training.models import DEFAULT_HIDDEN, build

if TYPE_CHECKING:  # settings imports the polish, which sizes its MIP here
    from oamip.pipelines.settings import PruneSettings

WHOLE_MAX_VARIABLES = 2_000_000
"""A pipeline whose whole-network MIP on its batch is estimated over this many variables (every
ReLU undecided) solves it in per-layer pieces instead, as if ``decompose="layer"`` were given:
about 4 KB a variable were measured (LeNet-5 on 300 samples, 2.3 million: 10 GB), so this keeps
a build under about 9 GB. ResNet-20 on 28x28 inputs is estimated at 420,000 a sample."""


def in_pieces_if_large(
    model: nn.Module, dataset: Dataset, settings: PruneSettings
) -> tuple[PruneSettings, str | None]:
    """``settings``, with ``decompose="layer"`` when the whole MIP of ``model`` on the
    pipeline's batch is estimated over :data:`WHOLE_MAX_VARIABLES` and nothing else was asked
    for (no ``decompose``, several scored layers, pieces that can be priced apart), and the
    warning that says so (None when unchanged)."""
    if settings.decompose is not None:
        return settings, None
    network = sized_network(model, dataset)
    samples = settings.samples_per_class * dataset.num_classes
    scoring = settings.scoring()
    size = estimate_size(network, samples, scoring)
    if size.variables <= WHOLE_MAX_VARIABLES or not can_cut_by_layer(network, scoring):
        return settings, None
    note = (
        f"the whole network's MIP on {samples} samples would have up to {size.variables:,} "
        f"variables (over {WHOLE_MAX_VARIABLES:,}): it is solved in per-layer pieces "
        "(decompose='layer', heads fit on the training split); give decompose (--decompose) "
        "to choose"
    )
    return replace(settings, decompose="layer"), note


def check_size_limit(
    model: nn.Module | None,
    dataset: Dataset,
    settings: ScoringOptions,
    arch: str = "mlp",
    samples_per_class: int = 1,
) -> None:
    """Refuse ``settings.backend`` when the MIP of ``model`` (None: an untrained ``arch``, as
    it would be trained) on ``samples_per_class`` samples of each class is estimated over the
    backend's size limit. A decomposed solve is not checked here: its pieces are smaller, and
    each is refused by the solver if it is over."""
    limit = backends.get(settings.backend).size_limit()
    if limit is None or settings.decompose is not None:
        return
    network_of = model if model is not None else build(arch, dataset, DEFAULT_HIDDEN).eval()
    samples = samples_per_class * dataset.num_classes
    size = estimated_size(network_of, dataset, samples, settings)
    if size.variables > limit[0] or size.constraints > limit[1]:
        raise InvalidInputError(over_limit_message(settings.backend, size, limit, samples))


def estimated_size(
    model: nn.Module, dataset: Dataset, samples: int, settings: ScoringOptions
) -> ModelSize:
    """The size of the importance MIP of ``model`` on ``samples`` samples of ``dataset``'s kind
    (:func:`oamip.formulations.size.estimate_size`: every ReLU undecided)."""
    return estimate_size(sized_network(model, dataset), samples, settings)


def sized_network(model: nn.Module, dataset: Dataset) -> Network:
    """``model``'s network description on ``dataset``'s inputs, read for its sizes only (the
    model was checked before: its checks' warnings are not repeated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return extract(model, dataset.x_train[:1]).network


def over_limit_message(backend: str, size: ModelSize, limit: tuple[int, int], samples: int) -> str:
    """What a refusal says: the estimate, the limit and what to do."""
    return (
        f"backend '{backend}' runs under a size-limited licence (at most {limit[0]} variables "
        f"and {limit[1]} constraints), and the MIP of this model on {samples} samples would "
        f"have up to {size.variables} variables and {size.constraints} constraints (estimated "
        "from the layer sizes, every ReLU undecided); use backend 'highs' or 'scip' "
        "(--backend), fewer samples per class, a smaller model, or a full licence"
    )
