"""Fast loading of ``decompose="layer"`` pieces: the Pyomo path against highspy, per conv piece.

Each network is cut into its pieces as ``score_neurons(..., decompose="layer")`` cuts it
(:func:`oamip.adapters.decompose.decomposed_pieces`: a scored layer with its pooling, its inputs
the dense network's values on the batch, an auxiliary head fit on ``--aux-samples`` training
images); per piece, the two paths of ``bench_loading.py`` are timed in alternating rounds
(median): ``build_importance_model`` + ``compile_model`` + HiGHS ``passModel`` against the same
matrix built with numpy and handed to highspy, after checking that both give one matrix. The head
is fit before and not timed. Networks: LeNet-5 on MNIST, the VGG and ResNet-20 (28x28) on
Fashion-MNIST, trained by the recipes of ``bench_budget.py`` (cached in ``benchmarks/.cache``),
with 10 and 100 samples (``--samples``, the batch of ``mip_batch``, one class after the other),
continuous scores unless ``--scores binary`` (then both paths fold each piece into the affine
map of its scores, docs/mathematics.md §4.8).

Per piece it also counts the scored ReLU entries of the model with binary scores by how they are
encoded (dead: no variable; linear, equality, gated: no binary; binary), and the MIP's size;
the same for whole LeNet-5 (``--whole``). ``--one-round NET:SAMPLES`` times those pieces once
without a warm-up and checks their matrix at the smallest sample count only (ResNet-20 with 100
samples: one piece is 5 million columns and 15 GB). Writes
``benchmarks/results/<name>-<date>.{json,md}`` (``--name``, default ``piece-loading``).

    python benchmarks/bench_piece_loading.py [--nets lenet5,vgg,resnet20] [--samples 10,100]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
from bench_budget import network as trained_network
from bench_loading import TARGET_RATIO, Case, direct_build, direct_load, measure, pyomo_load
from bench_loading import same_matrix as checked_size
from common import add_data_dir, run_info, today, write_results

from oamip.adapters import extract
from oamip.adapters.decompose import decomposed_pieces
from oamip.backends import compile_model
from oamip.formulations.encodings import RELU_CASES
from oamip.formulations.importance import ImportanceSettings, build_importance_model
from oamip.network import Network
from oamip.pipelines.settings import PruneSettings
from oamip.solve.options import ScoringOptions
from oamip.training.data import mip_batch

NETS = ("lenet5", "vgg", "resnet20")
PIECE_TARGET_SECONDS = 30.0
"""The issue's target for building one ResNet-20 piece."""
ENTRY_KINDS = ("dead", *RELU_CASES)


def batch(model, data, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``samples`` rows of ``mip_batch`` (correctly classified, class after class)."""
    found = mip_batch(model, data, samples_per_class=-(-samples // data.num_classes))
    return found.x[:samples], found.y[:samples]


def pieces_by_size(net: str, sizes: list[int], args) -> tuple[Network, dict[int, list]]:
    """The network and, per batch size, its pieces with their heads fit (the heads do not
    depend on the batch, so each is fit once)."""
    model, data = trained_network(net, args)
    options = ScoringOptions(decompose="layer", aux_samples=args.aux_samples, scores=args.scores)
    aux = (data.x_train, data.y_train)
    found, network = {}, None
    for samples in sizes:
        x, y = batch(model, data, samples)
        network = extract(model, x).network
        found[samples] = decomposed_pieces(network, x, y, options, aux)
    for j in range(len(found[sizes[0]])):
        fitted = found[sizes[0]][j].with_head()
        for samples in sizes:
            piece = found[samples][j]
            head = fitted.network.layers[len(piece.network.layers) :]
            whole = Network(piece.network.input_shape, [*piece.network.layers, *head])
            found[samples][j] = replace(piece, network=whole, head=None)
    return network, found


def entries(network: Network, x, y, settings) -> dict:
    """The scored ReLU entries by case, and the size of the layered MIP, with binary scores
    (not folded: a solve folds such a piece, docs/mathematics.md §4.8, to a variable per
    score, logit and loss)."""
    im = build_importance_model(network, x, y, replace(settings, scores="binary"), fold=False)
    form = compile_model(im.model)
    counts = {kind: im.relu_entries.get(kind, 0) for kind in ENTRY_KINDS}
    size = {
        "columns": form.num_cols,
        "rows": form.num_rows,
        "nonzeros": int(form.A.nnz),
        "integer": int(form.integer.sum()),
    }
    return {"entries": counts, "binary_scores_size": size}


def piece_result(net, samples, piece, rounds: int, check: bool) -> dict:
    """One piece's timings (both paths), its size and its ReLU entries."""
    settings = piece.options
    case = Case(f"{net} {piece.layer}", piece.network, piece.x, piece.y, [], [], {}, {})
    if check:
        case.size = checked_size(piece.network, piece.x, piece.y, settings)
    if rounds:
        measure(case, settings, rounds)
    else:
        _once(case, settings)
    gc.collect()
    record = _summary(case) | {"net": net, "samples": samples, "piece": piece.layer}
    return record | entries(piece.network, piece.x, piece.y, settings)


def _once(case: Case, settings) -> None:
    """One round of both paths without a warm-up, one model alive at a time."""
    parts: dict[str, float] = {}
    start = time.perf_counter()
    pyomo_load(case.network, case.x, case.y, settings, parts)
    gc.collect()
    middle = time.perf_counter()
    model = direct_build(case.network, case.x, case.y, settings)
    built = time.perf_counter()
    direct_load(model)
    end = time.perf_counter()
    case.pyomo_seconds.append(middle - start)
    case.direct_seconds.append(end - middle)
    parts.update(direct_build=built - middle, direct_load=end - built)
    case.parts = {key: [value] for key, value in parts.items()}


def _summary(case: Case) -> dict:
    pyomo_s = statistics.median(case.pyomo_seconds)
    direct_s = statistics.median(case.direct_seconds)
    return {
        "size": case.size,
        "checked": bool(case.size),
        "pyomo_seconds": pyomo_s,
        "direct_seconds": direct_s,
        "ratio": pyomo_s / direct_s,
        "parts": {k: statistics.median(v) for k, v in case.parts.items()},
    }


def whole_lenet(args) -> dict:
    """ReLU entries and MIP size of whole LeNet-5 on 10 samples (binary scores)."""
    model, data = trained_network("lenet5", args)
    x, y = batch(model, data, 10)
    network = extract(model, x).network
    return {"net": "lenet5 (whole)", "samples": 10} | entries(network, x, y, ImportanceSettings())


# --- report ----------------------------------------------------------------------------------


def per_network(results: list[dict]) -> list[dict]:
    """Per network and batch size: the median and largest ratio and Pyomo-path seconds."""
    rows = []
    for key in dict.fromkeys((r["net"], r["samples"]) for r in results):
        found = [r for r in results if (r["net"], r["samples"]) == key]
        ratios = [r["ratio"] for r in found]
        build = [r["parts"]["build"] for r in found]
        rows.append(
            {
                "net": key[0],
                "samples": key[1],
                "pieces": len(found),
                "median_ratio": statistics.median(ratios),
                "largest_ratio": max(ratios),
                "target_met": max(ratios) <= TARGET_RATIO,
                "largest_build_seconds": max(build),
                "largest_pyomo_seconds": max(r["pyomo_seconds"] for r in found),
            }
        )
    return rows


def markdown(record: dict, meta: dict) -> str:
    lines = [
        f"# Loading decompose='layer' pieces into HiGHS, {today(meta)}",
        "",
        f"Per piece, median of {record['rounds']} alternating rounds (one, without warm-up, for "
        f"{', '.join(record['one_round']) or 'none'}); no solve. Pyomo path: build + compile + "
        "HiGHS load; direct: numpy build + highspy load of the same matrix (checked where "
        f"marked). Target: Pyomo path <= {TARGET_RATIO:g}x direct per conv piece; a ResNet-20 "
        f"piece built within {PIECE_TARGET_SECONDS:g} s. Heads fit on {record['aux_samples']} "
        f"training images (not timed). Scores: {record.get('scores', 'continuous')} (binary "
        "pieces are folded by both paths, docs/mathematics.md §4.8).",
        "",
        "| network | samples | pieces | median ratio | largest ratio | largest build (s) "
        "| largest Pyomo path (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in record["networks"]:
        mark = "met" if r["target_met"] else "MISSED"
        lines.append(
            f"| {r['net']} | {r['samples']} | {r['pieces']} | {r['median_ratio']:.2f}x "
            f"| {r['largest_ratio']:.2f}x ({mark}) | {r['largest_build_seconds']:.2f} "
            f"| {r['largest_pyomo_seconds']:.2f} |"
        )
    lines += [
        "",
        "Per piece (seconds; entries and size of the layered MIP with binary scores, which a "
        "solve folds: dead entries get no variable, linear/equality/gated ones no binary):",
        "",
        "| network | samples | piece | checked | build | compile | HiGHS load | direct build "
        "| direct load | ratio | dead | linear | equality | gated | binary | columns | rows "
        "| nonzeros | integer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]:
        p, e, s = r["parts"], r["entries"], r["binary_scores_size"]
        lines.append(
            f"| {r['net']} | {r['samples']} | {r['piece']} | {'yes' if r['checked'] else 'no'} "
            f"| {p['build']:.2f} | {p['compile']:.2f} | {p['load']:.2f} "
            f"| {p['direct_build']:.2f} | {p['direct_load']:.2f} | {r['ratio']:.2f}x "
            + _entry_cells(e, s)
        )
    if record["whole"]:
        w = record["whole"]
        lines += [
            "",
            "| network | samples | dead | linear | equality | gated | binary | columns | rows "
            "| nonzeros | integer |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {w['net']} | {w['samples']} " + _entry_cells(w["entries"], w["binary_scores_size"]),
        ]
    return "\n".join(lines) + "\n"


def _entry_cells(e: dict, s: dict) -> str:
    counts = " | ".join(str(e[k]) for k in ENTRY_KINDS)
    return f"| {counts} | {s['columns']} | {s['rows']} | {s['nonzeros']} | {s['integer']} |"


def main() -> None:
    args = _parse()
    meta = run_info()
    torch.set_num_threads(1)
    sizes = sorted(int(n) for n in args.samples.split(","))
    one_round = set(args.one_round.split(",")) if args.one_round else set()
    results = []
    for net in args.nets.split(","):
        _, pieces = pieces_by_size(net, sizes, args)
        for samples in sizes:
            once = f"{net}:{samples}" in one_round
            check = not once or samples == sizes[0]
            for piece in pieces[samples]:
                results.append(piece_result(net, samples, piece, 0 if once else args.rounds, check))
                print(_progress(results[-1]), flush=True)
            pieces[samples] = []
    record = {
        "rounds": args.rounds,
        "one_round": sorted(one_round),
        "aux_samples": args.aux_samples,
        "scores": args.scores,
        "target_ratio": TARGET_RATIO,
        "networks": per_network(results),
        "results": results,
        "whole": whole_lenet(args) if args.whole else None,
    }
    table = markdown(record, meta)
    write_results(f"{args.name}-{today(meta)}", record, table, meta)
    print(table)


def _progress(r: dict) -> str:
    return (
        f"{r['net']} {r['samples']} {r['piece']}: Pyomo {r['pyomo_seconds']:.2f} s, direct "
        f"{r['direct_seconds']:.2f} s, ratio {r['ratio']:.2f}, entries {r['entries']}"
    )


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_dir(parser)
    parser.add_argument("--nets", default=",".join(NETS), help="networks, comma-separated")
    parser.add_argument("--samples", default="10,100", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--one-round", default="", help="NET:SAMPLES timed once, e.g. resnet20:100")
    parser.add_argument("--aux-samples", type=int, default=1000, help="images the heads fit on")
    parser.add_argument("--resnet-train", type=int, default=3000, help="ResNet-20's images")
    parser.add_argument("--whole", action="store_true", help="also count whole LeNet-5's entries")
    parser.add_argument(
        "--scores",
        default="continuous",
        choices=("continuous", "binary"),
        help="the pieces' scores (binary: both paths fold, docs/mathematics.md §4.8)",
    )
    parser.add_argument("--name", default="piece-loading", help="results file name (no date)")
    args = parser.parse_args()
    args.val_fraction = PruneSettings().val_fraction
    args.train_seed = 0
    return args


if __name__ == "__main__":
    main()
