"""``oamip bench``: benchmark the solver backends on importance MIPs of trained networks.

The run half of the command; its options are in :mod:`oamip.cli.parsers.bench`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from oamip.cli.common import instance_options, progress_shown, say, say_written
from oamip.cli.parsers.bench import HELP, NAME, add_arguments
from oamip.files import staged_output
from oamip.pipelines.bench import BenchRow, benchmark, write_results
from oamip.pipelines.report import percent

__all__ = ["HELP", "NAME", "add_arguments", "run", "summary_table"]


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
