"""``oamip prune``: score units with the neuron-importance MIP, prune, fine-tune, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from oamip import backends
from oamip.cli.common import (
    add_input_arguments,
    add_out_argument,
    one_of,
    progress_shown,
    read_inputs,
    say,
    say_written,
)
from oamip.files import staged_output
from oamip.formulations import LOSSES, SCORE_MODES
from oamip.pipelines.budget import DEFAULT_LAMS
from oamip.pipelines.prune import PruneSettings, prune
from oamip.pipelines.report import percent, summary_table, write_report
from oamip.solve.interrupt import INTERRUPTED

NAME = "prune"
HELP = "score units with the neuron-importance MIP, prune, fine-tune, report"
DEFAULT_OUT = "oamip-out"
DEFAULT_THREADS = 1
"""The command runs on one CPU thread unless told otherwise (the library keeps the default)."""
_DEFAULTS = PruneSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip prune``; the defaults are those of :class:`PruneSettings`."""
    d = _DEFAULTS
    add = parser.add_argument
    add_input_arguments(parser)
    add(
        "--backend",
        metavar=one_of(backends.known()),
        default=d.backend,
        help=f"solver (default {d.backend})",
    )
    add(
        "--samples-per-class",
        type=int,
        default=d.samples_per_class,
        metavar="K",
        help=f"(default {d.samples_per_class})",
    )
    add("--lam", type=float, default=d.lam, metavar="X", help=f"loss weight (default {d.lam:g})")
    add("--loss", metavar=one_of(LOSSES), default=d.loss, help=f"(default {d.loss})")
    add("--scores", metavar=one_of(SCORE_MODES), default=d.scores, help=f"(default {d.scores})")
    add(
        "--threshold",
        type=float,
        default=d.threshold,
        metavar="T",
        help=f"in [0, 1] (default {d.threshold:g})",
    )
    add(
        "--finetune-epochs",
        type=int,
        default=d.finetune_epochs,
        metavar="E",
        help=f"(default {d.finetune_epochs})",
    )
    add(
        "--time-limit",
        type=seconds_or_none,
        default=d.time_limit,
        metavar="S",
        help="seconds to build and solve the MIP (each piece with --decompose), or 'none' "
        f"(default {_seconds(d.time_limit)})",
    )
    add("--device", default=d.device, help=f"cpu or cuda (default {d.device})")
    add("--seed", type=int, default=d.seed, metavar="N", help=f"(default {d.seed})")
    add(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"CPU threads for PyTorch and the solver (default {DEFAULT_THREADS})",
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
    add("--verbose", action="store_true", help="show the solver's log (and HiGHS's banner)")
    add("--at-init", action="store_true", help="score and prune at initialisation, then train")
    _add_budget_arguments(parser)
    add_decomposition_arguments(parser)
    add_out_argument(parser, DEFAULT_OUT)


def _add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-drop`` and the lam path's settings (``--lams``, ``--val-fraction``,
    ``--refine-steps``)."""
    d = _DEFAULTS
    add = parser.add_argument
    add(
        "--max-drop",
        type=float,
        metavar="POINTS",
        help="prune as much as possible while losing at most POINTS points of validation "
        "accuracy: solve a path of lambdas and keep the sparsest mask within (default: one "
        "lambda, --lam)",
    )
    add(
        "--lams",
        type=_floats,
        metavar="L1,L2,...",
        help=f"the path's lambdas with --max-drop (default {','.join(map(str, DEFAULT_LAMS))})",
    )
    add(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        metavar="F",
        help="share of the training split held out for validation with --max-drop "
        f"(default {d.val_fraction:g})",
    )
    add(
        "--refine-steps",
        type=int,
        default=d.refine_steps,
        metavar="N",
        help="bisection steps of the path between the two lambdas around the budget "
        f"(default {d.refine_steps})",
    )


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
        "--checkpoint",
        metavar="DIR",
        help="save each finished piece in DIR; a rerun solves only the pieces missing there",
    )


def run(args: argparse.Namespace) -> int:
    """Run the pipeline (which checks every setting first), write ``--out``, print a summary."""
    dataset, model = read_inputs(args)
    report = prune(model, dataset, settings(args))
    with staged_output(args.out) as folder:
        written = write_report(report, folder)
    if report.status == INTERRUPTED:
        say(interrupted_line(report.gap))
    say(summary_table(report))
    say_written(Path(args.out).expanduser(), written)
    return 0


def interrupted_line(gap: float | None) -> str:
    """The line that says the solve was stopped by Ctrl-C and what the results come from."""
    proof = "no bound" if gap is None else f"gap {percent(gap)}"
    return f"solve interrupted (Ctrl-C): results are from the best solution found ({proof})"


def settings(args: argparse.Namespace) -> PruneSettings:
    """The one options object of the run, from the command line (checked by the pipeline)."""
    return PruneSettings(**_prune_options(args))


def _prune_options(args: argparse.Namespace) -> dict:
    """The :class:`PruneSettings` fields given on the command line."""
    return {
        "arch": args.arch or "mlp",
        "backend": args.backend,
        "samples_per_class": args.samples_per_class,
        "lam": args.lam,
        "loss": args.loss,
        "scores": args.scores,
        "threshold": args.threshold,
        "finetune_epochs": args.finetune_epochs,
        "time_limit": args.time_limit,
        "device": args.device,
        "seed": args.seed,
        "threads": args.threads,
        "solver_heuristics": args.solver_heuristics,
        "mip_gap": args.mip_gap,
        "root_cuts": args.root_cuts,
        "decompose": args.decompose,
        "n_jobs": args.workers,
        "executor": args.scheduler,
        "checkpoint": args.checkpoint,
        "progress": progress_shown(),
        "log": True,
        "verbose": args.verbose,
        "at_init": args.at_init,
        "max_drop": args.max_drop,
        "lams": args.lams,
        "val_fraction": args.val_fraction,
        "refine_steps": args.refine_steps,
    }


def _floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers, e.g. ``0.1,1,10``."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas (e.g. 0.1,1,10), got '{text}'"
        ) from None


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
