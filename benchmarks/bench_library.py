"""The leaderboard of the solver backends on an instance library (``oamip library build``).

Runs :func:`oamip.pipelines.leaderboard.bench_library` (every backend on every instance, every
answer checked from the MPS file and, for whole-network instances, against the masked network
in PyTorch) and writes ``benchmarks/results/library-<set>-<date>.{json,md}``: the leaderboard,
the wrong answers, and per instance the reference result and each backend's status and time.
With ``--keep-manifest`` the library's manifest (JSON and CSV) is also copied to
``benchmarks/library/<set>/``, the copy kept in the repository.

    python -m oamip library build --set standard --reference-time-limit 20 --out LIB
    python benchmarks/bench_library.py --library LIB [--backends highs,scip,gurobi,cbc]
        [--time-limit 10] [--keep-manifest]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import ROOT, run_info, today, write_results

from oamip.pipelines.leaderboard import LibraryBench, bench_library
from oamip.pipelines.library import MANIFEST_CSV, MANIFEST_JSON


def leaderboard_markdown(bench: LibraryBench, set_name: str) -> str:
    """The leaderboard, the wrong answers and the per-instance table, as Markdown."""
    limit = bench.time_limit
    lines = [
        f"# Leaderboard on the {set_name} library ({len(bench.entries)} instances, "
        f"{limit:g} s per instance and backend, one thread)",
        "",
        "| backend | solved | wrong | shifted geomean (10 s) | PAR-2 |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in bench.standings:
        lines.append(
            f"| {s.backend} | {s.solved}/{s.instances} | {s.wrong} | "
            f"{s.shifted_geomean:.2f} s | {s.par2:.2f} s |"
        )
    lines += ["", f"Wrong answers: {len(bench.wrong) or 'none'}."]
    lines += [f"* {a.instance}, {a.backend}: {a.note}" for a in bench.wrong]
    names = [s.backend for s in bench.standings]
    lines += [
        "",
        "| instance | rows | cols | ints | reference | " + " | ".join(names) + " |",
        "|---|---:|---:|---:|---|" + "---|" * len(names),
    ]
    by_key = {(a.instance, a.backend): a for a in bench.answers}
    for e in bench.entries:
        reference = e.status if e.best_objective is None else f"{e.status} {e.best_objective:.5g}"
        cells = [_cell(by_key[(e.name, name)], limit) for name in names]
        lines.append(
            f"| {e.name} | {e.rows} | {e.cols} | {e.integers} | {reference} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _cell(answer, limit: float) -> str:
    mark = "**wrong** " if answer.verified == "wrong" else ""
    if answer.solved(limit):
        return f"{mark}{answer.seconds:.1f} s"
    return f"{mark}{answer.status}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--backends", default="highs,scip,gurobi,cbc")
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--keep-manifest", action="store_true")
    args = parser.parse_args()
    run = run_info()
    manifest = json.loads((args.library / MANIFEST_JSON).read_text())
    set_name = manifest["set"]
    bench = bench_library(
        args.library, args.backends.split(","), time_limit=args.time_limit, progress=True
    )
    record = {
        "set": set_name,
        "time_limit": args.time_limit,
        "leaderboard": bench.standings,
        "answers": [{k: v for k, v in vars(a).items() if k != "solution"} for a in bench.answers],
    }
    markdown = leaderboard_markdown(bench, set_name)
    for path in write_results(f"library-{set_name}-{today(run)}", record, markdown, run):
        print(f"wrote {path}")
    if args.keep_manifest:
        kept = ROOT / "benchmarks" / "library" / set_name
        kept.mkdir(parents=True, exist_ok=True)
        for name in (MANIFEST_JSON, MANIFEST_CSV):
            shutil.copyfile(args.library / name, kept / name)
            print(f"wrote {kept / name}")
    print(markdown)


if __name__ == "__main__":
    main()
