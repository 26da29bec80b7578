"""The light half of each subcommand: its ``NAME``, ``HELP`` and ``add_arguments(parser)``.

They import only the standard library and light oamip modules (the defaults they show come
from :mod:`oamip.cli.defaults`), so that ``oamip --version``, ``--help`` and argument errors
answer without loading torch, Pyomo or the solvers. The other half, ``run(args)``, lives in
``oamip.cli.<NAME>`` and is imported once the command line has been read.
"""

from oamip.cli.parsers import bench, compress, export, library, prune, spr, transfer

COMMANDS = (prune, spr, transfer, compress, bench, export, library)
"""The subcommands, in the order ``oamip --help`` lists them."""
