"""Independent pieces of the importance MIP, solved here, in local processes or on Dask.

A :class:`Piece` is plain data: a sub-network (:class:`oamip.network.Network`, numpy arrays), its
batch and the scoring options. Each worker builds and solves its own Pyomo model from it
(:func:`solve_piece`), so pieces travel as numpy data, never as Pyomo or torch objects, and the
result is the same whatever runs it. :func:`run_pieces` runs a list of pieces one after the
other, on ``n_jobs`` local processes, or on a Dask cluster; with a checkpoint folder every
solved piece is saved at once (atomically, named by a hash of everything its answer depends on,
the time limit left out and saved with the result). A rerun reuses a saved piece only when its
result is final for the settings asked (:func:`is_final`: proven optimal, or stopped by a time
limit at least as long); an interrupted piece, or one the rerun gives more time, is solved
again from its saved best solution (``continued``), never ending worse than it. A piece that
raises is tried once more, then reported with its error; the others are kept.

Ctrl-C (the first SIGINT), or a SIGTERM, while pieces run ends the run with what it has: the
piece being solved stops with its best solution (status ``interrupted``), no piece starts after
it, and the pieces never started are reported ``interrupted`` with no scores (their units are
kept). A signal to the main process of a run on worker processes is acknowledged on stderr at
once and passed on to the workers as SIGINT, each of which stops its own piece (a signal to the
whole process group reaches them too); on Dask a Dask event asks the pieces under way to stop
(HiGHS and CBC stop at once; Gurobi and SCIP there only at their time limit) and the pieces
not back within ``DASK_STOP_SECONDS`` are cancelled. A second
signal goes to the handler that was in place before (Python's SIGINT handler raises
KeyboardInterrupt). Worker processes are spawned, so a script that starts them must keep its
own code under ``if __name__ == "__main__":`` (:func:`check_main_guard` says so before any
starts). Nothing here imports torch.
"""

from __future__ import annotations

import ast
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from oamip import backends
from oamip.errors import InvalidInputError
from oamip.files import atomic_path
from oamip.formulations import build_importance_model
from oamip.formulations.importance import folded_layer
from oamip.formulations.size import estimate_size
from oamip.network import AffineLayer, Network, ResidualLayer
from oamip.solve.heads import HeadData, fitted_head
from oamip.solve.interrupt import INTERRUPTED
from oamip.solve.options import ScoringOptions
from oamip.solve.root_cuts import add_root_cuts
from oamip.solve.sweep import sweep
from oamip.version import __version__

CONNECT_SECONDS = 5
"""How long connecting to a Dask scheduler given by its address may take."""
DASK_HINT = "pip install 'oamip[dask]'"
ERROR = "error"
"""Status of a piece that raised twice: it has an ``error`` and no scores."""
POLL_SECONDS = 0.2
DASK_STOP_SECONDS = 10.0
"""After a stop, how long a run on Dask waits for the pieces under way to return their best
solutions before it cancels them."""
"""How often a run on workers looks at its pieces (and at Ctrl-C)."""
NOT_STARTED = "not solved: the run was interrupted before this piece started"
"""The note of a piece skipped because of Ctrl-C (status ``interrupted``, no scores)."""
_UNHASHED = ("verbose", "time_limit")
"""Options left out of a piece's hash: they do not change its answer, or (the time limit) only
how far its solve gets, which :func:`is_final` judges from the saved result."""
FINAL_STATUSES = ("time_limit", "feasible")
"""Statuses of a saved piece that a rerun reuses when its time limit is at least as long as the
one asked (an optimal piece is always reused)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
ACKNOWLEDGED = (
    "oamip: {signal} received: stopping the pieces under way, keeping their best solutions "
    "(a second signal aborts)\n"
)
"""The line written on stderr as soon as the run's first stop signal arrives."""
_WORKER_STOP: threading.Event | None = None
"""In a local worker process: set by a SIGINT that arrives while no solve handles it (between
pieces, or while a piece's model is built), so that its piece stops as soon as it can."""


@dataclass
class Piece:
    """One sub-problem: the importance MIP of ``network`` on the batch ``(x, y)``.

    ``layer`` names the one scored layer of a per-layer piece (None: every scored layer of
    ``network``), ``label`` the class of a per-class piece (None: every class in ``y``).
    ``head_accuracy`` is the accuracy of a trained auxiliary head on its training data (None
    where the network's own layers follow the block)."""

    network: Network
    x: np.ndarray
    y: np.ndarray
    options: ScoringOptions
    layer: str | None = None
    label: int | None = None
    head_accuracy: float | None = None
    start: dict[str, np.ndarray] | None = None
    """Scores by layer name to start from (a checkpoint's best); not part of the key."""
    head: HeadData | None = None
    """A head still to fit, after ``network``'s layers: fit where the piece is solved
    (:meth:`with_head`), so workers fit heads in parallel; its data is part of the key."""

    def with_head(self) -> Piece:
        """This piece with its head fit and appended to its network, ``head_accuracy`` set
        (itself when it has no head to fit)."""
        if self.head is None:
            return self
        head = fitted_head(self.head)
        network = Network(self.network.input_shape, [*self.network.layers, *head.layers])
        return replace(self, network=network, head=None, head_accuracy=head.accuracy)

    @cached_property
    def key(self) -> str:
        """A hash of the package version, the sub-network, the batch, the identifiers and the
        options."""
        digest = hashlib.sha256()
        for part in _content(self):
            if isinstance(part, np.ndarray):
                digest.update(f"{part.dtype}{part.shape}".encode())
                digest.update(np.ascontiguousarray(part).tobytes())
            else:
                digest.update(repr(part).encode())
            digest.update(b"\0")
        return digest.hexdigest()[:32]

    @property
    def scored_names(self) -> list[str]:
        return [self.network.layers[i].name for i in self.network.scored]


@dataclass
class PieceResult:
    """What one piece gave: its scores by layer name and how its solve went (``scores`` empty
    and ``error`` set if it raised twice)."""

    key: str
    layer: str | None
    label: int | None
    samples: int
    status: str
    objective: float | None
    bound: float | None
    seconds: float
    scores: dict[str, np.ndarray]
    head_accuracy: float | None = None
    resumed: bool = False
    """True when read from the checkpoint folder and reused, final, instead of solved."""
    error: str | None = None
    note: str = ""
    time_limit: float | None = None
    """The time limit the piece was solved under (saved with it, out of its key)."""
    continued: bool = False
    """True when solved again from the checkpoint's best solution of an earlier run."""
    relu_entries: dict[str, int] = field(default_factory=dict)
    """The piece's ReLU entries (unit and sample) by how its MIP encodes them
    (:attr:`~oamip.formulations.importance.ImportanceModel.relu_entries`: ``dead``, ``linear``,
    ``equality``, ``gated``, ``binary``, or ``folded`` for a piece built on the affine map of
    its binary scores): every one but ``binary`` is fixed for every mask and sample and costs
    no binary variable, which is what makes a piece quick to prove."""


def _content(piece: Piece) -> Iterator:
    yield from (__version__, piece.network.input_shape)
    for layer in piece.network.layers:
        yield from _layer_content(layer)
    yield from (np.asarray(piece.x, dtype=float), np.asarray(piece.y, dtype=np.int64))
    yield from (piece.layer, piece.label, piece.head_accuracy)
    if piece.head is not None:
        yield piece.head.key
    for f in fields(piece.options):
        if f.name not in _UNHASHED:
            value = getattr(piece.options, f.name)
            yield f.name, getattr(value, "name", value) if f.name == "backend" else value


def _layer_content(layer) -> Iterator:
    if isinstance(layer, ResidualLayer):
        yield from (layer.name, layer.source, layer.activation, layer.scored, layer.share)
        for part in (layer.main, layer.shortcut):
            yield from () if part is None else _layer_content(part)
    elif isinstance(layer, AffineLayer):
        yield from (layer.name, layer.kind, layer.in_shape, layer.out_shape, layer.activation)
        yield from (layer.weight, layer.bias, layer.geometry, layer.scored, layer.share)
    else:
        yield from (layer.name, layer.in_shape, layer.out_shape, layer.windows)


def solve_piece(piece: Piece, stop: threading.Event | None = None) -> PieceResult:
    """Build the piece's importance model and solve it as ``score_neurons`` does (warm start,
    certified solve); ``time_limit`` covers this piece. ``stop`` (set from elsewhere) stops it
    with its best solution; in a local worker process it is the worker's own. A head still to
    fit is fit first (its time is not the solve's)."""
    key = piece.key
    piece = piece.with_head()
    started = time.perf_counter()
    options = piece.options
    solver = backends.get(options.backend)
    im = build_importance_model(piece.network, piece.x, piece.y, options)
    if options.root_cuts:
        add_root_cuts(im, solver, max_rounds=options.root_cuts, time_budget=options.time_limit)
    names = dict(zip(piece.network.scored, piece.scored_names))
    start = None
    if piece.start is not None:
        start = {i: np.asarray(piece.start[name], dtype=float) for i, name in names.items()}
    stop = _WORKER_STOP if stop is None else stop
    point = sweep(im, solver, options, [options.lam], started, start=start, stop=stop)[0]
    return PieceResult(
        key=key,
        layer=piece.layer,
        label=piece.label,
        samples=len(piece.y),
        status=point.status,
        objective=point.objective,
        bound=point.bound,
        seconds=time.perf_counter() - started,
        scores={names[i]: np.asarray(s, dtype=float) for i, s in point.scores.items()},
        head_accuracy=piece.head_accuracy,
        note=point.solution.note if point.solution else "",
        time_limit=options.time_limit,
        relu_entries=dict(im.relu_entries),
    )


@contextmanager
def open_executor(executor) -> Iterator:
    """``executor`` ready to take pieces: a Dask client as given, or one connected to the
    scheduler address given (closed on exit), or None. An unreachable scheduler is a clear
    error within ``CONNECT_SECONDS``."""
    if not isinstance(executor, str):
        yield executor
        return
    distributed = _dask()
    try:
        client = distributed.Client(executor, timeout=CONNECT_SECONDS)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InvalidInputError(
            f"cannot reach the Dask scheduler at '{executor}' within {CONNECT_SECONDS} s "
            f"({exc}); start one (dask scheduler) or give its address, e.g. tcp://host:8786"
        ) from None
    try:
        yield client
    finally:
        client.close()


def run_pieces(
    pieces: Sequence[Piece],
    executor=None,
    n_jobs: int = 1,
    checkpoint: str | Path | None = None,
    on_done: Callable[[PieceResult], None] | None = None,
) -> list[PieceResult]:
    """Solve every piece (results in the order of ``pieces``): here, on ``n_jobs`` local
    processes (spawned), or on ``executor`` (a Dask client or scheduler address). With
    ``checkpoint`` (a folder), a saved piece final for its settings is reused (``resumed``),
    any other saved piece is solved again from its saved best (``continued``), and each piece
    solved is saved as soon as it is done. ``on_done`` is called with each finished piece."""
    with open_executor(executor) as client:
        store = _Checkpoint(Path(checkpoint)) if checkpoint is not None else None
        work, earlier = list(pieces), {}
        results: dict[int, PieceResult] = {}

        def finished(index: int, result: PieceResult) -> None:
            solved = result.error is None and not result.resumed and bool(result.scores)
            if index in earlier:
                result = never_worse(earlier[index], result)
            if store is not None and solved:
                store.save(result)
            results[index] = result
            if on_done is not None:
                on_done(result)

        todo = []
        for index, piece in enumerate(pieces):
            found = store.load(piece) if store is not None else None
            if found is not None and is_final(found, piece.options.time_limit):
                finished(index, found)
                continue
            if found is not None:
                earlier[index] = found
                work[index] = replace(piece, start=found.scores)
            todo.append(index)
        if client is not None or n_jobs > 1:
            todo = longest_first(work, todo)
        with _first_stop() as stop:
            if client is not None:
                _run_dask(client, work, todo, finished, stop)
            elif n_jobs > 1 and len(todo) > 1:
                _run_processes(work, todo, min(n_jobs, len(todo)), finished, stop)
            else:
                _run_sequentially(work, todo, finished, stop)
    return [results[index] for index in range(len(pieces))]


def longest_first(pieces: Sequence[Piece], todo: list[int]) -> list[int]:
    """``todo`` with the pieces expected to take longest first (ties in their order), so that
    workers taking pieces as they free up end close together: a long piece handed out last
    would leave the other workers idle."""
    return sorted(todo, key=lambda index: -expected_work(pieces[index]))


def expected_work(piece: Piece) -> int:
    """How hard a piece is expected to be: the binary variables its MIP can have. A piece
    that folds (binary scores, one scored layer: docs/mathematics.md §4.8) has only its
    scores; any other, up to one per ReLU entry, counted by the size estimate's variables."""
    network, options = piece.network, piece.options
    key = folded_layer(network, options)
    if key is not None:
        return network.layers[key].n_units
    return estimate_size(network, len(piece.y), options).variables


def is_final(saved: PieceResult, time_limit: float | None) -> bool:
    """Whether a saved piece answers a run with ``time_limit``: proven optimal, or ended (by
    its time limit, or unproven with time left) under a time limit at least as long."""
    if saved.status == "optimal":
        return True
    if saved.status not in FINAL_STATUSES:
        return False
    if time_limit is None:
        return saved.time_limit is None
    return saved.time_limit is None or saved.time_limit >= time_limit


def never_worse(saved: PieceResult, result: PieceResult) -> PieceResult:
    """A piece solved again from its saved result (``continued``): the new result, with the
    saved best scores where the new solve ended worse, or found nothing (not started, or an
    error: then the saved result, its status ``interrupted`` if the run was)."""
    if not result.scores:
        why = f"solving it again failed ({result.error})" if result.error else result.note
        status = result.status if result.status == INTERRUPTED else saved.status
        return replace(
            saved,
            status=status,
            resumed=False,
            continued=True,
            note=f"{why}; the scores are the checkpoint's best",
        )
    if saved.objective is not None and (
        result.objective is None or result.objective > saved.objective
    ):
        note = "; ".join(filter(None, [result.note, "the checkpoint's best was better: kept"]))
        return replace(
            result,
            scores=saved.scores,
            objective=saved.objective,
            continued=True,
            note=note,
        )
    return replace(result, continued=True)


class _Stop(threading.Event):
    """The run's stop, set by the first stop signal (or an interrupted piece); ``processes``
    gives the worker processes to pass a signal on to."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: Callable[[], list] = list

    def forward(self) -> None:
        """Send SIGINT to every worker process alive: each stops its own piece."""
        for process in self.processes():
            if process.pid is not None and process.is_alive():
                with suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGINT)


@contextmanager
def _first_stop() -> Iterator[_Stop]:
    """A stop set by the first SIGINT or SIGTERM while the block runs (in the main thread, where
    Python handles signals): acknowledged on stderr, passed on to the worker processes, and to a
    solve running here (as SIGINT). A second signal goes to the previous handler."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    if not callable(previous[signal.SIGINT]):
        yield stop
        return

    def handle(signum: int, frame) -> None:
        if stop.is_set():
            _chain(previous[signum], signum, frame)
            return
        stop.set()
        os.write(2, ACKNOWLEDGED.format(signal=signal.Signals(signum).name).encode())
        stop.forward()
        here = signal.getsignal(signal.SIGINT)
        if signum != signal.SIGINT and callable(here) and here is not handle:
            here(signal.SIGINT, frame)  # a solve running here stops as at Ctrl-C

    for signum in STOP_SIGNALS:
        signal.signal(signum, handle)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _chain(handler, signum: int, frame) -> None:
    """Hand a signal to ``handler``, a signal handler that was in place before: call it, or do
    what the default would (end the process)."""
    if callable(handler):
        handler(signum, frame)
    elif handler != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _run_sequentially(pieces, todo: list[int], finished, stop: threading.Event) -> None:
    """The pieces here, one after the other; none starts once a piece was interrupted."""
    for index in todo:
        if stop.is_set():
            finished(index, not_started(pieces[index]))
            continue
        result = _run_here(pieces[index])
        if result.status == INTERRUPTED:
            stop.set()
        finished(index, result)


def _run_here(piece: Piece) -> PieceResult:
    """The piece solved in this process, tried twice before its error is reported."""
    try:
        return solve_piece(piece)
    except Exception:  # noqa: BLE001 - any failure of a piece is retried once
        pass
    try:
        return solve_piece(piece)
    except Exception as exc:  # noqa: BLE001 - then reported with the piece, the others kept
        return failed(piece, exc)


def _run_processes(pieces, todo: list[int], workers: int, finished, stop) -> None:
    """The pieces on local spawned processes; a piece that raises is submitted once more.
    A worker survives SIGINT between pieces (an idle one, Ctrl-C) and stops its piece on it;
    the first stop signal to this process is passed on to the workers; once ``stop`` is set,
    pieces not started are cancelled."""
    check_main_guard()
    context = multiprocessing.get_context("spawn")
    others = set(multiprocessing.active_children())
    stop.processes = lambda: [p for p in multiprocessing.active_children() if p not in others]
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_in_worker
    ) as pool:
        running = {pool.submit(solve_piece, pieces[i]): (i, 0) for i in todo}
        while running:
            done, _ = wait(running, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            if stop.is_set():
                done |= {future for future in running if future.cancel()}
            for future in done:
                index, tries = running.pop(future)
                result = _collected(future, pieces[index], stop)
                if result is None and tries == 0 and not stop.is_set():
                    running[pool.submit(solve_piece, pieces[index])] = (index, 1)
                    continue
                finished(index, result or failed(pieces[index], future.exception()))


def _collected(future, piece: Piece, stop: threading.Event) -> PieceResult | None:
    """A finished (or cancelled) future's result; None when it raised and may be retried."""
    if future.cancelled():
        return not_started(piece)
    try:
        result = future.result()
    except BrokenProcessPool as exc:
        return not_started(piece) if stop.is_set() else failed(piece, exc)
    except Exception:  # noqa: BLE001 - retried once, then reported
        return None
    if result.status == INTERRUPTED:
        stop.set()
    return result


def _in_worker() -> None:
    """A worker process's start: SIGINT while no solve handles it sets the worker's stop (a
    solve installs its own handler, chained to this one), SIGTERM is taken as SIGINT."""
    global _WORKER_STOP
    _WORKER_STOP = threading.Event()
    signal.signal(signal.SIGINT, _worker_sigint)
    signal.signal(signal.SIGTERM, _worker_sigterm)


def _worker_sigint(signum, frame) -> None:
    """Stop the worker's piece as soon as it can (never raise: the worker survives)."""
    _WORKER_STOP.set()


def _worker_sigterm(signum, frame) -> None:
    """Handle SIGTERM as the SIGINT handler in place does (a solve's, or the worker's)."""
    os.kill(os.getpid(), signal.SIGINT)


def check_main_guard() -> None:
    """Refuse, before any worker process is spawned, to start them from a script that runs its
    code on import (no ``if __name__ == "__main__":``): each spawned worker imports the script,
    which would start workers of its own (multiprocessing's bootstrapping RuntimeError)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    if path is None or (spec is not None and spec.name.endswith("__main__")):
        return  # an interactive session, -c, or a package's __main__: never imported again
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return
    if not any(_is_main_guard(node) for node in tree.body):
        raise InvalidInputError(
            f"worker processes (n_jobs > 1) import the script '{path}', which runs its code "
            'on import: put that code under `if __name__ == "__main__":` (or use n_jobs=1)'
        )


def _is_main_guard(node: ast.stmt) -> bool:
    """Whether ``node`` is ``if __name__ == "__main__":`` (either side of the ``==``)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    names = {side.id for side in sides if isinstance(side, ast.Name)}
    values = {side.value for side in sides if isinstance(side, ast.Constant)}
    return names == {"__name__"} and values == {"__main__"}


def _run_dask(client, pieces, todo: list[int], finished, stop: threading.Event) -> None:
    """The pieces as Dask tasks (each retried once by Dask), collected as they finish. Once
    ``stop`` is set, a Dask event asks the pieces under way to stop with their best solutions
    (:func:`solve_piece_on_dask`) and those not back within ``DASK_STOP_SECONDS`` are cancelled."""
    flag = _dask().Event(f"oamip-stop-{uuid.uuid4().hex}", client=client)
    futures = {
        client.submit(solve_piece_on_dask, pieces[i], flag.name, pure=False, retries=1): i
        for i in todo
    }
    pending, deadline = set(futures), None
    while pending:
        done = {future for future in pending if future.done()}
        pending -= done
        for future in done:
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - reported with the piece, the others kept
                result = failed(pieces[futures[future]], exc)
            finished(futures[future], result)
        if stop.is_set() and deadline is None:
            flag.set()
            deadline = time.monotonic() + DASK_STOP_SECONDS
        if pending and deadline is not None and time.monotonic() >= deadline:
            client.cancel(list(pending))
            for future in pending:
                finished(futures[future], not_started(pieces[futures[future]]))
            return
        if not done:
            time.sleep(POLL_SECONDS)


def solve_piece_on_dask(piece: Piece, flag_name: str) -> PieceResult:
    """:func:`solve_piece` on a Dask worker, stopped with its best solution once the run's Dask
    event ``flag_name`` is set (a thread watches it); a piece that would start after that is
    not started."""
    flag = _dask().Event(flag_name)
    if flag.is_set():
        return not_started(piece)
    stop, done = threading.Event(), threading.Event()
    threading.Thread(target=_watch_flag, args=(flag, stop, done), daemon=True).start()
    try:
        return solve_piece(piece, stop)
    finally:
        done.set()


def _watch_flag(flag, stop: threading.Event, done: threading.Event) -> None:
    """Set ``stop`` once the Dask event ``flag`` is set; return once ``done`` is."""
    while not done.is_set():
        if flag.wait(timeout=POLL_SECONDS):
            stop.set()
            return


def not_started(piece: Piece) -> PieceResult:
    """The record of a piece skipped because the run was interrupted: no scores."""
    return _unsolved(piece, INTERRUPTED, note=NOT_STARTED)


def failed(piece: Piece, exc: BaseException) -> PieceResult:
    """The record of a piece that raised ``exc`` (after its retry)."""
    return _unsolved(piece, ERROR, error=f"{type(exc).__name__}: {exc}")


def _unsolved(piece: Piece, status: str, **why: str) -> PieceResult:
    """The record of a piece with no answer: no scores, no objective, no bound."""
    return PieceResult(
        key=piece.key,
        layer=piece.layer,
        label=piece.label,
        samples=len(piece.y),
        status=status,
        objective=None,
        bound=None,
        seconds=0.0,
        scores={},
        head_accuracy=piece.head_accuracy,
        **why,
    )


def _dask():
    try:
        import distributed
    except ImportError:
        raise InvalidInputError(
            f"running pieces on Dask needs dask.distributed, which is not installed: {DASK_HINT}"
        ) from None
    return distributed


_RUN = ("resumed", "continued")
"""Fields of a piece's result that say what this run did with it: not saved."""


class _Checkpoint:
    """A folder of solved pieces, one JSON file each, named by the piece's hash."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / f"piece-{key}.json"

    def save(self, result: PieceResult) -> None:
        record = {f.name: getattr(result, f.name) for f in fields(result) if f.name not in _RUN}
        record["scores"] = {name: s.tolist() for name, s in result.scores.items()}
        with atomic_path(self.path(result.key)) as tmp:
            tmp.write_text(json.dumps(record))

    def load(self, piece: Piece) -> PieceResult | None:
        """The saved result of ``piece``, or None (with a warning if a file is there but does
        not belong to this piece, so it is never mixed in)."""
        path = self.path(piece.key)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            record["scores"] = {k: np.asarray(v, dtype=float) for k, v in record["scores"].items()}
            result = PieceResult(**record, resumed=True)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            warnings.warn(
                f"checkpoint '{path}' is unreadable ({exc}); solving its piece again", stacklevel=3
            )
            return None
        if not _belongs(result, piece):
            warnings.warn(
                f"checkpoint '{path}' does not match its piece; solving it again", stacklevel=3
            )
            return None
        return result


def _belongs(result: PieceResult, piece: Piece) -> bool:
    """Whether a saved result has the piece's hash and a score per unit of its scored layers."""
    layers = {piece.network.layers[i].name: piece.network.layers[i] for i in piece.network.scored}
    return (
        result.key == piece.key
        and result.error is None
        and set(result.scores) == set(layers)
        and all(s.shape == (layers[n].n_units,) for n, s in result.scores.items())
    )
