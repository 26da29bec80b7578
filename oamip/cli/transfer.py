"""``oamip transfer``: masks found on one data set, retrained from the start on another.

The run half of the command; its options are in :mod:`oamip.cli.parsers.transfer`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oamip.adapters.onnx_io import onnx_module
from oamip.cli.common import command_listener, say, say_written
from oamip.cli.parsers.transfer import HELP, NAME, add_arguments
from oamip.cli.scoring import scoring_options
from oamip.files import staged_output
from oamip.pipelines.transfer import TransferSettings, summary_table, transfer, write_transfer
from oamip.training.data import load_data

__all__ = ["HELP", "NAME", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    """Check the settings, read both data sets, run the experiment, write ``--out``, summarise."""
    settings = TransferSettings(
        **scoring_options(args),
        arch=args.arch,
        hidden=args.hidden,
        seeds=args.seeds,
        epochs=args.epochs,
    )
    settings.validate()
    if args.export_onnx:
        onnx_module()  # missing onnx is refused before any work
    source, target = load_data(args.source), load_data(args.target)
    report = transfer(
        source, target, settings, executor=args.scheduler, on_progress=command_listener()
    )
    with staged_output(args.out) as folder:
        onnx_input = target.input_shape if args.export_onnx else None
        written = write_transfer(report, folder, onnx_input)
    say(summary_table(report))
    say_written(Path(args.out).expanduser(), written)
    return 0
