"""``oamip transfer``: masks found on one data set, retrained from the start on another."""

from __future__ import annotations

import argparse
from pathlib import Path

from oamip.cli.common import (
    add_out_argument,
    command_listener,
    one_of,
    say,
    say_written,
    whole_numbers,
)
from oamip.cli.scoring import add_scoring_arguments, scoring_options
from oamip.files import staged_output
from oamip.pipelines.transfer import TransferSettings, summary_table, transfer, write_transfer
from oamip.training.data import DATA_SPECS, load_data
from oamip.training.models import ARCHITECTURES

NAME = "transfer"
HELP = "compute masks on one data set, retrain them from the initial weights on another"
DEFAULT_OUT = "oamip-transfer-out"
_DEFAULTS = TransferSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip transfer``; the defaults are those of :class:`TransferSettings`."""
    d = _DEFAULTS
    add = parser.add_argument
    add("--source", required=True, metavar="SPEC", help=f"data the mask is found on: {DATA_SPECS}")
    add("--target", required=True, metavar="SPEC", help="data the mask is retrained on")
    add("--arch", metavar=one_of(ARCHITECTURES), default=d.arch, help=f"(default {d.arch})")
    add(
        "--hidden",
        type=whole_numbers,
        default=d.hidden,
        metavar="W,W",
        help=f"the MLP's hidden widths (default {','.join(map(str, d.hidden))})",
    )
    add("--seeds", type=int, default=d.seeds, metavar="N", help=f"seeds 0..N-1 (default {d.seeds})")
    add(
        "--epochs",
        type=int,
        metavar="E",
        help="epochs of training on the source and on the target (default: the arch's recipe)",
    )
    add_scoring_arguments(parser, d)
    add_out_argument(parser, DEFAULT_OUT)


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
    source, target = load_data(args.source), load_data(args.target)
    report = transfer(
        source, target, settings, executor=args.scheduler, on_progress=command_listener()
    )
    with staged_output(args.out) as folder:
        written = write_transfer(report, folder)
    say(summary_table(report))
    say_written(Path(args.out).expanduser(), written)
    return 0
