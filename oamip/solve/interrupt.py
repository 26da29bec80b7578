"""Ctrl-C during a solve, as a solver's interactive optimise answers it.

Inside :func:`interruptible` the first SIGINT asks the running solve to stop (the event it
yields is ``SolveOptions.stop``, and :meth:`Backend.interrupt` passes the request on): the
solver returns its best solution, status ``interrupted``, and the solve goes no further (no
more cut rounds, careful retries or loss weights). The second SIGINT is handed to the handler
that was in place before, which aborts (Python's raises KeyboardInterrupt; the ``oamip``
command's ends the run and writes nothing). Gurobi and SCIP catch SIGINT themselves while they
run and return their status ``interrupted``; the loop then sets the event for them. Nothing
changes outside the main thread (Python runs signal handlers only there), for a backend
without the ``interrupt`` capability, or when SIGINT is ignored or not handled by Python.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import FrameType

from oamip.backends import Backend, Status

INTERRUPTED = str(Status.INTERRUPTED)
"""The status of a solve stopped by Ctrl-C: its best solution, with its bound."""
_STOP: ContextVar[threading.Event | None] = ContextVar("oamip_stop", default=None)
"""The event of the innermost :func:`interruptible` block running here, if any."""


def stop_requested() -> bool:
    """Whether the solve running here was asked to stop (for work between the solver's runs,
    such as the warm start's local search, which then ends early)."""
    stop = _STOP.get()
    return stop is not None and stop.is_set()


@contextmanager
def interruptible(
    solver: Backend, stop: threading.Event | None = None
) -> Iterator[threading.Event]:
    """Run a block of solves of ``solver`` with the first SIGINT stopping them and keeping their
    best solution; yields the event to pass as ``SolveOptions.stop`` (set once stopped):
    ``stop`` if given (a worker process's, which its own SIGINT handler may have set already),
    else a new one."""
    stop = threading.Event() if stop is None else stop
    token = _STOP.set(stop)
    try:
        with _handler(solver, stop):
            yield stop
    finally:
        _STOP.reset(token)


@contextmanager
def _handler(solver: Backend, stop: threading.Event) -> Iterator[None]:
    """SIGINT handled as :func:`interruptible` says while the block runs, where it can be."""
    previous = signal.getsignal(signal.SIGINT)
    if not (
        solver.capabilities.interrupt
        and callable(previous)
        and threading.current_thread() is threading.main_thread()
    ):
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            signal.signal(signal.SIGINT, previous)
            previous(signum, frame)
            return
        stop.set()
        solver.interrupt()

    signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
