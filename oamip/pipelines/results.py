"""The report of ``oamip prune`` and its parts, and how a solve's result becomes report fields.

Report types are plain dataclasses; ``to_dict()`` is what report.json holds (written and drawn
by :mod:`oamip.pipelines.report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
from torch import nn

from oamip.adapters.scoring import ScoreResult
from oamip.files import plain
from oamip.pipelines.budget import BudgetEntry, PathPoint, StepPoint
from oamip.pipelines.inputs import count_params, layer_labels
from oamip.pipelines.settings import PruneSettings, report_settings
from oamip.solve.decompose import PieceResult


@dataclass
class LayerReport:
    """One scored layer: its module name, its label (:func:`layer_labels`), its units, how many
    were pruned (which ones), the MIP's unit scores."""

    name: str
    units: int
    units_pruned: int
    pruned: list[int]
    scores: list[float]
    label: str


@dataclass
class BaselineReport:
    """A criterion's test accuracy at the MIP's units removed per layer (the paper's protocol)."""

    method: str
    accuracy_after: float
    accuracy_after_finetune: float | None


@dataclass
class CurvePoint:
    """Test accuracy (no fine-tuning) of every criterion at one threshold on the MIP scores."""

    threshold: float
    units_pruned: int
    layers_pruned: dict[str, int]
    accuracy: dict[str, float]


@dataclass
class SubproblemReport:
    """One piece of a decomposed solve (``label``: its class; None: every layer or class)."""

    layer: str | None
    label: int | None
    samples: int
    status: str
    objective: float | None
    bound: float | None
    seconds: float
    head_accuracy: float | None
    resumed: bool
    error: str | None
    continued: bool = False
    relu_entries: dict[str, int] = field(default_factory=dict)
    """Its ReLU entries by how its MIP encodes them (``binary``: the ones left to the
    solver; the others are fixed for every mask and sample, ``folded`` ones folded into the
    affine map of its binary scores)."""


@dataclass
class PruneReport:
    """What ``oamip prune`` found; ``to_dict()`` is report.json, ``model`` the pruned network."""

    dataset: str
    arch: str
    backend: str
    status: str
    lam: float
    loss: str
    scores: str
    threshold: float
    samples_per_class: int
    n_mip_samples: int
    seed: int
    time_limit: float | None
    solver_heuristics: bool
    objective: float
    bound: float | None
    gap: float | None
    units_total: int
    units_pruned: int
    params_total: int
    params_after: int
    accuracy_before: float
    accuracy_after: float
    accuracy_after_finetune: float | None
    finetune_epochs: int
    solve_seconds: float
    build_seconds: float
    train_seconds: float | None
    total_seconds: float
    decompose: str | None
    subproblems: list[SubproblemReport]
    """One record per piece with ``decompose`` (empty without)."""
    layers: list[LayerReport]
    baselines: list[BaselineReport]
    curve: list[CurvePoint]
    model: nn.Sequential = field(repr=False, compare=False)
    max_drop: float | None = None
    """The validation budget in points (None: one lam, and the budget fields stay empty)."""
    val_fraction: float | None = None
    val_size: int = 0
    val_accuracy_before: float | None = None
    path: list[PathPoint] = field(default_factory=list)
    """One entry per lam solved, sorted by lam."""
    chosen: int | None = None
    """The index in ``path`` of the mask kept (None: no lam within the budget, nothing pruned)."""
    budget: list[BudgetEntry] = field(default_factory=list)
    """The MIP and every criterion: the most units removed within the budget."""
    baseline_path: list[StepPoint] = field(default_factory=list)
    """Every criterion's steps in both schedules, per layer and ``<criterion>-global`` (see
    ``oamip.pipelines.budget.BASELINE_STEPS``)."""
    validation: dict | None = None
    """With a budget: ``{"source": "given" | "split", "samples": N}``."""
    warnings: list[str] = field(default_factory=list)
    """Why the validation samples may not hold the budget (also raised as ValidationWarning)."""
    path_note: str | None = None
    """Why the path is not monotone in lambda (None: it is, or there is no path)."""
    n_baseline_samples: int = 0
    """Training samples the baseline criteria scored on."""
    compression: dict | None = None
    """With ``compress``: what :func:`oamip.compress` removed and folded before scoring (its
    ``CompressResult.to_dict()``); the layers above are those of the compressed network."""

    def to_dict(self) -> dict:
        """The report as plain data (everything but the model), as written to report.json."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "model"}


COMPUTED = ("arch", "backend", "lam", "val_fraction")
"""The report's fields named like settings that the run fills: the architecture the model has,
the backend that solved, the lam kept, the validation fraction (None when no split was made)."""


def mip_fields(
    settings: PruneSettings,
    result: ScoreResult,
    masks: dict[str, np.ndarray],
    lam: float,
    n_samples: int,
    model: nn.Module,
    small: nn.Module,
) -> dict:
    """The :class:`PruneReport` fields that say how the MIP ran and what it pruned: the same in
    every pipeline that reports (prune, prune at initialisation). ``model`` is the network
    scored, ``small`` the pruned one reported."""
    return {
        **report_settings(settings, PruneReport, COMPUTED),
        "backend": result.backend,
        "status": result.status,
        "lam": lam,
        "n_mip_samples": n_samples,
        "objective": result.objective,
        "bound": result.bound,
        "gap": result.gap,
        "units_total": sum(len(m) for m in masks.values()),
        "units_pruned": sum(int((~m).sum()) for m in masks.values()),
        "params_total": count_params(model),
        "params_after": count_params(small),
        "subproblems": [subproblem_report(piece) for piece in result.subproblems],
        "layers": layer_reports(result, masks, layer_labels(model, list(masks))),
        "model": small,
    }


def layer_reports(
    result: ScoreResult, masks: dict[str, np.ndarray], labels: dict[str, str]
) -> list[LayerReport]:
    """One :class:`LayerReport` per scored layer of ``masks``."""
    return [
        LayerReport(
            name,
            len(keep),
            int((~keep).sum()),
            np.flatnonzero(~keep).tolist(),
            result.scores[name].tolist(),
            labels[name],
        )
        for name, keep in masks.items()
    ]


def subproblem_report(piece: PieceResult) -> SubproblemReport:
    """The report's columns of a piece (its scores and checkpoint key stay out of report.json)."""
    return SubproblemReport(**{f.name: getattr(piece, f.name) for f in fields(SubproblemReport)})


def piece_line(piece: PieceResult | SubproblemReport, labels: dict[str, str] | None = None) -> str:
    """One line on a finished piece: its layer (by its label, :func:`layer_labels`, when
    ``labels`` has it), class, status and seconds (and error)."""
    name = None if piece.layer is None else (labels or {}).get(piece.layer, piece.layer)
    layer = "all layers" if name is None else f"layer {name}"
    label = "all classes" if piece.label is None else f"class {piece.label}"
    how = f"{piece.seconds:.1f} s" + (", reused from an earlier run" if piece.resumed else "")
    how += ", continued from an earlier run's best" if piece.continued else ""
    error = f": {piece.error}" if piece.error else ""
    return f"piece {layer}, {label}: {piece.status} ({how}){error}"
