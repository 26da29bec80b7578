"""``oamip export``: write benchmark instances (importance MIPs) as MPS or LP files.

The run half of the command; its options are in :mod:`oamip.cli.parsers.export`.
"""

from __future__ import annotations

import argparse

from oamip.cli.common import instance_options, say_written
from oamip.cli.parsers.export import HELP, NAME, add_arguments
from oamip.pipelines.bench import export_instances

__all__ = ["HELP", "NAME", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    """Write the instances named (default: the benchmark's set), named after the instance."""
    written = export_instances(
        args.out, names=args.instance, fmt=args.format, **instance_options(args)
    )
    say_written(args.out, written)
    return 0
