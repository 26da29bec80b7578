"""Issue 13's scaling benchmark: the VGG on Fashion-MNIST scored by ``decompose="layer"``.

The VGG (``--arch vgg``: three stages of two 3x3 conv + BatchNorm + ReLU with max pooling, then
two Linear layers) is trained once by :mod:`oamip.training.zoo` (seed 0, cached in
``benchmarks/.cache``). Then, for each batch size (``--samples-per-class``, one batch of correctly
classified training samples per size) and each number of workers (``--workers``: processes of
one HiGHS thread each), one ``decompose="layer"`` solve runs in a fresh Python process, so that
its peak memory is its own: wall time of the solve phase (the call to ``score_neurons``, which
includes bounds, head fits and every piece; training excluded), the peak resident memory of the
largest process (the solving process or one of its workers), and per piece: units, status, gap,
seconds, head accuracy. Each result also gives units removed per layer and the test accuracy
without fine-tuning. Optionally (``--whole-limit``) the whole-network MIP on the smallest batch
with that time limit, for comparison.

With ``--baseline DIR`` (a copy of an earlier version of the package, e.g.
``git archive <commit> | tar -x -C DIR``), every decomposed run is made twice, side by side
(the baseline's first, then this checkout's, for each setting): ``code`` says which. Each run
also reports the time outside the solves (wall minus the pieces' solve seconds divided by the
workers: the dense trace, the head fits and the building of the pieces' data, as far as they
do not overlap the solves) and the peak resident memory of the solving process (``main``) and
of its largest worker apart.

Results: ``benchmarks/results/scaling-vgg-<date>.{json,md}`` with date, machine and command.

    python benchmarks/bench_scaling.py --samples-per-class 1,3,10 --workers 1,2 --time-limit 30
    python benchmarks/bench_scaling.py --samples-per-class 10 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import FASHION_MNIST, add_data_arguments, data_spec, run_info, today, write_results

import oamip
from oamip.adapters.chain import units
from oamip.adapters.masks import apply_masks
from oamip.solve.options import ScoringOptions
from oamip.training.data import load_data, mip_batch
from oamip.training.inference import evaluate
from oamip.training.zoo import Recipe, trained

HERE = Path(__file__).resolve().parent
SEED = 0


def _model(data: str):
    dataset = load_data(data)
    return dataset, trained(dataset, Recipe.default("vgg"), HERE / ".cache")


def one_run(data: str, k: int, workers: int, time_limit: float, whole: bool) -> dict:
    """One solve in this process (run by the parent as a subprocess), measured."""
    dataset, found = _model(data)
    model = found.model
    batch = mip_batch(model, dataset, k, seed=SEED)
    common = {"loss": "hinge", "lam": 1.0, "scores": "binary", "backend": "highs"}
    if whole:
        options = ScoringOptions(**common, time_limit=time_limit, threads=workers)
    else:
        options = ScoringOptions(
            **common,
            time_limit=time_limit,
            threads=1,
            n_jobs=workers,
            decompose="layer",
        )
    aux = None if whole else (dataset.x_train, dataset.y_train)
    start = time.perf_counter()
    res = oamip.score_neurons(model, batch.x, batch.y, options, aux_data=aux)
    wall = time.perf_counter() - start
    masks = res.masks()
    sizes = {u.name: u.size for u in units(model)}
    pieces = [
        {
            "layer": p.layer,
            "units": sizes.get(p.layer),
            "status": p.status,
            "objective": p.objective,
            "bound": p.bound,
            "seconds": p.seconds,
            "head_accuracy": p.head_accuracy,
            "relu_entries": p.relu_entries,
        }
        for p in res.subproblems
    ]
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    solving = sum(p["seconds"] for p in pieces) / workers
    return {
        "method": "whole" if whole else "decompose=layer",
        "samples": len(batch.y),
        "workers": workers,
        "time_limit": time_limit,
        "status": res.status,
        "wall_seconds": wall,
        "peak_rss_mb": max(own, children) / 1024,
        "main_rss_mb": own / 1024,
        "workers_rss_mb": children / 1024 if workers > 1 else None,
        "outside_seconds": wall - solving if pieces else None,
        "aux_samples": getattr(options, "aux_samples", None),
        "pieces": pieces,
        "proven": sum(p["status"] == "optimal" for p in pieces) if pieces else None,
        "objective": res.objective,
        "bound": res.bound,
        "removed": {n: f"{int((~m).sum())}/{m.size}" for n, m in masks.items()},
        "test_accuracy": evaluate(apply_masks(model, masks), dataset.x_test, dataset.y_test),
    }


def _spawn(args, k: int, workers: int, whole: bool, code: str | None = None) -> dict:
    """:func:`one_run` in a fresh interpreter (its own peak memory), with the package of
    ``code`` (a folder; None: this checkout's); its last stdout line."""
    command = [
        sys.executable,
        __file__,
        "--one",
        f"{k},{workers},{int(whole)}",
        "--data",
        args.data,
        "--time-limit",
        str(args.whole_limit if whole else args.time_limit),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(code or HERE.parent).resolve()))
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"code": "this checkout" if code is None else f"baseline {code}", **row}


def markdown(rows: list[dict], meta: dict, vgg: str) -> str:
    lines = [
        f"# VGG on Fashion-MNIST scored by decomposition, {meta['date']}",
        "",
        f"Load average when the run ended: {', '.join(f'{v:.1f}' for v in os.getloadavg())}.",
        "",
        f"- {vgg}",
        '- binary scores, hinge loss, lam 1, HiGHS; `decompose="layer"`: one piece per scored '
        "layer, processes of one thread (`workers`), the time limit per piece; `whole`: the "
        "whole-network MIP on `workers` threads. Wall: the `score_neurons` call (bounds, heads, "
        "pieces; training excluded). Peak RSS: the largest process. Test accuracy without "
        "fine-tuning.",
        "",
        "| code | method | N | workers | status | proven | wall (s) | outside solves (s) "
        "| peak RSS (MB) | main RSS (MB) | worker RSS (MB) | removed per layer | test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        proven = f"{r['proven']}/{len(r['pieces'])}" if r["pieces"] else "-"
        removed = ", ".join(f"{k} {v}" for k, v in r["removed"].items())
        lines.append(
            f"| {r.get('code', '-')} | {r['method']} | {r['samples']} | {r['workers']} "
            f"| {r['status']} | {proven} | {r['wall_seconds']:.1f} "
            f"| {_number(r.get('outside_seconds'), 1)} | {r['peak_rss_mb']:.0f} "
            f"| {_number(r.get('main_rss_mb'), 0)} | {_number(r.get('workers_rss_mb'), 0)} "
            f"| {removed} | {100 * r['test_accuracy']:.2f}% |"
        )
    lines += _speedups(rows)
    lines += [
        "",
        "Pieces (layer: units, status, seconds, gap, head accuracy, ReLU entries left binary / "
        "fixed for every mask and sample, or folded into the logits' affine map):",
        "",
    ]
    for r in rows:
        text = "; ".join(_piece(p) for p in r["pieces"])
        if text:
            code = f"{r['code']}, " if "code" in r else ""
            lines.append(f"- {code}N {r['samples']}, {r['workers']} worker(s): {text}")
    return "\n".join(lines) + "\n"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _speedups(rows: list[dict]) -> list[str]:
    by = {
        (r.get("code", ""), r["samples"], r["workers"]): r["wall_seconds"]
        for r in rows
        if r["pieces"]
    }
    found = []
    for (code, n, w), wall in sorted(by.items()):
        if w != 1 and (code, n, 1) in by:
            which = f"{code}, " if code else ""
            found.append(
                f"- {which}N {n}: {w} workers {by[(code, n, 1)] / wall:.2f}x faster than 1"
            )
    return ["", "Speed-up of the solve phase:", "", *found] if found else []


def _piece(p: dict) -> str:
    gap = None
    if p["objective"] is not None and p["bound"] is not None:
        gap = max(0.0, p["objective"] - p["bound"]) / max(1.0, abs(p["objective"]))
    head = "-" if p["head_accuracy"] is None else f"{100 * p['head_accuracy']:.1f}%"
    gap_text = "-" if gap is None else f"{100 * gap:.1f}%"
    entries = p.get("relu_entries") or {}
    if "folded" in entries:
        how = f"folded ({entries['folded']} ReLU entries)"
    else:
        fixed = sum(count for case, count in entries.items() if case != "binary")
        how = f"{entries.get('binary', 0)} binary / {fixed} fixed ReLU entries"
    return (
        f"{p['layer']}: {p['units']}, {p['status']}, {p['seconds']:.1f} s, {gap_text}, {head}, "
        f"{how}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, FASHION_MNIST)
    parser.add_argument("--samples-per-class", default="1,3,10")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds per piece")
    parser.add_argument("--whole-limit", type=float, default=None, help="also the whole MIP")
    parser.add_argument(
        "--baseline", default=None, help="also run each setting with the package in this folder"
    )
    parser.add_argument("--note", default="", help="a line added to the results (e.g. the load)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data = data_spec(args, FASHION_MNIST)
    if args.one:
        k, workers, whole = (int(v) for v in args.one.split(","))
        print(json.dumps(one_run(args.data, k, workers, args.time_limit, bool(whole))))
        return
    _, found = _model(args.data)
    vgg = f"{found.recipe}, test accuracy {100 * found.accuracy:.2f}%"
    rows = []
    spc = [int(v) for v in args.samples_per_class.split(",")]
    counts = [int(v) for v in args.workers.split(",")]
    codes = [args.baseline, None] if args.baseline else [None]
    meta = run_info(argv)
    for k in spc:
        for workers in counts:
            for code in codes:
                rows.append(_spawn(args, k, workers, False, code))
                print(json.dumps({key: v for key, v in rows[-1].items() if key != "pieces"}))
                _write(rows, meta, vgg, args.note)  # each run kept as soon as it is done
    if args.whole_limit is not None:
        rows.append(_spawn(args, min(spc), max(counts), whole=True))
        _write(rows, meta, vgg, args.note)


def _write(rows: list[dict], meta: dict, vgg: str, note: str) -> None:
    text = markdown(rows, meta, vgg) + (f"\n{note}\n" if note else "")
    write_results(
        f"scaling-vgg-{today(meta)}", {"vgg": vgg, "rows": rows, "note": note}, text, meta
    )


if __name__ == "__main__":
    main()
