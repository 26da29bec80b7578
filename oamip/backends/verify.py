"""Check a solver's answer against the model itself: objective, rows, bounds, integrality.

Every comparison is relative, in the spirit of SCIP's: ``a <= b`` holds when
``(a - b) / scale <= tolerance`` with ``scale = max(1, |a|, |b|)`` for bounds and, for a row,
also the sum of its terms' sizes ``sum_j |a_ij x_j|``. The last is the size the rounding of the
solution's values is measured against: CBC writes values to 8 significant digits, which leaves
an equality row whose terms cancel (``-18.283391 + 12.030335 + ...``) off by about 1e-6 in
absolute terms, 3e-8 of its terms' size; a check relative to the row's right-hand side alone
would call that answer wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from oamip.backends.standard_form import StandardForm

FEASIBILITY_TOLERANCE = 1e-6
"""Rows and bounds: the default primal feasibility tolerance of HiGHS, SCIP, CBC and Gurobi."""
INTEGRALITY_TOLERANCE = 1e-5
"""Integer columns: Gurobi's default IntFeasTol, the loosest default of the four backends."""
OBJECTIVE_TOLERANCE = 1e-6
"""The objective a solver reports against the objective recomputed from its solution."""


@dataclass
class Check:
    """The verdict on one solution: the objective recomputed from it, the worst relative
    violation of a row, of a bound and of integrality, and what is wrong (empty: nothing)."""

    objective: float
    row_violation: float
    bound_violation: float
    integrality_violation: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def relative_excess(value: np.ndarray, limit: np.ndarray, size: np.ndarray | float = 0.0):
    """How far ``value`` exceeds ``limit``, relative to ``max(1, |value|, |limit|, size)`` (0
    where it does not; infinite limits never are exceeded)."""
    value, limit = np.asarray(value, dtype=float), np.asarray(limit, dtype=float)
    finite = np.isfinite(limit)
    safe = np.where(finite, limit, 0.0)
    scale = np.maximum(np.maximum(1.0, size), np.maximum(np.abs(value), np.abs(safe)))
    return np.where(finite, np.maximum(value - safe, 0.0) / scale, 0.0)


def check_solution(
    form: StandardForm,
    x: np.ndarray,
    claimed_objective: float | None = None,
    row_names: list[str] | None = None,
) -> Check:
    """Check ``x`` against every row, bound and integrality of ``form``, and the objective the
    solver claimed (if given) against the one recomputed from ``x``."""
    x = np.asarray(x, dtype=float)
    if x.shape != (form.num_cols,) or not np.all(np.isfinite(x)):
        objective = float("nan")
        return Check(objective, np.inf, np.inf, np.inf, ["the solution is not a finite vector"])
    activity = form.A @ x
    size = abs(form.A) @ np.abs(x)
    rows = np.maximum(
        relative_excess(activity, form.row_upper, size),
        relative_excess(-activity, -form.row_lower, size),
    )
    bounds = np.maximum(relative_excess(x, form.col_upper), relative_excess(-x, -form.col_lower))
    fraction = np.where(form.integer, np.abs(x - np.round(x)), 0.0)
    objective = form.objective_value(x)
    check = Check(objective, _top(rows), _top(bounds), _top(fraction))
    names = row_names or [f"row {i}" for i in range(form.A.shape[0])]
    columns = [str(v) for v in form.variables]
    if check.row_violation > FEASIBILITY_TOLERANCE:
        i = int(np.argmax(rows))
        check.problems.append(f"row {names[i]} violated by {rows[i]:.3g} (relative)")
    if check.bound_violation > FEASIBILITY_TOLERANCE:
        j = int(np.argmax(bounds))
        check.problems.append(f"bound of {columns[j]} violated by {bounds[j]:.3g}")
    if check.integrality_violation > INTEGRALITY_TOLERANCE:
        j = int(np.argmax(fraction))
        check.problems.append(f"integer {columns[j]} = {float(x[j])!r} is fractional")
    if claimed_objective is not None:
        gap = abs(claimed_objective - objective) / max(1.0, abs(objective))
        if gap > OBJECTIVE_TOLERANCE:
            check.problems.append(
                f"claimed objective {claimed_objective!r} but the solution's is {objective!r}"
            )
    return check


def _top(values: np.ndarray) -> float:
    return float(values.max()) if len(values) else 0.0
