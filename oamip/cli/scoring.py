"""The options of the MIP's scoring shared by ``oamip prune`` and ``oamip transfer``: one
definition of their names, help and defaults (the command's copy of its settings class's
defaults, from :mod:`oamip.cli.defaults`); imports nothing heavy."""

from __future__ import annotations

import argparse

from oamip.cli.common import one_of, progress_shown
from oamip.cli.defaults import (
    AUX_SAMPLES,
    LOSSES,
    RESIDUAL_SCORES,
    SCORE_MODES,
    SPARSITY_MODES,
    backend_names,
)

DEFAULT_THREADS = 1
"""The commands run on one CPU thread unless told otherwise (the library keeps the default)."""


def add_scoring_arguments(parser: argparse.ArgumentParser, defaults) -> None:
    """The solver, the objective, the scores and where the pieces run; ``defaults`` is the
    command's defaults (:data:`oamip.cli.defaults.PRUNE` or ``TRANSFER``: those of a
    :class:`~oamip.solve.options.ScoringOptions` with ``samples_per_class``, ``threshold`` and
    ``device``)."""
    d = defaults
    add = parser.add_argument
    add(
        "--backend",
        metavar=one_of(backend_names()),
        default=d.backend,
        help=f"solver (default {d.backend})",
    )
    add(
        "--samples-per-class",
        type=int,
        default=d.samples_per_class,
        metavar="K",
        help=f"training samples per class in the MIP batch (default {d.samples_per_class})",
    )
    add("--lam", type=float, default=d.lam, metavar="X", help=f"loss weight (default {d.lam:g})")
    add("--loss", metavar=one_of(LOSSES), default=d.loss, help=f"(default {d.loss})")
    add("--scores", metavar=one_of(SCORE_MODES), default=d.scores, help=f"(default {d.scores})")
    add(
        "--sparsity",
        metavar=one_of(SPARSITY_MODES),
        default=d.sparsity,
        help="how the sparsity term weighs a unit: 1/units of its layer, every layer counting the "
        f"same (layer, the paper's), or every unit the same (unit) (default {d.sparsity})",
    )
    add(
        "--threshold",
        type=float,
        default=d.threshold,
        metavar="T",
        help=f"units scoring below it are pruned, in [0, 1] (default {d.threshold:g})",
    )
    add(
        "--residual",
        metavar=one_of(RESIDUAL_SCORES),
        default=d.residual,
        help="units scored in a residual network: its blocks' inner channels, the channel groups "
        f"tied by additions, or both (default {d.residual})",
    )
    add(
        "--time-limit",
        type=seconds_or_none,
        default=d.time_limit,
        metavar="S",
        help="seconds to build and solve the MIP (each piece with --decompose), or 'none' "
        f"(default {_seconds(d.time_limit)})",
    )
    add("--mip-gap", type=float, default=d.mip_gap, metavar="G", help=f"(default {d.mip_gap:g})")
    add(
        "--root-cuts",
        type=int,
        default=d.root_cuts,
        metavar="R",
        help=f"rounds of ideal ReLU cuts before branching (default {d.root_cuts})",
    )
    add(
        "--solver-heuristics",
        action="store_true",
        help="let the solver run its own primal heuristics (default: off, the warm start's "
        "local search does that work)",
    )
    add("--device", default=d.device, help=f"cpu or cuda (default {d.device})")
    add(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"CPU threads for PyTorch and the solver (default {DEFAULT_THREADS})",
    )
    add_decomposition_arguments(parser)


def add_decomposition_arguments(parser: argparse.ArgumentParser) -> None:
    """``--decompose``, where its pieces run (``--workers`` or ``--scheduler``) and
    ``--checkpoint``."""
    add = parser.add_argument
    add(
        "--decompose",
        metavar="layer|class|layer,class",
        help="solve the MIP in independent pieces: per scored layer (auxiliary heads fit on the "
        "training split), per class, or both; --time-limit is then per piece (default: whole)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="local processes solving the pieces (default 1)",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="solve the pieces on a Dask cluster, e.g. tcp://host:8786 (pip install 'oamip[dask]')",
    )
    add(
        "--aux-samples",
        type=int,
        default=AUX_SAMPLES,
        metavar="N",
        help="most training rows the auxiliary heads of --decompose layer are fit on, drawn with "
        f"a fixed seed (default {AUX_SAMPLES})",
    )
    add(
        "--checkpoint",
        metavar="DIR",
        help="save each finished piece in DIR; a rerun solves only the pieces missing there",
    )


def scoring_options(args: argparse.Namespace) -> dict:
    """The settings fields that :func:`add_scoring_arguments` adds, from the command line."""
    return {
        "backend": args.backend,
        "samples_per_class": args.samples_per_class,
        "lam": args.lam,
        "loss": args.loss,
        "scores": args.scores,
        "sparsity": args.sparsity,
        "threshold": args.threshold,
        "residual": args.residual,
        "time_limit": args.time_limit,
        "mip_gap": args.mip_gap,
        "root_cuts": args.root_cuts,
        "solver_heuristics": args.solver_heuristics,
        "device": args.device,
        "threads": args.threads,
        "decompose": args.decompose,
        "aux_samples": args.aux_samples,
        "n_jobs": args.workers,
        "checkpoint": args.checkpoint,
        "progress": progress_shown(),
    }


def seconds_or_none(text: str) -> float | None:
    """``none`` (any case) as None, anything else as a float."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', got '{text}'") from None


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"
