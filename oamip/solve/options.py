"""The one options type of the neuron-importance solve, and the home of each default.

``ScoringOptions`` extends the formulation's :class:`ImportanceSettings` (loss, lam, scores,
min_keep, encoding) with the solve's own options; the prune pipeline's settings extend it in
turn. ``score_neurons``, ``score_sweep``, ``oamip.prune`` and the ``oamip`` command all carry
one of these objects down to the solve, and their signatures are generated from its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from oamip import backends, checks
from oamip.backends import SolveOptions
from oamip.backends.base import DEFAULT_MIP_GAP
from oamip.errors import InvalidInputError
from oamip.formulations import ImportanceSettings

DEFAULT_THRESHOLD = 0.1
"""Units whose score is below this are pruned (the authors' setting)."""
MAX_THREADS = 1024
"""Most CPU threads accepted; far more than any machine has, far less than overflows torch."""


@dataclass
class ScoringOptions(ImportanceSettings):
    """Every option of a neuron-importance solve; the defaults are the authors' settings."""

    backend: str = checks.option("highs", "the solver backend (oamip.backends.available())")
    time_limit: float | None = checks.option(
        None, "seconds for the whole call, building included (None: no limit)"
    )
    mip_gap: float = checks.option(DEFAULT_MIP_GAP, "relative gap at which a solve is optimal")
    threads: int | None = checks.option(None, "solver threads (None: the solver's default)")
    verbose: bool = checks.option(False, "stream the solver's log")
    root_cuts: int = checks.option(0, "rounds of ideal ReLU cuts at the root before branching")
    solver_heuristics: bool = checks.option(
        False, "let the solver run its own primal heuristics (they mostly repeat the warm start)"
    )

    def validate(self) -> None:
        """Check every option before any work (InvalidInputError names the culprit) and
        normalise it; the backend must be installed."""
        super().validate()
        if not isinstance(self.backend, str | backends.Backend):
            raise InvalidInputError(
                f"unknown backend {self.backend!r}; known backends: {', '.join(backends.known())}"
            )
        backends.get(self.backend)
        if self.time_limit is not None:
            self.time_limit = checks.real(
                "time_limit (seconds)", self.time_limit, 0.0, open_low=True
            )
        self.mip_gap = checks.real("mip_gap", self.mip_gap, 0.0, 1.0)
        if self.threads is not None:
            self.threads = checks.whole("threads", self.threads, 1, MAX_THREADS)
        self.root_cuts = checks.whole("root_cuts", self.root_cuts, 0)
        for name in ("verbose", "solver_heuristics"):
            checks.flag(name, getattr(self, name))

    def scoring(self) -> ScoringOptions:
        """Just the scoring options (a subclass's object narrowed to this class)."""
        return ScoringOptions(**{f.name: getattr(self, f.name) for f in fields(ScoringOptions)})

    def solve_options(self) -> SolveOptions:
        """The backend's options set for these scoring options."""
        return SolveOptions(
            mip_gap=self.mip_gap,
            threads=self.threads,
            verbose=self.verbose,
            heuristics=self.solver_heuristics,
        )
