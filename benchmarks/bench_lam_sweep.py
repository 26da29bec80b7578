"""Issue 5's sweep target: 10 values of ``lam`` with one model and warm starts, against one solve.

Instance: an MLP 64-16-8-10 trained on scikit-learn's digits (fixed seed), one correctly
classified training sample per class, binary scores, HiGHS on one thread. Three timings in one
run: a single ``score_neurons`` at lam = 5, ``score_sweep`` over 10 values of lam, and the same 10
values solved independently. Target: the sweep costs at most 3x the single solve. Results go to
``benchmarks/results/lam-sweep-<loss>-<date>.{json,md}``.

    python benchmarks/bench_lam_sweep.py --loss hinge
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import run_info, today, write_results

import oamip
from oamip.training.data import load_digits, mip_batch
from oamip.training.models import mlp
from oamip.training.train import train

LAMS = np.round(np.geomspace(0.5, 10.0, 10), 3).tolist()
TARGET = 3.0


def _timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", default="hinge", choices=["hinge", "ce"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = load_digits()
    torch.manual_seed(0)
    model = train(mlp(64, (16, 8), 10), dataset, epochs=10, lr=1e-2, progress=False)
    batch = mip_batch(model, dataset, 1, seed=0)
    common = dict(loss=args.loss, scores="binary", threads=1)
    single, single_s = _timed(
        lambda: oamip.score_neurons(model, batch.x, batch.y, lam=5.0, **common)
    )
    sweep, sweep_s = _timed(lambda: oamip.score_sweep(model, batch.x, batch.y, LAMS, **common))
    alone, alone_s = _timed(
        lambda: [oamip.score_neurons(model, batch.x, batch.y, lam=v, **common) for v in LAMS]
    )
    for lam, a, b in zip(LAMS, sweep, alone):
        if abs(a.objective - b.objective) > 1e-4 * max(1.0, abs(b.objective)):
            raise SystemExit(f"lam {lam}: sweep objective {a.objective} != {b.objective}")
    meta = run_info(argv)
    record = {
        "lams": LAMS,
        "single_seconds": single_s,
        "sweep_seconds": sweep_s,
        "independent_seconds": alone_s,
        "ratio": sweep_s / single_s,
        "statuses": [r.status for r in sweep],
        "by_concavity": [r.by_concavity for r in sweep],
        "objectives": [r.objective for r in sweep],
        "units_kept": [int(sum(m.sum() for m in r.masks().values())) for r in sweep],
        "sweep_solve_seconds": [r.solve_seconds for r in sweep],
        "start_is_optimal": [
            abs(r.start_objective - r.objective) <= 1e-9 * max(1.0, abs(r.objective)) for r in sweep
        ],
    }
    text = _markdown(record, meta, args.loss)
    write_results(f"lam-sweep-{args.loss}-{today(meta)}", record, text, meta)
    print(text)


def _markdown(r: dict, meta: dict, loss: str) -> str:
    verdict = "met" if r["ratio"] <= TARGET else "MISSED"
    return "\n".join(
        [
            f"# lam sweep, {meta['date']}",
            "",
            f"MLP 64-16-8-10 on digits, 10 samples, binary scores, {loss} loss, HiGHS, 1 thread.",
            "",
            f"- one solve at lam 5: {r['single_seconds']:.2f} s",
            f"- score_sweep over {len(r['lams'])} values: {r['sweep_seconds']:.2f} s "
            f"(**{r['ratio']:.2f}x** one solve; target <= {TARGET:g}x: {verdict})",
            f"- the same values solved independently: {r['independent_seconds']:.2f} s",
            f"- statuses: {', '.join(r['statuses'])}",
            f"- proven from their neighbours by concavity, with no solve of their own: "
            f"{sum(r['by_concavity'])} of {len(r['lams'])}",
            f"- units kept per lam ({', '.join(f'{v:g}' for v in r['lams'])}): "
            f"{', '.join(str(k) for k in r['units_kept'])}",
            f"- solver seconds per lam in the sweep (0: proven by concavity): "
            f"{', '.join(f'{v:.2f}' for v in r['sweep_solve_seconds'])}",
            f"- weights solved whose warm start was already optimal: "
            f"{sum(s and not c for s, c in zip(r['start_is_optimal'], r['by_concavity']))} of "
            f"{len(r['lams']) - sum(r['by_concavity'])}",
            "",
        ]
    )


if __name__ == "__main__":
    main()
