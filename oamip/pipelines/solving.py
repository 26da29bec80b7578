"""Solving the importance MIP for the pipelines: whole (a live line counting seconds) or in
pieces (a bar and a line per piece), at one loss weight or along a path of them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from torch import nn

from oamip.adapters.scoring import ScoreResult, score_decomposed, score_neurons, score_sweep
from oamip.pipelines.budget import INTERPOLATED, NOT_SOLVED, PathPoint
from oamip.pipelines.results import piece_line
from oamip.pipelines.settings import PruneSettings
from oamip.progress import Listener, Task
from oamip.solve.decompose import PieceResult
from oamip.solve.options import Resources, ScoringOptions
from oamip.training.data import Dataset

LIVE_LINE_INTERVAL = 0.25
"""Seconds between two updates of the line shown while the solver runs."""


@dataclass(frozen=True)
class BatchSolver:
    """How one pipeline run solves the importance MIP on its batches: the settings, the
    resources given beside them, the data set whose training split the auxiliary heads of
    ``decompose="layer"`` fit on (unless ``resources.aux_data`` is given), and who hears of
    its progress (:mod:`oamip.progress`)."""

    settings: PruneSettings
    dataset: Dataset
    resources: Resources = Resources()
    listener: Listener | None = None

    def one(self, model: nn.Module, x: np.ndarray, y: np.ndarray) -> ScoreResult:
        """The MIP at ``settings.lam``."""
        return self.at(model, x, y, None)[0]

    def at(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        lams: list[float] | None,
        options: ScoringOptions | None = None,
    ) -> list[ScoreResult]:
        """The MIP at each of ``lams`` (None: ``settings.lam`` alone) solved whole (a clock of
        seconds), or in pieces (a count of pieces and a line per piece); ``options`` in place
        of the settings' own (:meth:`PruneSettings.scoring`) when given."""
        settings, options = self.settings, options or self.settings.scoring()
        if options.decompose is None:
            limit = None if settings.time_limit is None else settings.time_limit * len(lams or [0])
            with _clock(self.listener, f"solving ({settings.backend})", limit):
                if lams is None:
                    return [score_neurons(model, x, y, options)]
                return score_sweep(model, x, y, lams, options)
        aux = self.resources.aux_data
        if "layer" in options.decompose.split(",") and aux is None:
            aux = (self.dataset.x_train, self.dataset.y_train)
        with _pieces_task(self.listener, f"pieces ({settings.backend})") as on_done:
            weights = lams or [options.lam]
            return score_decomposed(
                model, x, y, options, weights, on_done, aux, self.resources.executor
            )


@contextmanager
def _pieces_task(
    listener: Listener | None, desc: str
) -> Iterator[Callable[[PieceResult, int], None]]:
    """A task over the pieces of a decomposed solve, a line per finished piece; yields the
    callback that reports a piece (and the number of pieces in all)."""
    with Task(listener, desc, unit="piece") as task:

        def done(piece: PieceResult, total: int) -> None:
            task.line(piece_line(piece))
            task.advance(total=total)

        yield done


@contextmanager
def _clock(listener: Listener | None, desc: str, time_limit: float | None) -> Iterator[None]:
    """A task counting the seconds a block runs (out of ``time_limit`` when given), updated
    every LIVE_LINE_INTERVAL by a thread of its own (none when nobody listens)."""
    if listener is None:
        yield
        return
    done = threading.Event()
    with Task(listener, desc, time_limit, "s") as task:
        start = time.perf_counter()

        def tick() -> None:
            while not done.wait(LIVE_LINE_INTERVAL):
                task.reach(min(time.perf_counter() - start, time_limit or float("inf")))

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()


def path_text(point: PathPoint) -> str:
    """The line that reports one weight of the path, as it is evaluated."""
    gap = "" if point.gap is None else f", gap {100 * point.gap:.2f}%"
    status = point.status if point.status in NOT_SOLVED else f"{point.status}{gap}"
    towards = "towards " if point.status == INTERPOLATED else ""
    return (
        f"{towards}lambda {point.lam:.4g}: {point.units_pruned} units pruned, validation "
        f"accuracy {100 * point.val_accuracy:.2f}% ({status})"
    )
