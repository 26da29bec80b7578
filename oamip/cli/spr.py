"""``oamip spr``: train with the SPR regulariser, remove the zero units, fine-tune, report.

The run half of the command; its options are in :mod:`oamip.cli.parsers.spr`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oamip.cli.common import command_listener, say, say_written
from oamip.cli.inputs import read_inputs
from oamip.cli.parsers.spr import HELP, NAME, add_arguments
from oamip.pipelines.report import percent
from oamip.pipelines.spr import SPRReport, spr_prune

__all__ = ["HELP", "NAME", "add_arguments", "run", "summary_table"]


def run(args: argparse.Namespace) -> int:
    """Prune with SPR (which checks every setting first), write ``--out``, print a summary."""
    dataset, model = read_inputs(args)
    report = spr_prune(
        model,
        dataset,
        arch=args.arch or "mlp",
        lam=args.lam,
        alpha=args.alpha,
        M_scale=args.m_scale,
        units=args.units,
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        out=args.out,
        export_onnx=args.export_onnx,
        on_progress=command_listener(),
    )
    say(summary_table(report))
    models = ["pruned.pt", "pruned.onnx"] if args.export_onnx else ["pruned.pt"]
    say_written(args.out, [Path(name) for name in ["report.json", *models]])
    return 0


def summary_table(r: SPRReport) -> str:
    """A plain-text summary: dense, SPR and group lasso rows, units kept per layer."""
    rows = [("dense", 0, r.params_total, r.accuracy_before, None)]
    rows.append(
        ("SPR", r.units_pruned, r.params_after, r.accuracy_after, r.accuracy_after_finetune)
    )
    if r.group_lasso is not None:
        g = r.group_lasso
        name = f"group lasso x{g.scale:g}"
        rows.append(
            (name, g.units_pruned, g.params_after, g.accuracy_after, g.accuracy_after_finetune)
        )
    lines = [
        f"SPR on {r.arch} / {r.dataset}: lam {r.lam:g}, alpha {r.alpha:g}, M_scale {r.M_scale:g}",
        f"{'':<18}{'units pruned':>14}{'params':>10}{'accuracy':>10}{'fine-tuned':>12}",
    ]
    for name, pruned, params, acc, acc_ft in rows:
        lines.append(
            f"{name:<18}{f'{pruned}/{r.units_total}':>14}{params:>10}{percent(acc):>10}"
            f"{percent(acc_ft):>12}"
        )
    kept = ", ".join(
        f"{layer.name}: {layer.units - layer.units_pruned}/{layer.units}" for layer in r.layers
    )
    lines.append(f"units kept per layer: {kept}")
    return "\n".join(lines)
