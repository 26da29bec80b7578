"""How long ``oamip --version``, ``oamip prune --help`` and an argument error take to answer,
before and after the command line stopped importing torch, Pyomo and the solvers up front.

The two trees (a git revision, extracted to a temporary folder, and this checkout) are timed
side by side in one run: each round runs every command once with each tree, in alternating
order, in a fresh interpreter (``python -m oamip``), so that the machine's changing load falls
on both alike. Reports the median and the fastest wall time of each. Writes
``benchmarks/results/cli-startup-<date>.{json,md}``.

    python benchmarks/bench_cli_startup.py [--before REV] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import ROOT, run_info, today, write_results

BEFORE = "8a57aaa"
"""The last commit whose command line imported the whole stack before reading its arguments."""
COMMANDS = {
    "oamip --version": ["--version"],
    "oamip prune --help": ["prune", "--help"],
    "oamip prune --lam x (an argument error)": ["prune", "--lam", "x"],
}


def extract(revision: str, folder: Path) -> Path:
    """The package as it was at ``revision``, written below ``folder``."""
    archive = folder / "tree.tar"
    with archive.open("wb") as out:
        command = ["git", "-C", str(ROOT), "archive", revision, "oamip"]
        subprocess.run(command, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "tree", filter="data")
    return folder / "tree"


def wall_seconds(tree: Path, argv: list[str]) -> float:
    """The wall time of ``python -m oamip argv`` with the package of ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "oamip", *argv], env=env, cwd=tree, capture_output=True, check=False
    )
    return time.perf_counter() - start


def measure(trees: dict[str, Path], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Every command's wall times with every tree, in alternating order, round by round."""
    times = {command: {name: [] for name in trees} for command in COMMANDS}
    for round_ in range(rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for command, argv in COMMANDS.items():
            for name in order:
                times[command][name].append(wall_seconds(trees[name], argv))
    return times


def markdown(times: dict, before: str, rounds: int, meta: dict) -> str:
    """A table: median and fastest wall time of each command, before and after."""
    lines = [
        f"# Command-line start-up, before and after the fast CLI, {today(meta)}",
        "",
        f"Wall time of `python -m oamip ...` in a fresh interpreter, {rounds} alternating rounds; "
        f"before: commit {before}, after: this checkout. The machine was shared with other jobs.",
        "",
        "| command | before, median (fastest) s | after, median (fastest) s | speed-up |",
        "|---|---|---|---|",
    ]
    for command, by_tree in times.items():
        old, new = statistics.median(by_tree["before"]), statistics.median(by_tree["after"])
        lines.append(
            f"| `{command}` | {old:.2f} ({min(by_tree['before']):.2f}) "
            f"| {new:.2f} ({min(by_tree['after']):.2f}) | {old / new:.0f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help=f"git revision (default {BEFORE})")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    args = parser.parse_args()
    meta = run_info()
    with tempfile.TemporaryDirectory() as folder:
        trees = {"before": extract(args.before, Path(folder)), "after": ROOT}
        times = measure(trees, args.rounds)
    text = markdown(times, args.before, args.rounds, meta)
    write_results(f"cli-startup-{today(meta)}", {"before": args.before, "times": times}, text, meta)
    print(text)


if __name__ == "__main__":
    main()
