"""The time to build one piece of ``decompose="layer"`` on torchvision-style networks.

The ResNet-18 and VGG-11-BN copies of tests/torchvision_nets.py (widths 4-8, random weights and
BatchNorm statistics, 32x32x3 inputs) are cut into their pieces; per piece, the importance model
is built (``build_importance_model``, interval bounds included) and compiled to standard form
(``compile_model``), the work before a solver starts. Prints per network the number of pieces
and the median and largest build time.

    PYTHONPATH=. python benchmarks/bench_torchvision_pieces.py [--samples N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from oamip.adapters.decompose import decomposed_pieces
from oamip.adapters.extract import extract
from oamip.backends import compile_model
from oamip.formulations import build_importance_model
from oamip.solve.options import ScoringOptions
from tests.torchvision_nets import VGG, ResNet18, randomised


def piece_times(model, samples: int, rounds: int) -> list[float]:
    """Per piece, the fastest of ``rounds`` builds and compilations, in seconds."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (samples, 3, 32, 32)), rng.integers(0, 10, samples)
    aux = (rng.uniform(0, 1, (50, 3, 32, 32)), rng.integers(0, 10, 50))
    network = extract(model, x, "both").network
    options = ScoringOptions(decompose="layer")
    times = []
    for piece in decomposed_pieces(network, x, y, options, aux):
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
    for name, model in (("ResNet-18", ResNet18()), ("VGG-11-BN", VGG())):
        times = piece_times(randomised(model, 0), args.samples, args.rounds)
        print(
            f"{name}: {len(times)} pieces, {args.samples} samples; build + compile per piece: "
            f"median {statistics.median(times):.2f} s, largest {max(times):.2f} s"
        )


if __name__ == "__main__":
    main()
