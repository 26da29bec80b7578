"""oamip: find the neurons a trained ReLU network cannot do without, by mathematical programming.

The public API: ``score_neurons`` solves the neuron-importance MIP, ``apply_masks`` and
``remove_pruned`` write its masks back, ``save_model``/``load_model`` store pruned models,
``prune`` and ``spr_prune`` run whole pipelines, ``compress`` removes what is provably useless
on a box of inputs. Names are loaded on first use, so that
``import oamip.network`` (numpy only) does not pay for torch, Pyomo and the solvers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from oamip.errors import (
    BackendUnavailableError,
    CapabilityError,
    InvalidInputError,
    OamipError,
    SolverError,
    UnsupportedLayerError,
    VerificationError,
)
from oamip.version import __version__

_MODULES = ("backends", "formulations")
_LAZY = {
    "backends": "oamip.backends",
    "formulations": "oamip.formulations",
    "ScoringOptions": "oamip.solve.options",
    "ScoreResult": "oamip.adapters.scoring",
    "score_neurons": "oamip.adapters.scoring",
    "score_sweep": "oamip.adapters.scoring",
    "apply_masks": "oamip.adapters.masks",
    "remove_pruned": "oamip.adapters.masks",
    "load_model": "oamip.adapters.serialize",
    "save_model": "oamip.adapters.serialize",
    "CompressResult": "oamip.pipelines.compress",
    "compress": "oamip.pipelines.compress",
    "PruneReport": "oamip.pipelines.prune",
    "prune": "oamip.pipelines.prune",
    "SPRReport": "oamip.pipelines.spr",
    "spr_prune": "oamip.pipelines.spr",
    "TransferReport": "oamip.pipelines.transfer",
    "transfer": "oamip.pipelines.transfer",
}

if TYPE_CHECKING:
    from oamip import backends, formulations
    from oamip.adapters.masks import apply_masks, remove_pruned
    from oamip.adapters.scoring import ScoreResult, score_neurons, score_sweep
    from oamip.adapters.serialize import load_model, save_model
    from oamip.pipelines.compress import CompressResult, compress
    from oamip.pipelines.prune import PruneReport, prune
    from oamip.pipelines.spr import SPRReport, spr_prune
    from oamip.pipelines.transfer import TransferReport, transfer
    from oamip.solve.options import ScoringOptions


def __getattr__(name: str):
    """Import a public name's module on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'oamip' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if name in _MODULES else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "__version__",
    "BackendUnavailableError",
    "CapabilityError",
    "CompressResult",
    "InvalidInputError",
    "OamipError",
    "PruneReport",
    "SPRReport",
    "ScoreResult",
    "ScoringOptions",
    "SolverError",
    "TransferReport",
    "UnsupportedLayerError",
    "VerificationError",
    "apply_masks",
    "backends",
    "compress",
    "formulations",
    "load_model",
    "prune",
    "remove_pruned",
    "save_model",
    "score_neurons",
    "score_sweep",
    "spr_prune",
    "transfer",
]
