"""One error hierarchy: every message says what is wrong and what to do about it."""


class OamipError(Exception):
    """Base class of every error the package raises on purpose."""


class InvalidInputError(OamipError, ValueError):
    """The model, the data or an argument is not usable as given."""


class UnsupportedLayerError(OamipError):
    """The network contains a layer or an activation the package cannot encode."""


class BackendUnavailableError(InvalidInputError):
    """A solver backend is unknown or not installed."""


class CapabilityError(OamipError):
    """A backend was asked to solve a model it cannot handle (integers, quadratics, ...)."""


class SolverError(OamipError):
    """The solver ran but returned no usable solution."""


class LicenceLimitError(SolverError):
    """The solver's licence does not cover a model this size: no retry can help."""


class VerificationError(OamipError):
    """The solver's solution disagrees with the network's own forward pass."""


class PyomoVersionError(OamipError):
    """The installed Pyomo changed an internal attribute that the standard-form compiler reads."""


class ValidationWarning(UserWarning):
    """The validation samples of an accuracy budget cannot be trusted to hold it: the model has
    probably seen them, or they are too few to resolve the budget."""


class SizeWarning(UserWarning):
    """The whole network's MIP would be too large to build on this machine: it is solved in
    per-layer pieces instead."""
