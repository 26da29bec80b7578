"""How the command reports a failure: one line on stderr and an exit status (standard library
only, so that the entry point and every subcommand share it without importing each other)."""

from __future__ import annotations

import sys

USAGE_ERROR = 2
"""The exit status of a bad command line or input (any OamipError)."""


def fail(message: str) -> None:
    """Report ``message`` as one line on stderr."""
    print(error_line(message), file=sys.stderr, end="")


def error_line(message: str) -> str:
    """``message`` on one line, as the command reports errors."""
    return f"oamip: error: {' '.join(message.split())}\n"
