"""``oamip spr``: train with the SPR regulariser, remove the zero units, fine-tune, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from oamip.cli.common import add_input_arguments, add_out_argument, read_inputs, say
from oamip.pipelines.spr import (
    DEFAULT_ALPHA,
    DEFAULT_EPOCHS,
    DEFAULT_FINETUNE_EPOCHS,
    DEFAULT_LAM,
    DEFAULT_M_SCALE,
    DEFAULT_OUT,
    DEFAULT_SPR_LR,
    spr_prune,
    summary_table,
)

NAME = "spr"
HELP = "train with the SPR regulariser, remove zero units, fine-tune"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip spr``; the defaults are those of :func:`oamip.spr_prune`."""
    add = parser.add_argument
    add_input_arguments(parser)
    add("--lam", type=float, default=DEFAULT_LAM, help=f"SPR strength (default {DEFAULT_LAM})")
    add(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"a = lam alpha, b = lam (1 - alpha) (default {DEFAULT_ALPHA})",
    )
    add("--m-scale", type=float, default=DEFAULT_M_SCALE, help="M = largest weight x this")
    add("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs of (dense and) SPR training")
    add("--finetune-epochs", type=int, default=DEFAULT_FINETUNE_EPOCHS)
    add("--lr", type=float, default=DEFAULT_SPR_LR, help=f"Adam step (default {DEFAULT_SPR_LR})")
    add("--seed", type=int, default=0)
    add("--device", default="cpu", help="cpu or cuda")
    add_out_argument(parser, DEFAULT_OUT)


def run(args: argparse.Namespace) -> int:
    """Prune with SPR (which checks every setting first), write ``--out``, print a summary."""
    dataset, model = read_inputs(args)
    report = spr_prune(
        model,
        dataset,
        arch=args.arch or "mlp",
        lam=args.lam,
        alpha=args.alpha,
        M_scale=args.m_scale,
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        out=args.out,
    )
    say(summary_table(report))
    say(f"wrote {Path(args.out) / 'report.json'} and pruned.pt")
    return 0
