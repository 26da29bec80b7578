"""``oamip prune``: score units with the neuron-importance MIP, prune, fine-tune, report."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from oamip.adapters.onnx_io import onnx_module
from oamip.cli.common import (
    add_export_onnx_argument,
    add_input_arguments,
    add_out_argument,
    command_listener,
    read_inputs,
    say,
    say_written,
)
from oamip.cli.scoring import add_scoring_arguments, scoring_options
from oamip.errors import ValidationWarning
from oamip.files import staged_output
from oamip.pipelines.budget import DEFAULT_LAMS
from oamip.pipelines.prune import PruneSettings, prune
from oamip.pipelines.report import percent, summary_table, write_report
from oamip.solve.interrupt import INTERRUPTED
from oamip.training.data import load_validation

NAME = "prune"
HELP = "score units with the neuron-importance MIP, prune, fine-tune, report"
DEFAULT_OUT = "oamip-out"
_DEFAULTS = PruneSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip prune``; the defaults are those of :class:`PruneSettings`."""
    d = _DEFAULTS
    add = parser.add_argument
    add_input_arguments(parser)
    add_scoring_arguments(parser, d)
    add(
        "--finetune-epochs",
        type=int,
        default=d.finetune_epochs,
        metavar="E",
        help=f"(default {d.finetune_epochs})",
    )
    add("--seed", type=int, default=d.seed, metavar="N", help=f"(default {d.seed})")
    add("--verbose", action="store_true", help="show the solver's log (and HiGHS's banner)")
    add("--at-init", action="store_true", help="score and prune at initialisation, then train")
    _add_budget_arguments(parser)
    add_out_argument(parser, DEFAULT_OUT)
    add_export_onnx_argument(parser)


def _add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-drop`` and the lam path's settings (``--lams``, ``--val-fraction``,
    ``--refine-steps``, ``--interpolate-steps``)."""
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
        "--val-data",
        metavar="SPEC",
        help="validation samples for --max-drop, a data spec like --data's: its x_val/y_val "
        "if it has them, else its test split (an .npz needs only those arrays; default: the "
        "--data's x_val/y_val, else --val-fraction of the training split)",
    )
    add(
        "--baseline-samples",
        type=int,
        default=d.baseline_samples,
        metavar="N",
        help=f"training samples the baseline criteria score on (default {d.baseline_samples})",
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
    add(
        "--interpolate-steps",
        type=int,
        default=d.interpolate_steps,
        metavar="N",
        help="bisection steps with --max-drop between the kept mask and the next sparser "
        "solution, pruning a share of the units the latter prunes, those it scores lowest first "
        f"(0: none; default {d.interpolate_steps})",
    )


def run(args: argparse.Namespace) -> int:
    """Run the pipeline (which checks every setting first), write ``--out``, print a summary."""
    if args.export_onnx:
        onnx_module()  # missing onnx is refused before any work
    dataset, model = read_inputs(args)
    val_data = load_validation(args.val_data) if args.val_data else None
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning(warnings.showwarning)
        report = prune(
            model,
            dataset,
            settings(args),
            val_data=val_data,
            executor=args.scheduler,
            on_progress=command_listener(),
        )
    with staged_output(args.out) as folder:
        onnx_input = dataset.input_shape if args.export_onnx else None
        written = write_report(report, folder, onnx_input)
    if report.status == INTERRUPTED:
        say(interrupted_line(report.gap))
    say(summary_table(report))
    say_written(Path(args.out).expanduser(), written)
    return 0


def _show_warning(show):
    """``show`` (how Python prints warnings), but a ValidationWarning as one line on stderr."""

    def shown(message, category, *args, **kwargs) -> None:
        if issubclass(category, ValidationWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    return shown


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
        **scoring_options(args),
        "arch": args.arch or "mlp",
        "finetune_epochs": args.finetune_epochs,
        "seed": args.seed,
        "verbose": args.verbose,
        "at_init": args.at_init,
        "max_drop": args.max_drop,
        "lams": args.lams,
        "val_fraction": args.val_fraction,
        "baseline_samples": args.baseline_samples,
        "refine_steps": args.refine_steps,
        "interpolate_steps": args.interpolate_steps,
    }


def _floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers, e.g. ``0.1,1,10``."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas (e.g. 0.1,1,10), got '{text}'"
        ) from None
