"""The options of ``oamip bench``: benchmark the solver backends on importance MIPs."""

from __future__ import annotations

import argparse

from oamip.cli.common import add_instance_arguments, add_out_argument, folder, names
from oamip.cli.defaults import (
    BENCH_GAP_POINTS,
    BENCH_MAX_GAP_POINTS,
    BENCH_OUT,
    BENCH_REPEATS,
    BENCH_THREADS,
    BENCH_TIME_LIMIT,
)

NAME = "bench"
HELP = "benchmark solver backends on importance MIPs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip bench``; the defaults are those of
    :func:`oamip.pipelines.bench.benchmark`."""
    add_instance_arguments(parser)
    add = parser.add_argument
    add("--backends", type=names, help="comma-separated backends (default: every installed one)")
    add(
        "--time-limit",
        type=float,
        default=BENCH_TIME_LIMIT,
        metavar="S",
        help=f"(default {BENCH_TIME_LIMIT:g})",
    )
    add(
        "--repeats",
        type=int,
        default=BENCH_REPEATS,
        metavar="N",
        help=f"(default {BENCH_REPEATS})",
    )
    add(
        "--threads",
        type=int,
        default=BENCH_THREADS,
        metavar="N",
        help=f"(default {BENCH_THREADS})",
    )
    add(
        "--gap-points",
        type=int,
        default=BENCH_GAP_POINTS,
        metavar="P",
        help=f"shorter time limits (halving) for the gap curve, 0 to {BENCH_MAX_GAP_POINTS} "
        f"(default {BENCH_GAP_POINTS})",
    )
    add(
        "--library",
        type=folder,
        metavar="DIR",
        help="solve the instances of a library (oamip library build) instead, every answer "
        "checked, and rank the solvers (leaderboard.csv); the instance options are not used",
    )
    add(
        "--solver-command",
        action="append",
        default=[],
        metavar="CMD",
        help="with --library: also run [NAME=]CMD, e.g. 'cbc {mps} -sec {time_limit} -solve "
        "-solu {solution}' (repeatable; solution files of CBC, HiGHS or SCIP)",
    )
    add_out_argument(parser, BENCH_OUT)
