"""Every installed backend agrees on small models, refuses what it cannot solve, and exports."""

from __future__ import annotations

import itertools
import shutil
from dataclasses import replace

import highspy
import numpy as np
import pyomo.environ as pyo
import pytest
import scipy.optimize
import scipy.sparse as sp
from pyomo.core.base.matrix_constraint import MatrixConstraint

import oamip
from oamip import backends
from oamip.backends import Backend, SolveOptions, Status, compile_model, write_lp, write_mps
from oamip.backends import cbc as cbc_module
from oamip.backends import export as export_module
from oamip.backends.highs import HighsBackend
from oamip.errors import (
    BackendUnavailableError,
    CapabilityError,
    InvalidInputError,
    SolverError,
)

INSTALLED = backends.available()
TOLERANCE = 1e-5


def lp_model():
    """max 3x + 2y, x + y <= 4, x + 3y <= 6, x <= 3: optimum 11 at (3, 1)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 3))
    m.y = pyo.Var(bounds=(0, None))
    m.a = pyo.Constraint(expr=m.x + m.y <= 4)
    m.b = pyo.Constraint(expr=m.x + 3 * m.y <= 6)
    m.obj = pyo.Objective(expr=3 * m.x + 2 * m.y, sense=pyo.maximize)
    return m, 11.0


def milp_model():
    """min 3 - 5x - 4y over integers, 6x + 4y <= 24, x + 2y <= 6: optimum 3 - 20 at (4, 0)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(domain=pyo.NonNegativeIntegers)
    m.y = pyo.Var(domain=pyo.NonNegativeIntegers)
    m.a = pyo.Constraint(expr=6 * m.x + 4 * m.y <= 24)
    m.b = pyo.Constraint(expr=m.x + 2 * m.y <= 6)
    m.obj = pyo.Objective(expr=3 - 5 * m.x - 4 * m.y)
    return m, -17.0


KNAPSACK_VALUES = [10, 13, 7, 8, 15, 4, 9, 11, 6, 12, 5, 14]
KNAPSACK_WEIGHTS = [5, 7, 4, 5, 8, 2, 5, 6, 3, 7, 3, 8]
KNAPSACK_CAPACITY = 30


def knapsack_optimum() -> float:
    best = 0
    for pick in itertools.product((0, 1), repeat=len(KNAPSACK_VALUES)):
        if np.dot(pick, KNAPSACK_WEIGHTS) <= KNAPSACK_CAPACITY:
            best = max(best, int(np.dot(pick, KNAPSACK_VALUES)))
    return float(best)


def knapsack_model():
    m = pyo.ConcreteModel()
    items = range(len(KNAPSACK_VALUES))
    m.x = pyo.Var(items, domain=pyo.Binary)
    weight = sum(w * m.x[i] for i, w in zip(items, KNAPSACK_WEIGHTS, strict=True))
    m.cap = pyo.Constraint(expr=weight <= KNAPSACK_CAPACITY)
    value = sum(v * m.x[i] for i, v in zip(items, KNAPSACK_VALUES, strict=True))
    m.obj = pyo.Objective(expr=value, sense=pyo.maximize)
    return m, knapsack_optimum()


def matrix_block_model():
    """A MILP whose rows live in a MatrixConstraint inside a block (ranged, <=, >=, =)."""
    rng = np.random.default_rng(7)
    n, rows = 8, 6
    A = sp.random(rows, n, density=0.6, random_state=rng, format="csr")
    A.data = np.round(A.data * 10) + 1
    lower = np.array([1.0, -np.inf, 2.0, 3.0, -np.inf, 0.0])
    upper = np.array([20.0, 15.0, np.inf, 3.0, 12.0, 9.0])
    cost = np.round(rng.uniform(-5, 5, n), 1)
    integer = np.arange(n) % 2 == 0
    m = pyo.ConcreteModel()
    m.x = pyo.Var(range(n), bounds=(0, 6))
    for j in np.flatnonzero(integer).tolist():
        m.x[j].domain = pyo.Integers
    m.block = pyo.Block()
    m.block.rows = MatrixConstraint(
        A.data.tolist(),
        A.indices.tolist(),
        A.indptr.tolist(),
        [None if np.isinf(v) else float(v) for v in lower],
        [None if np.isinf(v) else float(v) for v in upper],
        [m.x[j] for j in range(n)],
    )
    m.obj = pyo.Objective(expr=sum(float(c) * m.x[j] for j, c in enumerate(cost)))
    dense = A.toarray()
    reference = scipy.optimize.milp(
        cost,
        constraints=scipy.optimize.LinearConstraint(dense, lower, upper),
        integrality=integer.astype(int),
        bounds=scipy.optimize.Bounds(0, 6),
    )
    assert reference.success
    return m, float(reference.fun)


def infeasible_model():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(domain=pyo.NonNegativeIntegers)
    m.y = pyo.Var(bounds=(0, None))
    m.a = pyo.Constraint(expr=m.x + m.y >= 5)
    m.b = pyo.Constraint(expr=m.x + m.y <= 3)
    m.obj = pyo.Objective(expr=m.x + m.y)
    return m, None


def unbounded_model():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, None))
    m.y = pyo.Var(bounds=(0, None))
    m.a = pyo.Constraint(expr=m.x - m.y <= 1)
    m.obj = pyo.Objective(expr=m.x + m.y, sense=pyo.maximize)
    return m, None


def convex_qp_model():
    """min x^2 + y^2 + xy - 3x with x + y = 2: optimum -2.25 at (2.5, -0.5)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var()
    m.y = pyo.Var()
    m.a = pyo.Constraint(expr=m.x + m.y == 2)
    m.obj = pyo.Objective(expr=m.x**2 + m.y**2 + m.x * m.y - 3 * m.x)
    return m, -2.25


def miqp_model():
    """min (x - 2.5)^2 + (y - 1.2)^2 over integers with x + y <= 3: optimum 0.29 at (2, 1)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(domain=pyo.Integers, bounds=(0, 5))
    m.y = pyo.Var(domain=pyo.Integers, bounds=(0, 5))
    m.a = pyo.Constraint(expr=m.x + m.y <= 3)
    m.obj = pyo.Objective(expr=(m.x - 2.5) ** 2 + (m.y - 1.2) ** 2)
    return m, 0.29


def qcp_model():
    """max x + y with x^2 + y^2 <= 2: optimum 2 at (1, 1)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var()
    m.y = pyo.Var()
    m.disc = pyo.Constraint(expr=m.x**2 + m.y**2 <= 2)
    m.obj = pyo.Objective(expr=m.x + m.y, sense=pyo.maximize)
    return m, 2.0


OPTIMAL_MODELS = {
    "lp": lp_model,
    "milp": milp_model,
    "knapsack": knapsack_model,
    "matrix_block": matrix_block_model,
    "convex_qp": convex_qp_model,
    "miqp": miqp_model,
    "qcp": qcp_model,
}


def can_solve(name: str, build) -> bool:
    try:
        backends.get(name).check(compile_model(build()[0]))
    except CapabilityError:
        return False
    return True


SOLVABLE = [
    pytest.param(backend, build, id=f"{model}-{backend}")
    for model, build in OPTIMAL_MODELS.items()
    for backend in INSTALLED
    if can_solve(backend, build)
]
REFUSED = [
    pytest.param(backend, build, id=f"{model}-{backend}")
    for model, build in OPTIMAL_MODELS.items()
    for backend in INSTALLED
    if not can_solve(backend, build)
]


@pytest.mark.parametrize("backend, build", SOLVABLE)
def test_every_backend_finds_the_known_optimum(backend, build):
    model, expected = build()
    result = backends.get(backend).solve(model)
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(expected, abs=TOLERANCE, rel=TOLERANCE)
    assert pyo.value(model.obj) == pytest.approx(expected, abs=TOLERANCE, rel=TOLERANCE)
    assert result.bound == pytest.approx(expected, abs=1e-3, rel=1e-3)


@pytest.mark.parametrize("backend", INSTALLED)
def test_infeasible_model_is_reported_without_a_solution(backend):
    model, _ = infeasible_model()
    result = backends.get(backend).solve(model)
    assert result.status == Status.INFEASIBLE
    assert not result.has_solution


@pytest.mark.parametrize("backend", INSTALLED)
def test_unbounded_model_is_reported_as_unbounded(backend):
    model, _ = unbounded_model()
    result = backends.get(backend).solve(model)
    assert result.status == Status.UNBOUNDED


def test_every_registered_backend_declares_an_install_command():
    for name in backends.known():
        assert backends._REGISTRY[name].install_hint


@pytest.mark.parametrize("backend, build", REFUSED)
def test_backend_refuses_a_model_it_cannot_solve_before_starting(backend, build, monkeypatch):
    model, _ = build()
    chosen = backends.get(backend)

    def must_not_start(*args, **kwargs):
        raise AssertionError("the solver was started")

    monkeypatch.setattr(chosen, "solve_form", must_not_start)
    with pytest.raises(CapabilityError, match=backend):
        chosen.solve(model)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(BackendUnavailableError) as info:
        backends.get("no-such-solver")
    assert len(backends.known()) >= 4
    for name in backends.known():
        assert f"{name}," in str(info.value) or f"{name} (" in str(info.value)


@pytest.mark.parametrize("backend", INSTALLED)
def test_result_carries_the_backend_name(backend):
    assert backends.get(backend).solve(lp_model()[0]).backend == backend


def test_missing_cbc_executable_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "cbc" not in backends.available()
    with pytest.raises(BackendUnavailableError, match="apt-get install coinor-cbc"):
        backends.get("cbc")
    with pytest.raises(BackendUnavailableError, match="apt-get install coinor-cbc"):
        cbc_module.CbcBackend().solve(lp_model()[0])


class MissingModule(Backend):
    name = "missing-module"
    install_hint = "pip install oamip-missing"
    python_module = "oamip_no_such_module"

    def solve_form(self, form, options, warm_start):
        raise AssertionError("never reached")


class MissingExecutable(MissingModule):
    name = "missing-executable"
    install_hint = "apt-get install oamip-missing"
    executable = "oamip-no-such-solver"


class MissingSubmodule(MissingModule):
    python_module = "oamip_no_such_module.solver"


def test_the_shared_import_guards_name_the_backend_and_the_install_command():
    assert not MissingModule.is_installed() and not MissingExecutable.is_installed()
    assert not MissingSubmodule.is_installed()
    with pytest.raises(
        BackendUnavailableError,
        match="backend 'missing-module' needs the oamip_no_such_module package: pip install",
    ):
        MissingModule.import_solver()
    with pytest.raises(
        BackendUnavailableError,
        match="'missing-executable' needs the oamip-no-such-solver executable .* apt-get",
    ):
        MissingExecutable.executable_path()


def test_a_backend_whose_install_check_fails_is_left_out_with_a_warning(monkeypatch):
    class Faulty(MissingModule):
        name = "faulty"

        @classmethod
        def is_installed(cls) -> bool:
            raise RuntimeError("licence server down")

    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    backends.register(Faulty)
    with pytest.warns(RuntimeWarning, match="'faulty' .*licence server down"):
        names = backends.available()
    assert "faulty" not in names and "highs" in names


def test_register_takes_only_named_backend_classes():
    for wrong in (HighsBackend(), object, type("Nameless", (MissingModule,), {"name": ""})):
        with pytest.raises(InvalidInputError, match="register"):
            backends.register(wrong)


def test_start_values_are_clipped_to_the_bounds_with_integers_rounded():
    m = pyo.ConcreteModel()
    m.i = pyo.Var(domain=pyo.Integers, bounds=(0, 3), initialize=3.7)
    m.j = pyo.Var(domain=pyo.Integers, bounds=(-5, 5), initialize=1.2)
    m.y = pyo.Var(bounds=(0, 1), initialize=-0.5)
    m.z = pyo.Var(bounds=(0, 1), initialize=0.25)
    m.c = pyo.Constraint(expr=m.i + m.j + m.y + m.z >= 0)
    m.obj = pyo.Objective(expr=m.i)
    form = compile_model(m)
    values = dict(zip([v.name for v in form.variables], Backend.start_values(form).tolist()))
    assert values == {"i": 3.0, "j": 1.0, "y": 0.0, "z": 0.25}
    m.z.set_value(None)
    assert Backend.start_values(form) is None and not Backend.has_start(form)


@pytest.mark.parametrize(
    "integer, status, dual, expected",
    [
        (False, Status.OPTIMAL, None, 7.0),
        (False, Status.OPTIMAL, 6.0, 7.0),
        (False, Status.TIME_LIMIT, 6.0, None),
        (True, Status.OPTIMAL, 6.5, 6.5),
        (True, Status.TIME_LIMIT, 6.5, 6.5),
        (True, Status.OPTIMAL, None, 7.0),
        (True, Status.TIME_LIMIT, None, None),
        (True, Status.OPTIMAL, 1e20, 7.0),
        (True, Status.TIME_LIMIT, -np.inf, None),
        (True, Status.INFEASIBLE, 6.5, None),
        (True, Status.ERROR, 6.5, None),
    ],
)
def test_one_bound_rule_for_every_backend(integer, status, dual, expected):
    form = compile_model(milp_model()[0] if integer else lp_model()[0])
    assert Backend.bound_for(form, status, 7.0, dual) == expected


def market_split(seed: int = 3, rows: int = 4, cols: int = 36):
    """Hard for branch and bound; a planted 0/1 point makes the optimum 0 (no slack)."""
    rng = np.random.default_rng(seed)
    A = rng.integers(0, 100, size=(rows, cols))
    planted = rng.integers(0, 2, size=cols)
    rhs = A @ planted
    m = pyo.ConcreteModel()
    m.x = pyo.Var(range(cols), domain=pyo.Binary)
    m.over = pyo.Var(range(rows), bounds=(0, None))
    m.under = pyo.Var(range(rows), bounds=(0, None))
    m.rows = pyo.Constraint(
        range(rows),
        rule=lambda m, i: (
            sum(int(A[i, j]) * m.x[j] for j in range(cols)) + m.over[i] - m.under[i] == int(rhs[i])
        ),
    )
    m.obj = pyo.Objective(expr=sum(m.over[i] + m.under[i] for i in range(rows)))
    return m, planted


@pytest.mark.parametrize("backend", INSTALLED)
def test_time_limit_stops_with_a_solution(backend):
    model, _ = market_split()
    options = SolveOptions(time_limit=0.5, threads=1, seed=1)
    result = backends.get(backend).solve(model, options)
    assert result.status == Status.TIME_LIMIT
    assert result.has_solution
    assert result.objective > 0
    assert result.seconds < 3


def planted_start(model, planted) -> None:
    for j, value in enumerate(planted.tolist()):
        model.x[j].set_value(value)
    for var in (*model.over.values(), *model.under.values()):
        var.set_value(0)


@pytest.mark.parametrize("backend", INSTALLED)
def test_warm_start_is_used_exactly_when_the_backend_takes_one(backend):
    model, planted = market_split()
    planted_start(model, planted)
    options = SolveOptions(time_limit=2, threads=1, seed=1)
    chosen = backends.get(backend)
    result = chosen.solve(model, options, warm_start=True)
    assert result.warm_start_used == chosen.capabilities.warm_start
    if chosen.capabilities.warm_start:
        assert result.status == Status.OPTIMAL
        assert result.objective == pytest.approx(0.0, abs=TOLERANCE)


@pytest.mark.parametrize("backend", INSTALLED)
def test_no_start_is_used_unless_asked_for_and_complete(backend):
    model, planted = market_split()
    planted_start(model, planted)
    options = SolveOptions(time_limit=0.2, threads=1, seed=1)
    assert not backends.get(backend).solve(model, options).warm_start_used
    model, planted = market_split()
    planted_start(model, planted)
    model.over[0].set_value(None)
    assert not backends.get(backend).solve(model, options, warm_start=True).warm_start_used


class NoStartHighs(HighsBackend):
    """HiGHS declaring that it takes no start: the base must not hand it one."""

    name = "highs-without-start"
    capabilities = replace(HighsBackend.capabilities, warm_start=False)


def test_a_backend_without_warm_start_is_never_handed_the_start(monkeypatch):
    model, planted = market_split()
    planted_start(model, planted)
    chosen = NoStartHighs()
    asked = []
    solve_form = chosen.solve_form

    def spy(form, options, warm_start):
        asked.append(warm_start)
        return solve_form(form, options, warm_start)

    monkeypatch.setattr(chosen, "solve_form", spy)
    monkeypatch.setattr(chosen, "start_values", lambda form: pytest.fail("start read"))
    result = chosen.solve(model, SolveOptions(time_limit=0.2, threads=1), warm_start=True)
    assert asked == [False]
    assert not result.warm_start_used
    assert result.backend == "highs-without-start"


def nonlinear_constraint_model():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 2))
    m.curve = pyo.Constraint(expr=pyo.exp(m.x) <= 3)
    m.obj = pyo.Objective(expr=m.x, sense=pyo.maximize)
    return m


def nonlinear_objective_model():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 2))
    m.obj = pyo.Objective(expr=pyo.sin(m.x))
    return m


@pytest.mark.parametrize(
    "build, where",
    [(nonlinear_constraint_model, "constraint 'curve'"), (nonlinear_objective_model, "obj")],
    ids=["constraint", "objective"],
)
@pytest.mark.parametrize("backend", INSTALLED)
def test_nonlinear_model_is_refused_before_the_solver_starts(backend, build, where, monkeypatch):
    chosen = backends.get(backend)
    monkeypatch.setattr(chosen, "solve_form", lambda *a: pytest.fail("the solver was started"))
    with pytest.raises(CapabilityError, match="needs nonlinear") as info:
        chosen.solve(build())
    assert backend in str(info.value) and where in str(info.value)


def test_a_backend_declaring_nonlinear_passes_the_check():
    class Nonlinear(HighsBackend):
        capabilities = replace(HighsBackend.capabilities, nonlinear=True)

    form = compile_model(nonlinear_constraint_model())
    assert form.nonlinear == ["constraint 'curve'"]
    assert form.num_rows == 0  # left out of the matrices, never solved as if absent
    Nonlinear().check(form)
    with pytest.raises(CapabilityError, match="nonlinear"):
        HighsBackend().check(form)


@pytest.mark.parametrize("writer", [write_mps, write_lp], ids=["mps", "lp"])
def test_nonlinear_model_is_not_exported(writer, tmp_path):
    with pytest.raises(CapabilityError, match="constraint 'curve'"):
        writer(nonlinear_constraint_model(), tmp_path / "model.txt")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("verbose", [True, False])
@pytest.mark.parametrize("backend", INSTALLED)
def test_common_options_are_accepted_and_verbose_streams_the_log(backend, verbose, capfd):
    model, expected = knapsack_model()
    options = SolveOptions(time_limit=10, mip_gap=0.0, threads=1, seed=5, verbose=verbose)
    result = backends.get(backend).solve(model, options)
    assert result.objective == pytest.approx(expected)
    assert result.nodes is not None
    assert result.seconds >= 0
    logged = capfd.readouterr().out
    assert bool(logged.strip()) == verbose


@pytest.mark.parametrize("backend", INSTALLED)
def test_heuristics_switched_off_leave_the_optimum(backend):
    model, expected = knapsack_model()
    options = SolveOptions(mip_gap=0.0, threads=1, heuristics=False)
    result = backends.get(backend).solve(model, options)
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(expected)


@pytest.mark.parametrize("backend", INSTALLED)
def test_a_careful_solve_leaves_the_optimum_and_reports_the_coefficient_range(backend, capfd):
    model, expected = knapsack_model()
    result = backends.get(backend).solve(model, SolveOptions(mip_gap=0.0, careful=True))
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(expected)
    low, high = result.coefficient_range
    assert 0 < low <= high
    assert "GMP" not in capfd.readouterr().out


def test_highs_careful_turns_presolve_off_and_tightens_the_tolerances():
    from oamip.backends.base import CAREFUL_TOLERANCE
    from oamip.backends.highs import _set_options

    h = highspy.Highs()
    _set_options(highspy, h, SolveOptions(careful=True))
    assert h.getOptionValue("presolve")[1] == "off"
    assert h.getOptionValue("mip_feasibility_tolerance")[1] == CAREFUL_TOLERANCE


def test_highs_heuristics_off_sets_every_switch_and_solver_options_come_last():
    from oamip.backends.highs import HEURISTICS_OFF, _set_options

    h = highspy.Highs()
    options = SolveOptions(heuristics=False, solver_options={"mip_heuristic_run_rins": True})
    _set_options(highspy, h, options)
    for key, value in HEURISTICS_OFF.items():
        expected = True if key == "mip_heuristic_run_rins" else value
        assert h.getOptionValue(key)[1] == expected
    default = highspy.Highs()
    _set_options(highspy, default, SolveOptions())
    assert default.getOptionValue("mip_heuristic_run_rens")[1] is True


@pytest.mark.parametrize(
    "time_limit, nonzeros, given, expected",
    [
        (20.0, 1_000_001, {}, "off"),
        (20.0, 1_000_000, {}, "choose"),
        (None, 50_000_000, {}, "choose"),
        (20.0, 50_000_000, {"presolve": "on"}, "on"),
    ],
)
def test_highs_presolve_is_off_for_a_large_mip_under_a_time_limit(
    time_limit, nonzeros, given, expected
):
    """HiGHS's presolve does not check the time limit: a MIP over PRESOLVE_MAX_NONZEROS under a
    limit goes without it; without a limit, or below it, HiGHS chooses; solver_options win."""
    from oamip.backends.highs import PRESOLVE_MAX_NONZEROS, _set_options

    assert PRESOLVE_MAX_NONZEROS == 1_000_000
    h = highspy.Highs()
    options = SolveOptions(time_limit=time_limit, solver_options=given)
    _set_options(highspy, h, options, nonzeros)
    assert h.getOptionValue("presolve")[1] == expected


@pytest.mark.parametrize("cap, expected", [(0, "off"), (10**6, "choose")])
def test_a_solve_counts_the_mips_nonzeros_and_keeps_its_optimum(monkeypatch, cap, expected):
    """Through ``solve``: the knapsack (12 nonzeros) goes without presolve once the cap is under
    its size, and the optimum is the enumerated one either way; an LP never loses it."""
    from oamip.backends import highs as highs_module

    made = []
    make = highs_module.new_highs

    def recorded(module, verbose):
        made.append(make(module, verbose))
        return made[-1]

    monkeypatch.setattr(highs_module, "PRESOLVE_MAX_NONZEROS", cap)
    monkeypatch.setattr(highs_module, "new_highs", recorded)
    model, optimum = knapsack_model()
    result = backends.get("highs").solve(model, SolveOptions(time_limit=30.0))
    assert made[-1].getOptionValue("presolve")[1] == expected
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(optimum)
    backends.get("highs").solve(lp_model()[0], SolveOptions(time_limit=30.0))
    assert made[-1].getOptionValue("presolve")[1] == "choose"


UNKNOWN_OPTION = "oamip_no_such_option"


@pytest.mark.parametrize("backend", INSTALLED)
def test_an_unknown_solver_option_reaches_the_solver_and_is_refused(backend):
    options = SolveOptions(solver_options={UNKNOWN_OPTION: 1})
    with pytest.raises(InvalidInputError, match=UNKNOWN_OPTION):
        backends.get(backend).solve(milp_model()[0], options)


def test_highs_refuses_a_bad_option_value():
    options = SolveOptions(solver_options={"presolve": "sometimes"})
    with pytest.raises(InvalidInputError, match="presolve='sometimes'"):
        backends.get("highs").solve(milp_model()[0], options)


@pytest.mark.parametrize(
    "backend, options",
    [
        ("highs", {"presolve": "off"}),
        ("scip", {"presolving/maxrounds": 0}),
        ("gurobi", {"Presolve": 0}),
        ("cbc", {"cuts": "off"}),
    ],
)
def test_a_builtin_backend_accepts_its_own_solver_option(backend, options):
    """Backend-specific (the option names are the solver's own); the generic tests above
    need no such list."""
    if backend not in INSTALLED:
        pytest.skip(f"{backend} is not installed")
    model, expected = milp_model()
    result = backends.get(backend).solve(model, SolveOptions(solver_options=options))
    assert result.objective == pytest.approx(expected)


EXPORTABLE = {
    "lp": lp_model,
    "milp": milp_model,
    "knapsack": knapsack_model,
    "matrix_block": matrix_block_model,
    "convex_qp": convex_qp_model,
}


def highs_optimum(path) -> float:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.readModel(str(path))
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return h.getInfo().objective_function_value


@pytest.mark.parametrize(
    "writer, suffix", [(write_mps, "mps"), (write_lp, "lp")], ids=["mps", "lp"]
)
@pytest.mark.parametrize("build", EXPORTABLE.values(), ids=EXPORTABLE.keys())
def test_exported_file_reread_by_highs_has_the_same_optimum(build, writer, suffix, tmp_path):
    model, expected = build()
    path = writer(model, tmp_path / f"model.{suffix}")
    assert highs_optimum(path) == pytest.approx(expected, abs=TOLERANCE, rel=TOLERANCE)


@pytest.mark.skipif("scip" not in INSTALLED, reason="pyscipopt is not installed")
@pytest.mark.parametrize(
    "build, writer, suffix",
    [(miqp_model, write_mps, "mps"), (miqp_model, write_lp, "lp"), (qcp_model, write_lp, "lp")],
    ids=["miqp-mps", "miqp-lp", "qcp-lp"],
)
def test_exported_quadratic_model_reread_by_scip_has_the_same_optimum(
    build, writer, suffix, tmp_path
):
    import pyscipopt

    model, expected = build()
    scip = pyscipopt.Model()
    scip.hideOutput()
    scip.readProblem(str(writer(model, tmp_path / f"model.{suffix}")))
    scip.optimize()
    assert scip.getObjVal() == pytest.approx(expected, abs=TOLERANCE, rel=TOLERANCE)


def test_mps_writer_refuses_quadratic_constraints(tmp_path):
    with pytest.raises(CapabilityError, match="write_lp"):
        write_mps(qcp_model()[0], tmp_path / "qcp.mps")
    assert not list(tmp_path.iterdir())


def test_lp_writer_writes_quadratic_constraints(tmp_path):
    text = write_lp(qcp_model()[0], tmp_path / "qcp.lp").read_text()
    assert "x0^2" in text
    assert "Maximize" in text


def test_failed_export_leaves_the_previous_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "model.mps"
    path.write_text("previous")

    def broken_lines(form):
        yield "NAME half"
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "_mps_lines", broken_lines)
    with pytest.raises(RuntimeError):
        write_mps(lp_model()[0], path)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.mps"]


def large_lp(cols: int = 2500):
    m = pyo.ConcreteModel()
    m.x = pyo.Var(range(cols), bounds=(0, 1))
    m.total = pyo.Constraint(expr=sum(m.x[j] for j in range(cols)) <= 10)
    m.obj = pyo.Objective(expr=sum(m.x[j] for j in range(cols)), sense=pyo.maximize)
    return m


@pytest.mark.skipif("gurobi" not in INSTALLED, reason="gurobipy is not installed")
def test_gurobi_licence_limit_is_explained_in_plain_words():
    try:
        result = backends.get("gurobi").solve(large_lp())
    except SolverError as exc:
        message = str(exc)
    else:
        pytest.skip(f"this Gurobi licence solves 2500 variables ({result.status})")
    assert "2000 variables" in message
    assert "2500 variables and 1 constraints" in message
    assert "highs" in message and "scip" in message


def test_highs_accepts_a_new_thread_count_after_earlier_solves():
    """HiGHS keeps a global scheduler; a later solve asking for other threads must still run."""
    model = pyo.ConcreteModel()
    model.x = pyo.Var(domain=pyo.Binary)
    model.c = pyo.Constraint(expr=model.x >= 0.5)
    model.o = pyo.Objective(expr=model.x)
    highs = backends.get("highs")
    statuses = [highs.solve(model, SolveOptions(threads=t)).status for t in (None, 2, 1, None)]
    assert statuses == ["optimal"] * 4


@pytest.mark.parametrize(
    ("text", "least"),
    [
        ("1.119", 1.1185),
        ("-1.119", -1.1195),
        ("12", 11.995),
        ("1.2e+03", 1199.5),
        ("1.11891", 1.118905),
        ("0", 0.0),
    ],
)
def test_cbc_logged_bound_is_lowered_by_its_rounding(text, least):
    """CBC logs its bound to four significant digits: the bound kept is the least number the
    printed one can stand for, so it is never above the true bound."""
    assert cbc_module.rounded_down(text) == pytest.approx(least, rel=1e-12)


@pytest.mark.skipif("cbc" not in backends.available(), reason="cbc is not installed")
def test_cbc_bound_rounded_up_in_its_log_is_kept_below_the_optimum():
    """Fuzz seed 902587: CBC proves the optimum 1.11891 within its gap and logs "Lower bound:
    1.119", above the optimum; read as printed, the bound was dropped. Lowered by its
    rounding, it is kept, at or below the optimum."""
    from tests import fuzzing

    case = fuzzing.instance(902587)
    res = oamip.score_neurons(
        case.model,
        case.x,
        case.y,
        backend="cbc",
        loss=case.loss,
        lam=case.lam,
        min_keep=case.min_keep,
        scores="binary",
        time_limit=10,
    )
    best = fuzzing.optimum(case)
    assert res.objective == pytest.approx(best, rel=1e-6)
    assert res.bound is not None and res.bound <= best
    assert "lies above a known feasible objective" not in res.note
