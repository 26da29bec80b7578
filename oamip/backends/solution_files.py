"""Read the solution files that MPS solvers write: CBC's, HiGHS's and SCIP's.

Each reader returns a :class:`SolutionFile`: the solver's status, the objective it claims, the
bound it reports (HiGHS only; an optimal answer's bound is its objective) and the value of each
column it lists by name (columns left out are zero, as all three leave out zeros when asked to).
:func:`read_solution_file` tells the format from the first line:

* CBC (``-solve -solu FILE``): ``Optimal - objective value 12.5``, then
  ``INDEX NAME VALUE REDUCED_COST`` per column (``**`` marks an infeasible value);
* HiGHS (``--solution_file FILE``, the default "raw" style): ``Model status``, its status on the
  next line, then ``Objective``, ``Objective_bound`` and ``# Columns N`` followed by
  ``NAME VALUE`` lines;
* SCIP (``write solution FILE``): ``solution status: ...``, ``objective value: ...``, then
  ``NAME VALUE (obj:COST)`` lines. The Python API's ``writeBestSol`` leaves the status line
  out: such a file claims a solution, not its optimality (status ``feasible``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oamip.errors import InvalidInputError

SOLUTION_FORMATS = ("cbc", "highs", "scip")
FEASIBLE = "feasible"
"""The status of an answer that gives a solution and claims nothing more about it."""


@dataclass
class SolutionFile:
    """What a solver's solution file says: status (the values of
    :class:`oamip.backends.Status`, or ``feasible``), objective, bound, values by column name."""

    format: str
    status: str
    objective: float | None
    bound: float | None = None
    values: dict[str, float] = field(default_factory=dict)

    @property
    def has_solution(self) -> bool:
        return self.status in ("optimal", "time_limit", FEASIBLE) and self.objective is not None

    def vector(self, names: Sequence[str]) -> np.ndarray:
        """The values as a vector over the columns ``names`` (absent: 0); a name the model
        does not have is an error."""
        index = {name: j for j, name in enumerate(names)}
        unknown = [name for name in self.values if name not in index]
        if unknown:
            raise InvalidInputError(
                f"the {self.format} solution names {len(unknown)} columns the model does not "
                f"have, e.g. '{unknown[0]}': it is not a solution of this model"
            )
        x = np.zeros(len(names))
        for name, value in self.values.items():
            x[index[name]] = value
        return x


def read_solution_file(path: str | os.PathLike) -> SolutionFile:
    """The solution file ``path`` in whichever of SOLUTION_FORMATS it is written."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"solution file '{path}' does not exist")
    lines = [line.rstrip() for line in path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise InvalidInputError(f"solution file '{path}' is empty")
    first = lines[0].strip().lower()
    try:
        if first == "model status":
            return _highs(lines)
        if first.startswith(("solution status:", "objective value:")):
            return _scip(lines)
        return _cbc(lines)
    except (ValueError, IndexError) as exc:
        raise InvalidInputError(
            f"cannot read solution file '{path}' ({exc}); the formats read are "
            f"{', '.join(SOLUTION_FORMATS)} (HiGHS in its default raw style)"
        ) from None


_CBC_STATUS = (
    ("optimal", "optimal"),
    ("stopped on", "time_limit"),
    ("integer infeasible", "infeasible"),
    ("infeasible", "infeasible"),
    ("unbounded", "unbounded"),
)


def _cbc(lines: list[str]) -> SolutionFile:
    header = lines[0].strip()
    lowered = header.lower()
    status = next((mapped for word, mapped in _CBC_STATUS if lowered.startswith(word)), None)
    if status is None:
        raise ValueError(f"the first line '{header}' is no CBC status")
    objective = None
    if "objective value" in lowered and "no integer solution" not in lowered:
        objective = float(lowered.split("objective value")[1].split()[0])
    if status == "infeasible":
        objective = None
    values = {}
    for line in lines[1:]:
        fields = line.replace("**", " ").split()
        values[fields[1]] = float(fields[2])
    bound = objective if status == "optimal" else None
    return SolutionFile("cbc", status, objective, bound, values)


_HIGHS_STATUS = {
    "optimal": "optimal",
    "time limit reached": "time_limit",
    "infeasible": "infeasible",
    "unbounded": "unbounded",
    "primal infeasible or unbounded": "infeasible",
    "interrupted by user": "interrupted",
}


def _highs(lines: list[str]) -> SolutionFile:
    status = _HIGHS_STATUS.get(lines[1].strip().lower(), "error")
    keys = {}
    values: dict[str, float] = {}
    rest = iter(lines[2:])
    for line in rest:
        fields = line.split()
        if fields[0] in ("Objective", "Objective_bound"):
            keys[fields[0]] = float(fields[1])
        elif fields[:2] == ["#", "Columns"]:
            for _ in range(int(fields[2])):
                name, value = next(rest).split()
                values[name] = float(value)
    if "Objective" not in keys and status != "infeasible":
        status = status if status != "optimal" else "error"
    objective = keys.get("Objective")
    bound = keys.get("Objective_bound", objective if status == "optimal" else None)
    return SolutionFile("highs", status, objective, bound, values)


_SCIP_STATUS = (
    ("optimal solution found", "optimal"),
    ("time limit reached", "time_limit"),
    ("infeasible", "infeasible"),
    ("unbounded", "unbounded"),
    ("user interrupt", "interrupted"),
)


def _scip(lines: list[str]) -> SolutionFile:
    status = FEASIBLE
    if lines[0].lower().startswith("solution status:"):
        said = lines[0].split(":", 1)[1].strip().lower()
        status = next((mapped for word, mapped in _SCIP_STATUS if word in said), FEASIBLE)
        lines = lines[1:]
    objective = None
    values = {}
    for line in lines:
        if line.lower().startswith("objective value:"):
            objective = float(line.split(":", 1)[1])
            continue
        if line.lower().startswith("no solution"):
            continue
        fields = line.split()
        values[fields[0]] = float(fields[1])
    bound = objective if status == "optimal" else None
    return SolutionFile("scip", status, objective, bound, values)
