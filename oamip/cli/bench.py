"""``oamip bench``: benchmark the solver backends on importance MIPs of trained networks.

The run half of the command; its options are in :mod:`oamip.cli.parsers.bench`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from oamip.cli.common import UsageError, instance_options, progress_shown, say, say_written
from oamip.cli.parsers.bench import HELP, NAME, add_arguments
from oamip.files import staged_output
from oamip.pipelines.bench import BenchRow, benchmark, write_results
from oamip.pipelines.leaderboard import LibraryBench, bench_library, write_bench
from oamip.pipelines.report import percent

__all__ = ["HELP", "NAME", "add_arguments", "leaderboard_table", "run", "summary_table"]


def run(args: argparse.Namespace) -> int:
    """Build the instances, solve them with every backend, write ``--out``, print the table;
    with ``--library``, solve the library's instances and rank the solvers instead."""
    if args.library is not None:
        return run_library(args)
    if args.solver_command:
        raise UsageError("--solver-command works with --library only")
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


def run_library(args: argparse.Namespace) -> int:
    """``oamip bench --library DIR``: every solver on every instance, checked; the leaderboard."""
    bench = bench_library(
        args.library,
        backend_names=args.backends,
        commands=args.solver_command,
        time_limit=args.time_limit,
        threads=args.threads,
        progress=progress_shown(),
    )
    command = "oamip " + shlex.join(sys.argv[1:])
    with staged_output(args.out) as folder:
        written = write_bench(folder, bench, command)
    say(leaderboard_table(bench))
    say_written(args.out, written)
    return 0


def leaderboard_table(bench: LibraryBench) -> str:
    """The leaderboard, then every wrong answer with its reason."""
    lines = [f"{'solver':12} {'solved':>7} {'wrong':>6} {'sgm(10s)':>9} {'par2':>8}"]
    for s in bench.standings:
        lines.append(
            f"{s.backend:12} {s.solved:4d}/{s.instances:<2d} {s.wrong:6d} "
            f"{s.shifted_geomean:9.2f} {s.par2:8.2f}"
        )
    for a in bench.wrong:
        lines.append(f"WRONG {a.instance} {a.backend}: {a.note}")
    return "\n".join(lines)


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
