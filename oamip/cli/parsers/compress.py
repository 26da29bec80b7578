"""The options of ``oamip compress``: remove what is provably useless on a box of inputs."""

from __future__ import annotations

import argparse

from oamip.cli.common import add_out_argument, floats, one_of, whole_numbers
from oamip.cli.defaults import COMPRESS_OUT, COMPRESS_TIME_LIMIT, DATA_SPECS, backend_names

NAME = "compress"
HELP = "remove units dead on a box of inputs, fold always-active ones (exact)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip compress``; the defaults are those of :func:`oamip.compress`."""
    add = parser.add_argument
    add("--model", required=True, help="model file from oamip.save_model, or an .onnx file")
    box = parser.add_mutually_exclusive_group(required=True)
    box.add_argument(
        "--box", type=bounds, metavar="LO,HI", help="every input lies in [LO, HI] (e.g. 0,1)"
    )
    box.add_argument(
        "--data", metavar="SPEC", help=f"the box is the per-feature range of {DATA_SPECS}"
    )
    add(
        "--input-shape",
        type=whole_numbers,
        metavar="C,H,W",
        help="inputs per sample, for --box and a model that starts with a convolution",
    )
    add(
        "--time-limit",
        type=float,
        default=COMPRESS_TIME_LIMIT,
        metavar="T",
        help=f"seconds for the proofs; what is not proven stays (default {COMPRESS_TIME_LIMIT:g})",
    )
    add(
        "--backend",
        metavar=one_of(backend_names()),
        default="highs",
        help="solver of the LPs and MILPs (default highs)",
    )
    add_out_argument(parser, COMPRESS_OUT)


def bounds(text: str) -> tuple[float, float]:
    """``LO,HI`` as two numbers (whether LO <= HI is checked by oamip.compress)."""
    values = floats(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers LO,HI (e.g. 0,1), got '{text}'")
    return values[0], values[1]
