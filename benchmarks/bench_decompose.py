"""Issue 13's benchmark: the whole-network importance MIP against its decompositions, side by side.

For each network and batch size, HiGHS with 2 threads in total solves, in this order:

* ``decompose="layer"``: one piece per scored layer (auxiliary heads fit on the training split),
  ``--workers`` processes of one thread each, ``--time-limit`` seconds per piece;
* ``decompose="layer,class"``: one piece per (layer, class), run the same way;
* the whole-network MIP (``decompose=None``) on ``--workers`` threads, with a time limit equal
  to the longer wall time of the two decomposed runs (measured first), so it never gets less
  time than either.

Per run: pieces proven optimal / total, wall time, the whole-network objective of the combined
scores (as returned, and at the binary masks they give), units removed per layer and test
accuracy without fine-tuning; then magnitude and random pruning (:mod:`oamip.training.criteria`)
at the same units removed per layer. Networks are trained by :mod:`oamip.training.zoo` (fixed
seeds, cached in ``benchmarks/.cache``); batches are correctly classified training samples.
Results go to ``benchmarks/results/decompose-<nets>-spc<K>-<date>.{json,md}`` with date,
machine and command.

    python benchmarks/bench_decompose.py --nets mlp --samples-per-class 1 --time-limit 30
    python benchmarks/bench_decompose.py --nets mlp,lenet5 --samples-per-class 1,10
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from common import MNIST, add_data_arguments, data_spec, run_info, today, write_results

import oamip
from oamip.adapters import extract
from oamip.adapters.masks import apply_masks
from oamip.bounds import interval_bounds
from oamip.formulations import sparsity_term
from oamip.solve.options import ScoringOptions
from oamip.training.criteria import get_criterion, masks_like
from oamip.training.data import Dataset, load_data, mip_batch
from oamip.training.inference import evaluate
from oamip.training.zoo import Recipe, trained

HERE = Path(__file__).resolve().parent
RECIPES = {
    "mlp": Recipe("mlp", (300, 100), epochs=20, lr=3e-3, batch_size=128, shift=2),
    "lenet5": Recipe("lenet5", (), epochs=10, lr=2e-3, batch_size=128, shift=2),
}
DECOMPOSITIONS = ("layer", "layer,class")
BASELINES = ("magnitude", "random")
SEED = 0


@dataclass
class Row:
    """One pruning of one network on one batch: a MIP run or a baseline at its units."""

    net: str
    samples: int
    method: str
    status: str
    proven: int
    pieces: int
    wall_seconds: float | None
    time_limit: float | None
    objective: float | None
    """The whole-network objective at the scores as returned (None for a baseline)."""
    mask_objective: float
    """The whole-network objective at the binary masks (what is actually pruned)."""
    bound: float | None
    removed: dict[str, str]
    test_accuracy: float
    head_accuracy: dict[str, float] = field(default_factory=dict)
    piece_gaps: list[float | None] = field(default_factory=list)
    piece_seconds: dict[str, float] = field(default_factory=dict)


def options_for(method: str, args, budget: float | None) -> ScoringOptions:
    """HiGHS with ``args.workers`` threads in all: pieces of one thread on that many processes,
    or one whole-network MIP on that many threads."""
    common = {"loss": args.loss, "lam": args.lam, "scores": args.scores, "backend": "highs"}
    if method == "whole":
        return ScoringOptions(**common, time_limit=budget, threads=args.workers)
    return ScoringOptions(
        **common,
        time_limit=args.time_limit,
        threads=1,
        n_jobs=args.workers,
        decompose=method,
    )


def mask_objective(model, x, y, masks: dict[str, np.ndarray], options: ScoringOptions) -> float:
    """The whole-network objective of ``masks`` (1 = keep) on the batch: the exact loss."""
    extracted = extract(model, x)
    network = extracted.network
    scores = extracted.scores_by_layer({n: m.astype(float) for n, m in masks.items()})
    big_m = interval_bounds(network, network.check_input(x)).big_m
    logits = network.forward(x, scores, big_m)
    loss = float(np.mean(options.loss_fn.values(logits, y.astype(np.int64))))
    return sparsity_term(network, scores, options.sparsity) + options.lam * loss


def removed(masks: dict[str, np.ndarray]) -> dict[str, str]:
    return {name: f"{int((~m).sum())}/{m.size}" for name, m in masks.items()}


def mip_row(net, model, batch, dataset, method, args, budget) -> tuple[Row, dict]:
    """One MIP run (whole or decomposed), timed from the call to its return."""
    options = options_for(method, args, budget)
    start = time.perf_counter()
    aux = None if options.decompose is None else (dataset.x_train, dataset.y_train)
    res = oamip.score_neurons(model, batch.x, batch.y, options, aux_data=aux)
    wall = time.perf_counter() - start
    masks = res.masks()
    pieces = res.subproblems
    row = Row(
        net=net,
        samples=len(batch.y),
        method="whole" if method == "whole" else f"decompose={method}",
        status=res.status,
        proven=sum(p.status == "optimal" for p in pieces or [res]),
        pieces=len(pieces) or 1,
        wall_seconds=wall,
        time_limit=options.time_limit,
        objective=res.objective,
        mask_objective=mask_objective(model, batch.x, batch.y, masks, options),
        bound=res.bound,
        removed=removed(masks),
        test_accuracy=evaluate(apply_masks(model, masks), dataset.x_test, dataset.y_test),
        head_accuracy={
            f"{p.layer}/{p.label}": p.head_accuracy for p in pieces if p.head_accuracy is not None
        },
        piece_gaps=[_gap(p.objective, p.bound) for p in pieces] if pieces else [res.gap],
        piece_seconds={f"{p.layer}/{p.label}": p.seconds for p in pieces},
    )
    return row, masks


def _gap(objective: float | None, bound: float | None) -> float | None:
    if objective is None or bound is None:
        return None
    return max(0.0, objective - bound) / max(1.0, abs(objective))


def baseline_rows(net, model, batch, dataset, reference: Row, masks, args) -> list[Row]:
    """Magnitude and random pruning at ``reference``'s units removed per layer."""
    options = options_for("whole", args, None)
    rows = []
    for name in BASELINES:
        scores = get_criterion(name).scores(model, batch.x, batch.y, SEED)
        like = masks_like(scores, masks)
        rows.append(
            Row(
                net=net,
                samples=len(batch.y),
                method=f"{name} (as {reference.method})",
                status="-",
                proven=0,
                pieces=0,
                wall_seconds=None,
                time_limit=None,
                objective=None,
                mask_objective=mask_objective(model, batch.x, batch.y, like, options),
                bound=None,
                removed=removed(like),
                test_accuracy=evaluate(apply_masks(model, like), dataset.x_test, dataset.y_test),
            )
        )
    return rows


def run_batch(net: str, model, dataset: Dataset, k: int, args) -> list[Row]:
    """The decomposed runs first, then the whole-network MIP with their longer wall time."""
    batch = mip_batch(model, dataset, k, seed=SEED)
    runs = []
    for method in DECOMPOSITIONS:
        runs.append(mip_row(net, model, batch, dataset, method, args, None))
        _show(runs[-1][0])
    budget = max(row.wall_seconds for row, _ in runs)
    runs.append(mip_row(net, model, batch, dataset, "whole", args, budget))
    _show(runs[-1][0])
    rows = []
    for row, masks in runs:
        rows.append(row)
        rows.extend(baseline_rows(net, model, batch, dataset, row, masks, args))
    return rows


def _show(row: Row) -> None:
    print(json.dumps(asdict(row)), flush=True)


def markdown(rows: list[Row], meta: dict, nets: dict, args) -> str:
    lines = [
        f"# Whole-network MIP against decomposition, {meta['date']}",
        "",
        f"Settings: {args.scores} scores, {args.loss} loss, lam {args.lam:g}; HiGHS with "
        f"{args.workers} threads in total: decomposed runs on {args.workers} processes of one "
        f"thread, {args.time_limit:g} s per piece; the whole-network MIP on {args.workers} "
        "threads with a time limit equal to the longer wall time of the two decomposed runs "
        "(measured first; `limit` column). Auxiliary heads are fit on the training split; "
        "accuracy is on the test split, without fine-tuning. Magnitude and random pruning "
        "remove the same units per layer as the MIP run named.",
        "",
        *[f"- {net}: {text}" for net, text in nets.items()],
        "",
        "objective: the whole-network objective at the returned scores (for layer,class the "
        "mean of binary piece scores, so fractional); at masks: at the binary masks kept "
        "(score >= 0.1), what is actually pruned. Lower is better.",
        "",
        "| net | N | method | status | proven | wall (s) | limit (s) | objective | at masks "
        "| bound | removed per layer | test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        proven = f"{r.proven}/{r.pieces}" if r.pieces else "-"
        lines.append(
            f"| {r.net} | {r.samples} | {r.method} | {r.status} | {proven} "
            f"| {_number(r.wall_seconds, '.1f')} | {_number(r.time_limit, '.1f')} "
            f"| {_number(r.objective)} | {_number(r.mask_objective)} | {_number(r.bound)} "
            f"| {', '.join(f'{k} {v}' for k, v in r.removed.items())} "
            f"| {100 * r.test_accuracy:.2f}% |"
        )
    heads = [r for r in rows if r.head_accuracy]
    if heads:
        lines += ["", "Auxiliary heads' accuracy on the training split:", ""]
        for r in heads:
            text = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(r.head_accuracy.items()))
            lines.append(f"- {r.net}, N {r.samples}, {r.method}: {text}")
    timed = [r for r in rows if r.piece_seconds]
    if timed:
        lines += ["", "Seconds per piece (layer/class) as the piece reported them:", ""]
        for r in timed:
            text = ", ".join(f"{k} {v:.1f}" for k, v in r.piece_seconds.items())
            lines.append(f"- {r.net}, N {r.samples}, {r.method}: {text}")
    return "\n".join(lines) + "\n"


def _number(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, MNIST)
    parser.add_argument("--nets", default="mlp", help="comma-separated: mlp, lenet5")
    parser.add_argument("--samples-per-class", default="1,10")
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds per piece")
    parser.add_argument("--workers", type=int, default=2, help="threads in total")
    parser.add_argument("--scores", default="binary")
    parser.add_argument("--loss", default="hinge")
    parser.add_argument("--lam", type=float, default=1.0)
    args = parser.parse_args(argv)
    dataset = load_data(data_spec(args, MNIST))
    meta = run_info(argv)
    rows: list[Row] = []
    nets = {}
    for net in args.nets.split(","):
        found = trained(dataset, RECIPES[net], HERE / ".cache")
        nets[net] = f"{RECIPES[net]}, test accuracy {100 * found.accuracy:.2f}%"
        for k in (int(v) for v in args.samples_per_class.split(",")):
            rows.extend(run_batch(net, found.model, dataset, k, args))
    spc = args.samples_per_class.replace(",", "-")
    name = f"decompose-{args.nets.replace(',', '-')}-spc{spc}-{today(meta)}"
    payload = {"nets": nets, "rows": [asdict(r) for r in rows]}
    write_results(name, payload, markdown(rows, meta, nets, args), meta)


if __name__ == "__main__":
    main()
