"""``oamip compress``: remove the units dead on a box of inputs and fold the always-active ones.

The run half of the command; its options are in :mod:`oamip.cli.parsers.compress`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oamip.adapters.serialize import load_model, save_model
from oamip.cli.common import say, say_written
from oamip.cli.parsers.compress import HELP, NAME, add_arguments
from oamip.files import staged_output, write_json
from oamip.pipelines.compress import CompressResult, compress

__all__ = ["HELP", "NAME", "add_arguments", "run", "summary"]

MODEL_FILE = "compressed.pt"
REPORT_FILE = "report.json"


def run(args: argparse.Namespace) -> int:
    """Compress (every input is checked first), write ``--out``, print a summary."""
    model = load_model(Path(args.model).expanduser())
    lower, upper = args.box if args.box is not None else (None, None)
    result = compress(
        model,
        lower,
        upper,
        data=args.data,
        input_shape=args.input_shape,
        time_limit=args.time_limit,
        backend=args.backend,
    )
    given = {"model": args.model, "box": args.box, "data": args.data, "backend": args.backend}
    report = {"given": given, **result.to_dict()}
    with staged_output(args.out) as folder:
        save_model(result.model, folder / MODEL_FILE)
        write_json(folder / REPORT_FILE, report)
        written = [folder / MODEL_FILE, folder / REPORT_FILE]
    say(summary(result))
    say_written(Path(args.out).expanduser(), written)
    return 0


def summary(result: CompressResult) -> str:
    """What was removed and folded per unit, how it was proven, and the check."""
    lines = [
        f"compress: {result.status}, {result.units_removed} of {result.units_total} units gone "
        f"({sum(map(len, result.removed.values()))} dead, "
        f"{sum(map(len, result.folded.values()))} folded), parameters {result.params_before} -> "
        f"{result.params_after}, {result.seconds:.1f} s",
        "proofs: "
        + ", ".join(f"{k} {v}" for k, v in result.proofs.items())
        + f" ({result.lps} LPs, {result.milps} MILPs)",
    ]
    for name, size in result.sizes.items():
        removed, folded = len(result.removed.get(name, [])), len(result.folded.get(name, []))
        open_ = len(result.undecided.get(name, []))
        left = f", {open_} left open by the time limit" if open_ else ""
        lines.append(f"  {name}: {size} units, {removed} removed, {folded} folded{left}")
    lines.append(
        f"outputs checked at {result.checked_points} points of the box: largest difference "
        f"{result.max_difference:.3g}"
    )
    return "\n".join(lines)
