"""The options of ``oamip transfer``: masks found on one data set, retrained on another."""

from __future__ import annotations

import argparse

from oamip.cli.common import add_export_onnx_argument, add_out_argument, one_of, whole_numbers
from oamip.cli.defaults import ARCHITECTURES, DATA_SPECS, TRANSFER
from oamip.cli.scoring import add_scoring_arguments

NAME = "transfer"
HELP = "compute masks on one data set, retrain them from the initial weights on another"
DEFAULT_OUT = "oamip-transfer-out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip transfer``; the defaults are those of
    :class:`~oamip.pipelines.transfer.TransferSettings`."""
    d = TRANSFER
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
    add_export_onnx_argument(parser)
