"""Trained reference networks for benchmarks and instance sets, made reproducibly.

A network is trained from a fixed seed and cached with :func:`oamip.save_model`, keyed by
everything that defines it, so the instances that benchmarks solve are the same every run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from oamip.adapters import load_model, save_model
from oamip.training.data import Dataset
from oamip.training.inference import evaluate
from oamip.training.models import TRAINING_DEFAULTS, build
from oamip.training.train import train


@dataclass(frozen=True)
class Recipe:
    """How a reference network is trained."""

    arch: str
    hidden: tuple[int, ...] = ()
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    shift: int = 0
    cosine: bool = False

    def key(self, dataset: Dataset) -> str:
        fields = asdict(self)
        if not self.cosine:  # recipes from before the option keep their cached networks
            del fields["cosine"]
        text = json.dumps({"data": dataset.name, "n": len(dataset.y_train), **fields})
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @classmethod
    def default(cls, arch: str, seed: int = 0) -> Recipe:
        """``arch``'s own recipe from TRAINING_DEFAULTS, or the generic settings above."""
        settings = TRAINING_DEFAULTS.get(arch)
        if settings is None:
            return cls(arch, seed=seed)
        return cls(
            arch,
            epochs=settings.epochs,
            lr=settings.lr,
            seed=seed,
            shift=settings.shift,
            cosine=settings.cosine,
        )


@dataclass
class Trained:
    """A trained network with its recipe and test accuracy."""

    model: nn.Module
    recipe: Recipe
    accuracy: float
    train_seconds: float | None


def trained(
    dataset: Dataset, recipe: Recipe, cache_dir: str | Path | None = None, progress: bool = False
) -> Trained:
    """Train ``recipe`` on ``dataset``, or load it from ``cache_dir`` if trained before."""
    path = Path(cache_dir) / f"{recipe.arch}-{recipe.key(dataset)}.pt" if cache_dir else None
    if path is not None and path.is_file():
        model = load_model(path)
        return Trained(model, recipe, evaluate(model, dataset.x_test, dataset.y_test), None)
    model = build(recipe.arch, dataset, hidden=_hidden(recipe.hidden), seed=recipe.seed)
    start = time.perf_counter()
    train(
        model,
        dataset,
        recipe.epochs,
        recipe.lr,
        recipe.batch_size,
        recipe.seed,
        "cpu",
        progress,
        shift=recipe.shift,
        cosine=recipe.cosine,
    )
    seconds = time.perf_counter() - start
    if path is not None:
        save_model(model, path)
    return Trained(model, recipe, evaluate(model, dataset.x_test, dataset.y_test), seconds)


def _hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(h) for h in hidden)
