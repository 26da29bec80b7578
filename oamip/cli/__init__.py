"""The ``oamip`` command: ``oamip prune``, ``oamip spr``, ``oamip bench`` and ``oamip export``.

One module per subcommand, each with ``add_parser(subparsers)`` and ``run(args) -> int``; this
module builds the top-level parser and dispatches. Every error the package raises on purpose,
and every bad argument, ends the command with one line on stderr and exit status 2; results
reach ``--out`` only when the whole run succeeded.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from oamip import __version__
from oamip.cli import bench, export, prune, spr
from oamip.cli.common import (
    INTERRUPTED,
    USAGE_ERROR,
    Parser,
    UsageError,
    check_folders,
    fail,
)
from oamip.errors import OamipError

COMMANDS = (prune, spr, bench, export)
"""The subcommand modules, in the order ``oamip --help`` lists them."""

__all__ = ["COMMANDS", "INTERRUPTED", "USAGE_ERROR", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``oamip`` command with ``argv`` (default: ``sys.argv[1:]``); returns the status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.handler is None:
            raise UsageError("choose a command; see oamip --help")
        check_folders(args)
        return args.handler(args)
    except (UsageError, OamipError) as exc:
        fail(str(exc))
        return USAGE_ERROR
    except KeyboardInterrupt:
        fail("interrupted; nothing was written")
        return INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``oamip`` and its subcommands."""
    parser = Parser(prog="oamip", description="Prune ReLU networks with mathematical programs.")
    parser.add_argument("--version", action="version", version=f"oamip {__version__}")
    parser.set_defaults(handler=None)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser
