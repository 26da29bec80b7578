"""SPR against group lasso on MNIST (MLP 784-300-100-10 and LeNet-5), and SPR's cost per step.

For each architecture: train a dense model, then prune it with SPR for several ``lam`` and with
group lasso for several strengths (``oamip.spr_prune``, same epochs, fine-tuning and seed), and
keep, per method, the run removing the most units with at most 1 point of test accuracy lost
against the better of the dense model and the dense model trained as long again without penalty.
The training step time with and without the SPR term is measured side by side, in alternating
blocks on the same batches. Writes ``benchmarks/results/spr-<date>.json`` and ``.md``.

    python benchmarks/bench_spr.py [--data-dir DIR] [--epochs E] [--threads T]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from common import MNIST, add_data_arguments, data_spec, run_info, today, write_results

from oamip.pipelines.spr import DEFAULT_ALPHA, DEFAULT_SPR_LR, SPRReport, spr_prune
from oamip.training.data import Dataset, load_data
from oamip.training.inference import evaluate
from oamip.training.models import build, mlp
from oamip.training.spr import SPRRegularizer
from oamip.training.train import DEFAULT_BATCH_SIZE, train

MLP_HIDDEN = (300, 100)
LAMS = (0.003, 0.01, 0.03, 0.1)
# Group lasso runs with strength scale * 2 sqrt(ab) at lam REF_LAM: the same range as LAMS.
REF_LAM = 0.03
GL_SCALES = tuple(lam / REF_LAM for lam in LAMS)
MAX_LOSS = 0.01
TIMING_ROUNDS = 25
TIMING_STEPS = 20


def main() -> None:
    args = _parse()
    meta = run_info()
    torch.set_num_threads(args.threads)
    data = data_spec(args, MNIST, "mnist")
    dataset = load_data(data)
    start = time.perf_counter()
    results = {arch: _bench_arch(arch, dataset, args.epochs) for arch in ("mlp", "lenet5")}
    record = {
        "torch_threads": args.threads,
        "data": data,
        "epochs": args.epochs,
        "alpha": DEFAULT_ALPHA,
        "max_accuracy_loss": MAX_LOSS,
        "seconds": time.perf_counter() - start,
        "results": results,
    }
    table = _markdown(record, meta)
    write_results(f"spr-{today(meta)}", record, table, meta)
    print(table)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, MNIST)
    parser.add_argument("--epochs", type=int, default=12, help="dense and SPR training epochs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args()


def _bench_arch(arch: str, dataset: Dataset, epochs: int) -> dict:
    dense = _dense(arch, dataset, epochs)
    before = evaluate(dense, dataset.x_test, dataset.y_test)
    kwargs = dict(arch=arch, epochs=epochs, progress=False)
    # lam = 0: the same extra training without a penalty, the fair reference accuracy.
    spr = {
        lam: spr_prune(dense, dataset, lam=lam, group_lasso_scales=(), **kwargs)
        for lam in (0.0, *LAMS)
    }
    reference = max(before, spr.pop(0.0).accuracy_after_finetune)
    ref = spr_prune(dense, dataset, lam=REF_LAM, group_lasso_scales=GL_SCALES, **kwargs)
    spr_runs = [_row(f"SPR lam={lam:g}", r) for lam, r in spr.items()]
    gl_runs = [_row(f"group lasso c={g.strength:.4g}", g) for g in ref.group_lasso.grid]
    return {
        "params_total": ref.params_total,
        "units_total": ref.units_total,
        "accuracy_dense": before,
        "accuracy_reference": reference,
        "step_ms": _step_times(dense, dataset),
        "spr_best": _best(spr_runs, reference),
        "group_lasso_best": _best(gl_runs, reference),
        "spr_runs": spr_runs,
        "group_lasso_runs": gl_runs,
    }


def _dense(arch: str, dataset: Dataset, epochs: int) -> torch.nn.Module:
    if arch == "mlp":
        torch.manual_seed(0)
        model = mlp(dataset.in_features, MLP_HIDDEN, dataset.num_classes)
    else:
        model = build(arch, dataset)
    return train(model, dataset, epochs, DEFAULT_SPR_LR, progress=False)


def _row(name: str, run: SPRReport) -> dict:
    return {
        "run": name,
        "units_pruned": run.units_pruned,
        "params_after": run.params_after,
        "accuracy_after": run.accuracy_after,
        "accuracy_after_finetune": run.accuracy_after_finetune,
        "train_seconds": run.train_seconds,
        "layers": [(layer.name, layer.units - layer.units_pruned) for layer in run.layers],
    }


def _best(runs: list[dict], before: float) -> dict | None:
    ok = [r for r in runs if r["accuracy_after_finetune"] >= before - MAX_LOSS]
    return max(ok, key=lambda r: (r["units_pruned"], -r["params_after"])) if ok else None


def _step_times(dense: torch.nn.Module, dataset: Dataset) -> dict:
    """Median ms per training step without and with the SPR term, in alternating blocks."""
    plain, spr = copy.deepcopy(dense), copy.deepcopy(dense)
    reg = SPRRegularizer(spr, REF_LAM, DEFAULT_ALPHA)
    runs = {"plain": (plain, lambda: 0.0), "spr": (spr, reg)}
    optimizers = {k: torch.optim.Adam(m.parameters(), DEFAULT_SPR_LR) for k, (m, _) in runs.items()}
    x, y = torch.as_tensor(dataset.x_train), torch.as_tensor(dataset.y_train)
    batches = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    batches = batches.split(DEFAULT_BATCH_SIZE)[:TIMING_STEPS]
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(TIMING_ROUNDS):
        for key, (model, penalty) in runs.items():
            model.train()
            tic = time.perf_counter()
            for batch in batches:
                optimizers[key].zero_grad()
                loss = F.cross_entropy(model(x[batch]), y[batch]) + penalty()
                loss.backward()
                optimizers[key].step()
            times[key].append((time.perf_counter() - tic) * 1e3 / len(batches))
    ratios = [s / p for s, p in zip(times["spr"], times["plain"])]
    return {
        "plain": statistics.median(times["plain"]),
        "spr": statistics.median(times["spr"]),
        "ratio": statistics.median(ratios),
        "batch_size": DEFAULT_BATCH_SIZE,
    }


def _markdown(record: dict, meta: dict) -> str:
    lines = [
        f"# SPR benchmark, {today(meta)}",
        "",
        f"{record['torch_threads']} torch threads. Data: {record['data']}; {record['epochs']} "
        f"epochs of dense and of penalised training, alpha {record['alpha']}, 1 fine-tuning "
        f"epoch; {record['seconds'] / 60:.1f} min in all.",
        "",
        "Best run per method with at most 1 point of test accuracy lost against the reference: "
        "the better of the dense model and the dense model trained as long again without "
        "penalty (lam = 0), so that extra training is not counted as pruning's gain.",
        "",
        "| model | method | units removed | params removed | accuracy reference -> pruned |",
        "|---|---|---|---|---|",
    ]
    for arch, res in record["results"].items():
        for method in ("spr_best", "group_lasso_best"):
            lines.append(_best_line(arch, method, res))
    lines += [
        "",
        "Training step time (batch 64, median of alternating blocks):",
        "",
        "| model | without SPR (ms) | with SPR (ms) | ratio |",
        "|---|---|---|---|",
    ]
    for arch, res in record["results"].items():
        s = res["step_ms"]
        lines.append(f"| {arch} | {s['plain']:.2f} | {s['spr']:.2f} | {s['ratio']:.2f}x |")
    lines += ["", "All runs:", "", "| model | run | units kept | accuracy pruned / fine-tuned |"]
    lines.append("|---|---|---|---|")
    for arch, res in record["results"].items():
        for r in res["spr_runs"] + res["group_lasso_runs"]:
            kept = ", ".join(str(k) for _, k in r["layers"])
            acc = f"{r['accuracy_after']:.4f} / {r['accuracy_after_finetune']:.4f}"
            lines.append(f"| {arch} | {r['run']} | {kept} | {acc} |")
    return "\n".join(lines) + "\n"


def _best_line(arch: str, method: str, res: dict) -> str:
    name = "SPR" if method == "spr_best" else "group lasso"
    best = res[method]
    if best is None:
        return f"| {arch} | {name} | none within 1 point | | |"
    units = f"{best['units_pruned']}/{res['units_total']}"
    removed = res["params_total"] - best["params_after"]
    params = f"{removed}/{res['params_total']} ({removed / res['params_total']:.0%})"
    acc = f"{res['accuracy_reference']:.4f} -> {best['accuracy_after_finetune']:.4f}"
    return f"| {arch} | {name} ({best['run']}) | {units} | {params} | {acc} |"


if __name__ == "__main__":
    main()
