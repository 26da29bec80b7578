"""What ``oamip prune`` shows and writes: a summary table, report.json, pruned.pt and plots.

Plots are drawn on plain matplotlib ``Figure`` objects (the Agg renderer, no pyplot, no display).
"""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from oamip.adapters import save_model
from oamip.files import write_json
from oamip.pipelines.budget import (
    GLOBAL_SUFFIX,
    INTERPOLATED,
    NOT_SOLVED,
    POLISHED,
    RANKED,
)
from oamip.pipelines.results import PruneReport, piece_line
from oamip.training.criteria import MIP_METHOD

REPORT_FILE = "report.json"
MODEL_FILE = "pruned.pt"
ONNX_FILE = "pruned.onnx"
SCORES_PLOT = "scores_per_layer.png"
UNITS_PLOT = "units_kept_per_layer.png"
ACCURACY_PLOT = "accuracy_vs_units_removed.png"
PLOT_DPI = 100
KEEP_COLOR = "tab:blue"
PRUNE_COLOR = "tab:red"


def write_report(
    report: PruneReport, folder: str | Path, onnx_input: tuple[int, ...] | None = None
) -> list[Path]:
    """Write report.json, pruned.pt and the three plots into ``folder``, and pruned.onnx for
    inputs of shape ``onnx_input`` when given; returns their paths."""
    folder = Path(folder)
    write_json(folder / REPORT_FILE, report.to_dict())
    save_model(report.model, folder / MODEL_FILE)
    models = [MODEL_FILE]
    if onnx_input is not None:
        save_model(report.model, folder / ONNX_FILE, input_shape=onnx_input)
        models.append(ONNX_FILE)
    plots = {SCORES_PLOT: scores_figure, UNITS_PLOT: units_figure, ACCURACY_PLOT: accuracy_figure}
    for name, draw in plots.items():
        draw(report).savefig(folder / name, dpi=PLOT_DPI)
    return [folder / name for name in (REPORT_FILE, *models, *plots)]


TIME_LIMIT_NOTE = (
    "the solver stopped at its time limit: the scores are its best solution, not proven "
    "optimal (raise --time-limit for a better one)"
)


def summary_table(report: PruneReport) -> str:
    """A plain-text summary: the solve, units and parameters per layer, accuracies per method;
    with a budget, the lam path (one line per lam) and the budget table."""
    head = [_headline(report)] + ([TIME_LIMIT_NOTE] if report.status == "time_limit" else [])
    head += [compression_line(report.compression)] if report.compression else []
    head += _pieces_rows(report)
    budget = ["", *path_rows(report), "", *budget_rows(report)] if report.path else []
    return "\n".join([*head, *budget, "", *_layer_rows(report), "", *_accuracy_rows(report)])


def compression_line(compression: dict) -> str:
    """What ``compress`` removed before scoring, in one line."""
    c = compression
    removed = sum(map(len, c["removed"].values()))
    folded = sum(map(len, c["folded"].values()))
    return (
        f"compressed before scoring ({c['status']}, exact on the data's range): "
        f"{removed} dead units removed, {folded} active units folded, of {c['units_total']}"
    )


def path_rows(report: PruneReport) -> list[str]:
    """One line per point of the path: units and parameters left, accuracies, status, gap,
    seconds; an interpolated point's weight as ``->lam`` (the solution it steps towards), the
    chosen one marked with ``*``."""
    rows = [
        f"lambda path, validation budget {_points(report.max_drop)} "
        f"({_validation_text(report)}, dense {percent(report.val_accuracy_before)}):",
        f"  {'lambda':>9}{'pruned':>8}{'params':>9}{'val acc':>10}{'test acc':>10}"
        f"  {'status':<12}{'gap':>8}{'seconds':>9}",
    ]
    for k, point in enumerate(report.path):
        mark = "*" if k == report.chosen else " "
        gap = "n/a" if point.gap is None else percent(point.gap)
        lam = f"->{point.lam:.4g}" if point.status == INTERPOLATED else f"{point.lam:.4g}"
        rows.append(
            f"{mark} {lam:>9}{point.units_pruned:>8}{point.params_after:>9}"
            f"{percent(point.val_accuracy):>10}{percent(point.test_accuracy):>10}"
            f"  {point.status:<12}{gap:>8}{point.seconds:>9.1f}"
        )
    if report.chosen is None:
        rows.append("no lambda stays within the budget: nothing is pruned")
    if report.path_note:
        rows.append(report.path_note)
    return rows + [f"warning: {text}" for text in report.warnings]


def _validation_text(report: PruneReport) -> str:
    """``validation: given, 500 samples`` or ``validation: split, 144 samples``."""
    validation = report.validation or {"source": "split", "samples": report.val_size}
    return f"validation: {validation['source']}, {validation['samples']} samples"


def budget_rows(report: PruneReport) -> list[str]:
    """For every method, the most units it removes within the validation budget, and the
    parameters and MACs per sample that removes; with fine-tuning, each mask's test accuracy
    after it."""
    tuned = any(entry.test_accuracy_finetuned is not None for entry in report.budget)
    rows = [
        f"{'within budget':<20}{'pruned':>8}{'params':>9}{'params -':>10}{'MACs -':>11}"
        f"{'val acc':>10}{'+-':>6}{'test acc':>10}" + (f"{'tuned':>10}" if tuned else ""),
    ]
    for entry in report.budget:
        after = entry.test_accuracy_finetuned
        rows.append(
            f"{entry.method:<20}{entry.units_pruned:>8}{entry.params_after:>9}"
            f"{entry.params_removed:>10}{entry.macs_removed:>11}"
            f"{percent(entry.val_accuracy):>10}{entry.val_drop_error:>6.2f}"
            f"{percent(entry.test_accuracy):>10}"
            + (f"{percent(after):>10}" if tuned and after is not None else "")
        )
    rows.append(
        "(baselines prune their lowest-scored units in steps, the same share of every layer, "
        "or by one ranking of layer-normalised scores for -global, of Torch-Pruning's own "
        "normalised group importances for tp-; +-: the standard error, in points, of the "
        "validation drop; val and test acc without "
        + (
            f"fine-tuning, tuned: test acc after {report.finetune_epochs} epoch(s) of it)"
            if tuned
            else "fine-tuning)"
        )
    )
    return rows


def _pieces_rows(report: PruneReport) -> list[str]:
    """With a decomposition: how many pieces were proven optimal, and each piece that failed."""
    if report.decompose is None:
        return []
    pieces = report.subproblems
    optimal = sum(piece.status == "optimal" for piece in pieces)
    resumed = sum(piece.resumed for piece in pieces)
    continued = sum(piece.continued for piece in pieces)
    anew = len(pieces) - resumed - continued
    rows = [
        f"decomposed ({report.decompose}): {optimal} of {len(pieces)} pieces proven optimal"
        + (
            f", {resumed} resumed from the checkpoint (final), {continued} continued from "
            f"their best in it, {anew} solved anew"
            if resumed or continued
            else ""
        )
    ]
    labels = {layer.name: layer.label for layer in report.layers}
    return rows + [piece_line(piece, labels) for piece in pieces if piece.error is not None]


def _headline(report: PruneReport) -> str:
    gap = "n/a" if report.gap is None else f"{100 * report.gap:.2f}%"
    chosen = "" if not report.path else f" (chosen from {len(report.path)} on the path)"
    return (
        f"{report.arch} on {report.dataset}: {report.backend} {report.status} "
        f"(gap {gap}, build {report.build_seconds:.1f} s, solve {report.solve_seconds:.1f} s), "
        f"{report.loss} loss, lambda {report.lam:g}{chosen}, {report.scores} scores, "
        f"threshold {report.threshold:g}, {report.n_mip_samples} MIP samples"
    )


def _layer_rows(report: PruneReport) -> list[str]:
    width = max([12, *(len(layer.label) + 2 for layer in report.layers)])
    rows = [f"{'layer':<{width}}{'units':>8}{'pruned':>8}{'kept':>8}"]
    for layer in report.layers:
        kept = layer.units - layer.units_pruned
        rows.append(f"{layer.label:<{width}}{layer.units:>8}{layer.units_pruned:>8}{kept:>8}")
    kept_total = report.units_total - report.units_pruned
    rows.append(f"{'total':<{width}}{report.units_total:>8}{report.units_pruned:>8}{kept_total:>8}")
    saved = 1 - report.params_after / report.params_total if report.params_total else 0.0
    rows.append(
        f"parameters: {report.params_total} -> {report.params_after} ({100 * saved:.1f}% fewer)"
    )
    return rows


def _accuracy_rows(report: PruneReport) -> list[str]:
    tuned = f"fine-tuned ({report.finetune_epochs} ep)"
    rows = [
        f"{'test accuracy':<16}{'pruned':>10}{tuned:>22}",
        f"{'dense':<16}{percent(report.accuracy_before):>10}",
        f"{'mip':<16}{percent(report.accuracy_after):>10}"
        f"{percent(report.accuracy_after_finetune):>22}",
    ]
    for baseline in report.baselines:
        rows.append(
            f"{baseline.method:<16}{percent(baseline.accuracy_after):>10}"
            f"{percent(baseline.accuracy_after_finetune):>22}"
        )
    rows.append("(baselines prune as many units per layer as the MIP)")
    return rows


def _points(value: float) -> str:
    return f"{value:g} point" + ("" if value == 1 else "s")


def percent(fraction: float | None) -> str:
    """A fraction (an accuracy, a gap, a share) as every table and command prints it:
    ``93.10%``; ``-`` for None."""
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


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
        ax.set(ylim=(0, 1.05), ylabel="score", title=layer.label)
    axes[-1].set_xlabel("unit")
    fig.suptitle(f"MIP scores per layer (dashed: threshold {report.threshold:g}; x: pruned)")
    return fig


def units_figure(report: PruneReport) -> Figure:
    """Units per scored layer before and after pruning."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    names = [layer.label for layer in report.layers]
    position = np.arange(len(names))
    total = [layer.units for layer in report.layers]
    kept = [layer.units - layer.units_pruned for layer in report.layers]
    ax.bar(position - 0.2, total, width=0.4, color="lightgray", label="units")
    ax.bar(position + 0.2, kept, width=0.4, color=KEEP_COLOR, label="kept")
    ax.set_xticks(position, names, rotation=15, fontsize="small")
    ax.set(ylabel="units", title=f"Units kept per layer: {_subject(report)}")
    ax.legend()
    return fig


def _subject(report: PruneReport) -> str:
    """What was pruned, for titles: the architecture and the data set."""
    return f"{report.arch} on {report.dataset}"


def accuracy_figure(report: PruneReport) -> Figure:
    """Accuracy against units removed: with a budget the lam path and the baselines' steps on
    validation and test (:func:`path_figure`); without, test accuracy of the MIP's threshold
    sweep and each baseline pruned as many units per layer, hollow markers after fine-tuning at
    the chosen threshold."""
    if report.path:
        return path_figure(report)
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
        title=f"{_subject(report)}: test accuracy against units removed (squares: fine-tuned)",
    )
    ax.legend()
    return fig


PATH_PANELS = (("val_accuracy", "validation"), ("test_accuracy", "test"))
"""The budget plot's panels: the accuracy each reads and its name; the budget is held on the
first (validation, like the budget table), the second shows the same masks on the test split
where they were evaluated there: the path's points, and each baseline's budget step only."""


def path_figure(report: PruneReport) -> Figure:
    """Accuracy (no fine-tuning) against units removed, on validation (left: the quantity the
    budget and the budget table read) and test (right): the MIP's lam path and every
    baseline's steps as curves (on test, its budget step alone: the only one evaluated there),
    the dense accuracy and, on validation, the dense accuracy less the budget as lines, the mask
    kept marked by a star."""
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    axes = fig.subplots(1, len(PATH_PANELS), sharex=True)
    dense = {"val_accuracy": report.val_accuracy_before, "test_accuracy": report.accuracy_before}
    for ax, (field, name) in zip(axes, PATH_PANELS):
        _path_panel(ax, report, field, dense[field])
        ax.set(
            xlabel="units removed",
            ylabel=f"{name} accuracy (no fine-tuning)",
            title=f"{name} accuracy",
        )
    axes[0].axhline(
        report.val_accuracy_before - report.max_drop / 100,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"dense - {_points(report.max_drop)}",
    )
    axes[0].legend(fontsize="x-small")
    fig.suptitle(
        f"{_subject(report)}: accuracy against units removed, budget held on validation "
        f"({_validation_text(report)})"
    )
    return fig


def _path_panel(ax, report: PruneReport, field: str, dense: float) -> None:
    """One panel of :func:`path_figure`: every curve read at ``field`` of its points."""
    mip = sorted(report.path, key=lambda point: point.units_pruned)
    line = ax.plot(
        [0] + [p.units_pruned for p in mip],
        [dense] + [getattr(p, field) for p in mip],
        linewidth=2,
        label=MIP_METHOD,
    )[0]
    kinds = (
        (lambda p: p.status not in NOT_SOLVED, "o", "lambda path"),
        (lambda p: p.status == INTERPOLATED, ".", "interpolated"),
        (lambda p: p.status == RANKED, "P", "ranked"),
        (lambda p: p.status == POLISHED, "*", "polished"),
    )
    for kind, marker, label in kinds:
        points = [p for p in mip if kind(p)]
        if points:
            ax.plot(
                [p.units_pruned for p in points],
                [getattr(p, field) for p in points],
                marker,
                color=line.get_color(),
                label=f"{MIP_METHOD} ({label})",
            )
    methods = dict.fromkeys(step.method for step in report.baseline_path)
    colors = cycle(colormaps["tab20"].colors[2:])
    for method, marker, color in zip(methods, cycle("sD^vx"), colors):
        steps = [
            step
            for step in report.baseline_path
            if step.method == method and getattr(step, field) is not None
        ]
        ax.plot(
            [s.units_pruned for s in steps],
            [getattr(s, field) for s in steps],
            color=color,
            marker=marker,
            markersize=3,
            linewidth=1,
            linestyle="--" if method.endswith(GLOBAL_SUFFIX) else "-",
            label=method,
        )
    if report.chosen is not None:
        kept = report.path[report.chosen]
        ax.plot(kept.units_pruned, getattr(kept, field), "*", color="black", ms=16, label="chosen")
    ax.axhline(dense, color="gray", linestyle=":", linewidth=1, label="dense")


def _tuned_accuracy(report: PruneReport, method: str) -> float | None:
    if method == "mip":
        return report.accuracy_after_finetune
    return next(b.accuracy_after_finetune for b in report.baselines if b.method == method)
