"""The entry point of the ``oamip`` command; imports only the standard library.

:func:`main` handles SIGINT and SIGTERM before it loads the parser (:mod:`oamip.cli.commands`)
and, once the command line is read, the subcommand's run half (torch, Pyomo and the solvers,
seconds of imports), so a signal at any moment ends the command with one line on stderr and
status 128 + the signal's number (130 for SIGINT, 143 for SIGTERM):

- while the command loads, nothing has been touched on disk and third-party imports do not
  survive an exception thrown into them, so the command reports the signal and exits at once;
- once they are loaded, the signal raises KeyboardInterrupt in the running command, every
  ``finally`` runs (a staging folder is removed, see :mod:`oamip.files`) and ``main`` reports it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from oamip.cli.output import error_line, fail

INTERRUPTED = 128 + signal.SIGINT
"""The exit status of a run stopped by Ctrl-C, or by a KeyboardInterrupt from elsewhere."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``oamip`` command with ``argv`` (default: ``sys.argv[1:]``); returns the status."""
    with stop_on_signals() as stop:
        try:
            from oamip.cli.commands import prepare

            command = prepare(argv)
            stop.started()
            return command()
        except BaseException as exc:
            if not stop.interrupted(exc):
                raise
            stop.ending()
            fail(stop.message)
            return stop.status


class Stop:
    """What a stop signal does at each stage of a run, and which signal it was."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.starting = True
        self.stopping = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: exit while starting, raise KeyboardInterrupt while running,
        nothing once the run is reporting its interrupt."""
        if self.stopping:
            return
        self.signum = signum
        if self.starting:
            os.write(2, error_line(self.message).encode())
            os._exit(self.status)
        raise KeyboardInterrupt

    def started(self) -> None:
        """The command is loaded: from now on a signal raises KeyboardInterrupt."""
        self.starting = False

    def ending(self) -> None:
        """The run is reporting its interrupt: a second signal does not cut the message."""
        self.stopping = True

    def interrupted(self, exc: BaseException) -> bool:
        """Whether ``exc`` ends the run because of an interrupt: a KeyboardInterrupt, or any
        exception once a stop signal arrived (code that caught the interrupt badly)."""
        return isinstance(exc, KeyboardInterrupt) or (
            self.signum is not None and isinstance(exc, Exception)
        )

    @property
    def status(self) -> int:
        """The exit status: 128 + the signal's number (130 for a KeyboardInterrupt)."""
        return INTERRUPTED if self.signum is None else 128 + self.signum

    @property
    def message(self) -> str:
        """The line that reports the interrupt."""
        name = "" if self.signum is None else f" by {signal.Signals(self.signum).name}"
        return f"interrupted{name}; no partial output was written"


@contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """Handle SIGINT and SIGTERM with a :class:`Stop` while the block runs, then put the
    previous handlers back (``main`` may be called from a program or a test). Outside the
    main thread Python cannot install handlers, and the block runs unchanged."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {signum: signal.signal(signum, stop.handle) for signum in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
