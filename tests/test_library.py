"""The instance library: MPS files read back, solution files of CBC, HiGHS and SCIP, answers
checked from the file, the leaderboard's arithmetic, deterministic builds, the CLI."""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
import sys

import numpy as np
import pytest

from oamip import backends
from oamip.adapters import extract
from oamip.backends import SolveOptions, compile_model, write_mps
from oamip.backends.command import CommandSolver
from oamip.backends.mps_reader import read_mps
from oamip.backends.solution_files import read_solution_file
from oamip.backends.verify import check_solution
from oamip.cli.commands import prepare
from oamip.errors import CapabilityError, InvalidInputError
from oamip.formulations.importance import ImportanceSettings, build_importance_model
from oamip.pipelines.leaderboard import (
    NO,
    WRONG,
    YES,
    Answer,
    bench_library,
    judge,
    leaderboard,
    shifted_geomean,
)
from oamip.pipelines.library import (
    LibrarySpec,
    NetworkCheck,
    build_library,
    build_specs,
    library_set,
    read_manifest,
    sha256,
)
from oamip.training.data import load_digits
from tests.nets import mlp

CBC = shutil.which("cbc")
FAST_SPECS = [
    LibrarySpec("mlp", 2, "b1", "ce", "binary"),
    LibrarySpec("mlp", 4, "c3", "hinge", "binary"),
]
"""Two instances of the small set that build and solve in seconds (an MLP on digits)."""

HAND_MPS = """NAME hand FREE
OBJSENSE
    MAX
ROWS
 N obj
 E eq
 L le
 G ge
 N spare
COLUMNS
 MARKER 'MARKER' 'INTORG'
 a obj 1.0 eq 1.0
 a le 2.0
 MARKER 'MARKER' 'INTEND'
 b obj 2.0 ge 1.0
 b spare 5.0
 c obj -1.0 eq 1.0
RHS
 RHS obj -3.0 eq 4.0
 RHS le 2.0 ge -1.0
RANGES
 RNG eq -2.0 le 3.0
BOUNDS
 BV BND a
 MI BND b
 UP BND b 4.0
 FR BND c
ENDATA
"""


def test_a_hand_written_mps_is_read_with_every_section(tmp_path):
    path = tmp_path / "hand.mps"
    path.write_text(HAND_MPS)
    model = read_mps(path)
    form = model.form
    assert form.variables == ["a", "b", "c"] and model.row_names == ["eq", "le", "ge"]
    assert form.maximize and form.c0 == 3.0 and list(form.c) == [1.0, 2.0, -1.0]
    assert form.A.toarray().tolist() == [[1, 0, 1], [2, 0, 0], [0, 1, 0]]
    assert list(form.row_lower) == [2.0, -1.0, -1.0]  # E with a negative range: [rhs + R, rhs]
    assert list(form.row_upper) == [4.0, 2.0, np.inf]
    assert list(form.col_lower) == [0.0, -np.inf, -np.inf]
    assert list(form.col_upper) == [1.0, 4.0, np.inf]
    assert list(form.integer) == [True, False, False]


def test_mps_reader_refuses_what_it_cannot_read(tmp_path):
    quadratic = tmp_path / "q.mps"
    quadratic.write_text(HAND_MPS.replace("ENDATA", "QUADOBJ\n a a 1.0\nENDATA"))
    with pytest.raises(CapabilityError, match="QUADOBJ"):
        read_mps(quadratic)
    cut = tmp_path / "cut.mps"
    cut.write_text(HAND_MPS.replace("ENDATA\n", ""))
    with pytest.raises(InvalidInputError, match="ENDATA"):
        read_mps(cut)
    unknown = tmp_path / "u.mps"
    unknown.write_text(HAND_MPS.replace(" b obj 2.0 ge 1.0", " b obj 2.0 nowhere 1.0"))
    with pytest.raises(InvalidInputError, match="line .*nowhere"):
        read_mps(unknown)


@pytest.fixture(scope="module")
def importance_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 6))
    y = np.arange(6) % 3
    network = extract(mlp(6, sizes=(6, 5, 4, 3)), x).network
    settings = ImportanceSettings(loss="hinge", scores="binary")
    return compile_model(build_importance_model(network, x, y, settings).model)


def test_written_mps_reads_back_to_the_same_matrices_and_gzip_is_deterministic(
    importance_form, tmp_path
):
    form = importance_form
    first = write_mps(form, tmp_path / "a.mps.gz")
    second = write_mps(form, tmp_path / "b.mps.gz")
    assert first.read_bytes() == second.read_bytes()
    assert gzip.decompress(first.read_bytes()).startswith(b"NAME oamip FREE")
    back = read_mps(first).form
    kept = np.isfinite(form.row_lower) | np.isfinite(form.row_upper)
    assert (form.A[kept] != back.A).nnz == 0
    for name in ("col_lower", "col_upper", "integer", "c"):
        assert np.array_equal(getattr(back, name), getattr(form, name)), name
    assert np.array_equal(back.row_lower, form.row_lower[kept])
    assert np.array_equal(back.row_upper, form.row_upper[kept])
    assert back.c0 == form.c0 and back.maximize == form.maximize


def test_check_solution_finds_each_kind_of_violation(importance_form):
    form = importance_form
    result = backends.get("highs").solve_form(form, SolveOptions(time_limit=30), False)
    x = result.solution
    assert check_solution(form, x, result.objective).ok
    j = int(np.flatnonzero(form.integer)[0])
    fractional = x.copy()
    fractional[j] = 0.5
    assert any("fractional" in p for p in check_solution(form, fractional).problems)
    beyond = x.copy()
    k = int(np.flatnonzero(np.isfinite(form.col_upper))[0])
    beyond[k] = form.col_upper[k] + 1.0
    assert any("bound" in p for p in check_solution(form, beyond).problems)
    assert any("row" in p for p in check_solution(form, np.zeros(form.num_cols)).problems)
    lied = check_solution(form, x, result.objective - 0.01)
    assert any("claimed objective" in p for p in lied.problems)


def test_solution_files_of_highs_and_scip_apis_and_of_cbc(tmp_path):
    path = tmp_path / "hand.mps"
    path.write_text(HAND_MPS)
    form = read_mps(path).form
    highspy = pytest.importorskip("highspy")
    solver = highspy.Highs()
    solver.setOptionValue("output_flag", False)
    solver.readModel(str(path))
    solver.run()
    solver.writeSolution(str(tmp_path / "highs.sol"), 0)
    found = read_solution_file(tmp_path / "highs.sol")
    assert (found.format, found.status) == ("highs", "optimal")
    x = found.vector(form.variables)
    assert check_solution(form, x, found.objective).ok
    pyscipopt = pytest.importorskip("pyscipopt")
    scip = pyscipopt.Model()
    scip.hideOutput()
    scip.readProblem(str(path))
    scip.optimize()
    scip.writeBestSol(str(tmp_path / "scip.sol"))
    written = read_solution_file(tmp_path / "scip.sol")
    assert (written.format, written.status) == ("scip", "feasible")  # the API writes no status
    assert written.objective == pytest.approx(found.objective, abs=1e-9)
    assert check_solution(form, written.vector(form.variables), written.objective).ok
    status = tmp_path / "status.sol"
    status.write_text(
        "solution status: optimal solution found\n" + (tmp_path / "scip.sol").read_text()
    )
    assert read_solution_file(status).status == "optimal"


@pytest.mark.skipif(CBC is None, reason="the cbc executable is not installed")
def test_a_cbc_command_answers_and_is_read(tmp_path):
    path = tmp_path / "hand.mps"
    path.write_text(HAND_MPS.replace("OBJSENSE\n    MAX\n", ""))
    model = read_mps(path)
    solver = CommandSolver.parse("cbc {mps} -sec {time_limit} -solve -solu {solution}")
    assert solver.name == "cbc"
    answer = solver.run(path, 10.0, tmp_path)
    found = answer.solution
    assert found is not None and (found.format, found.status) == ("cbc", "optimal")
    assert check_solution(model.form, found.vector(model.column_names), found.objective).ok
    assert found.objective == pytest.approx(
        backends.get("highs").solve_form(model.form, SolveOptions(), False).objective
    )


@pytest.mark.skipif(CBC is None, reason="the cbc executable is not installed")
def test_cbc_minimising_a_maximisation_is_caught_as_wrong(tmp_path):
    """CBC 2.10 reads OBJSENSE MAX in free MPS and minimises all the same: a real wrong answer
    that the check against a known solution catches."""
    path = tmp_path / "hand.mps"
    path.write_text(HAND_MPS)
    model = read_mps(path)
    found = CommandSolver.parse("cbc {mps} -solve -solu {solution}").run(path, 10.0, tmp_path)
    answer = Answer("hand", "cbc", found.solution.status, found.solution.objective, None, 0.1, NO)
    answer.solution = found.solution.vector(model.column_names)
    entry = type("Entry", (), {"name": "hand", "best_objective": 11.0})()
    judged = judge(entry, model, [answer])[0]
    if found.solution.objective == pytest.approx(11.0):
        pytest.skip("this cbc maximises as asked")
    assert judged.verified == WRONG and "11.0 is known" in judged.note


@pytest.mark.parametrize("binary", ["highs", "scip"])
def test_highs_and_scip_executables_when_installed(binary, tmp_path):
    if shutil.which(binary) is None:
        pytest.skip(f"no {binary} executable on this machine (the Python APIs ship none)")
    path = tmp_path / "hand.mps"
    path.write_text(HAND_MPS)
    template = {
        "highs": "highs --model_file {mps} --time_limit {time_limit} --solution_file {solution}",
        "scip": "scip -c 'read {mps} optimize write solution {solution} quit'",
    }[binary]
    found = CommandSolver.parse(template).run(path, 10.0, tmp_path).solution
    assert found is not None and found.status == "optimal"


def test_solver_commands_are_checked_before_any_run():
    with pytest.raises(InvalidInputError, match="solution"):
        CommandSolver.parse("cbc {mps} -solve")
    with pytest.raises(InvalidInputError, match="placeholders"):
        CommandSolver.parse("cbc {model} {solution}")
    with pytest.raises(InvalidInputError, match="not on the PATH"):
        CommandSolver.parse("no-such-solver-here {mps} {solution}")
    assert CommandSolver.parse("mine=cbc {mps} -solu {solution}").name == "mine"


def _answer(backend, status, seconds, verified=YES, objective=1.0, bound=None):
    return Answer("i", backend, status, objective, bound, seconds, verified)


def test_leaderboard_arithmetic_by_hand():
    answers = [
        _answer("a", "optimal", 2.0),
        _answer("a", "optimal", 8.0),
        _answer("a", "time_limit", 10.0),
        _answer("b", "optimal", 1.0, verified=WRONG),  # wrong: unsolved
        _answer("b", "optimal", 4.0),
        _answer("b", "optimal", 10.5),  # within the 1 s slack: solved, counted at 10 s
    ]
    board = {s.backend: s for s in leaderboard(answers, ["a", "b"], time_limit=10.0)}
    a, b = board["a"], board["b"]
    assert (a.solved, a.wrong, b.solved, b.wrong) == (2, 0, 2, 1)
    # a: times 2, 8 and 10 (unsolved at the limit); (12 * 18 * 20) ** (1/3) - 10
    assert a.shifted_geomean == pytest.approx(4320 ** (1 / 3) - 10)
    assert a.par2 == pytest.approx((2 + 8 + 20) / 3)
    # b: unsolved (wrong) at 10, then 4, then 10 (capped)
    assert b.shifted_geomean == pytest.approx((20 * 14 * 20) ** (1 / 3) - 10)
    assert b.par2 == pytest.approx((20 + 4 + 10) / 3)
    assert shifted_geomean([0.0, 0.0]) == pytest.approx(0.0)
    assert math.isnan(shifted_geomean([]))


def test_judge_marks_claims_that_contradict_a_known_solution(tmp_path):
    path = tmp_path / "hand.mps"
    path.write_text(HAND_MPS)
    model = read_mps(path)
    entry = type("Entry", (), {"name": "hand", "best_objective": None})()
    optimum = backends.get("highs").solve_form(model.form, SolveOptions(), False)
    good = Answer("hand", "good", "optimal", optimum.objective, None, 1.0, NO)
    good.solution = optimum.solution
    worse_x = optimum.solution.copy()
    worse_x[0], worse_x[2] = 0.0, 2.0  # a = 0, c = 2: feasible but worse (it maximises)
    worse = Answer("hand", "worse", "optimal", None, None, 1.0, NO)
    worse.solution = worse_x
    worse.objective = model.form.objective_value(worse_x)
    passing = Answer("hand", "bound", "time_limit", None, optimum.objective - 1.0, 1.0, NO)
    infeasible = Answer("hand", "inf", "infeasible", None, None, 1.0, NO)
    judged = {a.backend: a for a in judge(entry, model, [good, worse, passing, infeasible])}
    assert judged["good"].verified == YES
    assert worse.objective < optimum.objective - 0.5
    assert judged["worse"].verified == WRONG and "known" in judged["worse"].note
    assert judged["bound"].verified == WRONG and "bound" in judged["bound"].note
    assert judged["inf"].verified == WRONG and "infeasible" in judged["inf"].note


def test_the_sets_have_unique_names_and_the_standard_set_fifty():
    for name in ("small", "standard"):
        specs = library_set(name)
        assert len({s.name for s in specs}) == len(specs)
    assert len(library_set("small")) >= 5 and len(library_set("standard")) >= 50
    archs = {s.arch for s in library_set("standard")}
    assert archs == {"mlp", "lenet5", "vgg", "resnet8", "resnet20"}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lib") / "library"
    build_specs(folder, FAST_SPECS, "fast", load_digits(), reference_time_limit=30.0)
    return folder


def test_a_built_library_has_files_hashes_and_reference_results(library):
    entries = read_manifest(library)
    assert [e.name for e in entries] == [s.name for s in FAST_SPECS]
    assert entries[0].score_columns == {} and entries[0].piece_layer  # a per-layer piece
    assert len(entries[1].logit_columns) == 4 and len(entries[1].score_columns) == 2
    for entry in entries:
        assert entry.sha256 == sha256(library / entry.file)
        model = read_mps(library / entry.file)
        assert (entry.rows, entry.cols) == (model.form.A.shape[0], model.form.num_cols)
        assert entry.integers == int(model.form.integer.sum()) > 0
        assert entry.status == "optimal" and entry.best_objective == entry.best_bound
    with open(library / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["sha256"] for r in rows] == [e.sha256 for e in entries]
    assert json.loads((library / "manifest.json").read_text())["set"] == "fast"


FAKE = """import sys
open(sys.argv[2], "w").write("Optimal - objective value 0.0\\n")
"""


@pytest.mark.skipif(CBC is None, reason="the cbc executable is not installed")
def test_bench_on_a_library_ranks_two_backends_and_lists_a_planted_wrong_answer(library, tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    commands = [
        f"fake={sys.executable} {fake} {{mps}} {{solution}}",
        "cbc-cli=cbc {mps} -sec {time_limit} -solve -solu {solution}",
    ]
    bench = bench_library(library, ["highs", "cbc"], commands, time_limit=30.0)
    entries = read_manifest(library)
    assert len(bench.answers) == 4 * len(entries)
    board = {s.backend: s for s in bench.standings}
    assert board["fake"].wrong == len(entries) and board["fake"].solved == 0
    assert {a.backend for a in bench.wrong} == {"fake"}
    for name in ("highs", "cbc", "cbc-cli"):
        assert board[name].wrong == 0 and board[name].solved == len(entries), name
    for answer in bench.answers:
        if answer.backend != "fake":
            best = next(e.best_objective for e in entries if e.name == answer.instance)
            assert answer.verified == YES
            assert answer.objective == pytest.approx(best, rel=1e-4, abs=1e-6)
            whole = answer.instance.startswith("digits-mlp-c3")  # a whole network's MIP
            assert answer.network.startswith("ok") if whole else answer.network == ""


def test_bench_cli_writes_the_leaderboard_and_lists_wrong_answers(library, tmp_path, capsys):
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    out = tmp_path / "out"
    argv = ["bench", "--library", str(library), "--backends", "highs", "--time-limit", "30"]
    argv += ["--solver-command", f"fake={sys.executable} {fake} {{mps}} {{solution}}"]
    assert prepare([*argv, "--out", str(out)])() == 0
    printed = capsys.readouterr().out
    assert "WRONG" in printed and "fake" in printed
    with open(out / "leaderboard.csv") as handle:
        board = {row["backend"]: row for row in csv.DictReader(handle)}
    assert board["fake"]["wrong"] == "2" and board["highs"]["solved"] == "2"
    with open(out / "results.csv") as handle:
        header = next(csv.reader(handle))
    assert header[:7] == [
        "instance",
        "backend",
        "status",
        "objective",
        "bound",
        "seconds",
        "verified",
    ]
    assert (out / "wrong.csv").is_file() and (out / "profile.png").stat().st_size > 0


def test_bench_refuses_a_changed_file_and_a_command_without_library(library, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(library, copy)
    entry = read_manifest(copy)[0]
    (copy / entry.file).write_bytes(gzip.compress(b"NAME x\nENDATA\n", mtime=0))
    with pytest.raises(InvalidInputError, match="differ from their manifest hash"):
        bench_library(copy, ["highs"], time_limit=1.0)
    assert prepare(["bench", "--solver-command", "cbc {mps} {solution}"])() == 2


@pytest.mark.slow
def test_the_small_set_rebuilds_byte_identical(tmp_path):
    first = build_library(tmp_path / "one", "small", reference_time_limit=0)
    second = build_library(tmp_path / "two", "small", reference_time_limit=0)
    assert len(first) >= 5
    assert [e.sha256 for e in first] == [e.sha256 for e in second]
    for entry in first:
        one = (tmp_path / "one" / entry.file).read_bytes()
        assert one == (tmp_path / "two" / entry.file).read_bytes()
    assert {e.arch for e in first} == {"mlp", "lenet5"}
    assert {e.piece[0] for e in first} == {"w", "b", "c"}


def test_the_network_check_finds_logits_the_network_does_not_give(library, tmp_path):
    entry = read_manifest(library)[1]  # the class piece: a whole network's MIP
    model = read_mps(library / entry.file)
    x = backends.get("highs").solve_form(model.form, SolveOptions(), False).solution
    check = NetworkCheck(tmp_path)
    assert check.logits(entry, x, model.column_names).startswith("ok")
    off = x.copy()
    off[model.column_names.index(entry.logit_columns[0][0])] += 0.01
    assert check.logits(entry, off, model.column_names).startswith("off 0.01")
    assert check.logits(read_manifest(library)[0], x, model.column_names) == ""
