"""Issue 5's benchmark: how fast the exact importance MIP solves with HiGHS, side by side with
the textbook encoding a generic network-to-MIP encoder produces.

* ``oamip``: per-sample bounds valid for every score vector, no variable for stably-off units,
  no binary where the ReLU's sign is fixed (binary scores, first layer), the two ideal facets per
  unit, an incumbent from greedy removal and local search as warm start (``--warm-start``
  seconds) with the solver's own heuristics off, as ``score_neurons`` does, and optionally
  rounds of ideal cuts at the root (``--root-cuts``).
* ``input-box``: the same problem (same constants M) encoded with bounds propagated from the
  whole input domain [0, 1]^d and a big-M binary on every unit, started from the trained
  network (every score 1), the solver's settings left at their defaults.

Networks: an MLP 784-100-100-10 and LeNet-5 trained on the MNIST archive of the data folder
(``--data-dir``; fixed seeds, cached in ``benchmarks/.cache``). Batches: K correctly
classified training images per class. Results go to
``benchmarks/results/mip-speed-<nets>-<date>.{json,md}``, with date and machine.

    python benchmarks/bench_mip_speed.py --time-limit 300            # the issue's full matrix
    python benchmarks/bench_mip_speed.py --nets mlp --time-limit 60  # what the README quotes
    python benchmarks/bench_mip_speed.py --nets mlp --samples-per-class 1 --first 2 --tag first2

``--first N`` keeps the batch's first N samples (scaling runs); ``--tag`` names the results
files apart; ``--solver`` runs another backend on the same instances. The warm start, root-cut
rounds (``--root-cuts``) and LP bound tightening (``--obbt SECONDS``, :mod:`oamip.solve.tightening`)
are timed separately, outside the solver's time limit; a target counts them all.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from common import MNIST, add_data_arguments, data_spec, run_info, today, write_results

from oamip import backends
from oamip.adapters import extract
from oamip.bounds import NetworkBounds, box_bounds, interval_bounds
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.solve.root_cuts import add_root_cuts
from oamip.solve.tightening import tighten_bounds
from oamip.solve.warm_start import warm_start_scores
from oamip.training.data import load_data, mip_batch
from oamip.training.zoo import Recipe, trained

HERE = Path(__file__).resolve().parent
RECIPES = {
    "mlp": Recipe("mlp", (100, 100), epochs=20, lr=3e-3, batch_size=128, shift=2),
    "lenet5": Recipe("lenet5", (), epochs=10, lr=2e-3, batch_size=128, shift=2),
}
TARGET_SECONDS = {"mlp": 10.0, "lenet5": 60.0}


@dataclass
class Row:
    net: str
    samples: int
    scores: str
    loss: str
    lam: float
    formulation: str
    status: str
    seconds: float
    objective: float | None
    bound: float | None
    gap: float | None
    nodes: int | None
    binaries: int
    rows: int
    columns: int
    build_seconds: float
    cut_seconds: float
    cuts: int
    obbt_seconds: float
    start_objective: float
    start_seconds: float
    solver: str

    @property
    def total_seconds(self) -> float:
        """Solve, cuts, bound tightening and warm start: what a target is measured on."""
        return self.seconds + self.cut_seconds + self.obbt_seconds + self.start_seconds


def _bounds(formulation: str, network, x, y, settings, args) -> tuple[NetworkBounds, float]:
    """The formulation's bounds and the seconds spent tightening them."""
    tight = interval_bounds(network, x)
    if formulation == "oamip" and args.obbt > 0:
        result = tighten_bounds(
            network, x, y, settings, time_budget=args.obbt, threads=args.threads
        )
        return result.bounds, result.seconds
    if formulation == "oamip":
        return tight, 0.0
    flat = x.reshape(len(x), -1)
    box = box_bounds(network, np.zeros_like(flat), np.ones_like(flat))
    return NetworkBounds(box.layers, tight.big_m), 0.0


def solve_one(net, extracted, batch, scores, loss, lam, formulation, args) -> Row:
    start = time.perf_counter()
    settings = ImportanceSettings(
        loss, lam=lam, scores=scores, encoding="tight" if formulation == "oamip" else "big-m"
    )
    bounds, obbt = _bounds(formulation, extracted.network, batch.x, batch.y, settings, args)
    im = build_importance_model(extracted.network, batch.x, batch.y, settings, bounds)
    build = time.perf_counter() - start - obbt
    solver = backends.get(args.solver)
    ours = formulation == "oamip"
    cuts = add_root_cuts(im, solver, args.root_cuts) if ours else None
    warm = time.perf_counter()
    start_scores = warm_start_scores(im, args.warm_start) if ours else im.all_ones()
    warm = time.perf_counter() - warm
    im.assign(start_scores)
    form = backends.compile_model(im.model)
    options = backends.SolveOptions(
        time_limit=args.time_limit, threads=args.threads, heuristics=not ours
    )
    result = solver.solve(form, options, warm_start=True)
    return Row(
        net=net,
        samples=len(batch.y),
        scores=scores,
        loss=loss,
        lam=lam,
        formulation=formulation,
        status=str(result.status),
        seconds=result.seconds,
        objective=result.objective,
        bound=result.bound,
        gap=result.gap,
        nodes=result.nodes,
        binaries=int(form.integer.sum()),
        rows=form.num_rows,
        columns=form.num_cols,
        build_seconds=build,
        cut_seconds=cuts.seconds if cuts else 0.0,
        cuts=cuts.cuts if cuts else 0,
        obbt_seconds=obbt,
        start_objective=im.objective_at(start_scores),
        start_seconds=warm,
        solver=args.solver,
    )


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [
        f"# MIP speed, {meta['date']}",
        "",
        "gap = (objective - bound) / max(1, |objective|), as `SolveResult.gap` defines it; with "
        "objectives below 1 it is the absolute difference.",
        "",
        "start: the warm start's objective (its seconds); s: the solver's seconds.",
        "",
        "| net | N | scores | loss | lam | formulation | solver | status | s | start (s) "
        "| objective | bound | gap | nodes | binaries | rows | cuts (s) | OBBT (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap = "-" if r.gap is None else f"{100 * r.gap:.1f}%"
        lines.append(
            f"| {r.net} | {r.samples} | {r.scores} | {r.loss} | {r.lam:g} | {r.formulation} "
            f"| {r.solver} | {r.status} | {r.seconds:.1f} "
            f"| {_number(r.start_objective)} ({r.start_seconds:.1f}) "
            f"| {_number(r.objective)} | {_number(r.bound)} "
            f"| {gap} | {r.nodes} | {r.binaries} | {r.rows} | {r.cuts} ({r.cut_seconds:.1f}) "
            f"| {r.obbt_seconds:.1f} |"
        )
    lines += ["", *_targets(rows)]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _targets(rows: list[Row]) -> list[str]:
    """The issue's targets, met or missed and by how much."""
    out = ["## Targets", ""]
    for r in rows:
        if r.formulation != "oamip" or r.samples != 10:
            continue
        target = TARGET_SECONDS[r.net]
        met = r.status == "optimal" and r.total_seconds <= target
        verdict = (
            f"met ({r.total_seconds:.1f} s)"
            if met
            else (
                f"missed: {r.status} after {r.total_seconds:.0f} s in all, "
                f"gap {100 * (r.gap or 1):.1f}%"
            )
        )
        out.append(
            f"- {r.net}, {r.scores}, {r.loss}, lam {r.lam:g}: proven optimal in <= {target:g} s: "
            f"{verdict}"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, MNIST)
    parser.add_argument("--nets", default="mlp,lenet5")
    parser.add_argument("--samples-per-class", default="1,3")
    parser.add_argument("--scores", default="binary,continuous")
    parser.add_argument("--losses", default="hinge,ce")
    parser.add_argument("--lams", default="1,5")
    parser.add_argument("--formulations", default="oamip,input-box")
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root-cuts", type=int, default=0)
    parser.add_argument("--solver", default="highs", help="the backend to time")
    parser.add_argument(
        "--warm-start", type=float, default=10.0, help="seconds of greedy and local search"
    )
    parser.add_argument("--tag", default="", help="appended to the results' file name")
    parser.add_argument(
        "--obbt", type=float, default=0.0, help="seconds of LP bound tightening (ours only)"
    )
    parser.add_argument(
        "--first", type=int, default=0, help="keep only the batch's first N samples (scaling)"
    )
    args = parser.parse_args(argv)
    dataset = load_data(data_spec(args, MNIST, "mnist"))
    meta = run_info(argv)
    rows: list[Row] = []
    for net in args.nets.split(","):
        model = trained(dataset, RECIPES[net], HERE / ".cache").model
        for k in (int(v) for v in args.samples_per_class.split(",")):
            batch = mip_batch(model, dataset, k, seed=0)
            if args.first:
                batch = batch._replace(x=batch.x[: args.first], y=batch.y[: args.first])
            extracted = extract(model, batch.x)
            grid = itertools.product(
                args.scores.split(","),
                args.losses.split(","),
                (float(v) for v in args.lams.split(",")),
                args.formulations.split(","),
            )
            for scores, loss, lam, formulation in grid:
                row = solve_one(net, extracted, batch, scores, loss, lam, formulation, args)
                rows.append(row)
                print(json.dumps(asdict(row)), flush=True)
    tag = f"-{args.tag}" if args.tag else ""
    name = f"mip-speed-{args.nets.replace(',', '-')}{tag}-{today(meta)}"
    write_results(name, {"rows": [asdict(r) for r in rows]}, markdown(rows, meta), meta)


if __name__ == "__main__":
    main()
