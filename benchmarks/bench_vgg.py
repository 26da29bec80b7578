"""Training the VGG-style network (``--arch vgg``) on Fashion-MNIST on one CPU thread.

Builds ``build("vgg", ...)`` (three stages of two 3x3 conv + BatchNorm + ReLU with max pooling,
8-16-32 channels, then Linear 288-64 + ReLU and Linear 64-10), trains it with its own recipe
(``TRAINING_DEFAULTS["vgg"]``) on the 12k training images and reports the test accuracy on the 2k
test images, the wall time and the CPU time of training. Target: at least 90% test accuracy in a
few minutes. Writes ``benchmarks/results/vgg-train-<date>.json`` and ``.md``.

    python benchmarks/bench_vgg.py [--data PATH] [--threads N] [--epochs E]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from oamip.adapters.chain import units
from oamip.files import write_json
from oamip.pipelines.bench import machine
from oamip.training.data import load_data
from oamip.training.inference import evaluate
from oamip.training.zoo import Recipe, trained

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fashion-mnist-14k.npz"
RESULTS = ROOT / "benchmarks" / "results"
TARGET_ACCURACY = 0.90


def run(data: Path, threads: int, epochs: int | None) -> dict:
    """Train the VGG once from seed 0 and measure it."""
    torch.set_num_threads(threads)
    dataset = load_data(f"npz:{data}")
    recipe = Recipe.default("vgg")
    if epochs is not None:
        recipe = Recipe(**{**asdict(recipe), "epochs": epochs})
    cpu = time.process_time()
    result = trained(dataset, recipe)
    model, wall, cpu = result.model, result.train_seconds, time.process_time() - cpu
    accuracy = result.accuracy
    return {
        "machine": machine(),
        "command": shlex.join(["python", "benchmarks/bench_vgg.py", *sys.argv[1:]]),
        "data": {"file": data.name, "train": len(dataset.y_train), "test": len(dataset.y_test)},
        "threads": threads,
        "recipe": asdict(recipe),
        "scored_units": {u.name: u.size for u in units(model)},
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(wall, 1),
        "train_cpu_seconds": round(cpu, 1),
        "test_accuracy": accuracy,
        "train_accuracy": evaluate(model, dataset.x_train, dataset.y_train),
        "target_met": accuracy >= TARGET_ACCURACY,
    }


def markdown(result: dict) -> str:
    """The result as a short Markdown report."""
    m, r = result["machine"], result["recipe"]
    met = "met" if result["target_met"] else "MISSED"
    units_text = ", ".join(f"{name}: {size}" for name, size in result["scored_units"].items())
    return "\n".join(
        [
            f"# VGG training on Fashion-MNIST, {m['date'][:10]}",
            "",
            f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch "
            f"{m['torch']}; {result['threads']} torch thread(s). The machine was shared with "
            "other jobs, so wall time can exceed CPU time.",
            "",
            f"Command: `{result['command']}`",
            "",
            f"Data: {result['data']['file']} ({result['data']['train']} training, "
            f"{result['data']['test']} test images). Recipe: {r['epochs']} epochs, Adam lr "
            f"{r['lr']}{' cosine-decayed to 0' if r['cosine'] else ''}, batch {r['batch_size']}, "
            f"random shifts of up to {r['shift']} pixels, seed {r['seed']}.",
            "",
            f"Scored units per layer: {units_text}; {result['parameters']} parameters.",
            "",
            "| epochs | wall (s) | CPU (s) | train accuracy | test accuracy | target >= 90% |",
            "|---|---|---|---|---|---|",
            f"| {r['epochs']} | {result['train_seconds']} | {result['train_cpu_seconds']} | "
            f"{result['train_accuracy']:.2%} | {result['test_accuracy']:.2%} | {met} |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="default: the VGG's recipe")
    args = parser.parse_args()
    result = run(args.data, args.threads, args.epochs)
    stem = RESULTS / f"vgg-train-{datetime.date.today().isoformat()}"
    write_json(stem.with_suffix(".json"), result)
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
