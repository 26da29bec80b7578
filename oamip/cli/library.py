"""``oamip library build``: build an instance library for solver benchmarks.

The run half of the command; its options are in :mod:`oamip.cli.parsers.library`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oamip.cli.common import progress_shown, say, say_written
from oamip.cli.parsers.library import HELP, NAME, add_arguments
from oamip.pipelines.library import MANIFEST_CSV, MANIFEST_JSON, LibraryEntry, build_library

__all__ = ["HELP", "NAME", "add_arguments", "run", "manifest_table"]


def run(args: argparse.Namespace) -> int:
    """Build the set into ``--out`` and print one line per instance."""
    entries = build_library(
        args.out,
        args.set_name,
        data=args.data,
        reference_backend=args.reference_backend,
        reference_time_limit=args.reference_time_limit,
        cache_dir=args.cache_dir,
        progress=progress_shown(),
    )
    say(manifest_table(entries))
    say(f"{len(entries)} instances")
    say_written(args.out, [Path(args.out) / name for name in (MANIFEST_JSON, MANIFEST_CSV)])
    return 0


def manifest_table(entries: list[LibraryEntry]) -> str:
    """One line per instance: name, size, status and best objective."""
    lines = [f"{'instance':44} {'rows':>7} {'cols':>7} {'ints':>6} {'status':8} {'objective':>11}"]
    for e in entries:
        objective = "-" if e.best_objective is None else f"{e.best_objective:.6g}"
        lines.append(
            f"{e.name:44} {e.rows:7d} {e.cols:7d} {e.integers:6d} {e.status:8} {objective:>11}"
        )
    return "\n".join(lines)
