"""What another piecewise-linear activation costs the importance MIP: the same digits MLP
(hidden widths 24 and 16, trained for a few epochs with one seed) with ReLU, ReLU6,
Hardtanh(-1, 1) and LeakyReLU(0.1), scored on one correctly classified sample per class with
continuous and binary scores. Reports the model's size (variables, rows, binaries), the build and
solve times, the status and gap, the check against torch (``logit_error``) and the units kept.
Writes ``benchmarks/results/activations-<date>.{json,md}``.

    python benchmarks/bench_activations.py [--time-limit S] [--epochs E]
"""

from __future__ import annotations

import argparse

import torch
from common import run_info, today, write_results
from torch import nn

import oamip
from oamip import backends
from oamip.training.data import load_digits, mip_batch
from oamip.training.inference import evaluate
from oamip.training.train import train

ACTIVATIONS = {
    "ReLU": nn.ReLU,
    "ReLU6": nn.ReLU6,
    "Hardtanh(-1, 1)": nn.Hardtanh,
    "LeakyReLU(0.1)": lambda: nn.LeakyReLU(0.1),
}


def model_with(act, epochs: int, data) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 24), act(), nn.Linear(24, 16), act(), nn.Linear(16, 10)
    )
    return train(net, data, epochs=epochs, lr=1e-2, seed=0, progress=False).eval()


def measure(name: str, act, args, data) -> list[dict]:
    model = model_with(act, args.epochs, data)
    batch = mip_batch(model, data, 1, 0)
    rows = []
    for scores in ("continuous", "binary"):
        res = oamip.score_neurons(
            model, batch.x, batch.y, scores=scores, time_limit=args.time_limit, threads=1
        )
        form = backends.compile_model(res.model)
        masks = res.masks()
        pruned = oamip.remove_pruned(model, masks)
        rows.append(
            {
                "activation": name,
                "scores": scores,
                "variables": int(form.num_cols),
                "rows": int(form.num_rows),
                "binaries": int(form.integer.sum()),
                "build_seconds": round(res.build_seconds, 2),
                "solve_seconds": round(res.solve_seconds, 2),
                "status": res.status,
                "gap": None if res.gap is None else round(res.gap, 4),
                "logit_error": res.logit_error,
                "units_kept": int(sum(m.sum() for m in masks.values())),
                "units": int(sum(len(m) for m in masks.values())),
                "test_accuracy": round(evaluate(model, data.x_test, data.y_test), 4),
                "test_accuracy_pruned": round(evaluate(pruned, data.x_test, data.y_test), 4),
            }
        )
    return rows


def markdown(rows: list[dict], args, run: dict) -> str:
    lines = [
        f"# The importance MIP with other piecewise-linear activations, {today(run)}",
        "",
        "A digits MLP 64-24-16-10 trained for "
        f"{args.epochs} epochs (seed 0) with each activation, scored by `score_neurons` (HiGHS, "
        f"one thread, lam 5, cross-entropy, {args.time_limit:g} s limit) on one correctly "
        "classified training sample per class; pruned at the default threshold 0.1 without "
        "fine-tuning. `logit_error`: the solver's logits against the torch model's with the "
        "scores applied. The machine was shared with other jobs, so times are indicative.",
        "",
        "| activation | scores | variables | rows | binaries | build s | solve s | status | gap | "
        "logit error | units kept | test acc. | pruned acc. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap = "-" if r["gap"] is None else f"{r['gap']:.2%}"
        lines.append(
            f"| {r['activation']} | {r['scores']} | {r['variables']} | {r['rows']} | "
            f"{r['binaries']} | {r['build_seconds']} | {r['solve_seconds']} | {r['status']} | "
            f"{gap} | {r['logit_error']:.1e} | {r['units_kept']}/{r['units']} | "
            f"{r['test_accuracy']:.1%} | {r['test_accuracy_pruned']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    run = run_info()
    torch.set_num_threads(1)
    data = load_digits()
    rows = [row for name, act in ACTIVATIONS.items() for row in measure(name, act, args, data)]
    text = markdown(rows, args, run)
    print(text)
    name = f"activations-{today(run)}"
    write_results(
        name, {"rows": rows, "time_limit": args.time_limit, "epochs": args.epochs}, text, run
    )


if __name__ == "__main__":
    main()
