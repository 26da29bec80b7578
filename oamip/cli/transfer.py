"""``oamip transfer``: masks found on one data set, retrained from the start on another."""

from __future__ import annotations

import argparse
from pathlib import Path

from oamip import backends
from oamip.cli.common import (
    add_out_argument,
    one_of,
    progress_shown,
    say,
    say_written,
    whole_numbers,
)
from oamip.cli.prune import DEFAULT_THREADS, add_decomposition_arguments, seconds_or_none
from oamip.files import staged_output
from oamip.formulations import LOSSES, SCORE_MODES
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
    add("--backend", metavar=one_of(backends.known()), default=d.backend)
    add("--lam", type=float, default=d.lam, metavar="X", help=f"loss weight (default {d.lam:g})")
    add("--loss", metavar=one_of(LOSSES), default=d.loss, help=f"(default {d.loss})")
    add("--scores", metavar=one_of(SCORE_MODES), default=d.scores, help=f"(default {d.scores})")
    add(
        "--threshold",
        type=float,
        default=d.threshold,
        metavar="T",
        help=f"(default {d.threshold:g})",
    )
    add(
        "--samples-per-class",
        type=int,
        default=d.samples_per_class,
        metavar="K",
        help=f"in the MIP and SNIP batches (default {d.samples_per_class})",
    )
    add(
        "--time-limit",
        type=seconds_or_none,
        default=d.time_limit,
        metavar="S",
        help=f"seconds per MIP (per piece with --decompose), or 'none' (default {d.time_limit:g})",
    )
    add("--mip-gap", type=float, default=d.mip_gap, metavar="G", help=f"(default {d.mip_gap:g})")
    add("--root-cuts", type=int, default=d.root_cuts, metavar="R", help=f"(default {d.root_cuts})")
    add("--solver-heuristics", action="store_true", help="let the solver run its own heuristics")
    add("--device", default=d.device, help=f"cpu or cuda (default {d.device})")
    add(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"CPU threads for PyTorch and the solver (default {DEFAULT_THREADS})",
    )
    add_decomposition_arguments(parser)
    add_out_argument(parser, DEFAULT_OUT)


def run(args: argparse.Namespace) -> int:
    """Check the settings, read both data sets, run the experiment, write ``--out``, summarise."""
    settings = TransferSettings(
        arch=args.arch,
        hidden=args.hidden,
        seeds=args.seeds,
        epochs=args.epochs,
        backend=args.backend,
        lam=args.lam,
        loss=args.loss,
        scores=args.scores,
        threshold=args.threshold,
        samples_per_class=args.samples_per_class,
        time_limit=args.time_limit,
        mip_gap=args.mip_gap,
        root_cuts=args.root_cuts,
        solver_heuristics=args.solver_heuristics,
        device=args.device,
        threads=args.threads,
        decompose=args.decompose,
        n_jobs=args.workers,
        executor=args.scheduler,
        checkpoint=args.checkpoint,
        progress=progress_shown(),
    )
    settings.validate()
    report = transfer(load_data(args.source), load_data(args.target), settings)
    with staged_output(args.out) as folder:
        written = write_transfer(report, folder)
    say(summary_table(report))
    say_written(Path(args.out).expanduser(), written)
    return 0
