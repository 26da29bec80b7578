"""What the subcommands of ``oamip`` share: one-line errors, options and output lines.

Options only convert text to values here (numbers, lists, paths); whether a value is allowed is
decided once, by the library function or settings class that receives it, and its OamipError
reaches the user as one line on stderr with exit status 2. This module imports only the
standard library and light oamip modules: the parser is built from it (see
:mod:`oamip.cli.defaults`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from oamip.cli.defaults import ARCHITECTURES, BENCH_SIZES, DATA_SPECS, SCORE_MODES
from oamip.files import check_output_folder
from oamip.progress import Bars


class UsageError(Exception):
    """A bad command line; reported in one line like an OamipError."""


class Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def say(text: str) -> None:
    """Print a result line (or table) on stdout."""
    print(text)


def command_listener() -> Bars:
    """How a command reports progress: every line on stderr (a piece solved, a weight of the
    path), and bars too when stderr is a terminal (:func:`progress_shown`)."""
    return Bars(bars=progress_shown())


def progress_shown() -> bool:
    """Whether a command shows progress bars: only when stderr is a terminal, so that a log
    redirected to a file gets no carriage-return redraws."""
    return sys.stderr is not None and sys.stderr.isatty()


def say_written(out: str | Path, paths: Iterable[Path]) -> None:
    """Print the files a command wrote, as ``--out`` names them."""
    say(f"wrote {', '.join(str(Path(out) / path.name) for path in paths)}")


def check_folders(args: argparse.Namespace) -> None:
    """Refuse an unwritable ``--out`` or ``--cache-dir`` before the command does any work."""
    check_output_folder(args.out, "--out")
    if "cache_dir" in args:
        check_output_folder(args.cache_dir or _default_cache_dir(), "--cache-dir")


def _default_cache_dir() -> Path:
    """The benchmark's cache of trained networks (imported here: only commands that run need
    it, and its module loads torch)."""
    from oamip.pipelines.bench import default_cache_dir

    return default_cache_dir()


def one_of(choices: Sequence[str]) -> str:
    """The metavar ``{a,b,c}`` that lists an option's values (checked by the library)."""
    return "{" + ",".join(choices) + "}"


def add_out_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--out DIR``: the folder written, all or nothing, when the command succeeds."""
    parser.add_argument(
        "--out", default=default, metavar="DIR", help=f"output folder (default {default}/)"
    )


def add_export_onnx_argument(parser: argparse.ArgumentParser) -> None:
    """``--export-onnx``: the pruned model also as ONNX, beside ``pruned.pt``."""
    parser.add_argument(
        "--export-onnx",
        action="store_true",
        help="also write the pruned model as pruned.onnx (needs pip install 'oamip[onnx]')",
    )


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--arch`` and ``--data``: the model to prune and its data."""
    add = parser.add_argument
    add(
        "--model",
        help="model file from oamip.save_model, an .onnx file, or a state dict with --arch",
    )
    add(
        "--arch",
        metavar=one_of(ARCHITECTURES),
        help="architecture of a state dict, or to train when no --model (default mlp)",
    )
    add("--data", default="digits", help=f"{DATA_SPECS} (default digits)")


def add_instance_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose benchmark instances (``oamip bench`` and ``oamip export``)."""
    add = parser.add_argument
    add("--data", metavar="mnist:PATH", help="add MNIST instances (MLP and LeNet-5) from PATH")
    add("--sizes", type=whole_numbers, default=BENCH_SIZES, help="samples per class (default 1,2)")
    add("--scores", type=names, default=SCORE_MODES, help="score modes (default both)")
    add("--seed", type=int, default=0, help="seed of the samples chosen (default 0)")
    add(
        "--cache-dir",
        type=folder,
        default=None,
        help="trained networks (default $XDG_CACHE_HOME/oamip/zoo, else ~/.cache/oamip/zoo)",
    )


def instance_options(args: argparse.Namespace) -> dict:
    """The values of the options that :func:`add_instance_arguments` adds, as keyword
    arguments of ``benchmark`` and ``export_instances`` (:mod:`oamip.pipelines.bench`)."""
    return {
        "data": args.data,
        "sizes": args.sizes,
        "scores": args.scores,
        "seed": args.seed,
        "cache_dir": args.cache_dir,
    }


def names(text: str) -> tuple[str, ...]:
    """``a,b,c`` as a tuple of names; at least one."""
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    if not parts:
        raise argparse.ArgumentTypeError(
            f"expected one or more comma-separated names, got '{text}'"
        )
    return parts


def whole_numbers(text: str) -> tuple[int, ...]:
    """``1,2`` as a tuple of ints."""
    try:
        return tuple(int(part) for part in names(text))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected whole numbers like 1,2 got '{text}'") from None


def folder(text: str) -> Path:
    """A folder path, ``~`` expanded."""
    return Path(text).expanduser()


def floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers, e.g. ``0.1,1,10``."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas (e.g. 0.1,1,10), got '{text}'"
        ) from None
