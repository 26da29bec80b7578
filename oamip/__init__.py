"""oamip: find the neurons a trained ReLU network cannot do without, by mathematical programming."""

from oamip import backends
from oamip.errors import (
    BackendUnavailableError,
    CapabilityError,
    InvalidInputError,
    OamipError,
    SolverError,
    UnsupportedLayerError,
    VerificationError,
)

__all__ = [
    "BackendUnavailableError",
    "CapabilityError",
    "InvalidInputError",
    "OamipError",
    "SolverError",
    "UnsupportedLayerError",
    "VerificationError",
    "backends",
]
__version__ = "0.1.0"
