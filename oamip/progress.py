"""Progress of long calls as events: training, solving, pieces, the lam path, seeds.

Code that runs long reports through a :class:`Task` (``advance``, ``line``, ``close``); each
call becomes an :class:`Event` for a *listener*, any callable that takes one. The command line
and, by default, a Python call at a terminal or in a notebook listen with :class:`Bars`, which
draws a tqdm bar per task and prints each event's line above the bars; a program can pass its
own listener, or ``progress=False`` for silence. Standard library only (tqdm is imported when
bars are drawn), so every layer may report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True)
class Event:
    """What one task has done: ``done`` of ``total`` (None: not known), counted in ``unit``;
    ``line`` is a finished step worth a line of its own (a piece solved, a weight of the path
    evaluated); ``closed`` marks the task's end; ``detail`` is a short status (a loss)."""

    task: str
    done: float = 0.0
    total: float | None = None
    unit: str = ""
    line: str | None = None
    closed: bool = False
    detail: str | None = None


Listener = Callable[[Event], None]
"""Anything that takes an :class:`Event`: a listener of progress."""


class Task:
    """One task reporting to ``listener`` (None: nobody listens, every call is free)."""

    def __init__(
        self, listener: Listener | None, task: str, total: float | None = None, unit: str = ""
    ) -> None:
        self.listener = listener
        self.task = task
        self.total = total
        self.unit = unit
        self.done = 0.0
        self._emit()

    def advance(
        self, amount: float = 1.0, total: float | None = None, detail: str | None = None
    ) -> None:
        """``amount`` more done (and the total, when it becomes known; a short status)."""
        self.done += amount
        self.total = self.total if total is None else total
        self._emit(detail=detail)

    def reach(self, done: float) -> None:
        """``done`` units done in all (a clock's seconds, say)."""
        self.done = done
        self._emit()

    def line(self, text: str) -> None:
        """A finished step, for a line of its own."""
        self._emit(line=text)

    def close(self) -> None:
        """The task has ended."""
        self._emit(closed=True)

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _emit(self, **extra: Any) -> None:
        if self.listener is not None:
            self.listener(Event(self.task, self.done, self.total, self.unit, **extra))


class Bars:
    """The listener that people see: a tqdm bar per open task (tqdm.auto: a widget in a
    notebook) and each line above the bars, on ``stream`` (stderr). With ``bars=False`` only
    the lines are written (a log)."""

    def __init__(self, bars: bool = True, stream: TextIO | None = None) -> None:
        from tqdm.auto import tqdm  # once per listener, not per event (training emits per batch)

        self.bars = bars
        self.stream = stream
        self._tqdm = tqdm
        self._open: dict[str, Any] = {}

    def __call__(self, event: Event) -> None:
        tqdm = self._tqdm
        stream = self.stream or sys.stderr
        if event.line is not None:
            tqdm.write(event.line, file=stream)
        if not self.bars:
            return
        bar = self._open.get(event.task)
        if bar is None and not event.closed:
            bar = self._open[event.task] = tqdm(desc=event.task, unit=event.unit, file=stream)
        if bar is None:
            return
        if event.total != bar.total:
            bar.total = event.total
            bar.refresh()
        if event.detail is not None:
            bar.set_postfix_str(event.detail, refresh=False)
        bar.update(event.done - bar.n)
        if event.closed:
            bar.close()
            del self._open[event.task]


def interactive() -> bool:
    """Whether a person is probably watching: stderr is a terminal, or code runs in a
    notebook (an IPython kernel is loaded)."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def listener_for(progress: bool | None | Listener) -> Listener | None:
    """The listener that ``progress`` asks for: a callable itself, True bars, False nothing,
    None bars only where a person is probably watching (:func:`interactive`)."""
    if callable(progress):
        return progress
    if progress is None:
        progress = interactive()
    return Bars() if progress else None
