"""What ``oamip prune`` shows and writes: a summary table, report.json, pruned.pt and plots.

Plots are drawn on plain matplotlib ``Figure`` objects (the Agg renderer, no pyplot, no display).
"""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from oamip.adapters import save_model
from oamip.files import write_json
from oamip.pipelines.prune import PruneReport, piece_line
from oamip.training.criteria import MIP_METHOD

REPORT_FILE = "report.json"
MODEL_FILE = "pruned.pt"
SCORES_PLOT = "scores_per_layer.png"
UNITS_PLOT = "units_kept_per_layer.png"
ACCURACY_PLOT = "accuracy_vs_units_removed.png"
PLOT_DPI = 100
KEEP_COLOR = "tab:blue"
PRUNE_COLOR = "tab:red"


def write_report(report: PruneReport, folder: str | Path) -> list[Path]:
    """Write report.json, pruned.pt and the three plots into ``folder``; returns their paths."""
    folder = Path(folder)
    write_json(folder / REPORT_FILE, report.to_dict())
    save_model(report.model, folder / MODEL_FILE)
    plots = {SCORES_PLOT: scores_figure, UNITS_PLOT: units_figure, ACCURACY_PLOT: accuracy_figure}
    for name, draw in plots.items():
        draw(report).savefig(folder / name, dpi=PLOT_DPI)
    return [folder / name for name in (REPORT_FILE, MODEL_FILE, *plots)]


TIME_LIMIT_NOTE = (
    "the solver stopped at its time limit: the scores are its best solution, not proven "
    "optimal (raise --time-limit for a better one)"
)


def summary_table(report: PruneReport) -> str:
    """A plain-text summary: the solve, units and parameters per layer, accuracies per method."""
    head = [_headline(report)] + ([TIME_LIMIT_NOTE] if report.status == "time_limit" else [])
    head += _pieces_rows(report)
    return "\n".join([*head, "", *_layer_rows(report), "", *_accuracy_rows(report)])


def _pieces_rows(report: PruneReport) -> list[str]:
    """With a decomposition: how many pieces were proven optimal, and each piece that failed."""
    if report.decompose is None:
        return []
    pieces = report.subproblems
    optimal = sum(piece.status == "optimal" for piece in pieces)
    resumed = sum(piece.resumed for piece in pieces)
    rows = [
        f"decomposed ({report.decompose}): {optimal} of {len(pieces)} pieces proven optimal"
        + (f", {resumed} resumed from the checkpoint" if resumed else "")
    ]
    return rows + [piece_line(piece) for piece in pieces if piece.error is not None]


def _headline(report: PruneReport) -> str:
    gap = "n/a" if report.gap is None else f"{100 * report.gap:.2f}%"
    return (
        f"{report.arch} on {report.dataset}: {report.backend} {report.status} "
        f"(gap {gap}, build {report.build_seconds:.1f} s, solve {report.solve_seconds:.1f} s), "
        f"{report.loss} loss, lambda {report.lam:g}, {report.scores} scores, "
        f"threshold {report.threshold:g}, {report.n_mip_samples} MIP samples"
    )


def _layer_rows(report: PruneReport) -> list[str]:
    rows = [f"{'layer':<12}{'units':>8}{'pruned':>8}{'kept':>8}"]
    for layer in report.layers:
        kept = layer.units - layer.units_pruned
        rows.append(f"{layer.name:<12}{layer.units:>8}{layer.units_pruned:>8}{kept:>8}")
    kept_total = report.units_total - report.units_pruned
    rows.append(f"{'total':<12}{report.units_total:>8}{report.units_pruned:>8}{kept_total:>8}")
    saved = 1 - report.params_after / report.params_total if report.params_total else 0.0
    rows.append(
        f"parameters: {report.params_total} -> {report.params_after} ({100 * saved:.1f}% fewer)"
    )
    return rows


def _accuracy_rows(report: PruneReport) -> list[str]:
    tuned = f"fine-tuned ({report.finetune_epochs} ep)"
    rows = [
        f"{'test accuracy':<16}{'pruned':>10}{tuned:>22}",
        f"{'dense':<16}{_percent(report.accuracy_before):>10}",
        f"{'mip':<16}{_percent(report.accuracy_after):>10}"
        f"{_percent(report.accuracy_after_finetune):>22}",
    ]
    for baseline in report.baselines:
        rows.append(
            f"{baseline.method:<16}{_percent(baseline.accuracy_after):>10}"
            f"{_percent(baseline.accuracy_after_finetune):>22}"
        )
    rows.append("(baselines prune as many units per layer as the MIP)")
    return rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def scores_figure(report: PruneReport) -> Figure:
    """One bar chart per scored layer: each unit's MIP score, pruned units marked by red crosses."""
    count = len(report.layers)
    fig = Figure(figsize=(8, 2.2 * count + 0.6), layout="constrained")
    axes = fig.subplots(count, 1, squeeze=False)[:, 0]
    for ax, layer in zip(axes, report.layers):
        scores = np.asarray(layer.scores)
        ax.bar(np.arange(len(scores)), scores, color=KEEP_COLOR, width=0.9)
        if layer.pruned:
            ax.plot(layer.pruned, scores[layer.pruned], "x", color=PRUNE_COLOR, ms=8, clip_on=False)
        ax.axhline(report.threshold, color="black", linestyle="--", linewidth=1)
        ax.set(ylim=(0, 1.05), ylabel="score", title=f"layer {layer.name}")
    axes[-1].set_xlabel("unit")
    fig.suptitle(f"MIP scores per layer (dashed: threshold {report.threshold:g}; x: pruned)")
    return fig


def units_figure(report: PruneReport) -> Figure:
    """Units per scored layer before and after pruning."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    names = [layer.name for layer in report.layers]
    position = np.arange(len(names))
    total = [layer.units for layer in report.layers]
    kept = [layer.units - layer.units_pruned for layer in report.layers]
    ax.bar(position - 0.2, total, width=0.4, color="lightgray", label="units")
    ax.bar(position + 0.2, kept, width=0.4, color=KEEP_COLOR, label="kept")
    ax.set_xticks(position, names)
    ax.set(xlabel="layer", ylabel="units", title="Units kept per layer")
    ax.legend()
    return fig


def accuracy_figure(report: PruneReport) -> Figure:
    """Test accuracy against units removed: the MIP's threshold sweep and each baseline pruned
    as many units per layer; hollow markers after fine-tuning at the chosen threshold."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    removed = [point.units_pruned for point in report.curve]
    methods = [MIP_METHOD, *(baseline.method for baseline in report.baselines)]
    for method, marker, size in zip(methods, cycle("osD^v"), cycle((10, 8, 7, 6, 5))):
        accuracy = [point.accuracy[method] for point in report.curve]
        line = ax.plot(removed, accuracy, marker=marker, markersize=size, label=method)[0]
        tuned = _tuned_accuracy(report, method)
        if tuned is not None:
            ax.plot(
                report.units_pruned, tuned, marker="s", fillstyle="none", color=line.get_color()
            )
    ax.axhline(report.accuracy_before, color="black", linestyle="--", linewidth=1, label="dense")
    ax.set(
        xlabel="units removed",
        ylabel="test accuracy",
        title="Test accuracy against units removed (squares: fine-tuned)",
    )
    ax.legend()
    return fig


def _tuned_accuracy(report: PruneReport, method: str) -> float | None:
    if method == "mip":
        return report.accuracy_after_finetune
    return next(b.accuracy_after_finetune for b in report.baselines if b.method == method)
