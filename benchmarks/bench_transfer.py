"""Issue 15's benchmark: do the MIP's masks travel between data sets, and how does it prune at
initialisation?

``--part transfer``: for each direction (MNIST -> Fashion-MNIST, Fashion-MNIST -> MNIST) one
``oamip.transfer`` run: per seed, the network is initialised, trained on the source, scored there
by the MIP, reset to its initial weights and retrained on the target with the mask; the dense
network, random, magnitude (source-trained weights) and SNIP (at initialisation, on the target)
masks at the same units per layer are trained alike. ``--part at-init``: on each data set, per
seed, ``oamip.prune(..., at_init=True)`` at the authors' settings (lam 1, threshold 0.2), every
criterion at initialisation pruning as many units per layer, all trained as long as the dense
network. Mean ± standard deviation over the seeds; results go to
``benchmarks/results/transfer-[at-init-]<arch>[-<tag>]-<date>.{json,md}`` with date, machine
and command.

    python benchmarks/bench_transfer.py --part transfer --arch mlp --seeds 5 --epochs 3
    python benchmarks/bench_transfer.py --part at-init --arch lenet5 --seeds 5 --epochs 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import FASHION_MNIST, MNIST, add_data_dir, data_dir, run_info, today, write_results

import oamip
from oamip.pipelines.transfer import METHODS, TransferSettings, summary_table
from oamip.training.criteria import MIP_METHOD
from oamip.training.data import Dataset, load_data
from oamip.training.models import build

DATA = {"mnist": MNIST, "fashion": FASHION_MNIST}
DIRECTIONS = (("mnist", "fashion"), ("fashion", "mnist"))
AT_INIT = {"lam": 1.0, "threshold": 0.2, "samples_per_class": 1}
"""The authors' settings for scoring at initialisation (they used 5 samples; one per class here)."""
TRANSFER_LAM = TransferSettings().lam
"""The MIP's default loss weight on the source (the library's, the authors' default)."""


def run_transfer(data: dict[str, Dataset], args: argparse.Namespace) -> list[dict]:
    """One ``oamip.transfer`` report per direction, as plain data."""
    reports = []
    for source, target in DIRECTIONS:
        report = oamip.transfer(
            data[source],
            data[target],
            arch=args.arch,
            hidden=args.hidden,
            seeds=args.seeds,
            epochs=args.epochs,
            time_limit=args.time_limit,
            threads=args.threads,
            lam=TRANSFER_LAM if args.lam is None else args.lam,
            decompose=args.decompose,
            loss=args.loss,
            scores=args.scores,
            samples_per_class=args.samples_per_class,
        )
        print(summary_table(report), flush=True)
        reports.append(report.to_dict())
    return reports


def run_at_init(data: dict[str, Dataset], args: argparse.Namespace) -> list[dict]:
    """Per data set: every seed's at-init run, and per method the mean ± std after training."""
    results = []
    for name, dataset in data.items():
        runs = []
        for seed in range(args.seeds):
            model = build(args.arch, dataset, args.hidden, seed=seed)
            report = oamip.prune(
                model,
                dataset,
                at_init=True,
                seed=seed,
                finetune_epochs=args.epochs,
                time_limit=args.time_limit,
                threads=args.threads,
                **(AT_INIT | ({} if args.lam is None else {"lam": args.lam})),
            )
            runs.append(report.to_dict())
            print(f"{name} seed {seed}: {at_init_accuracies(runs[-1])}", flush=True)
        results.append({"dataset": name, "runs": runs, "methods": at_init_methods(runs)})
    return results


def at_init_accuracies(run: dict) -> dict[str, float]:
    """Test accuracy after training of every method in one at-init report."""
    found = {"dense": run["accuracy_before"], MIP_METHOD: run["accuracy_after_finetune"]}
    return found | {b["method"]: b["accuracy_after_finetune"] for b in run["baselines"]}


def at_init_methods(runs: list[dict]) -> list[dict]:
    """Per method: accuracies per seed, mean, std (sample), units pruned per seed."""
    per_run = [at_init_accuracies(run) for run in runs]
    return [
        {
            "method": method,
            "accuracies": [acc[method] for acc in per_run],
            "mean": float(np.mean([acc[method] for acc in per_run])),
            "std": _std([acc[method] for acc in per_run]),
            "units_pruned": [0 if method == "dense" else run["units_pruned"] for run in runs],
        }
        for method in per_run[0]
    ]


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _cell(entry: dict) -> str:
    return f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"


def transfer_markdown(reports: list[dict]) -> list[str]:
    """One row per direction: mean ± std per method, units pruned, and the issue's target."""
    lines = [
        "| source -> target | units pruned (of total) | "
        + " | ".join(METHODS)
        + " | mip - dense | mip - random | mip - snip |",
        "|---" * (len(METHODS) + 5) + "|",
    ]
    for report in reports:
        by = {entry["method"]: entry for entry in report["methods"]}
        pruned = by[MIP_METHOD]["units_pruned"]
        diff = {m: 100 * (by[MIP_METHOD]["mean"] - by[m]["mean"]) for m in by}
        lines.append(
            f"| {report['source']} -> {report['target']} | "
            f"{min(pruned)}-{max(pruned)} of {report['units_total']} | "
            + " | ".join(_cell(by[m]) for m in METHODS)
            + f" | {diff['dense']:+.2f} | {diff['random']:+.2f} | {diff['snip']:+.2f} |"
        )
    return lines


def at_init_markdown(results: list[dict]) -> list[str]:
    """One row per data set: mean ± std after training per method, units pruned."""
    methods = [entry["method"] for entry in results[0]["methods"]]
    lines = [
        "| data | units pruned (of total) | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 2) + "|",
    ]
    for result in results:
        by = {entry["method"]: entry for entry in result["methods"]}
        pruned = by[MIP_METHOD]["units_pruned"]
        total = result["runs"][0]["units_total"]
        lines.append(
            f"| {result['dataset']} | {min(pruned)}-{max(pruned)} of {total} | "
            + " | ".join(_cell(by[m]) for m in methods)
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("transfer", "at-init"), default="transfer")
    parser.add_argument("--arch", choices=("mlp", "lenet5"), default="mlp")
    parser.add_argument("--hidden", default="300,100", help="the MLP's hidden widths")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs on each data set")
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds per MIP")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--lam",
        type=float,
        default=None,
        help=f"the MIP's loss weight (default {TRANSFER_LAM:g}; at-init {AT_INIT['lam']:g})",
    )
    defaults = TransferSettings()
    parser.add_argument("--loss", default=defaults.loss, help="the MIP's loss (transfer)")
    parser.add_argument("--scores", default=defaults.scores, help="continuous or binary (transfer)")
    parser.add_argument("--decompose", default=None, help="the MIP's pieces (transfer)")
    parser.add_argument(
        "--samples-per-class",
        type=int,
        default=defaults.samples_per_class,
        help="MIP and SNIP batch (transfer)",
    )
    add_data_dir(parser)
    parser.add_argument("--tag", default="", help="added to the results' file names")
    args = parser.parse_args(argv)
    args.hidden = tuple(int(w) for w in args.hidden.split(","))
    meta = run_info(argv)
    started = time.perf_counter()
    folder = data_dir(args.data_dir)
    data = {name: load_data(f"npz:{folder / file}") for name, file in DATA.items()}
    transfer = args.part == "transfer"
    found = run_transfer(data, args) if transfer else run_at_init(data, args)
    arch = f"mlp {args.hidden}" if args.arch == "mlp" else args.arch
    table = transfer_markdown(found) if transfer else at_init_markdown(found)
    wall = time.perf_counter() - started
    part = "" if transfer else "at-init-"
    tag = f"-{args.tag}" if args.tag else ""
    name = f"transfer-{part}{args.arch}{tag}-{today(meta)}"
    header = [
        f"# bench_transfer: {args.part}, {arch}, {args.seeds} seeds, {args.epochs} epochs"
        + (f", MIP lam {args.lam:g}" if args.lam is not None else "")
        + (f", MIP lam {TRANSFER_LAM:g}" if args.lam is None and transfer else "")
        + (
            f", {args.loss}, {args.scores} scores, decompose {args.decompose}, "
            f"{args.samples_per_class} samples per class"
            if transfer and args.decompose
            else ""
        ),
        "",
        f"Wall {wall:.0f} s. Test accuracy (%) after training, mean ± std over seeds.",
        "",
    ]
    payload = {"wall_seconds": wall, "results": found}
    write_results(name, payload, "\n".join([*header, *table]), meta)
    print("\n".join(table))


if __name__ == "__main__":
    main()
