"""The ``oamip`` command: ``oamip prune``, and ``oamip spr`` / ``oamip bench`` where installed.

Every error the package raises on purpose, and every bad argument, ends the command with one line
on stderr and exit status 2; results reach ``--out`` only when the whole run succeeded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from oamip import __version__, backends
from oamip.errors import OamipError
from oamip.files import check_output_folder, staged_output
from oamip.pipelines import bench
from oamip.pipelines import spr as spr_pipeline
from oamip.pipelines.prune import (
    DEFAULT_TIME_LIMIT,
    LOSSES,
    SCORE_MODES,
    PruneSettings,
    prune,
    read_model,
)
from oamip.pipelines.report import summary_table, write_report
from oamip.training.data import DATA_SPECS, load_data
from oamip.training.models import ARCHITECTURES

USAGE_ERROR = 2
INTERRUPTED = 130
DEFAULT_OUT = "oamip-out"
DEFAULT_THREADS = 1


class UsageError(Exception):
    """A bad command line; reported in one line like an OamipError."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``oamip`` command with ``argv`` (default: ``sys.argv[1:]``); returns the status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.handler is None:
            raise UsageError("choose a command; see oamip --help")
        _check_folders(args)
        return args.handler(args)
    except (UsageError, OamipError) as exc:
        _fail(str(exc))
        return USAGE_ERROR
    except KeyboardInterrupt:
        _fail("interrupted; nothing was written")
        return INTERRUPTED


def _check_folders(args: argparse.Namespace) -> None:
    """Refuse an unwritable ``--out`` or ``--cache-dir`` before the command does any work."""
    check_output_folder(args.out, "--out")
    if "cache_dir" in args:
        check_output_folder(args.cache_dir or bench.default_cache_dir(), "--cache-dir")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``oamip`` and its subcommands."""
    parser = _Parser(prog="oamip", description="Prune ReLU networks with mathematical programs.")
    parser.add_argument("--version", action="version", version=f"oamip {__version__}")
    parser.set_defaults(handler=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    prune_parser = commands.add_parser(
        "prune", help="score units with the neuron-importance MIP, prune, fine-tune, report"
    )
    add_prune_arguments(prune_parser)
    prune_parser.set_defaults(handler=run_prune)
    _command(
        commands,
        "spr",
        "train with the SPR regulariser, remove zero units, fine-tune",
        spr_pipeline.add_arguments,
        spr_pipeline.run,
    )
    _command(
        commands,
        "bench",
        "benchmark solver backends on importance MIPs",
        bench.add_arguments,
        bench.run,
    )
    _command(
        commands,
        "export",
        "write an importance MIP instance as MPS or LP",
        bench.add_export_arguments,
        bench.run_export,
    )
    return parser


def _command(commands, name: str, help_text: str, add_arguments, handler) -> None:
    sub = commands.add_parser(name, help=help_text)
    add_arguments(sub)
    sub.set_defaults(handler=handler)


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip prune``."""
    add = parser.add_argument
    add("--model", help="model file from oamip.save_model, or a state dict with --arch")
    add(
        "--arch",
        choices=ARCHITECTURES,
        help="architecture of a state dict, or to train when no --model (default mlp)",
    )
    add("--data", default="digits", help=f"{DATA_SPECS} (default: digits)")
    add("--backend", choices=backends.known(), default="highs", help="solver (default highs)")
    add("--samples-per-class", type=_positive_int, default=1, metavar="K", help="(default 1)")
    add("--lam", type=_non_negative_float, default=5.0, metavar="X", help="loss weight (default 5)")
    add("--loss", choices=LOSSES, default="ce", help="(default ce)")
    add("--scores", choices=SCORE_MODES, default="continuous", help="(default continuous)")
    add("--threshold", type=_fraction, default=0.1, metavar="T", help="in [0, 1] (default 0.1)")
    add("--finetune-epochs", type=_non_negative_int, default=1, metavar="E", help="(default 1)")
    add(
        "--time-limit",
        type=_time_limit,
        default=DEFAULT_TIME_LIMIT,
        metavar="S",
        help=f"seconds to build and solve the MIP, or 'none' (default {DEFAULT_TIME_LIMIT:g})",
    )
    add("--device", default="cpu", help="cpu or cuda (default cpu)")
    add("--seed", type=int, default=0, metavar="N", help="(default 0)")
    add(
        "--threads",
        type=_positive_int,
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"CPU threads for PyTorch and the solver (default {DEFAULT_THREADS})",
    )
    add(
        "--solver-heuristics",
        action="store_true",
        help="let the solver run its own primal heuristics (default: off, the warm start's "
        "local search does that work)",
    )
    add("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT}/)")


def run_prune(args: argparse.Namespace) -> int:
    """``oamip prune``: check everything, run the pipeline, write ``--out``, print a summary."""
    options = _prune_options(args)
    PruneSettings(**options).check()
    out = Path(args.out).expanduser()
    dataset = load_data(args.data)
    model = read_model(args.model, args.arch, dataset) if args.model else None
    report = prune(model, dataset, **options)
    with staged_output(out) as folder:
        written = write_report(report, folder)
    _say(summary_table(report))
    _say(f"wrote {', '.join(str(out / path.name) for path in written)}")
    return 0


def _prune_options(args: argparse.Namespace) -> dict:
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
        "progress": True,
    }


def _positive_int(text: str) -> int:
    value = _parse(int, text, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _parse(int, text, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = _parse(float, text, "a number")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _parse(float, text, "a number")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def _time_limit(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = _parse(float, text, "seconds or 'none'")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive seconds or 'none', got {text}")
    return value


def _parse(kind: type, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None


def _say(text: str) -> None:
    print(text)


def _fail(message: str) -> None:
    print(f"oamip: error: {' '.join(message.split())}", file=sys.stderr)
