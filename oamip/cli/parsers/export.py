"""The options of ``oamip export``: write benchmark instances (importance MIPs) as MPS or LP."""

from __future__ import annotations

import argparse

from oamip.cli.common import add_instance_arguments, add_out_argument, one_of
from oamip.cli.defaults import EXPORT_FORMATS

NAME = "export"
HELP = "write an importance MIP instance as MPS or LP"
DEFAULT_OUT = "oamip-instances"
DEFAULT_FORMAT = "mps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``oamip export``."""
    add_instance_arguments(parser)
    add = parser.add_argument
    add("--instance", action="append", metavar="NAME", help="instance to write (repeatable)")
    add(
        "--format",
        metavar=one_of(EXPORT_FORMATS),
        default=DEFAULT_FORMAT,
        help=f"(default {DEFAULT_FORMAT})",
    )
    add_out_argument(parser, DEFAULT_OUT)
