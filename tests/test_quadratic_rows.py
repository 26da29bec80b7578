"""Quadratic rows of every kind (equality, lower side, ranged) reach the solvers whole.

Each case's optimum changes if the solver is handed a wrong side (a ``<=`` for an equality, a
missing lower side), so a backend that drops or turns a side fails here.
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
import pytest

from oamip import backends
from oamip.backends import Status
from oamip.backends.standard_form import QuadraticRow

QUADRATIC_BACKENDS = [
    name for name in backends.available() if backends.get(name).capabilities.quadratic_constraints
]


def _row(lower: float, upper: float) -> QuadraticRow:
    empty = np.zeros(0)
    return QuadraticRow(empty, empty, np.array([0]), np.array([0]), np.ones(1), lower, upper)


@pytest.mark.parametrize(
    ("lower", "upper", "sides"),
    [
        (2.0, 2.0, [("==", 2.0)]),
        (1.0, 2.0, [("<=", 2.0), (">=", 1.0)]),
        (-np.inf, 2.0, [("<=", 2.0)]),
        (1.0, np.inf, [(">=", 1.0)]),
        (-np.inf, np.inf, []),
    ],
)
def test_sides_of_a_quadratic_row(lower, upper, sides):
    assert _row(lower, upper).sides() == sides


def _disc_model(lower: float | None, upper: float | None, sense) -> pyo.ConcreteModel:
    """Optimise x + y over x, y in [0, 5] with ``lower <= x^2 + y^2 <= upper``."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 5))
    m.y = pyo.Var(bounds=(0, 5))
    m.ring = pyo.Constraint(expr=pyo.inequality(lower, m.x**2 + m.y**2, upper))
    m.obj = pyo.Objective(expr=m.x + m.y, sense=sense)
    return m


def _equality_model(sense) -> pyo.ConcreteModel:
    """Optimise x over [0, 5] with x^2 == 4: 2 either way (a ``<=`` gives a minimum of 0,
    a ``>=`` a maximum of 5)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 5))
    m.square = pyo.Constraint(expr=m.x**2 == 4)
    m.obj = pyo.Objective(expr=m.x, sense=sense)
    return m


CASES = {
    "equality-min": (lambda: _equality_model(pyo.minimize), 2.0),
    "equality-max": (lambda: _equality_model(pyo.maximize), 2.0),
    "lower-side-min": (lambda: _disc_model(2.0, None, pyo.minimize), np.sqrt(2.0)),
    "ranged-min": (lambda: _disc_model(1.0, 2.0, pyo.minimize), 1.0),
    "ranged-max": (lambda: _disc_model(1.0, 2.0, pyo.maximize), 2.0),
}


@pytest.mark.skipif(not QUADRATIC_BACKENDS, reason="no backend with quadratic constraints")
@pytest.mark.parametrize("backend", QUADRATIC_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_quadratic_row_kinds_solve_to_their_optimum(backend, case):
    build, optimum = CASES[case]
    result = backends.get(backend).solve(build())
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(optimum, abs=1e-4)
