"""The settings of ``oamip.prune``: one dataclass, its checks and the training recipe it falls
back on, shared by every pipeline that prunes (prune, at initialisation, transfer)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import torch

from oamip import checks
from oamip.errors import InvalidInputError
from oamip.pipelines.budget import (
    DEFAULT_BASELINE_SAMPLES,
    DEFAULT_INTERPOLATE_STEPS,
    DEFAULT_LAMS,
    DEFAULT_POLISH_SAMPLES,
    DEFAULT_RANK_SCORES,
    DEFAULT_REFINE_STEPS,
    DEFAULT_VAL_FRACTION,
    checked_lams,
)
from oamip.solve.options import DEFAULT_THRESHOLD, ScoringKeywords, ScoringOptions
from oamip.training.inference import resolve_device
from oamip.training.models import ARCHITECTURES, TrainingDefaults

DEFAULT_RECIPE = TrainingDefaults(epochs=10, lr=1e-2)
"""How mlp and lenet5 are trained when no model is given (vgg: ``TRAINING_DEFAULTS``)."""


DEFAULT_FINETUNE_LR = 1e-3


SEED_MAX = 2**32 - 1
"""Largest seed: the seeds of numpy's and torch's generators that every platform takes."""


@dataclass
class ExperimentSettings(ScoringOptions):
    """What every pipeline that trains, scores and prunes chooses beside the scoring options
    (:class:`ScoringOptions`, whose defaults are the authors' settings): declared once here for
    ``oamip prune`` and ``oamip transfer``. ``threads`` limits PyTorch's CPU threads as well as
    the solver's."""

    arch: str = checks.option(
        "mlp", f"the architecture trained when no model is given: {', '.join(ARCHITECTURES)}"
    )
    samples_per_class: int = checks.option(1, "training samples per class in the MIP batch")
    threshold: float = checks.option(DEFAULT_THRESHOLD, "units scoring below it are pruned")
    device: str = checks.option("cpu", "where to train and evaluate: cpu, cuda, cuda:N")
    progress: bool | None = checks.option(
        None, "progress bars (None: where a person watches: a terminal or a notebook)"
    )

    def validate(self) -> None:
        """Check every setting before any work (InvalidInputError names the culprit) and
        normalise it; the backend must be installed."""
        super().validate()
        resolve_device(self.device)
        checks.choice("architecture", self.arch, ARCHITECTURES)
        self.threshold = checks.real("the threshold", self.threshold, 0.0, 1.0)
        self.samples_per_class = checks.whole("samples per class", self.samples_per_class, 1)
        if self.progress is not None:
            checks.flag("progress", self.progress)


@dataclass
class PruneSettings(ExperimentSettings):
    """Every choice of ``oamip prune``: the experiment's settings (:class:`ExperimentSettings`)
    and the pipeline's own."""

    finetune_epochs: int = checks.option(1, "epochs of fine-tuning after pruning (0: none)")
    seed: int = checks.option(0, "seed of training, the MIP batch and the baselines")
    at_init: bool = checks.option(False, "score and prune at initialisation, then train")
    compress: bool = checks.option(
        False,
        "before scoring, remove the units proven dead on the data's range and fold the "
        "always-active ones (oamip.compress, within time_limit; the same outputs on that range, "
        "smaller MIPs)",
    )
    max_drop: float | None = checks.option(
        None,
        "points of validation accuracy the pruned network may lose against the dense one: "
        "solve the lam path and keep the sparsest mask within (None: one lam, no validation)",
    )
    lams: tuple[float, ...] | None = checks.option(
        None, f"the path's loss weights with max_drop (None: {', '.join(map(str, DEFAULT_LAMS))})"
    )
    val_fraction: float = checks.option(
        DEFAULT_VAL_FRACTION, "share of the training split held out for validation (max_drop)"
    )
    refine_steps: int = checks.option(
        DEFAULT_REFINE_STEPS, "bisection steps of the path around the budget (max_drop)"
    )
    baseline_samples: int = checks.option(
        DEFAULT_BASELINE_SAMPLES,
        "training samples the baseline criteria score on (SNIP and Taylor use them; at most "
        "the training split, never validation or test)",
    )
    interpolate_steps: int = checks.option(
        DEFAULT_INTERPOLATE_STEPS,
        "bisection steps between the kept mask and the next sparser solution (max_drop; 0: none)",
    )
    polish_samples: int = checks.option(
        DEFAULT_POLISH_SAMPLES,
        "with max_drop, polish the best mask within the budget (any method's): solve the MIP "
        "on the network it leaves and this many of its hardest training samples, and step "
        "further along the MIP's scores (0: no polishing)",
    )
    rank_scores: bool = checks.option(
        DEFAULT_RANK_SCORES,
        "also step every solved weight's scores as one global ranking, ties by magnitude, like "
        "the global baselines, and keep the sparsest mask within the budget (max_drop)",
    )

    def validate(self) -> None:
        """Check every setting before any work (InvalidInputError names the culprit) and
        normalise it; the backend must be installed."""
        super().validate()
        self.finetune_epochs = checks.whole("fine-tuning epochs", self.finetune_epochs, 0)
        self.seed = checked_seed(self.seed)
        checks.flag("at_init", self.at_init)
        checks.flag("compress", self.compress)
        if self.compress and self.at_init:
            raise InvalidInputError(
                "compress (--compress) proves units dead in a trained network; it does not "
                "apply with at_init (--at-init): drop one of them"
            )
        self.baseline_samples = checks.whole("baseline samples", self.baseline_samples, 1)
        self._validate_budget()

    def _validate_budget(self) -> None:
        """The budget's settings: lams and refine_steps only make sense with max_drop."""
        self.val_fraction = checks.real(
            "the validation fraction", self.val_fraction, 0.0, 1.0, open_low=True
        )
        self.refine_steps = checks.whole("refine steps", self.refine_steps, 0)
        self.interpolate_steps = checks.whole("interpolate steps", self.interpolate_steps, 0)
        self.polish_samples = checks.whole("polish samples", self.polish_samples, 0)
        checks.flag("rank_scores", self.rank_scores)
        if self.max_drop is None:
            if self.lams is not None:
                raise InvalidInputError(
                    "lams (--lams) is the path of an accuracy budget: give max_drop "
                    "(--max-drop POINTS) too, or use lam (--lam) for one weight"
                )
            return
        self.max_drop = checks.real("max_drop (points of accuracy)", self.max_drop, 0.0, 100.0)
        if self.lams is not None:
            self.lams = checked_lams(self.lams)


class ExperimentKeywords(ScoringKeywords, total=False):
    """The keyword form of :class:`ExperimentSettings` (checked against it by a test)."""

    arch: str
    samples_per_class: int
    threshold: float
    device: str
    progress: bool | None


class PruneKeywords(ExperimentKeywords, total=False):
    """The keyword form of :class:`PruneSettings`: what ``oamip.prune`` takes as keywords."""

    finetune_epochs: int
    seed: int
    at_init: bool
    compress: bool
    max_drop: float | None
    lams: tuple[float, ...] | None
    val_fraction: float
    refine_steps: int
    interpolate_steps: int
    polish_samples: int
    rank_scores: bool
    baseline_samples: int


def report_settings(settings: Any, report: type, computed: tuple[str, ...]) -> dict:
    """The fields of the dataclass ``report`` that repeat a setting of the same name, taken from
    the settings dataclass ``settings`` rather than copied by hand (a loss as its name);
    ``computed`` names the fields the run fills itself (the lam a budget chose, say)."""
    names = {f.name for f in fields(report)} & {f.name for f in fields(settings)}
    return {
        name: str(value) if name in ("loss", "backend") else value
        for name in sorted(names - set(computed))
        for value in [getattr(settings, name)]
    }


def checked_seed(seed: int) -> int:
    """``seed`` as an int, refused unless a whole number in 0..SEED_MAX."""
    return checks.whole("seed", seed, 0, SEED_MAX)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with PyTorch limited to ``threads`` CPU threads (None: unchanged)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
