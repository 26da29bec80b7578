"""The one options type of the neuron-importance solve, and the home of each default.

``ScoringOptions`` extends the formulation's :class:`ImportanceSettings` (loss, lam, scores,
min_keep, encoding) with the solve's own options; the prune pipeline's settings extend it in
turn. ``score_neurons``, ``score_sweep``, ``oamip.prune`` and the ``oamip`` command all carry
one of these objects down to the solve, and their signatures are generated from its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypedDict

from oamip import backends, checks, files
from oamip.backends import SolveOptions
from oamip.backends.base import DEFAULT_MIP_GAP
from oamip.errors import InvalidInputError
from oamip.formulations import ImportanceSettings
from oamip.formulations.losses import Loss

DEFAULT_THRESHOLD = 0.1
"""Units whose score is below this are pruned (the authors' setting)."""
DEFAULT_TIME_LIMIT = 20.0
"""Seconds a solve may take by default, building included; it then returns its best scores,
status "time_limit" (Ctrl-C returns them sooner, status "interrupted")."""
MAX_THREADS = 1024
"""Most CPU threads accepted; far more than any machine has, far less than overflows torch."""
DECOMPOSITIONS = ("layer", "class")
"""The ways to cut the MIP into independent pieces (README, "Decomposition"); combinable."""
RESIDUAL_SCORES = ("both", "inner", "group")
DEFAULT_AUX_SAMPLES = 2000
"""Most rows of the auxiliary data the heads of ``decompose="layer"`` are fit on (a sample drawn
with a fixed seed): enough for heads of a few thousand weights, and it bounds the time and
memory of the auxiliary trace."""
"""Which units of a residual network are scored: its inner channels, its coupled groups, both."""


@dataclass
class ScoringOptions(ImportanceSettings):
    """Every option of a neuron-importance solve; the defaults are the authors' settings."""

    backend: str = checks.option("highs", "the solver backend (oamip.backends.available())")
    time_limit: float | None = checks.option(
        DEFAULT_TIME_LIMIT,
        "seconds for the solve, building included, or for each piece with decompose "
        "(None: no limit; Ctrl-C stops sooner, keeping the best scores found)",
    )
    mip_gap: float = checks.option(DEFAULT_MIP_GAP, "relative gap at which a solve is optimal")
    threads: int | None = checks.option(None, "solver threads (None: the solver's default)")
    verbose: bool = checks.option(False, "stream the solver's log")
    root_cuts: int = checks.option(0, "rounds of ideal ReLU cuts at the root before branching")
    solver_heuristics: bool = checks.option(
        False, "let the solver run its own primal heuristics (they mostly repeat the warm start)"
    )
    decompose: str | None = checks.option(
        None,
        "None: one MIP of the whole network; 'layer', 'class' or 'layer,class': independent "
        "pieces, one per scored layer (with an auxiliary head) and/or per class",
    )
    aux_samples: int | None = checks.option(
        DEFAULT_AUX_SAMPLES,
        "most rows of aux_data the heads of decompose='layer' are fit on, drawn with a fixed "
        "seed (None: every row)",
    )
    n_jobs: int = checks.option(1, "local worker processes for the pieces (with no executor)")
    checkpoint: Any = checks.option(
        None, "folder where each finished piece is saved at once; a rerun solves only the rest"
    )
    residual: str = checks.option(
        "inner",
        "units scored in a residual network: 'inner' (a block's inner channels; the default, "
        "it lost the least accuracy in the ResNet-20 benchmark), 'group' (the channels tied "
        "together by additions) or 'both'; a chain has neither and ignores it",
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
        if self.residual not in RESIDUAL_SCORES:
            raise InvalidInputError(
                f"residual must be one of {', '.join(RESIDUAL_SCORES)}, got {self.residual!r}"
            )
        self._validate_decomposition()

    def _validate_decomposition(self) -> None:
        """The decomposition options: a known decomposition, and the others only with one."""
        self.n_jobs = checks.whole("n_jobs", self.n_jobs, 1, MAX_THREADS)
        if self.aux_samples is not None:
            self.aux_samples = checks.whole("aux_samples", self.aux_samples, 1)
        if self.decompose is None:
            given = (["checkpoint"] if self.checkpoint is not None else []) + (
                ["n_jobs"] if self.n_jobs > 1 else []
            )
            _refuse_undecomposed(given)
            return
        self.decompose = decomposition(self.decompose)
        if self.checkpoint is not None:
            self.checkpoint = str(files.check_output_folder(self.checkpoint, "checkpoint folder"))

    def solo(self) -> ScoringOptions:
        """These options for one piece of a decomposition: no decomposition, no executor."""
        solo = self.scoring()
        solo.decompose = solo.checkpoint = None
        solo.n_jobs = 1
        return solo

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


class ScoringKeywords(TypedDict, total=False):
    """The keyword form of :class:`ScoringOptions`, for the signatures of the functions that
    take its options as keywords (editors and type checkers read it; tests/test_settings.py
    checks it against the dataclass's fields)."""

    loss: str | Loss
    lam: float
    scores: str
    min_keep: int
    sparsity: str
    encoding: str
    backend: str
    time_limit: float | None
    mip_gap: float
    threads: int | None
    verbose: bool
    root_cuts: int
    solver_heuristics: bool
    decompose: str | None
    aux_samples: int | None
    n_jobs: int
    checkpoint: Any
    residual: str


@dataclass(frozen=True)
class Resources:
    """What a solve is given beside its options, as live objects rather than choices:
    ``aux_data``, training data ``(x, y)`` for the auxiliary heads of ``decompose='layer'``
    (never test data), and ``executor``, where pieces run: None (here, or ``n_jobs`` local
    processes), a dask ``distributed.Client`` or a scheduler address such as
    ``'tcp://host:8786'``. Both only apply to a decomposed solve."""

    aux_data: Any = None
    executor: Any = None


def check_resources(options: ScoringOptions, aux_data: Any = None, executor: Any = None) -> None:
    """Check the :class:`Resources` of a solve against its (checked) options, before any
    work."""
    if options.decompose is None:
        given = [
            name
            for name, value in (("aux_data", aux_data), ("executor", executor))
            if value is not None
        ]
        _refuse_undecomposed(given)
        return
    if aux_data is not None and (isinstance(aux_data, str | bytes) or len(aux_data) != 2):
        raise InvalidInputError("aux_data must be a pair (x, y) of training inputs and labels")
    if not (
        executor is None or isinstance(executor, str) or callable(getattr(executor, "submit", None))
    ):
        raise InvalidInputError(
            "executor must be None, a dask distributed.Client or a scheduler address "
            f"such as 'tcp://host:8786', got {type(executor).__name__}"
        )


def _refuse_undecomposed(given: list[str]) -> None:
    """Refuse the options and resources ``given`` that only a decomposed solve takes."""
    if given:
        raise InvalidInputError(
            f"{', '.join(given)} only apply to a decomposed solve: set decompose to "
            f"one of {', '.join(DECOMPOSITIONS)} or 'layer,class'"
        )


def decomposition(value) -> str:
    """``value`` ('layer', 'class', 'layer,class', in any order and spacing) in its canonical
    form, or a clear error."""
    parts = value.split(",") if isinstance(value, str) else [value]
    names = {part.strip() if isinstance(part, str) else part for part in parts}
    unknown = [name for name in names if name not in DECOMPOSITIONS]
    if unknown or not names:
        raise InvalidInputError(
            f"unknown decompose {value!r}; use None, 'layer', 'class' or 'layer,class'"
        )
    return ",".join(name for name in DECOMPOSITIONS if name in names)
