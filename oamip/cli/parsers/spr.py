"""The options of ``oamip spr``: train with the SPR regulariser, remove zero units, fine-tune."""

from __future__ import annotations

import argparse

from oamip.cli.common import add_export_onnx_argument, add_input_arguments, add_out_argument
from oamip.cli.defaults import (
    SPR_ALPHA,
    SPR_DEFAULT_UNITS,
    SPR_EPOCHS,
    SPR_FINETUNE_EPOCHS,
    SPR_LAM,
    SPR_LR,
    SPR_M_SCALE,
    SPR_OUT,
    SPR_UNITS,
)

NAME = "spr"
HELP = "train with the SPR regulariser, remove zero units, fine-tune"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip spr``; the defaults are those of :func:`oamip.spr_prune`."""
    add = parser.add_argument
    add_input_arguments(parser)
    add("--lam", type=float, default=SPR_LAM, help=f"SPR strength (default {SPR_LAM})")
    add(
        "--alpha",
        type=float,
        default=SPR_ALPHA,
        help=f"a = lam alpha, b = lam (1 - alpha) (default {SPR_ALPHA})",
    )
    add("--m-scale", type=float, default=SPR_M_SCALE, help="M = largest weight x this")
    add(
        "--units",
        choices=SPR_UNITS,
        default=SPR_DEFAULT_UNITS,
        help=f"residual networks: the units SPR prunes (default {SPR_DEFAULT_UNITS})",
    )
    add("--epochs", type=int, default=SPR_EPOCHS, help="epochs of (dense and) SPR training")
    add("--finetune-epochs", type=int, default=SPR_FINETUNE_EPOCHS)
    add("--lr", type=float, default=SPR_LR, help=f"Adam step (default {SPR_LR})")
    add("--seed", type=int, default=0)
    add("--device", default="cpu", help="cpu or cuda")
    add_out_argument(parser, SPR_OUT)
    add_export_onnx_argument(parser)
