"""The time to build one piece of ``decompose="layer"`` on torchvision-style networks.

The ResNet-18, VGG-11-BN and MobileNetV2 copies of tests/torchvision_nets.py (widths 4-8, 32 for
MobileNetV2's widest expansion; random weights, BatchNorm statistics random or, for MobileNetV2,
measured on random images; 32x32x3 inputs) are cut into their pieces; per piece, the importance
model is built (``build_importance_model``, interval bounds included) and compiled to standard form
(``compile_model``), the work before a solver starts. Writes, per network, the number of pieces
and the median and largest build time to results/torchvision-pieces-DATE.{json,md}.

    PYTHONPATH=. python benchmarks/bench_torchvision_pieces.py [--samples N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from common import run_info, today, write_results

from oamip.adapters.decompose import decomposed_pieces
from oamip.adapters.extract import extract
from oamip.backends import compile_model
from oamip.formulations import build_importance_model
from oamip.solve.options import ScoringOptions
from tests.torchvision_nets import VGG, MobileNetV2, ResNet18, calibrated, randomised


def piece_times(model, samples: int, rounds: int) -> list[float]:
    """Per piece, the fastest of ``rounds`` builds and compilations, in seconds."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (samples, 3, 32, 32)), rng.integers(0, 10, samples)
    aux = (rng.uniform(0, 1, (50, 3, 32, 32)), rng.integers(0, 10, 50))
    network = extract(model, x, "both").network
    options = ScoringOptions(decompose="layer")
    times = []
    for piece in decomposed_pieces(network, x, y, options, aux):
        piece = piece.with_head()
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            compile_model(
                build_importance_model(piece.network, piece.x, piece.y, piece.options).model
            )
            best = min(best, time.perf_counter() - started)
        times.append(best)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run = run_info()
    load = os.getloadavg()[0]
    rows = {}
    nets = {
        "ResNet-18": randomised(ResNet18(), 0),
        "VGG-11-BN": randomised(VGG(), 0),
        "MobileNetV2": calibrated(MobileNetV2(), 0),
    }
    for name, model in nets.items():
        times = piece_times(model, args.samples, args.rounds)
        rows[name] = {"pieces": len(times), "seconds": times}
    lines = [
        f"# Building one decompose='layer' piece, torchvision-style networks, {today(run)}",
        "",
        f"{args.samples} samples; build + compile per piece, the fastest of {args.rounds} rounds; "
        f"load average {load:.1f} at the start (other work on the machine).",
        "",
        "| network | pieces | median s | largest s |",
        "|---|---|---|---|",
    ]
    for name, row in rows.items():
        times = row["seconds"]
        lines.append(
            f"| {name} | {row['pieces']} | {statistics.median(times):.2f} | {max(times):.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    record = {"samples": args.samples, "rounds": args.rounds, "load": load, "networks": rows}
    write_results(f"torchvision-pieces-{today(run)}", record, text, run)


if __name__ == "__main__":
    main()
