"""ResNet-20 on Fashion-MNIST pruned to about 2x fewer MACs: SPR against Torch-Pruning's pruners.

One dense ResNet-20 per seed (:mod:`oamip.training.zoo`, cached in ``benchmarks/.cache``) is the
start of every method, and every method gets the same training budget after it: ``--sparse``
epochs of training with the method's regulariser (none for the one-shot pruners), physical
pruning to the same MAC target, then ``--finetune`` epochs of plain training. All phases use one
loop (Adam, batch 64, cosine-decayed learning rate), because Torch-Pruning's regularisers act
on the gradients between ``backward()`` and the optimiser step, where SPR's hook
(:meth:`SPRRegularizer.regularize`) acts too.

Methods (the registry ``METHODS``; another method is one more entry):

- ``spr``, ``spr-inner``, ``spr-group``: SPR on both kinds of units, on inner channels only, on
  coupled groups only (:mod:`oamip.adapters.residual`); then each regularised unit keeps its
  channels of largest group norm, in the numbers the MAC target sets, removed by
  :func:`oamip.remove_pruned` (own code);
- ``tp-l1``: Torch-Pruning's MagnitudePruner with GroupMagnitudeImportance(p=1), one shot;
- ``tp-groupnorm``: its GroupNormPruner (sparse training, reg 5e-4), then its step;
- ``tp-bnscale``: its BNScalePruner (L1 on BatchNorm scales, reg 1e-5), then its step;
- ``tp-random``: RandomImportance, one shot;
- ``oamip``, ``oamip-inner``, ``oamip-group``: plain training in the sparse phase, then the
  neuron-importance MIP by per-block pieces (``decompose="layer"``, heads fit on the first 2000
  training images, ``--samples-per-class`` per class in the batch, ``--piece-seconds`` per
  piece, ``--oamip-lam``) on both kinds of units, inner channels only, coupled groups only; each
  unit keeps its highest-scoring channels in the numbers the MAC target sets.

Torch-Pruning's pruners prune every coupled group by one ratio, chosen (by bisection) so the
pruned model has at most ``--macs`` of the dense MACs; SPR and OAMIP prune their units to the
same counts.
Reports accuracy before and after, MACs and parameters, and the CPU latency (median of
``--repeats`` runs, batch 1 and 64, one thread) of each pruned model and the dense one. Writes
``benchmarks/results/resnet-<date>.json`` and ``.md``.

    nice -n 10 python benchmarks/bench_resnet.py [--data SPEC] [--base-epochs 3] [--sparse 1]
        [--finetune 1] [--seeds 0,1] [--macs 0.5] [--methods spr,tp-l1,...] [--lam 0.05]
    python benchmarks/bench_resnet.py --combine A.json B.json --name NAME   # seeds of two runs
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import FASHION_MNIST, add_data_arguments, data_spec, run_info, today, write_results
from torch import nn

from oamip.adapters import remove_pruned
from oamip.adapters.residual import residual_units
from oamip.adapters.scoring import score_neurons
from oamip.training.cost import count_macs, model_cost, paired_latency
from oamip.training.criteria import get_criterion
from oamip.training.data import Dataset, load_data, mip_batch
from oamip.training.inference import evaluate
from oamip.training.spr import RESIDUAL_UNITS, SPRRegularizer
from oamip.training.tp import torch_pruning
from oamip.training.zoo import Recipe, trained

HERE = Path(__file__).resolve().parent
BATCH = 64
PHASE_LR = 1e-3
BASE_LR = 3e-3
GROUPNORM_REG = 5e-4
BNSCALE_REG = 1e-5
AUX_SIZE = 2000
"""Training images the auxiliary heads of OAMIP's pieces are fit on."""

Hook = Callable[[], None]


@dataclass
class Context:
    """What every method sees: the data, the example input, the MAC target and the settings."""

    dataset: Dataset
    example: torch.Tensor
    macs_fraction: float
    lam: float
    alpha: float
    seed: int
    samples_per_class: int = 1
    piece_seconds: float = 10.0
    oamip_lam: float = 1.0


@dataclass
class Plan:
    """A method's run on one model: the hook applied after each ``backward()`` of the sparse
    phase (None: plain training), the function that returns the physically pruned model, and
    what the method reports besides the common measurements (OAMIP: its solve, filled by
    ``prune``)."""

    hook: Hook | None
    prune: Callable[[], nn.Module]
    notes: dict = field(default_factory=dict)


def _tp_plan(importance: str, pruner: str = "MagnitudePruner", reg: float | None = None):
    """A Torch-Pruning method: ``pruner`` with ``importance``, at the ratio meeting the target."""

    def setup(model: nn.Module, ctx: Context) -> Plan:
        tp = torch_pruning()
        ratio = uniform_ratio(model, ctx)
        imp = {
            "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "bn": lambda: tp.importance.BNScaleImportance(),
            "random": lambda: tp.importance.RandomImportance(),
        }[importance]()
        extra = {} if reg is None else {"reg": reg}
        pr = getattr(tp.pruner, pruner)(
            model,
            ctx.example,
            importance=imp,
            pruning_ratio=ratio,
            ignored_layers=[model.fc],
            **extra,
        )
        model.train()  # building the dependency graph leaves the model in eval mode
        hook = (lambda: pr.regularize(model)) if reg is not None else None

        def prune() -> nn.Module:
            pr.step()
            return model

        return Plan(hook, prune)

    return setup


def _spr_plan(units: str):
    """SPR on the units ``units`` names, then each of them keeps its largest-norm channels."""

    def setup(model: nn.Module, ctx: Context) -> Plan:
        reg = SPRRegularizer(model, ctx.lam, ctx.alpha, units=units)

        def prune() -> nn.Module:
            counts = keep_counts(model, ctx, RESIDUAL_UNITS[units])
            with torch.no_grad():
                norms = {name: g.norm(dim=1).cpu().numpy() for name, g in reg.groups().items()}
            masks = {}
            for name, keep in counts.items():
                mask = np.zeros(len(norms[name]), bool)
                mask[np.argsort(-norms[name], kind="stable")[:keep]] = True
                masks[name] = mask
            return remove_pruned(model, masks)

        return Plan(reg.regularize, prune)

    return setup


def _oamip_plan(units: str):
    """OAMIP by per-block pieces (``decompose="layer"``, auxiliary heads fit on the training
    split) on the units ``units`` names, after a plain-training sparse phase; each unit then
    keeps its channels of highest score, in the numbers the MAC target sets (ties, frequent with
    scores at 0 or 1, go to the channel of larger L2 norm over its producers)."""

    def setup(model: nn.Module, ctx: Context) -> Plan:
        notes: dict = {}

        def prune() -> nn.Module:
            model.eval()
            batch = mip_batch(model, ctx.dataset, ctx.samples_per_class, ctx.seed)
            aux = ctx.dataset.x_train[:AUX_SIZE], ctx.dataset.y_train[:AUX_SIZE]
            start = time.perf_counter()
            result = score_neurons(
                model,
                batch.x,
                batch.y,
                decompose="layer",
                aux_data=aux,
                residual=units,
                lam=ctx.oamip_lam,
                time_limit=ctx.piece_seconds,
                threads=1,
            )
            notes.update(
                solve_seconds=round(time.perf_counter() - start, 1),
                status=result.status,
                pieces=[[p.layer, p.status, round(p.seconds, 1)] for p in result.subproblems],
            )
            counts = keep_counts(model, ctx, RESIDUAL_UNITS[units])
            norms = get_criterion("magnitude").scores(model, None, None, ctx.seed)
            masks = {}
            for name, keep in counts.items():
                order = np.lexsort((-norms[name], -result.scores[name]))
                masks[name] = np.zeros(len(order), bool)
                masks[name][order[:keep]] = True
            return remove_pruned(model, masks)

        return Plan(None, prune, notes)

    return setup


METHODS: dict[str, Callable[[nn.Module, Context], Plan]] = {
    "spr": _spr_plan("both"),
    "spr-inner": _spr_plan("inner"),
    "spr-group": _spr_plan("group"),
    "tp-l1": _tp_plan("l1"),
    "tp-groupnorm": _tp_plan("l2", "GroupNormPruner", GROUPNORM_REG),
    "tp-bnscale": _tp_plan("bn", "BNScalePruner", BNSCALE_REG),
    "tp-random": _tp_plan("random"),
    "oamip": _oamip_plan("both"),
    "oamip-inner": _oamip_plan("inner"),
    "oamip-group": _oamip_plan("group"),
}
"""Method name -> setup(model, context) -> Plan."""


def _first_channels(model: nn.Module, counts: dict[str, int]) -> nn.Module:
    """``model`` with each unit in ``counts`` cut to its first channels (for counting MACs)."""
    sizes = {u.name: u.size for u in residual_units(model)}
    masks = {name: np.arange(sizes[name]) < keep for name, keep in counts.items()}
    return remove_pruned(model, masks)


def _counts(model: nn.Module, ratio: float, kinds: tuple[str, ...]) -> dict[str, int]:
    """Channels kept per unit of ``kinds`` at one pruning ratio, rounded as Torch-Pruning does."""
    return {
        u.name: max(1, int(u.size * (1.0 - ratio)))
        for u in residual_units(model)
        if u.kind in kinds
    }


def _ratio_for(model: nn.Module, ctx: Context, kinds: tuple[str, ...]) -> float:
    """The smallest ratio (to 1e-3, by bisection) whose pruned model meets the MAC target."""
    shape = tuple(ctx.example.shape[1:])
    target = ctx.macs_fraction * count_macs(model, shape)
    low, high = 0.0, 0.99
    while high - low > 1e-3:
        mid = (low + high) / 2
        macs = count_macs(_first_channels(model, _counts(model, mid, kinds)), shape)
        low, high = (low, mid) if macs <= target else (mid, high)
    return high


def uniform_ratio(model: nn.Module, ctx: Context) -> float:
    """The one ratio for every unit (inner channels and coupled groups) meeting the target."""
    return _ratio_for(model, ctx, RESIDUAL_UNITS["both"])


def keep_counts(model: nn.Module, ctx: Context, kinds: tuple[str, ...]) -> dict[str, int]:
    """Channels kept per unit of ``kinds`` so that pruning only them meets the MAC target."""
    return _counts(model, _ratio_for(model, ctx, kinds), kinds)


def fit(model: nn.Module, data: Dataset, epochs: int, lr: float, seed: int, hook: Hook | None):
    """Adam on cross-entropy, batch 64, ``lr`` cosine-decayed to 0, ``hook`` after each
    ``backward()``; the model ends in eval mode."""
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    steps = max(1, epochs * math.ceil(len(x) / BATCH))
    order = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=order).split(BATCH):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            if hook is not None:
                hook()
            optimizer.step()
            schedule.step()
    return model.eval()


def run_method(
    name: str, dense: nn.Module, ctx: Context, sparse: int, finetune: int, repeats: int
) -> dict:
    """One method from the dense model: sparse phase, pruning, fine-tuning, measurements."""
    start = time.perf_counter()
    model = copy.deepcopy(dense)
    plan = METHODS[name](model, ctx)
    fit(model, ctx.dataset, sparse, PHASE_LR, ctx.seed, plan.hook)
    pruned = plan.prune()
    accuracy_pruned = evaluate(pruned, ctx.dataset.x_test, ctx.dataset.y_test)
    fit(pruned, ctx.dataset, finetune, PHASE_LR, ctx.seed, None)
    cost = model_cost(pruned, tuple(ctx.example.shape[1:]), repeats=repeats)
    return {
        "method": name,
        "accuracy_pruned_before_finetune": accuracy_pruned,
        "accuracy": evaluate(pruned, ctx.dataset.x_test, ctx.dataset.y_test),
        "cost": asdict(cost),
        "widths": {u.name: u.size for u in residual_units(pruned)},
        "seconds": round(time.perf_counter() - start, 1),
        **plan.notes,
    }


def run(args: argparse.Namespace, save: Callable[[dict], None]) -> dict:
    """Every seed's dense model and every method on it; ``save`` gets the results so far after
    each method, so a long run leaves its finished rows behind."""
    torch.set_num_threads(1)
    dataset = _first(load_data(data_spec(args, FASHION_MNIST)), args.train_size)
    example = torch.as_tensor(dataset.x_train[:1])
    per_seed: list[dict] = []
    for seed in args.seeds:
        recipe = Recipe("resnet20", epochs=args.base_epochs, lr=BASE_LR, seed=seed, cosine=True)
        base = trained(dataset, recipe, HERE / ".cache")
        dense = base.model.eval()
        ctx = Context(
            dataset,
            example,
            args.macs,
            args.lam,
            args.alpha,
            seed,
            args.samples_per_class,
            args.piece_seconds,
            args.oamip_lam,
        )
        entry = {
            "seed": seed,
            "base_accuracy": base.accuracy,
            "base_train_seconds": base.train_seconds,
            "dense_cost": asdict(model_cost(dense, tuple(example.shape[1:]), repeats=args.repeats)),
            "methods": [],
        }
        per_seed.append(entry)
        for name in args.methods:
            row = run_method(name, dense, ctx, args.sparse, args.finetune, args.repeats)
            entry["methods"].append(row)
            print(f"seed {seed} {name}: {row['accuracy']:.4f}", file=sys.stderr, flush=True)
            save(_result(args, dataset, per_seed))
    return _result(args, dataset, per_seed)


def _first(dataset: Dataset, count: int | None) -> Dataset:
    """``dataset`` with only its first ``count`` training samples (all when None)."""
    if count is None:
        return dataset
    train = slice(0, count)
    return replace(dataset, x_train=dataset.x_train[train], y_train=dataset.y_train[train])


def _result(args: argparse.Namespace, dataset: Dataset, per_seed: list[dict]) -> dict:
    return {
        "data": {"name": dataset.name, "train": len(dataset.y_train), "test": len(dataset.y_test)},
        "settings": {
            "base_epochs": args.base_epochs,
            "base_lr": BASE_LR,
            "sparse_epochs": args.sparse,
            "finetune_epochs": args.finetune,
            "phase_lr": PHASE_LR,
            "macs_fraction": args.macs,
            "spr_lam": args.lam,
            "spr_alpha": args.alpha,
            "groupnorm_reg": GROUPNORM_REG,
            "bnscale_reg": BNSCALE_REG,
            "oamip_samples_per_class": args.samples_per_class,
            "oamip_piece_seconds": args.piece_seconds,
            "oamip_lam": args.oamip_lam,
            "oamip_aux_size": AUX_SIZE,
            "seeds": args.seeds,
            "train_size": len(dataset.y_train),
            "threads": 1,
            "latency_repeats": args.repeats,
        },
        "seeds": per_seed,
        "summary": summary(per_seed),
    }


def combine(files: list[Path]) -> dict:
    """One result from runs that differ only in their seeds: their seeds together."""
    runs = [_measured(json.loads(f.read_text())) for f in files]
    for run_ in runs[1:]:
        if _without_seeds(run_["settings"]) != _without_seeds(runs[0]["settings"]):
            raise SystemExit(f"{files[0]} and the other files were run with other settings")
    per_seed = [seed for run_ in runs for seed in run_["seeds"]]
    for seed in per_seed:
        for cost in [seed["dense_cost"], *(m["cost"] for m in seed["methods"])]:
            cost["latency_ms"] = {int(b): ms for b, ms in cost["latency_ms"].items()}
    settings = {**runs[0]["settings"], "seeds": [s["seed"] for s in per_seed]}
    return {
        **runs[0],
        "combined": [str(f) for f in files],
        "settings": settings,
        "seeds": per_seed,
        "summary": summary(per_seed),
    }


def add_paired_latency(path: Path, data: str, blocks: int) -> dict:
    """``path``'s result with ``paired_latency``: for each pruned architecture of its first seed,
    the dense and the pruned model timed in alternating blocks (batch 1 and 64), so that the
    shared machine's changing load does not decide the speed-up."""
    result = {**_measured(json.loads(path.read_text())), "latency_added_to": str(path)}
    s, entry = result["settings"], result["seeds"][0]
    dataset = _first(load_data(data), s["train_size"])
    recipe = Recipe(
        "resnet20", epochs=s["base_epochs"], lr=s["base_lr"], seed=entry["seed"], cosine=True
    )
    torch.set_num_threads(1)
    dense = trained(dataset, recipe, HERE / ".cache").model.eval()
    architectures: dict[tuple, list[str]] = {}
    for row in entry["methods"]:
        architectures.setdefault(tuple(row["widths"].items()), []).append(row["method"])
    rows = []
    for widths, methods in architectures.items():
        pruned = _first_channels(dense, dict(widths))
        for batch in (1, 64):
            dense_ms, pruned_ms = paired_latency(dense, pruned, dataset.input_shape, batch, blocks)
            rows.append(
                {
                    "methods": methods,
                    "batch": batch,
                    "dense_ms": dense_ms,
                    "pruned_ms": pruned_ms,
                    "speed_up": dense_ms / pruned_ms,
                    "blocks": blocks,
                }
            )
    result["paired_latency"] = rows
    return result


def _measured(result: dict) -> dict:
    """A results file's measurements, without the provenance of the run that wrote it (the
    new file records its own)."""
    return {k: v for k, v in result.items() if k not in ("run", "machine", "command")}


def _without_seeds(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "seeds"}


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def summary(per_seed: list[dict]) -> list[dict]:
    """Per method, the means over seeds of what the table shows."""
    rows = []
    done = min(len(s["methods"]) for s in per_seed)
    for index, first in enumerate(per_seed[0]["methods"][:done]):
        runs = [(s, s["methods"][index]) for s in per_seed]
        base = statistics.mean(s["base_accuracy"] for s, _ in runs)
        pruned = statistics.mean(r["accuracy"] for _, r in runs)
        dense_macs = statistics.mean(s["dense_cost"]["macs"] for s, _ in runs)
        macs = statistics.mean(r["cost"]["macs"] for _, r in runs)
        rows.append(
            {
                "method": first["method"],
                "base": base,
                "pruned": pruned,
                "diff": pruned - base,
                "macs": macs,
                "dense_macs": dense_macs,
                "speed_up": dense_macs / macs,
                "params": statistics.mean(r["cost"]["params"] for _, r in runs),
                "dense_params": statistics.mean(s["dense_cost"]["params"] for s, _ in runs),
                "latency64": statistics.mean(r["cost"]["latency_ms"][64] for _, r in runs),
                "dense_latency64": statistics.mean(
                    s["dense_cost"]["latency_ms"][64] for s, _ in runs
                ),
            }
        )
    return rows


def markdown(result: dict, meta: dict) -> str:
    s = result["settings"]
    lines = [
        f"# ResNet-20 on {result['data']['name']} at about {1 / s['macs_fraction']:.0f}x fewer "
        f"MACs, {today(meta)}",
        "",
        "One torch thread, on a machine shared with other jobs.",
        "",
        f"Data: {result['data']['name']} ({result['data']['train']} training, "
        f"{result['data']['test']} test images). Dense: {s['base_epochs']} epochs, Adam lr "
        f"{s['base_lr']} cosine. Every method then: {s['sparse_epochs']} sparse-training "
        f"epoch(s), pruning to at most {s['macs_fraction']:.0%} of the dense MACs, "
        f"{s['finetune_epochs']} fine-tuning epoch(s), Adam lr {s['phase_lr']} cosine. "
        f"SPR lam {s['spr_lam']}, alpha {s['spr_alpha']}; GroupNorm reg {s['groupnorm_reg']}, "
        f"BN-scale reg {s['bnscale_reg']}. Seeds: {s['seeds']}. Latency: median of "
        f"{s['latency_repeats']} CPU forward passes at batch 64.",
        "",
        "| Method | Base | Pruned | Diff | MACs | Speed-up | Params | Latency b64 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    first = result["summary"][0]
    lines.append(
        f"| dense | {first['base']:.2%} | - | - | {first['dense_macs'] / 1e6:.2f}M | 1.00x | "
        f"{first['dense_params'] / 1e3:.1f}k | {first['dense_latency64']:.1f} |"
    )
    for r in result["summary"]:
        lines.append(
            f"| {r['method']} | {r['base']:.2%} | {r['pruned']:.2%} | {100 * r['diff']:+.2f} | "
            f"{r['macs'] / 1e6:.2f}M | {r['speed_up']:.2f}x | {r['params'] / 1e3:.1f}k | "
            f"{r['latency64']:.1f} ({r['dense_latency64'] / r['latency64']:.2f}x) |"
        )
    if "paired_latency" in result:
        lines += [
            "",
            "CPU latency of the dense and the pruned model timed in alternating blocks (median "
            "of block medians; the table's column times each model once, when the load was "
            "whatever it was):",
            "",
            "| Pruned architecture of | Batch | Dense (ms) | Pruned (ms) | Speed-up |",
            "|---|---|---|---|---|",
        ]
        for r in result["paired_latency"]:
            lines.append(
                f"| {', '.join(r['methods'])} | {r['batch']} | {r['dense_ms']:.2f} | "
                f"{r['pruned_ms']:.2f} | {r['speed_up']:.2f}x |"
            )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, FASHION_MNIST)
    parser.add_argument("--base-epochs", type=int, default=3)
    parser.add_argument("--sparse", type=int, default=1, help="sparse-training epochs")
    parser.add_argument("--finetune", type=int, default=1, help="fine-tuning epochs")
    parser.add_argument("--seeds", type=_numbers, default=[0], help="seeds, e.g. 0,1,2")
    parser.add_argument("--combine", type=Path, nargs="+", help="merge the seeds of results files")
    parser.add_argument("--paired-latency", type=Path, help="add paired latencies to a file")
    parser.add_argument("--blocks", type=int, default=10, help="alternating latency blocks")
    parser.add_argument("--train-size", type=int, default=None, help="first N training images")
    parser.add_argument("--macs", type=float, default=0.5, help="MACs kept, as a fraction")
    parser.add_argument("--lam", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--samples-per-class", type=int, default=1, help="OAMIP's MIP batch")
    parser.add_argument("--piece-seconds", type=float, default=10.0, help="OAMIP per piece")
    parser.add_argument("--oamip-lam", type=float, default=1.0, help="OAMIP's loss weight")
    parser.add_argument("--repeats", type=int, default=20, help="latency runs per batch size")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--name", default="resnet", help="results file stem")
    args = parser.parse_args()
    unknown = [name for name in args.methods if name not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    meta = run_info()

    def save(result: dict) -> None:
        write_results(f"{args.name}-{today(meta)}", result, markdown(result, meta), meta)

    if args.paired_latency:
        result = add_paired_latency(
            args.paired_latency, data_spec(args, FASHION_MNIST), args.blocks
        )
        save(result)
    elif args.combine:
        result = combine(args.combine)
        save(result)
    else:
        result = run(args, save)
    print(markdown(result, meta))


if __name__ == "__main__":
    main()
