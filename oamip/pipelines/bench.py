"""Benchmark the solver backends on importance MIPs of trained networks (``oamip bench``).

Instances are importance MIPs (docs/mathematics.md §4, default settings) built from reference
networks trained reproducibly by :mod:`oamip.training.zoo`: an MLP on digits always, an MLP
and LeNet-5 on MNIST when the data spec ``mnist:PATH`` is given, at several batch sizes (samples per
class) and both score modes. An instance is named
``{data}-{arch}-k{samples per class}-{scores}``, e.g. ``digits-mlp-k1-binary``;
:func:`export_instances` (``oamip export``) writes any of them as MPS or LP.

Each instance is compiled once to its standard form and handed to every backend with the same
time limit, threads and seed. Two plots come with the table:

* a Dolan-More performance profile on the load + solve time of the runs that ended optimal;
* the primal-dual gap over time. Backends do not share a progress callback, so each point comes
  from an *independent run* stopped at a shorter time limit (a geometric grid below the full
  limit); a run that already ended optimal within a grid time is not repeated. The curve shows
  what a user would get with that limit, not the trace of a single run.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from oamip import backends, checks
from oamip.adapters import extract
from oamip.backends import Backend, SolveOptions, StandardForm, compile_model
from oamip.errors import CapabilityError, InvalidInputError, SolverError
from oamip.files import staged_output, write_json
from oamip.formulations.importance import (
    SCORE_MODES,
    ImportanceModel,
    ImportanceSettings,
    build_importance_model,
)
from oamip.training.data import Dataset, load_data, load_digits, mip_batch
from oamip.training.zoo import Recipe, trained

DEFAULT_SIZES = (1, 2)
DEFAULT_TIME_LIMIT = 60.0
DEFAULT_REPEATS = 1
DEFAULT_THREADS = 1
DEFAULT_GAP_POINTS = 3
MAX_GAP_POINTS = 10
DEFAULT_OUT = "oamip-bench"
EXPORT_FORMATS = ("mps", "lp")
RECIPES = {
    ("digits", "mlp"): Recipe("mlp", hidden=(8, 8), epochs=15, lr=1e-2),
    ("mnist", "mlp"): Recipe("mlp", hidden=(64, 32), epochs=5),
    ("mnist", "lenet5"): Recipe("lenet5", epochs=3),
}
"""The reference network of each (data set, architecture) pair."""
_NAME = re.compile(r"^(digits|mnist)-(mlp|lenet5)-k([1-9][0-9]*)-(continuous|binary)$")


@dataclass(frozen=True)
class InstanceSpec:
    """Everything that defines an instance; its name says it all."""

    data: str
    arch: str
    samples_per_class: int
    scores: str
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.data}-{self.arch}-k{self.samples_per_class}-{self.scores}"


@dataclass
class Instance:
    """A built instance: the importance MIP, its standard form and how long each took."""

    spec: InstanceSpec
    importance: ImportanceModel
    form: StandardForm
    build_seconds: float
    compile_seconds: float

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class BenchRow:
    """One solve of one instance by one backend."""

    instance: str
    backend: str
    repeat: int
    status: str
    objective: float | None
    bound: float | None
    gap: float | None
    seconds: float
    nodes: int | None
    load_seconds: float
    build_seconds: float
    compile_seconds: float
    variables: int
    constraints: int
    time_limit: float
    message: str = ""


@dataclass
class BenchResult:
    """What :func:`benchmark` did: the instances built, one row per solve, the gap curve."""

    instances: list[Instance]
    rows: list[BenchRow]
    points: list[GapPoint]


@dataclass
class GapPoint:
    """The gap reached by a run of ``backend`` on ``instance`` stopped at ``time_limit``."""

    instance: str
    backend: str
    time_limit: float
    status: str
    objective: float | None
    bound: float | None
    gap: float | None


def parse_instance(name: str, seed: int = 0) -> InstanceSpec:
    """The spec of an instance name such as ``mnist-lenet5-k2-binary``."""
    match = _NAME.match(name)
    if match is None:
        raise InvalidInputError(
            f"cannot read instance name '{name}'; use DATA-ARCH-kK-SCORES with DATA digits or "
            "mnist, ARCH mlp or lenet5 (lenet5 on mnist only), K >= 1, SCORES continuous or binary"
        )
    data, arch, k, scores = match.groups()
    if (data, arch) not in RECIPES:
        raise InvalidInputError(f"there is no {arch} reference network on {data}")
    return InstanceSpec(data, arch, int(k), scores, seed)


def instance_specs(
    with_mnist: bool,
    sizes: Sequence[int] = DEFAULT_SIZES,
    scores: Sequence[str] = SCORE_MODES,
    seed: int = 0,
) -> list[InstanceSpec]:
    """The instance set: every reference network at every size and score mode."""
    if not sizes or any(int(k) != k or k < 1 for k in sizes):
        raise InvalidInputError(f"sizes must be whole numbers >= 1, got {list(sizes)}")
    unknown = [mode for mode in scores if mode not in SCORE_MODES]
    if unknown or not scores:
        raise InvalidInputError(f"unknown score modes {unknown}; choose from {SCORE_MODES}")
    pairs = [pair for pair in RECIPES if with_mnist or pair[0] == "digits"]
    return [
        InstanceSpec(data, arch, int(k), mode, seed)
        for data, arch in pairs
        for k in sizes
        for mode in scores
    ]


def build_instance(spec: InstanceSpec, dataset: Dataset, cache_dir: str | Path) -> Instance:
    """Train (or load from ``cache_dir``) the reference network and build the instance."""
    if dataset.name != spec.data:
        raise InvalidInputError(f"instance '{spec.name}' needs the {spec.data} data set")
    model = trained(dataset, RECIPES[(spec.data, spec.arch)], cache_dir).model
    batch = mip_batch(model, dataset, spec.samples_per_class, spec.seed)
    network = extract(model, batch.x).network
    start = time.perf_counter()
    importance = build_importance_model(
        network, batch.x, batch.y, ImportanceSettings(scores=spec.scores)
    )
    built = time.perf_counter()
    form = compile_model(importance.model)
    compiled = time.perf_counter()
    return Instance(spec, importance, form, built - start, compiled - built)


def build_instances(
    specs: Sequence[InstanceSpec], mnist: str | None, cache_dir: str | Path
) -> list[Instance]:
    """Build every instance of ``specs``; ``mnist`` is the data spec MNIST instances need."""
    datasets: dict[str, Dataset] = {}
    instances = []
    for spec in specs:
        if spec.data not in datasets:
            datasets[spec.data] = _dataset(spec, mnist)
        instances.append(build_instance(spec, datasets[spec.data], cache_dir))
    return instances


def _dataset(spec: InstanceSpec, mnist: str | None) -> Dataset:
    if spec.data == "digits":
        return load_digits()
    if not mnist:
        raise InvalidInputError(f"instance '{spec.name}' needs MNIST: pass --data mnist:PATH")
    return load_data(mnist)


def run_benchmark(
    instances: Sequence[Instance],
    backend_names: Sequence[str],
    time_limit: float,
    repeats: int = DEFAULT_REPEATS,
    threads: int = DEFAULT_THREADS,
) -> list[BenchRow]:
    """Solve every instance with every backend ``repeats`` times; one row per solve."""
    _check_run(time_limit, repeats, threads)
    return _solve_all(instances, backend_names, time_limit, repeats, threads)


def _solve_all(
    instances: Sequence[Instance],
    backend_names: Sequence[str],
    time_limit: float,
    repeats: int,
    threads: int,
    bar: tqdm | None = None,
) -> list[BenchRow]:
    solvers = [backends.get(name) for name in backend_names]
    return [
        _counted(bar, _row(instance, backend, repeat, _options(time_limit, threads)))
        for instance in instances
        for backend in solvers
        for repeat in range(repeats)
    ]


def _counted(bar: tqdm | None, row: BenchRow, runs: int = 1) -> BenchRow:
    """``row``, once ``runs`` more runs are counted on the progress ``bar`` (if any)."""
    if bar is not None:
        bar.set_postfix_str(f"{row.instance} {row.backend}", refresh=False)
        bar.update(runs)
    return row


def _check_run(time_limit: float, repeats: int, threads: int) -> None:
    checks.real("the time limit in seconds", time_limit, 0.0, open_low=True)
    checks.whole("repeats", repeats, 1)
    checks.whole("threads", threads, 1)


def _options(time_limit: float, threads: int) -> SolveOptions:
    return SolveOptions(time_limit=time_limit, threads=threads, seed=0)


def _row(instance: Instance, backend: Backend, repeat: int, options: SolveOptions) -> BenchRow:
    base = {
        "instance": instance.name,
        "backend": backend.name,
        "repeat": repeat,
        "build_seconds": instance.build_seconds,
        "compile_seconds": instance.compile_seconds,
        "variables": instance.form.num_cols,
        "constraints": instance.form.num_rows,
        "time_limit": options.time_limit,
    }
    start = time.perf_counter()
    try:
        result = backend.solve(instance.form, options)
    except (SolverError, CapabilityError) as exc:
        failed = time.perf_counter() - start
        return BenchRow(
            **base,
            status="error",
            objective=None,
            bound=None,
            gap=None,
            seconds=failed,
            nodes=None,
            load_seconds=0.0,
            message=" ".join(str(exc).split()),
        )
    return BenchRow(
        **base,
        status=str(result.status),
        objective=result.objective,
        bound=result.bound,
        gap=result.gap,
        seconds=result.seconds,
        nodes=result.nodes,
        load_seconds=result.load_seconds,
    )


def gap_limits(time_limit: float, points: int = DEFAULT_GAP_POINTS) -> list[float]:
    """The shorter time limits of the gap curve: ``time_limit / 2^points, ..., time_limit / 2``."""
    return [time_limit / 2**i for i in range(points, 0, -1)]


def gap_over_time(
    instances: Sequence[Instance],
    rows: Sequence[BenchRow],
    limits: Sequence[float],
    threads: int = DEFAULT_THREADS,
    bar: tqdm | None = None,
) -> list[GapPoint]:
    """The gap of each (instance, backend) of ``rows`` at each of ``limits`` and at the full limit.

    A limit above the time a full run needed to end optimal reuses that run's result; every
    other point is an independent run stopped at that limit. Each limit counts as one run on
    the progress ``bar``, run or not.
    """
    by_name = {instance.name: instance for instance in instances}
    points = []
    for row in (r for r in rows if r.repeat == 0):
        points.append(_point(row, row.time_limit))
        if row.status == "error":
            _counted(bar, row, len(limits))
            continue
        backend = backends.get(row.backend)
        for limit in sorted(limits):
            done = row.status == "optimal" and row.load_seconds + row.seconds <= limit
            again = (
                row if done else _row(by_name[row.instance], backend, 0, _options(limit, threads))
            )
            points.append(_point(_counted(bar, again), limit))
    return points


def _point(row: BenchRow, limit: float) -> GapPoint:
    return GapPoint(row.instance, row.backend, limit, row.status, row.objective, row.bound, row.gap)


def performance_ratios(rows: Sequence[BenchRow]) -> dict[str, list[float]]:
    """Dolan-More ratios: per backend and instance, its median load + solve time over the best
    backend's (``inf`` where a repeat did not end optimal)."""
    times: dict[tuple[str, str], list[float]] = {}
    failed: set[tuple[str, str]] = set()
    for row in rows:
        key = (row.instance, row.backend)
        times.setdefault(key, []).append(row.load_seconds + row.seconds)
        if row.status != "optimal":
            failed.add(key)
    median = {key: math.inf if key in failed else statistics.median(t) for key, t in times.items()}
    instances = sorted({key[0] for key in median})
    names = sorted({key[1] for key in median})
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for instance in instances:
        best = min(median.get((instance, name), math.inf) for name in names)
        for name in names:
            value = median.get((instance, name), math.inf)
            ratios[name].append(value / best if math.isfinite(value) else math.inf)
    return ratios


def plot_profile(rows: Sequence[BenchRow], path: Path) -> Path:
    """The performance profile: share of instances solved within ``tau`` times the best time."""
    ratios = performance_ratios(rows)
    finite = [r for values in ratios.values() for r in values if math.isfinite(r)]
    top = max([2.0, *finite]) * 1.5
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for name, values in ratios.items():
        taus = np.sort(np.asarray(values))
        shares = np.arange(1, len(taus) + 1) / len(taus)
        solved = np.isfinite(taus)
        x = np.concatenate([[1.0], taus[solved], [top]])
        y = np.concatenate([[0.0], shares[solved], [shares[solved][-1] if solved.any() else 0.0]])
        axes.step(x, y, where="post", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xlim(1.0, top)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("tau: time within a factor tau of the best backend (load + solve)")
    axes.set_ylabel("share of instances solved to optimality")
    axes.set_title("Performance profile (Dolan-More)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_gap(points: Sequence[GapPoint], path: Path) -> Path:
    """Gap against time limit, one panel per instance (no solution or bound: drawn at 100%)."""
    names = sorted({p.instance for p in points})
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    figure = Figure(figsize=(4.5 * cols, 3.2 * rows))
    grid = figure.subplots(rows, cols, squeeze=False)
    for axes, name in zip(grid.flat, names, strict=False):
        for backend in sorted({p.backend for p in points if p.instance == name}):
            mine = sorted(
                (p for p in points if p.instance == name and p.backend == backend),
                key=lambda p: p.time_limit,
            )
            gaps = [1.0 if p.gap is None else min(p.gap, 1.0) for p in mine]
            axes.plot([p.time_limit for p in mine], gaps, marker="o", label=backend)
        axes.set_xscale("log")
        axes.set_ylim(-0.02, 1.02)
        axes.set_title(name, fontsize=9)
        axes.set_xlabel("time limit (s), an independent run each")
        axes.set_ylabel("relative gap")
        axes.legend(fontsize=7)
    for axes in list(grid.flat)[len(names) :]:
        axes.set_visible(False)
    figure.tight_layout()
    figure.savefig(path)
    return path


def write_csv(path: Path, rows: Sequence) -> Path:
    """Rows of one dataclass type as CSV, a header of its field names, empty cells for None."""
    names = [f.name for f in fields(rows[0])] if rows else [f.name for f in fields(BenchRow)]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in asdict(r).items()} for r in rows)
    return path


def write_results(folder: Path, result: BenchResult, command: str) -> list[Path]:
    """``results.csv``, ``gap.csv``, ``results.json`` and both plots, in ``folder``;
    ``command`` is the command line recorded in ``results.json``."""
    json_path = folder / "results.json"
    meta = {
        "date": datetime.date.today().isoformat(),
        "command": command,
        "machine": machine(),
        "instances": [_describe(instance) for instance in result.instances],
        "gap_over_time_method": "independent runs stopped at each time limit",
    }
    write_json(json_path, {**meta, "rows": result.rows, "gap_over_time": result.points})
    return [
        write_csv(folder / "results.csv", result.rows),
        write_csv(folder / "gap.csv", result.points),
        json_path,
        plot_profile(result.rows, folder / "profile.png"),
        plot_gap(result.points, folder / "gap.png"),
    ]


def _describe(instance: Instance) -> dict:
    return {
        **asdict(instance.spec),
        "name": instance.name,
        "variables": instance.form.num_cols,
        "integer_variables": int(instance.form.integer.sum()),
        "constraints": instance.form.num_rows,
        "nonzeros": int(instance.form.A.nnz),
        "build_seconds": instance.build_seconds,
        "compile_seconds": instance.compile_seconds,
    }


def machine() -> dict:
    """Where a benchmark ran: date, platform, CPUs, Python, library and solver versions."""
    import highspy
    import numpy
    import pyomo
    import torch

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "pyomo": pyomo.__version__,
        "highspy": _version("highspy", highspy),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "backends": backends.available(),
    }


def _version(name: str, module) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def default_cache_dir() -> Path:
    """Where reference networks are cached: ``$XDG_CACHE_HOME/oamip/zoo`` or ``~/.cache/...``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "oamip" / "zoo"


def benchmark(
    data: str | None = None,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    scores: Sequence[str] = SCORE_MODES,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    backend_names: Sequence[str] | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
    repeats: int = DEFAULT_REPEATS,
    threads: int = DEFAULT_THREADS,
    gap_points: int = DEFAULT_GAP_POINTS,
    progress: bool = False,
) -> BenchResult:
    """Build the instance set, solve it with every backend, and run the gap curve.

    ``data`` None benchmarks the digits instances, ``"mnist:PATH"`` adds the MNIST ones;
    ``backend_names`` None (or empty) takes every installed backend; ``cache_dir`` None
    caches the reference networks in :func:`default_cache_dir`. Every setting is checked
    before any work. ``progress`` shows a bar over the runs (every solve and every point of
    the gap curve) with an estimate of the time left.
    """
    names = _check_benchmark(backend_names, time_limit, repeats, threads, gap_points)
    checks.flag("progress", progress)
    mnist = _mnist_spec(data)
    specs = instance_specs(mnist is not None, sizes, scores, seed)
    instances = build_instances(specs, mnist, cache_dir or default_cache_dir())
    runs = len(instances) * len(names) * (repeats + gap_points)
    with tqdm(total=runs, desc="bench", unit="run", disable=not progress) as bar:
        rows = _solve_all(instances, names, time_limit, repeats, threads, bar)
        limits = gap_limits(time_limit, gap_points)
        points = gap_over_time(instances, rows, limits, threads, bar)
    return BenchResult(instances, rows, points)


def _check_benchmark(
    backend_names: Sequence[str] | None,
    time_limit: float,
    repeats: int,
    threads: int,
    gap_points: int,
) -> list[str]:
    """The backends to run (each installed), after checking the solve settings."""
    names = list(backend_names or backends.available())
    for name in names:
        backends.get(name)
    _check_run(time_limit, repeats, threads)
    try:
        checks.whole("gap_points", gap_points, 0, MAX_GAP_POINTS)
    except InvalidInputError:
        raise InvalidInputError(
            f"--gap-points (gap_points) must be a whole number from 0 to {MAX_GAP_POINTS}, got "
            f"{gap_points!r}; each point halves the time limit once more"
        ) from None
    return names


def export_instances(
    out: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    data: str | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    scores: Sequence[str] = SCORE_MODES,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    fmt: str = "mps",
) -> list[Path]:
    """Write instances into ``out`` as ``{name}.{fmt}`` files, all or nothing; their paths.

    ``names`` picks instances by name; without it, the instance set of :func:`benchmark`
    (``data``, ``sizes``, ``scores``) is written. ``fmt`` is one of ``EXPORT_FORMATS``.
    """
    checks.choice("export format", fmt, EXPORT_FORMATS)
    mnist = _mnist_spec(data)
    if names:
        specs = [parse_instance(name, seed) for name in names]
    else:
        specs = instance_specs(mnist is not None, sizes, scores, seed)
    instances = build_instances(specs, mnist, cache_dir or default_cache_dir())
    writer = backends.write_mps if fmt == "mps" else backends.write_lp
    with staged_output(out) as folder:
        written = [writer(i.form, folder / f"{i.name}.{fmt}") for i in instances]
    return [Path(out).expanduser() / path.name for path in written]


def _mnist_spec(data: str | None) -> str | None:
    if data is not None and not data.startswith("mnist:"):
        raise InvalidInputError(f"--data takes mnist:PATH, got '{data}'")
    return data
