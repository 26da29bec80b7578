"""Every solver on every instance of a library, each answer checked, and a leaderboard
(``oamip bench --library``).

The solvers are backends (each solves the form read back from the instance's MPS file) and
solver commands (:class:`oamip.backends.command.CommandSolver`: any MPS solver on the machine).
Every answer is judged the same way, from the file:

* its solution is checked against every row, bound and integrality, and its claimed objective
  against the one recomputed from it (:func:`oamip.backends.verify.check_solution`);
* a claimed optimum must be no worse than the best known solution (the manifest's, and every
  checked solution of this run) beyond the optimality gap ``GAP_TOLERANCE``; a reported bound
  must not pass the best known solution by more; a claim of infeasibility on an instance with
  a known solution is wrong.

A wrong answer counts as unsolved and is listed. The leaderboard counts the instances solved
(ended optimal and right) and the wrong answers, and scores times MIPLIB's way: the shifted
geometric mean with a ``SHIFT`` of 10 s, an unsolved instance counted at the time limit; and
PAR-2, the mean time with an unsolved instance counted at twice the time limit.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tqdm.auto import tqdm

from oamip import backends, checks
from oamip.backends import SolveOptions
from oamip.backends.base import DEFAULT_MIP_GAP
from oamip.backends.command import CommandSolver
from oamip.backends.mps_reader import MpsModel, read_mps
from oamip.backends.verify import FEASIBILITY_TOLERANCE, check_solution
from oamip.errors import InvalidInputError, OamipError
from oamip.files import write_json
from oamip.pipelines.bench import machine, plot_profile
from oamip.pipelines.library import LibraryEntry, NetworkCheck, check_hashes, read_manifest

SHIFT = 10.0
"""The shift of the shifted geometric mean of times, in seconds (MIPLIB's)."""
DEFAULT_TIME_LIMIT = 60.0
GAP_TOLERANCE = DEFAULT_MIP_GAP
"""How far (relative) a claimed optimum may lie from the best known solution: the optimality
gap every backend is asked for."""
TIME_SLACK = 1.0
"""Seconds past the time limit that an optimal answer may take and still count as solved (a
command's start-up and file reading; CBC's ``-sec`` counts CPU time, not wall time)."""
YES, NO, WRONG = "yes", "no", "wrong"
"""The ``verified`` column: the answer's solution checked and consistent; no solution to
check; a wrong answer."""


@dataclass
class Answer:
    """One solver's answer on one instance, as judged (``verified`` YES, NO or WRONG)."""

    instance: str
    backend: str
    status: str
    objective: float | None
    bound: float | None
    seconds: float
    verified: str
    note: str = ""
    network: str = ""
    """The masked network's logits at the answer's scores against the answer's logits (see
    :class:`oamip.pipelines.library.NetworkCheck`): ``ok``/``off`` and the largest difference,
    empty where the check does not apply."""
    solution: np.ndarray | None = None

    def solved(self, time_limit: float) -> bool:
        """Ended optimal, right, within ``time_limit`` (and TIME_SLACK)."""
        in_time = self.seconds <= time_limit + TIME_SLACK
        return self.status == "optimal" and self.verified == YES and in_time


@dataclass
class Standing:
    """One solver's line of the leaderboard."""

    backend: str
    solved: int
    wrong: int
    shifted_geomean: float
    par2: float
    instances: int


@dataclass
class LibraryBench:
    """What :func:`bench_library` did: the instances, every answer, the leaderboard."""

    entries: list[LibraryEntry]
    answers: list[Answer]
    standings: list[Standing]
    time_limit: float

    @property
    def wrong(self) -> list[Answer]:
        return [a for a in self.answers if a.verified == WRONG]


def bench_library(
    library: str | Path,
    backend_names: Sequence[str] | None = None,
    commands: Sequence[str] = (),
    time_limit: float = DEFAULT_TIME_LIMIT,
    threads: int = 1,
    progress: bool = False,
) -> LibraryBench:
    """Solve every instance of ``library`` with every backend (None: every installed one; empty
    with ``commands``: none) and every solver command (``[NAME=]TEMPLATE``), judge every answer
    and rank the solvers. Everything is checked before any solve."""
    checks.real("the time limit in seconds", time_limit, 0.0, open_low=True)
    checks.whole("threads", threads, 1)
    solvers = [
        backends.get(n) for n in (backend_names or ([] if commands else backends.available()))
    ]
    programs = [CommandSolver.parse(text) for text in commands]
    names = [s.name for s in solvers] + [p.name for p in programs]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"two solvers share a name in {names}; name commands NAME=...")
    entries = read_manifest(library)
    changed = check_hashes(library, entries)
    if changed:
        raise InvalidInputError(
            f"{len(changed)} instance files differ from their manifest hash, e.g. {changed[0]}"
        )
    options = SolveOptions(time_limit=time_limit, threads=threads, seed=0)
    answers: list[Answer] = []
    total = len(entries) * len(names)
    with (
        tqdm(total=total, desc="bench", unit="run", disable=not progress) as bar,
        tempfile.TemporaryDirectory(prefix="oamip-networks-") as scratch,
    ):
        network = NetworkCheck(scratch)
        for entry in entries:
            path = Path(library) / entry.file
            model = read_mps(path)
            mine = [_backend_answer(entry, model, s, options) for s in solvers]
            mine += _command_answers(entry, model, path, programs, time_limit)
            bar.update(len(names))
            answers += judge(entry, model, mine)
            for answer in mine:
                if answer.solution is not None and answer.verified == YES:
                    answer.network = network.logits(entry, answer.solution, model.column_names)
    for answer in answers:
        answer.solution = None
    return LibraryBench(entries, answers, leaderboard(answers, names, time_limit), time_limit)


def _backend_answer(entry: LibraryEntry, model: MpsModel, solver, options) -> Answer:
    start = time.perf_counter()
    try:
        solver.check(model.form)
        result = solver.solve_form(model.form, options, False)
    except OamipError as exc:
        seconds = time.perf_counter() - start
        return Answer(entry.name, solver.name, "error", None, None, seconds, NO, _line(exc))
    seconds = result.load_seconds + result.seconds
    return Answer(
        entry.name,
        solver.name,
        str(result.status),
        result.objective if result.solution is not None else None,
        result.bound,
        seconds,
        NO,
        solution=result.solution,
    )


def _command_answers(
    entry: LibraryEntry,
    model: MpsModel,
    path: Path,
    programs: Sequence[CommandSolver],
    time_limit: float,
) -> list[Answer]:
    """Each command's answer, run on the instance unzipped into a scratch folder."""
    if not programs:
        return []
    answers = []
    with tempfile.TemporaryDirectory(prefix="oamip-library-") as tmp:
        folder = Path(tmp)
        mps = folder / path.name.removesuffix(".gz")
        with gzip.open(path, "rb") as packed, open(mps, "wb") as plain:
            shutil.copyfileobj(packed, plain)
        for program in programs:
            ran = program.run(mps, time_limit, folder)
            answers.append(_command_answer(entry, model, program.name, ran))
    return answers


def _command_answer(entry: LibraryEntry, model: MpsModel, name: str, ran) -> Answer:
    found = ran.solution
    if found is None:
        return Answer(entry.name, name, "error", None, None, ran.seconds, NO, ran.message)
    solution = None
    note = ""
    if found.has_solution:
        try:
            solution = found.vector(model.column_names)
        except InvalidInputError as exc:
            note = str(exc)
    answer = Answer(
        entry.name, name, found.status, found.objective, found.bound, ran.seconds, NO, note
    )
    answer.solution = solution
    if note:
        answer.verified = WRONG
    return answer


def judge(entry: LibraryEntry, model: MpsModel, answers: list[Answer]) -> list[Answer]:
    """Check each answer's solution against the file, then each claim against the best known
    solution: the manifest's and every solution that passed its check."""
    sign = -1.0 if model.form.maximize else 1.0
    known = [] if entry.best_objective is None else [entry.best_objective]
    for answer in answers:
        if answer.verified == WRONG or answer.solution is None:
            continue
        check = check_solution(model.form, answer.solution, answer.objective, model.row_names)
        answer.verified = YES if check.ok else WRONG
        answer.note = "; ".join(check.problems)
        if check.ok:
            known.append(check.objective)
    best = min(known, key=lambda v: sign * v) if known else None
    for answer in answers:
        if answer.verified != WRONG:
            _judge_claims(answer, best, sign)
    return answers


def _judge_claims(answer: Answer, best: float | None, sign: float) -> None:
    """Mark ``answer`` wrong if its claims contradict the best known objective ``best``."""
    if best is None:
        return
    slack = GAP_TOLERANCE * max(1.0, abs(best)) + FEASIBILITY_TOLERANCE
    why = ""
    if answer.status == "optimal" and answer.objective is None:
        why = "claims optimal without a solution"
    elif answer.status == "optimal" and sign * (answer.objective - best) > slack:
        why = f"claims optimal at {answer.objective!r}, but {best!r} is known"
    elif answer.bound is not None and sign * (answer.bound - best) > slack:
        why = f"its bound {answer.bound!r} passes the known solution {best!r}"
    elif answer.status in ("infeasible", "unbounded"):
        why = f"claims {answer.status}, but a solution of objective {best!r} is known"
    if why:
        answer.verified = WRONG
        answer.note = why


def leaderboard(
    answers: Sequence[Answer], names: Sequence[str], time_limit: float
) -> list[Standing]:
    """Each solver's standing over the instances of ``answers``, best first (most solved, then
    the lower shifted geometric mean); a solved instance's time is capped at ``time_limit``."""
    standings = []
    for name in names:
        mine = [a for a in answers if a.backend == name]
        solved = [a.solved(time_limit) for a in mine]
        times = [min(a.seconds, time_limit) if ok else time_limit for a, ok in zip(mine, solved)]
        par2 = [min(a.seconds, time_limit) if ok else 2 * time_limit for a, ok in zip(mine, solved)]
        standings.append(
            Standing(
                name,
                sum(solved),
                sum(a.verified == WRONG for a in mine),
                shifted_geomean(times),
                float(np.mean(par2)) if par2 else math.nan,
                len(mine),
            )
        )
    return sorted(standings, key=lambda s: (-s.solved, s.shifted_geomean))


def shifted_geomean(times: Sequence[float], shift: float = SHIFT) -> float:
    """``exp(mean(log(t + shift))) - shift``."""
    if not times:
        return math.nan
    return float(np.exp(np.mean(np.log(np.asarray(times, dtype=float) + shift))) - shift)


def _line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def write_bench(folder: Path, bench: LibraryBench, command: str) -> list[Path]:
    """``results.csv``, ``leaderboard.csv``, ``wrong.csv``, ``results.json`` and the
    performance profile ``profile.png`` in ``folder``."""
    results = _write_rows(folder / "results.csv", bench.answers, Answer, skip={"solution"})
    board = _write_rows(folder / "leaderboard.csv", bench.standings, Standing)
    wrong = _write_rows(folder / "wrong.csv", bench.wrong, Answer, skip={"solution"})
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "time_limit": bench.time_limit,
        "shift": SHIFT,
        "leaderboard": bench.standings,
        "answers": [{k: v for k, v in asdict(a).items() if k != "solution"} for a in bench.answers],
    }
    json_path = folder / "results.json"
    write_json(json_path, meta)
    return [results, board, wrong, json_path, _profile(bench, folder / "profile.png")]


def _write_rows(path: Path, rows: Sequence, kind: type, skip: set[str] = frozenset()) -> Path:
    names = [f.name for f in fields(kind) if f.name not in skip]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: "" if v is None else v for k, v in asdict(row).items() if k in names}
            )
    return path


def _profile(bench: LibraryBench, path: Path) -> Path:
    """The Dolan-More performance profile of :func:`oamip.pipelines.bench.plot_profile`, a
    wrong answer counted as unsolved."""
    rows = [
        SimpleNamespace(
            instance=a.instance,
            backend=a.backend,
            seconds=a.seconds,
            load_seconds=0.0,
            status="optimal" if a.solved(bench.time_limit) else "unsolved",
        )
        for a in bench.answers
    ]
    return plot_profile(rows, path)
