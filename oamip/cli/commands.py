"""The ``oamip`` parser and its dispatch to the subcommands (imports torch and the solvers).

One module per subcommand, each with ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``, all registered by :func:`add_command`. Every error the package raises on
purpose, and every bad argument, ends the command with one line on stderr and exit status 2;
results reach ``--out`` only when the whole run succeeded.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import ModuleType

from oamip.cli import bench, export, prune, spr, transfer
from oamip.cli.common import Parser, UsageError, check_folders
from oamip.cli.output import USAGE_ERROR, fail
from oamip.errors import OamipError
from oamip.version import __version__

COMMANDS = (prune, spr, transfer, bench, export)
"""The subcommand modules, in the order ``oamip --help`` lists them."""


def dispatch(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run its subcommand; returns the status."""
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


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``oamip`` and its subcommands."""
    parser = Parser(prog="oamip", description="Prune ReLU networks with mathematical programs.")
    parser.add_argument("--version", action="version", version=f"oamip {__version__}")
    parser.set_defaults(handler=None)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        add_command(subparsers, command)
    return parser


def add_command(subparsers: argparse._SubParsersAction, command: ModuleType) -> None:
    """Register the subcommand module ``command``: its name, help, options and handler."""
    parser = subparsers.add_parser(command.NAME, help=command.HELP)
    command.add_arguments(parser)
    parser.set_defaults(handler=command.run)
