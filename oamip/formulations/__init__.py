"""Pyomo formulations: the neuron-importance MIP, its ReLU and pooling encodings, its losses."""

from oamip.formulations.importance import (
    SCORE_MODES,
    SPARSITY_MODES,
    ImportanceModel,
    ImportanceSettings,
    build_importance_model,
    sparsity_term,
    unit_weights,
)
from oamip.formulations.losses import (
    LOSSES,
    CrossEntropy,
    Fidelity,
    Hinge,
    Loss,
    LossSite,
    get_loss,
    loss_names,
    register_loss,
)

__all__ = [
    "LOSSES",
    "SCORE_MODES",
    "SPARSITY_MODES",
    "CrossEntropy",
    "Fidelity",
    "Hinge",
    "ImportanceModel",
    "ImportanceSettings",
    "Loss",
    "LossSite",
    "build_importance_model",
    "get_loss",
    "loss_names",
    "register_loss",
    "sparsity_term",
    "unit_weights",
]
