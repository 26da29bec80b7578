"""The options of ``oamip library build``: an instance library for solver benchmarks."""

from __future__ import annotations

import argparse

from oamip.cli.common import add_out_argument, folder, one_of
from oamip.cli.defaults import (
    BUILTIN_BACKENDS,
    LIBRARY_OUT,
    LIBRARY_REFERENCE_BACKEND,
    LIBRARY_SETS,
    LIBRARY_SMALL_TIME_LIMIT,
    LIBRARY_STANDARD_TIME_LIMIT,
)

NAME = "library"
HELP = "build an instance library (MPS files) for solver benchmarks"
ACTIONS = ("build",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip library build``; the defaults are those of
    :func:`oamip.pipelines.library.build_library`."""
    add = parser.add_argument
    add("action", metavar=one_of(ACTIONS), choices=ACTIONS, help="what to do: build a set")
    add(
        "--set",
        dest="set_name",
        metavar=one_of(LIBRARY_SETS),
        default=LIBRARY_SETS[0],
        help=f"which set (default {LIBRARY_SETS[0]})",
    )
    add(
        "--data",
        default=None,
        metavar="mnist:PATH",
        help="train the networks on MNIST from PATH (default: scikit-learn's digits)",
    )
    add(
        "--reference-backend",
        metavar=one_of(BUILTIN_BACKENDS),
        default=LIBRARY_REFERENCE_BACKEND,
        help=f"the backend that solves each instance once for the manifest "
        f"(default {LIBRARY_REFERENCE_BACKEND})",
    )
    times = f"small {LIBRARY_SMALL_TIME_LIMIT:g}, standard {LIBRARY_STANDARD_TIME_LIMIT:g}"
    add(
        "--reference-time-limit",
        type=float,
        default=None,
        metavar="S",
        help=f"seconds per reference solve, past which an instance is open; 0 skips them "
        f"(default by set: {times})",
    )
    add(
        "--cache-dir",
        type=folder,
        default=None,
        help="keep the trained networks here (default: train them afresh, seconds each)",
    )
    add_out_argument(parser, LIBRARY_OUT)
