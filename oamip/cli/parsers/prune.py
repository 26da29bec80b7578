"""The options of ``oamip prune``: score units with the MIP, prune, fine-tune, report."""

from __future__ import annotations

import argparse

from oamip.cli.common import add_export_onnx_argument, add_input_arguments, add_out_argument, floats
from oamip.cli.defaults import DEFAULT_LAMS, PRUNE
from oamip.cli.scoring import add_scoring_arguments

NAME = "prune"
HELP = "score units with the neuron-importance MIP, prune, fine-tune, report"
DEFAULT_OUT = "oamip-out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip prune``; the defaults are those of
    :class:`~oamip.pipelines.prune.PruneSettings`."""
    d = PRUNE
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
    add(
        "--compress",
        action="store_true",
        help="first remove the units proven dead on the data's range and fold the always-active "
        "ones (exact, as oamip compress does): smaller MIPs",
    )
    _add_budget_arguments(parser)
    add_out_argument(parser, DEFAULT_OUT)
    add_export_onnx_argument(parser)


def _add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-drop`` and the lam path's settings (``--lams``, ``--val-fraction``,
    ``--refine-steps``, ``--interpolate-steps``)."""
    d = PRUNE
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
        type=floats,
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
    add(
        "--polish-samples",
        type=int,
        default=d.polish_samples,
        metavar="N",
        help="with --max-drop, polish the best mask within the budget (any method's): the MIP on "
        "the network it leaves and its N hardest training samples, stepped further along the "
        f"MIP's scores (0: no polishing; default {d.polish_samples})",
    )
