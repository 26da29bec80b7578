"""The ``oamip`` command: ``oamip prune``, ``oamip spr``, ``oamip bench`` and ``oamip export``.

Importing this package loads nothing heavy: :func:`main` (from :mod:`oamip.cli.entry`, the
console script's entry point) handles SIGINT and SIGTERM first and only then loads the parser
(:mod:`oamip.cli.commands`, light) and, once the arguments are read, the subcommand's module.
"""

from oamip.cli.entry import INTERRUPTED, main
from oamip.cli.output import USAGE_ERROR, fail

__all__ = ["INTERRUPTED", "USAGE_ERROR", "fail", "main"]
