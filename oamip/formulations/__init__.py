"""Pyomo formulations: the neuron-importance MIP, its ReLU and pooling encodings, its losses."""

from oamip.formulations.importance import (
    SCORE_MODES,
    ImportanceModel,
    ImportanceSettings,
    build_importance_model,
    sparsity_term,
)
from oamip.formulations.losses import LOSSES

__all__ = [
    "LOSSES",
    "SCORE_MODES",
    "ImportanceModel",
    "ImportanceSettings",
    "build_importance_model",
    "sparsity_term",
]
