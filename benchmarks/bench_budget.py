"""The whole comparison in one command: pruning to an accuracy budget, the MIP's lam path at its
defaults against every baseline, on five networks, with and without fine-tuning.

For each network and each budget (points of validation accuracy), ``oamip.prune(model, data,
max_drop=budget, finetune_epochs=E)`` solves the lam path and cuts it, and every registered
criterion's steps in both schedules (per layer and ``-global``), at the budget on a validation
split held out of the training split. Per method: units, parameters and MACs removed within the
budget, validation and test accuracy there without fine-tuning, the test accuracy of the same
mask after ``E`` epochs of fine-tuning (every method the same recipe), and the run's wall time.
The networks are trained by :mod:`oamip.training.zoo` (fixed seeds, cached in
``benchmarks/.cache``) on the training split less the validation split ``oamip.prune`` holds out
(the same ``val_fraction`` and seed), so the validation samples are unseen: the MLP
784-300-100-10 and LeNet-5 on MNIST, the VGG on Fashion-MNIST and ResNet-20 on the first
``--resnet-train`` Fashion-MNIST training images; ``digits`` is the command's default (an MLP
64-64-32-10 trained by the pipeline itself on the same reduced split). A network the pipeline
refuses (e.g. a MIP over the size limit) is a row saying why. Results go to
``benchmarks/results/budget-<nets>-<date>.{json,md}`` with date, machine and command.

    python benchmarks/bench_budget.py     # digits, mlp, lenet5, vgg, resnet20; 0.5, 1, 2; E = 1
    python benchmarks/bench_budget.py --nets digits --budgets 1 --lams 0.1,1,10 --time-limit 5
    python benchmarks/bench_budget.py --nets vgg --budgets 1 --train-seed 1   # another VGG
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from common import (
    FASHION_MNIST,
    MNIST,
    add_data_dir,
    data_dir,
    run_info,
    today,
    write_results,
)

import oamip
from oamip.errors import OamipError
from oamip.pipelines.budget import (
    DEFAULT_LAMS,
    DEFAULT_REFINE_STEPS,
    NOT_SOLVED,
    split_validation,
)
from oamip.pipelines.settings import PruneSettings
from oamip.training.criteria import MIP_METHOD
from oamip.training.data import load_data
from oamip.training.zoo import Recipe, trained

HERE = Path(__file__).resolve().parent
RECIPES = {
    "mlp": Recipe("mlp", (300, 100), epochs=20, lr=3e-3, batch_size=128, shift=2),
    "lenet5": Recipe("lenet5", (), epochs=10, lr=2e-3, batch_size=128, shift=2),
    "vgg": Recipe.default("vgg"),
    "resnet20": Recipe("resnet20", epochs=3, lr=3e-3, cosine=True),
}
ARCHIVES = {"mlp": MNIST, "lenet5": MNIST, "vgg": FASHION_MNIST, "resnet20": FASHION_MNIST}
DIGITS = "digits"
NETS = (DIGITS, "mlp", "lenet5", "vgg", "resnet20")
SEED = 0


@dataclass
class Row:
    """One method of one budgeted run: what it removes within the budget and its accuracy."""

    net: str
    budget: float
    method: str
    units_pruned: int
    units_total: int
    params_removed: int
    params_total: int
    macs_removed: int
    macs_total: int
    val_accuracy: float
    test_accuracy: float
    val_accuracy_before: float
    accuracy_before: float
    wall_seconds: float
    lam: float | None
    lams_solved: int
    test_at_mip_counts: float | None
    """Test accuracy at the MIP's kept per-layer counts (the MIP's own for ``mip``; None for a
    global schedule, which sets its own counts per layer)."""
    test_accuracy_finetuned: float | None = None
    """Test accuracy of the method's budget mask after ``--finetune-epochs`` of fine-tuning."""
    val_drop_error: float = 0.0
    """The standard error, in points, of the validation drop (``BudgetEntry.val_drop_error``)."""
    test_drop_error: float | None = None
    """The same for the test drop (``BudgetEntry.test_drop_error``): the test split's own
    measurement error."""
    error: str | None = None
    """Why the pipeline refused the network (every number above is then 0)."""


def settings(args) -> PruneSettings:
    """The run's settings, one budget aside (``max_drop`` is set per run)."""
    return PruneSettings(
        time_limit=args.time_limit,
        threads=args.threads,
        samples_per_class=args.samples_per_class,
        finetune_epochs=args.finetune_epochs,
        seed=SEED,
        decompose=args.decompose,
        loss=args.loss,
        scores=args.scores,
        sparsity=args.sparsity,
        lams=tuple(args.lams) if args.lams else None,
        refine_steps=args.refine_steps,
        interpolate_steps=args.interpolate_steps,
        rank_scores=args.rank_scores,
        val_fraction=args.val_fraction,
        baseline_samples=args.baseline_samples,
    )


def network(net: str, args):
    """The trained network (None for digits: the pipeline trains its default) and its data."""
    if net == DIGITS:
        return None, load_data(DIGITS)
    data = load_data(f"npz:{data_dir(args.data_dir) / ARCHIVES[net]}")
    if net == "resnet20":
        data = replace(
            data,
            x_train=data.x_train[: args.resnet_train],
            y_train=data.y_train[: args.resnet_train],
        )
    split = split_validation(data, args.val_fraction, SEED)
    recipe = replace(RECIPES[net], seed=args.train_seed)
    return trained(split.train, recipe, HERE / ".cache").model, data


def run(net: str, model, data, budget: float, args) -> tuple[list[Row], dict]:
    """One budgeted ``oamip.prune``: one row per method of its budget table, and the MIP's
    path (every weight solved or interpolated, and the one kept); a refusal is one row."""
    start = time.perf_counter()
    try:
        report = oamip.prune(model, data, settings(args), max_drop=budget)
    except OamipError as error:
        return [_refused(net, budget, str(error), time.perf_counter() - start)], {}
    wall = time.perf_counter() - start
    path = {"net": net, "budget": budget, "path": report.path, "chosen": report.chosen}
    at_counts = {MIP_METHOD: report.accuracy_after}
    at_counts |= {baseline.method: baseline.accuracy_after for baseline in report.baselines}
    rows = [
        Row(
            net=net,
            budget=budget,
            method=entry.method,
            units_pruned=entry.units_pruned,
            units_total=report.units_total,
            params_removed=report.params_total - entry.params_after,
            params_total=report.params_total,
            macs_removed=entry.macs_removed,
            macs_total=entry.macs_after + entry.macs_removed,
            val_accuracy=entry.val_accuracy,
            test_accuracy=entry.test_accuracy,
            val_accuracy_before=report.val_accuracy_before,
            accuracy_before=report.accuracy_before,
            wall_seconds=wall,
            lam=report.lam if report.chosen is not None else None,
            lams_solved=sum(point.status not in NOT_SOLVED for point in report.path),
            test_at_mip_counts=at_counts.get(entry.method),
            test_accuracy_finetuned=entry.test_accuracy_finetuned,
            val_drop_error=entry.val_drop_error,
            test_drop_error=entry.test_drop_error,
        )
        for entry in report.budget
    ]
    return rows, path


def _refused(net: str, budget: float, error: str, wall: float) -> Row:
    zero = dict.fromkeys(
        ["units_pruned", "units_total", "params_removed", "params_total", "macs_removed"], 0
    )
    return Row(
        net=net,
        budget=budget,
        method=MIP_METHOD,
        **zero,
        macs_total=0,
        val_accuracy=0.0,
        test_accuracy=0.0,
        val_accuracy_before=0.0,
        accuracy_before=0.0,
        wall_seconds=wall,
        lam=None,
        lams_solved=0,
        test_at_mip_counts=None,
        error=error,
    )


def markdown(rows: list[Row], meta: dict, args) -> str:
    lams = ", ".join(f"{v:g}" for v in (args.lams or DEFAULT_LAMS))
    lines = [
        f"# Pruning to an accuracy budget, {meta['date']}",
        "",
        f"Settings: lams {lams}, {args.refine_steps} refine steps, {args.interpolate_steps} "
        f"interpolation steps, ranking {'on' if args.rank_scores else 'off'}, "
        f"{args.time_limit:g} s per "
        f"solve, {args.loss} loss, {args.scores} scores, {args.sparsity} sparsity, "
        f"{args.samples_per_class} MIP samples per class, decompose {args.decompose}, "
        f"{args.threads} threads, validation {args.val_fraction:g} of the training split. "
        f"Accuracies without fine-tuning, except the column of each budget mask fine-tuned "
        f"{args.finetune_epochs} epoch(s) (every method the same recipe); a method's row is the "
        "most units it removes with validation accuracy at most `budget` points below the dense "
        "network's (+-: the standard error of the drop from the dense network, in points, on "
        "validation and on test); every method's "
        "test accuracy at the per-layer counts the MIP kept (the paper's protocol) beside it. "
        "Every criterion runs per layer and global (`<criterion>-global`, one ranking of "
        f"layer-normalised scores), scoring on {args.baseline_samples} training samples.",
        "",
        "| net | budget | method | units removed | params removed | MACs removed "
        f"| val acc (dense) | test acc (dense) | test acc, {args.finetune_epochs} epoch(s) "
        "fine-tuned | test acc at the MIP's counts | lam | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.error is not None:
            lines.append(f"| {r.net} | {r.budget:g} | {r.method} | refused: {r.error} |")
            continue
        lines.append(
            f"| {r.net} | {r.budget:g} | {r.method} | {r.units_pruned}/{r.units_total} "
            f"| {r.params_removed}/{r.params_total} | {r.macs_removed}/{r.macs_total} "
            f"| {100 * r.val_accuracy:.2f}% +-{r.val_drop_error:.2f} "
            f"({100 * r.val_accuracy_before:.2f}%) "
            f"| {100 * r.test_accuracy:.2f}%{_error(r.test_drop_error)} "
            f"({100 * r.accuracy_before:.2f}%) "
            f"| {_percent(r.test_accuracy_finetuned)} | {_percent(r.test_at_mip_counts)} "
            f"| {'-' if r.lam is None else format(r.lam, '.3g')} | {r.wall_seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _error(points: float | None) -> str:
    return "" if points is None else f" +-{points:.2f}"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def main(argv: list[str] | None = None) -> None:
    defaults = PruneSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_dir(parser)
    parser.add_argument("--nets", default=",".join(NETS), help=", ".join(NETS))
    parser.add_argument("--budgets", default="0.5,1,2", help="points of validation accuracy")
    parser.add_argument("--lams", type=lambda t: [float(v) for v in t.split(",")])
    parser.add_argument("--refine-steps", type=int, default=DEFAULT_REFINE_STEPS)
    parser.add_argument("--interpolate-steps", type=int, default=defaults.interpolate_steps)
    parser.add_argument(
        "--rank-scores",
        action=argparse.BooleanOptionalAction,
        default=defaults.rank_scores,
        help="step each solved weight's scores as one global ranking (default on)",
    )
    parser.add_argument("--time-limit", type=float, default=defaults.time_limit)
    parser.add_argument("--samples-per-class", type=int, default=defaults.samples_per_class)
    parser.add_argument("--decompose", default=None)
    parser.add_argument("--loss", default=defaults.loss, help="the MIP's loss: ce, hinge, ...")
    parser.add_argument("--scores", default=defaults.scores, help="continuous or binary")
    parser.add_argument("--sparsity", default=defaults.sparsity, help="layer or unit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help=f"validation share of the training split, held out before training (default "
        f"{defaults.val_fraction:g}, the package's: 2,000 MNIST and 3,000 Fashion-MNIST samples)",
    )
    parser.add_argument("--baseline-samples", type=int, default=defaults.baseline_samples)
    parser.add_argument(
        "--finetune-epochs", type=int, default=1, help="epochs of fine-tuning every budget mask"
    )
    parser.add_argument("--resnet-train", type=int, default=3000, help="ResNet-20's images")
    parser.add_argument(
        "--train-seed",
        type=int,
        default=0,
        help="seed of the networks' training: another one gives networks the defaults were "
        "not chosen on (default 0)",
    )
    parser.add_argument("--name", default=None, help="results file stem (default budget-NETS)")
    args = parser.parse_args(argv)
    nets = args.nets.split(",")
    meta = run_info(argv)
    rows: list[Row] = []
    paths: list[dict] = []
    for net in nets:
        model, net_data = network(net, args)
        for budget in (float(b) for b in args.budgets.split(",")):
            found, path = run(net, model, net_data, budget, args)
            rows.extend(found)
            paths.append(path)
            for row in found:
                print(json.dumps(asdict(row)), flush=True)
    name = f"{args.name or 'budget-' + args.nets.replace(',', '-')}-{today(meta)}"
    write_results(name, {"rows": rows, "paths": paths}, markdown(rows, meta, args), meta)


if __name__ == "__main__":
    main()
