"""CBC through its command-line executable: LP and MILP, exchanged as MPS and solution files.

The model is written as free MPS (always as a minimisation, which every CBC version reads),
``cbc`` runs on it, and the solution file and the log are read back. A warm start is handed
over as a ``-mipstart`` file.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

from oamip.backends.base import (
    CAREFUL_TOLERANCE,
    Backend,
    Capabilities,
    SolveOptions,
    SolveResult,
    Status,
    stop_requested,
)
from oamip.backends.export import write_mps
from oamip.backends.standard_form import StandardForm
from oamip.errors import InvalidInputError, SolverError

INSTALL_HINT = "apt-get install coinor-cbc (or: conda install -c conda-forge coin-or-cbc)"
_LOG_TAIL_LINES = 20
WATCH_SECONDS = 0.1
"""How often a stoppable solve checks ``SolveOptions.stop``."""


class CbcBackend(Backend):
    """COIN-OR CBC: open source, no Python binding needed, only the ``cbc`` executable."""

    name = "cbc"
    capabilities = Capabilities(integer=True, warm_start=True, interrupt=True)
    install_hint = INSTALL_HINT
    executable = "cbc"
    _child: subprocess.Popen | None = None
    """The cbc process of the solve running now, for :meth:`interrupt`."""
    _interrupted: subprocess.Popen | None = None
    """The cbc process already sent SIGINT (once: a second one may end it without an answer)."""

    def solve_form(
        self, form: StandardForm, options: SolveOptions, warm_start: bool
    ) -> SolveResult:
        """Write the model, run cbc, read its solution and log back."""
        executable = self.executable_path()
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="oamip-cbc-") as tmp:
            folder = Path(tmp)
            write_mps(_as_minimisation(form), folder / "model.mps")
            start_values = self.start_values(form) if warm_start else None
            mipstart = None
            if start_values is not None:
                mipstart = _write_mipstart(start_values, folder / "start.sol")
            command = _command(executable, folder, options, mipstart)
            load_seconds = time.perf_counter() - start
            log = self._run(command, options)
            seconds = time.perf_counter() - start - load_seconds
            if log is None:
                return self.result(form, Status.INTERRUPTED, None, seconds=seconds)
            header, values = _read_solution(folder / "solution.sol", form.num_cols, log)
        return self._result(form, header, values, log, seconds, load_seconds)

    def interrupt(self) -> None:
        """Send SIGINT to the running cbc, once: it stops its search and still writes its best
        solution (its log says ``User ctrl-c``)."""
        child = self._child
        if child is not None and child.poll() is None and self._interrupted is not child:
            self._interrupted = child
            child.send_signal(signal.SIGINT)

    def _run(self, command: list[str], options: SolveOptions) -> list[str] | None:
        """Run cbc, streaming its log when ``verbose``; return the log's lines, or None when
        a stop asked for ended cbc before it could catch SIGINT (it had found nothing yet). A
        stoppable solve runs cbc in a session of its own, so that a Ctrl-C at the terminal
        reaches it only once, through :meth:`interrupt`; an exception here (a second Ctrl-C)
        kills it. A thread watches ``SolveOptions.stop`` and interrupts cbc once it is set, so
        that a stop asked for from another thread (no signal handler there) stops it too."""
        lines = []
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=options.stop is not None,
        ) as process:
            self._child = process
            if options.stop is not None:
                threading.Thread(target=self._watch, args=(options.stop,), daemon=True).start()
            try:
                for line in process.stdout:
                    lines.append(line.rstrip("\n"))
                    if options.verbose:
                        sys.stdout.write(line)
            except BaseException:
                process.kill()
                raise
            finally:
                self._child = None
        if process.returncode == -signal.SIGINT and stop_requested(options):
            return None
        if process.returncode != 0:
            raise SolverError(f"cbc exited with status {process.returncode}:\n" + _tail(lines))
        _check_understood(lines)
        return lines

    def _watch(self, stop: threading.Event) -> None:
        """Interrupt the cbc running now once ``stop`` is set (returns when cbc ends)."""
        child = self._child
        while child is not None and child.poll() is None:
            if stop.wait(WATCH_SECONDS):
                self.interrupt()
                return

    def _result(
        self,
        form: StandardForm,
        header: str,
        values: np.ndarray,
        log: list[str],
        seconds: float,
        load_seconds: float,
    ) -> SolveResult:
        status, has_solution = _status(header, log)
        nodes = _log_number(log, "Enumerated nodes") if form.integer.any() else None
        return self.result(
            form,
            status,
            values if has_solution else None,
            seconds=seconds,
            dual_bound=_dual_bound(form, log),
            nodes=None if nodes is None else int(nodes),
            load_seconds=load_seconds,
        )


def _as_minimisation(form: StandardForm) -> StandardForm:
    if not form.maximize:
        return form
    return dataclasses.replace(form, c=-form.c, c0=-form.c0, q_coef=-form.q_coef, maximize=False)


def _write_mipstart(start: np.ndarray, path: Path) -> Path:
    """CBC's solution-file layout (index, name, value), read back by ``-mipstart``."""
    lines = (f"{j} x{j} {value!r}\n" for j, value in enumerate(start.tolist()))
    path.write_text("".join(lines))
    return path


def _command(
    executable: str, folder: Path, options: SolveOptions, mipstart: Path | None
) -> list[str]:
    command = [executable, str(folder / "model.mps"), "-log", "1"]
    command += ["-ratioGap", repr(float(options.mip_gap))]
    if options.time_limit is not None:
        command += ["-timeMode", "elapsed", "-sec", repr(float(options.time_limit))]
    if options.threads is not None:
        command += ["-threads", str(int(options.threads))]
    if options.seed is not None:
        command += ["-randomSeed", str(int(options.seed))]
    if not options.heuristics:
        command += ["-heuristicsOnOff", "off"]
    if options.careful:
        tol = repr(CAREFUL_TOLERANCE)
        command += ["-preprocess", "off", "-integerTolerance", tol, "-primalTolerance", tol]
    for key, value in options.solver_options.items():
        command += [f"-{key}", str(value)]
    if mipstart is not None:
        command += ["-mipstart", str(mipstart)]
    return command + ["-solve", "-solution", str(folder / "solution.sol")]


def _check_understood(log: list[str]) -> None:
    """CBC skips words it does not know and goes on; a misspelt option must not pass unseen."""
    unknown = [line.split()[3] for line in log if line.startswith("No match for ")]
    if unknown:
        raise InvalidInputError(
            f"cbc did not understand {', '.join(unknown)}; check the solver_options names "
            "against `cbc -?`"
        )


def _tail(log: list[str]) -> str:
    return "\n".join(log[-_LOG_TAIL_LINES:])


def _read_solution(path: Path, num_cols: int, log: list[str]) -> tuple[str, np.ndarray]:
    """The status line and the column values (columns cbc leaves out are zero)."""
    if not path.exists():
        raise SolverError("cbc wrote no solution file; the end of its log:\n" + _tail(log))
    header, *rows = path.read_text().splitlines()
    values = np.zeros(num_cols)
    for row in rows:
        fields = row.replace("**", " ").split()
        if len(fields) >= 3 and fields[1].startswith("x"):
            values[int(fields[1][1:])] = float(fields[2])
    return header, values


def _status(header: str, log: list[str]) -> tuple[Status, bool]:
    """The status of a solution-file header, and whether its values are a solution. CBC 2.10
    writes "Stopped on iterations" after a Ctrl-C; its log says "Result - User ctrl-c"."""
    if header.startswith("Optimal"):
        return Status.OPTIMAL, True
    if header.startswith("Stopped on"):
        interrupted = any(line.startswith("Result - User ctrl-c") for line in log)
        stopped = Status.INTERRUPTED if interrupted else Status.TIME_LIMIT
        return stopped, "no integer solution" not in header
    if "infeasible" in header.lower():
        return Status.INFEASIBLE, False
    if "unbounded" in header.lower():
        return Status.UNBOUNDED, False
    return Status.ERROR, False


def _log_number(log: list[str], label: str) -> float | None:
    text = _log_text(log, label)
    return None if text is None else float(text)


def _log_text(log: list[str], label: str) -> str | None:
    """The last number CBC logged after ``label:``, as printed."""
    pattern = re.compile(rf"^{label}:\s+(\S+)")
    for line in reversed(log):
        match = pattern.match(line.strip())
        if match:
            return match.group(1)
    return None


def _dual_bound(form: StandardForm, log: list[str]) -> float | None:
    """The lower bound of the minimisation that CBC logs (when it stops short of proving
    optimality, or proves it within the gap), in the model's own sense; None when it logs
    none. CBC prints it to four significant digits ("Lower bound: 1.119" for 1.11891): the
    printed number lowered by its rounding error (:func:`rounded_down`) is a valid bound, the
    printed one may not be."""
    text = _log_text(log, "Lower bound")
    if text is None:
        return None
    bound = rounded_down(text)
    return -bound if form.maximize else bound


LOGGED_DIGITS = 4
"""Significant digits of the bound in CBC's log (trailing zeros dropped, as ``%.4g`` does)."""


def rounded_down(text: str) -> float:
    """The least number that the logged decimal ``text`` can stand for: lowered by half a unit
    of its :data:`LOGGED_DIGITS`-th significant digit (or of its last digit, where it prints
    more); a printed 0 is exact."""
    number = Decimal(text)
    if not number.is_finite() or number.is_zero():
        return float(number)
    unit = min(number.adjusted() - LOGGED_DIGITS + 1, number.as_tuple().exponent)
    return float(number - Decimal(5).scaleb(unit - 1))
