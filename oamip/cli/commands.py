"""The ``oamip`` parser and its dispatch to the subcommands.

Each subcommand comes in two halves: its options (``NAME``, ``HELP``, ``add_arguments``; see
:mod:`oamip.cli.parsers`), which build the parser from the standard library and light oamip
modules, and ``run(args) -> int`` in ``oamip.cli.<NAME>``, imported with torch, Pyomo and the
solvers only once the command line has been read. So ``--version``, ``--help`` and a bad
argument answer at once. Every error the package raises on purpose, and every bad argument,
ends the command with one line on stderr and exit status 2; results reach ``--out`` only when
the whole run succeeded.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import partial
from importlib import import_module
from types import ModuleType

from oamip.cli.common import Parser, UsageError, check_folders
from oamip.cli.output import USAGE_ERROR, fail
from oamip.cli.parsers import COMMANDS
from oamip.errors import OamipError
from oamip.version import __version__


def prepare(argv: Sequence[str] | None = None) -> Callable[[], int]:
    """Read ``argv`` (default: ``sys.argv[1:]``) and import its subcommand's run half (the
    seconds of start-up); the call that runs it and returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        if args.subcommand is None:
            raise UsageError("choose a command; see oamip --help")
        check_folders(args)
    except (UsageError, OamipError) as exc:
        return partial(_report, exc)
    return partial(_run, import_module(f"oamip.cli.{args.subcommand}"), args)


def _run(command: ModuleType, args: argparse.Namespace) -> int:
    """``command.run(args)``, its OamipError reported as one line with status 2."""
    try:
        return command.run(args)
    except (UsageError, OamipError) as exc:
        return _report(exc)


def _report(exc: Exception) -> int:
    """Report a bad command line or input as one line; the exit status 2."""
    fail(str(exc))
    return USAGE_ERROR


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``oamip`` and its subcommands."""
    parser = Parser(prog="oamip", description="Prune ReLU networks with mathematical programs.")
    parser.add_argument("--version", action="version", version=f"oamip {__version__}")
    parser.set_defaults(subcommand=None)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        add_command(subparsers, command)
    return parser


def add_command(subparsers: argparse._SubParsersAction, command: ModuleType) -> None:
    """Register the subcommand whose options module is ``command``: name, help, options."""
    parser = subparsers.add_parser(command.NAME, help=command.HELP)
    command.add_arguments(parser)
    parser.set_defaults(subcommand=command.NAME)
