"""The certification campaign: random tiny instances on every backend against brute force.

Each instance (``tests/fuzzing.py``: a random network of the supported layer kinds with at most
9 scored units, weights scaled 1e-3 to 1e3, a random loss, weight and min_keep) is solved with
binary scores on every installed backend (time limit 10 s) and judged against the enumeration
of every mask in float64 PyTorch. Counts per backend and status, every wrong answer (none
expected) and the honest non-optimal ones go to ``results/fuzz-DATE.{json,md}``.

    python benchmarks/bench_fuzz.py --instances 1250 --first 100000
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from dataclasses import asdict

from common import ROOT, run_info, today, write_results

from oamip import backends

sys.path.insert(0, str(ROOT))

from tests import fuzzing  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1250)
    parser.add_argument("--first", type=int, default=100_000, help="seed of the first instance")
    parser.add_argument("--backends", default=",".join(backends.available()))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    names = args.backends.split(",")
    started = time.perf_counter()
    verdicts = []
    for seed in range(args.first, args.first + args.instances):
        case = fuzzing.instance(seed)
        best = fuzzing.optimum(case)
        for name in names:
            verdict = fuzzing.judge(case, name, best)
            verdicts.append(verdict)
            if verdict.wrong:
                print(f"WRONG seed {seed} {name}: {verdict.wrong}", flush=True)
    _write(args, names, verdicts, time.perf_counter() - started)


def _write(args, names: list[str], verdicts: list, seconds: float) -> None:
    meta = run_info()
    counts = collections.Counter((v.backend, v.status) for v in verdicts)
    wrong = [asdict(v) for v in verdicts if v.wrong]
    honest = [asdict(v) for v in verdicts if not v.wrong and v.status != "optimal"]
    slow = max(verdicts, key=lambda v: v.seconds)
    date = today(meta)
    result = {
        "instances": args.instances,
        "first_seed": args.first,
        "backends": names,
        "solves": len(verdicts),
        "seconds": round(seconds, 1),
        "counts": {f"{b}/{s}": n for (b, s), n in sorted(counts.items())},
        "wrong": wrong,
        "honest_non_optimal": honest,
        "slowest": asdict(slow),
    }
    stem = f"fuzz{'-' + args.tag if args.tag else ''}-{date}"
    lines = [
        f"# Fuzz campaign, {date}",
        "",
        f"{len(verdicts)} solves ({args.instances} instances x {len(names)} backends) in "
        f"{seconds:.0f} s.",
        "",
        "| backend | optimal | honest non-optimal | wrong | slowest (s) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        mine = [v for v in verdicts if v.backend == name]
        lines.append(
            f"| {name} | {sum(v.status == 'optimal' and not v.wrong for v in mine)} "
            f"| {sum(v.status != 'optimal' and not v.wrong for v in mine)} "
            f"| {sum(bool(v.wrong) for v in mine)} | {max(v.seconds for v in mine):.1f} |"
        )
    lines += ["", "Honest non-optimal results (status, seed, backend):", ""]
    lines += [f"- {h['status']} seed {h['seed']} {h['backend']}" for h in honest[:50]]
    lines += (
        ["", "Wrong answers:", ""] + [f"- {w}" for w in wrong] + (["- none"] if not wrong else [])
    )
    write_results(stem, result, "\n".join(lines), meta)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
