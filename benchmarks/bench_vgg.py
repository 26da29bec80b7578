"""Training the VGG-style network (``--arch vgg``) on Fashion-MNIST on one CPU thread.

Builds ``build("vgg", ...)`` (three stages of two 3x3 conv + BatchNorm + ReLU with max pooling,
8-16-32 channels, then Linear 288-64 + ReLU and Linear 64-10), trains it with its own recipe
(``TRAINING_DEFAULTS["vgg"]``) on the 12k training images and reports the test accuracy on the 2k
test images, the wall time and the CPU time of training. Target: at least 90% test accuracy in a
few minutes. Writes ``benchmarks/results/vgg-train-<date>.json`` and ``.md``.

    python benchmarks/bench_vgg.py [--data-dir DIR] [--threads N] [--epochs E]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import torch
from common import FASHION_MNIST, add_data_arguments, data_spec, run_info, today, write_results

from oamip.adapters.chain import units
from oamip.training.data import load_data
from oamip.training.inference import evaluate
from oamip.training.zoo import Recipe, trained

TARGET_ACCURACY = 0.90


def run(data: str, threads: int, epochs: int | None) -> dict:
    """Train the VGG once from seed 0 (``data``: a data spec) and measure it."""
    torch.set_num_threads(threads)
    dataset = load_data(data)
    recipe = Recipe.default("vgg")
    if epochs is not None:
        recipe = Recipe(**{**asdict(recipe), "epochs": epochs})
    cpu = time.process_time()
    result = trained(dataset, recipe)
    model, wall, cpu = result.model, result.train_seconds, time.process_time() - cpu
    accuracy = result.accuracy
    return {
        "data": {"spec": data, "train": len(dataset.y_train), "test": len(dataset.y_test)},
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


def markdown(result: dict, meta: dict) -> str:
    """The result as a short Markdown report."""
    r = result["recipe"]
    met = "met" if result["target_met"] else "MISSED"
    units_text = ", ".join(f"{name}: {size}" for name, size in result["scored_units"].items())
    return "\n".join(
        [
            f"# VGG training on Fashion-MNIST, {today(meta)}",
            "",
            f"{result['threads']} torch thread(s). The machine was shared with other jobs, so "
            "wall time can exceed CPU time.",
            "",
            f"Data: {result['data']['spec']} ({result['data']['train']} training, "
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
    add_data_arguments(parser, FASHION_MNIST)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="default: the VGG's recipe")
    args = parser.parse_args()
    meta = run_info()
    result = run(data_spec(args, FASHION_MNIST), args.threads, args.epochs)
    write_results(f"vgg-train-{today(meta)}", result, markdown(result, meta), meta)
    print(markdown(result, meta))


if __name__ == "__main__":
    main()
