"""``oamip prune``: score units with the neuron-importance MIP, prune, fine-tune, report.

The run half of the command (it imports the pipeline); its options are in
:mod:`oamip.cli.parsers.prune`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from oamip.adapters.onnx_io import onnx_module
from oamip.cli.common import command_listener, say, say_written
from oamip.cli.inputs import read_inputs
from oamip.cli.parsers.prune import HELP, NAME, add_arguments
from oamip.cli.scoring import scoring_options
from oamip.errors import SizeWarning, ValidationWarning
from oamip.files import staged_output
from oamip.pipelines.prune import PruneSettings, prune
from oamip.pipelines.report import percent, summary_table, write_report
from oamip.solve.interrupt import INTERRUPTED
from oamip.training.data import load_validation

__all__ = ["HELP", "NAME", "add_arguments", "interrupted_line", "run", "settings"]


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
    """``show`` (how Python prints warnings), but a ValidationWarning or a SizeWarning as one
    line on stderr."""

    def shown(message, category, *args, **kwargs) -> None:
        if issubclass(category, (ValidationWarning, SizeWarning)):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    return shown


def interrupted_line(gap: float | None) -> str:
    """The line that says the solve was stopped (by Ctrl-C, SIGINT or SIGTERM: the run cannot
    tell which reached its solver) and what the results come from."""
    proof = "no bound" if gap is None else f"gap {percent(gap)}"
    return (
        f"solve interrupted (Ctrl-C or SIGTERM): results are from the best solution found ({proof})"
    )


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
        "compress": args.compress,
        "max_drop": args.max_drop,
        "lams": args.lams,
        "val_fraction": args.val_fraction,
        "baseline_samples": args.baseline_samples,
        "refine_steps": args.refine_steps,
        "interpolate_steps": args.interpolate_steps,
        "polish_samples": args.polish_samples,
    }
