"""``oamip bench``: benchmark the solver backends on importance MIPs of trained networks."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from oamip.cli.common import (
    add_instance_arguments,
    add_out_argument,
    instance_options,
    names,
    progress_shown,
    say,
    say_written,
)
from oamip.files import staged_output
from oamip.pipelines.bench import (
    DEFAULT_GAP_POINTS,
    DEFAULT_OUT,
    DEFAULT_REPEATS,
    DEFAULT_THREADS,
    DEFAULT_TIME_LIMIT,
    MAX_GAP_POINTS,
    BenchRow,
    benchmark,
    write_results,
)
from oamip.pipelines.report import percent

NAME = "bench"
HELP = "benchmark solver backends on importance MIPs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip bench``; the defaults are those of :func:`benchmark`."""
    add_instance_arguments(parser)
    add = parser.add_argument
    add("--backends", type=names, help="comma-separated backends (default: every installed one)")
    add(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        metavar="S",
        help=f"(default {DEFAULT_TIME_LIMIT:g})",
    )
    add(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        metavar="N",
        help=f"(default {DEFAULT_REPEATS})",
    )
    add(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"(default {DEFAULT_THREADS})",
    )
    add(
        "--gap-points",
        type=int,
        default=DEFAULT_GAP_POINTS,
        metavar="P",
        help=f"shorter time limits (halving) for the gap curve, 0 to {MAX_GAP_POINTS} "
        f"(default {DEFAULT_GAP_POINTS})",
    )
    add_out_argument(parser, DEFAULT_OUT)


def run(args: argparse.Namespace) -> int:
    """Build the instances, solve them with every backend, write ``--out``, print the table."""
    result = benchmark(
        **instance_options(args),
        backend_names=args.backends,
        time_limit=args.time_limit,
        repeats=args.repeats,
        threads=args.threads,
        gap_points=args.gap_points,
        progress=progress_shown(),
    )
    command = "oamip " + shlex.join(sys.argv[1:])
    with staged_output(args.out) as folder:
        written = write_results(folder, result, command)
    say(summary_table(result.rows))
    say_written(args.out, written)
    return 0


def summary_table(rows: Sequence[BenchRow]) -> str:
    """A plain-text table: one line per solve (status, objective, gap, load + solve seconds)."""
    lines = [f"{'instance':32} {'backend':8} {'status':10} {'objective':>11} {'gap':>8} {'s':>8}"]
    for r in rows:
        objective = "-" if r.objective is None else f"{r.objective:.5g}"
        total = r.load_seconds + r.seconds
        lines.append(
            f"{r.instance:32} {r.backend:8} {r.status:10} {objective:>11} {percent(r.gap):>8} "
            f"{total:8.2f}"
        )
        if r.message:
            lines.append(f"    {r.message}")
    return "\n".join(lines)
