"""Solving the importance MIP for the pipelines: whole (a live line counting seconds) or in
pieces (a bar and a line per piece), at one loss weight or along a path of them."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from oamip.adapters.scoring import ScoreResult, score_decomposed, score_neurons, score_sweep
from oamip.pipelines.budget import INTERPOLATED, PathPoint
from oamip.pipelines.results import piece_line
from oamip.pipelines.settings import PruneSettings
from oamip.solve.decompose import PieceResult
from oamip.training.data import Dataset

LIVE_LINE_INTERVAL = 0.25
"""Seconds between two updates of the line shown while the solver runs."""


def score_batch(
    model: nn.Module, x: np.ndarray, y: np.ndarray, settings: PruneSettings, dataset: Dataset
) -> ScoreResult:
    """The MIP at ``settings.lam`` (see :func:`scores_at`)."""
    return scores_at(model, x, y, settings, dataset, None)[0]


def scores_at(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: PruneSettings,
    dataset: Dataset,
    lams: list[float] | None,
) -> list[ScoreResult]:
    """The MIP at each of ``lams`` (None: ``settings.lam`` alone) solved whole (a live line),
    or in pieces (a bar and a line per piece); the heads of ``"layer"`` fit on ``dataset``'s
    training split."""
    options = settings.scoring()
    if options.decompose is None:
        limit = None if settings.time_limit is None else settings.time_limit * len(lams or [0])
        with _live_line(f"solving ({settings.backend})", limit, settings.progress):
            if lams is None:
                return [score_neurons(model, x, y, options)]
            return score_sweep(model, x, y, lams, options)
    if "layer" in options.decompose.split(",") and options.aux_data is None:
        options.aux_data = (dataset.x_train, dataset.y_train)
    bar = f"pieces ({settings.backend})"
    with _pieces_bar(bar, settings.progress, settings.progress or settings.log) as on_done:
        return score_decomposed(model, x, y, options, lams or [options.lam], on_done)


@contextmanager
def _pieces_bar(
    desc: str, enabled: bool, lines: bool
) -> Iterator[Callable[[PieceResult, int], None]]:
    """A tqdm bar over the pieces of a decomposed solve (``enabled``), and above it one line per
    finished piece (``lines``); yields the callback that reports a piece (and the number of
    pieces in all)."""
    with tqdm(desc=desc, unit="piece", disable=not enabled) as bar:

        def done(piece: PieceResult, total: int) -> None:
            bar.total = total
            if lines:
                tqdm.write(piece_line(piece), file=sys.stderr)
            bar.update()

        yield done


@contextmanager
def _live_line(desc: str, time_limit: float | None, enabled: bool) -> Iterator[None]:
    """A tqdm line counting the seconds a block runs (against ``time_limit`` when given)."""
    bar_format = "{desc}: {n:.1f} s" + ("/{total:.0f} s |{bar}|" if time_limit else "")
    done = threading.Event()
    with tqdm(total=time_limit, desc=desc, bar_format=bar_format, disable=not enabled) as bar:
        start = time.perf_counter()

        def tick() -> None:
            while not done.wait(LIVE_LINE_INTERVAL):
                bar.n = min(time.perf_counter() - start, time_limit or float("inf"))
                bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        if enabled:
            ticker.start()
        try:
            yield
        finally:
            done.set()
            if enabled:
                ticker.join()


def path_line(point: PathPoint) -> None:
    """One line on stderr per weight of the path, as it is evaluated."""
    gap = "" if point.gap is None else f", gap {100 * point.gap:.2f}%"
    status = "interpolated" if point.status == INTERPOLATED else f"{point.status}{gap}"
    towards = "towards " if point.status == INTERPOLATED else ""
    tqdm.write(
        f"{towards}lambda {point.lam:.4g}: {point.units_pruned} units pruned, validation "
        f"accuracy {100 * point.val_accuracy:.2f}% ({status})",
        file=sys.stderr,
    )
