"""oamip: find the neurons a trained ReLU network cannot do without, by mathematical programming.

The public API: ``score_neurons`` solves the neuron-importance MIP, ``apply_masks`` and
``remove_pruned`` write its masks back, ``save_model``/``load_model`` store pruned models.
"""

from oamip import backends, formulations
from oamip.adapters import apply_masks, load_model, remove_pruned, save_model
from oamip.errors import (
    BackendUnavailableError,
    CapabilityError,
    InvalidInputError,
    OamipError,
    SolverError,
    UnsupportedLayerError,
    VerificationError,
)
from oamip.pipeline import PruneReport, prune
from oamip.scoring import ScoreResult, score_neurons, score_sweep
from oamip.spr_pipeline import SPRReport, spr_prune

__all__ = [
    "BackendUnavailableError",
    "CapabilityError",
    "InvalidInputError",
    "OamipError",
    "ScoreResult",
    "SolverError",
    "UnsupportedLayerError",
    "VerificationError",
    "apply_masks",
    "backends",
    "formulations",
    "load_model",
    "remove_pruned",
    "save_model",
    "score_neurons",
    "score_sweep",
    "prune",
    "PruneReport",
    "spr_prune",
    "SPRReport",
]
__version__ = "0.1.0"
