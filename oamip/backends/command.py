"""Any MPS solver on the machine as a command line: run it on a file, read its solution file.

A command is a template such as ``cbc {mps} -sec {time_limit} -solve -solu {solution}``: it is
split like a shell line (no shell runs it), then ``{mps}``, ``{time_limit}`` and ``{solution}``
are filled in each word. ``NAME=TEMPLATE`` names the solver; otherwise it is named after the
program (``cbc``). The solution file is read by :mod:`oamip.backends.solution_files`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import string
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from oamip.backends.solution_files import SolutionFile, read_solution_file
from oamip.errors import InvalidInputError, OamipError

PLACEHOLDERS = ("mps", "time_limit", "solution")
REQUIRED = ("mps", "solution")
GRACE_SECONDS = 30.0
"""How long past its time limit a command may run before it is killed (start-up, writing)."""
_NAMED = re.compile(r"^([A-Za-z][\w.+-]*)=(.+)$", re.DOTALL)
_TAIL = 400


@dataclass
class CommandAnswer:
    """What one run of a command gave: its solution file read (None if it wrote none), the
    wall-clock seconds, and why it failed (empty if it did not)."""

    solution: SolutionFile | None
    seconds: float
    message: str = ""


@dataclass(frozen=True)
class CommandSolver:
    """A solver run as ``template`` (see the module's help), named ``name``."""

    name: str
    template: str

    @classmethod
    def parse(cls, text: str) -> CommandSolver:
        """``[NAME=]TEMPLATE``, checked: its placeholders known, ``{mps}`` and ``{solution}``
        present, the program found on the PATH."""
        match = _NAMED.match(text.strip())
        name, template = (match.group(1), match.group(2)) if match else (None, text.strip())
        words = _split(template)
        used = {field for word in words for field in _fields(word, template)}
        missing = [p for p in REQUIRED if p not in used]
        if missing:
            raise InvalidInputError(
                f"solver command '{template}' lacks {', '.join('{' + m + '}' for m in missing)}: "
                "it must read {mps} and write {solution}"
            )
        program = words[0]
        if shutil.which(program) is None:
            raise InvalidInputError(
                f"solver command '{template}': program '{program}' is not on the PATH"
            )
        return cls(name or Path(program).name, template)

    def run(self, mps: Path, time_limit: float, folder: Path) -> CommandAnswer:
        """Run on the MPS file ``mps``, the solution written in ``folder``; killed
        GRACE_SECONDS after ``time_limit``."""
        solution = folder / f"{self.name}.sol"
        values = {"mps": str(mps), "time_limit": repr(float(time_limit)), "solution": solution}
        command = [word.format(**values) for word in _split(self.template)]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=time_limit + GRACE_SECONDS,
                cwd=folder,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        except subprocess.TimeoutExpired:
            seconds = time.perf_counter() - start
            return CommandAnswer(None, seconds, f"killed {GRACE_SECONDS:g} s past its time limit")
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            return CommandAnswer(None, seconds, f"exit status {done.returncode}: {_tail(done)}")
        if not solution.is_file():
            return CommandAnswer(None, seconds, f"wrote no solution file: {_tail(done)}")
        try:
            return CommandAnswer(read_solution_file(solution), seconds)
        except OamipError as exc:
            return CommandAnswer(None, seconds, str(exc))


def _split(template: str) -> list[str]:
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise InvalidInputError(f"cannot split solver command '{template}': {exc}") from None
    if not words:
        raise InvalidInputError("the solver command is empty")
    return words


def _fields(word: str, template: str) -> list[str]:
    """The placeholders of one word; an unknown one is an error."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(word) if name is not None]
    except ValueError as exc:
        raise InvalidInputError(f"solver command '{template}': {exc}") from None
    unknown = [name for name in names if name not in PLACEHOLDERS]
    if unknown:
        raise InvalidInputError(
            f"solver command '{template}' uses {{{unknown[0]}}}; the placeholders are "
            f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    return names


def _tail(done: subprocess.CompletedProcess) -> str:
    text = " ".join((done.stdout or "").split())
    return text[-_TAIL:] or "(no output)"
