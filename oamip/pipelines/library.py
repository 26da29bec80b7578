"""An instance library for solver benchmarks (``oamip library build``): versioned MPS files.

Each instance is the importance MIP (docs/mathematics.md §4) of a network the package trains
itself, from a fixed seed, on data it embeds (scikit-learn's digits; MNIST with a data spec):
the whole network, or one piece of its decomposition (``b{j}``: the ``j``-th block of the
per-layer decomposition, an auxiliary head after it; ``c{label}``: one class's samples). An
instance is named ``{data}-{arch}-{piece}-k{samples per class}-{loss}-{scores}``, with
``-lam{lam}`` when ``lam`` is not the default.

A build is deterministic: PyTorch trains on one thread with deterministic algorithms, every
choice of samples is seeded, and the files are written as gzipped free MPS with a fixed header;
the same set built twice on one machine gives byte-identical files (their ``sha256`` in the
manifest). Each instance is then solved once from its own file by a reference backend under a
time cap: ``status`` is ``optimal`` when that solve proved optimality, ``open`` otherwise, with
the best objective and bound it reached (its solution checked against the file first).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from oamip import backends, checks
from oamip.adapters import extract
from oamip.adapters.decompose import decomposed_pieces
from oamip.adapters.extract import Extracted
from oamip.adapters.masks import scored_logits
from oamip.backends import SolveOptions, StandardForm, compile_model, write_mps
from oamip.backends.mps_reader import read_mps
from oamip.backends.verify import check_solution
from oamip.bounds import interval_bounds
from oamip.errors import InvalidInputError
from oamip.files import staged_output, write_json
from oamip.formulations.importance import (
    ImportanceModel,
    ImportanceSettings,
    build_importance_model,
)
from oamip.pipelines.bench import machine
from oamip.solve.loop import logits_agree
from oamip.solve.options import ScoringOptions
from oamip.training.data import Dataset, load_data, load_digits, mip_batch
from oamip.training.zoo import Recipe, trained
from oamip.version import __version__

SETS = ("small", "standard")
DEFAULT_LAM = 5.0
DEFAULT_REFERENCE_BACKEND = "highs"
SMALL_TIME_LIMIT = 30.0
STANDARD_TIME_LIMIT = 60.0
REFERENCE_TIME_LIMITS = {"small": SMALL_TIME_LIMIT, "standard": STANDARD_TIME_LIMIT}
"""The default time cap of each set's reference solves (seconds; past it an instance is open)."""
DEFAULT_OUT = "oamip-library"
MANIFEST_JSON = "manifest.json"
MANIFEST_CSV = "manifest.csv"
COLUMN_FIELDS = ("score_columns", "logit_columns")
"""The manifest fields left out of its CSV (lists of column names)."""
RECIPES = {
    ("digits", "mlp"): Recipe("mlp", hidden=(8, 8), epochs=15, lr=1e-2),
    ("digits", "lenet5"): Recipe("lenet5", epochs=10, lr=3e-3),
    ("digits", "vgg"): Recipe("vgg", epochs=10, lr=3e-3),
    ("digits", "resnet8"): Recipe("resnet8", epochs=5, lr=3e-3),
    ("digits", "resnet20"): Recipe("resnet20", epochs=5, lr=3e-3),
    ("mnist", "mlp"): Recipe("mlp", hidden=(64, 32), epochs=5),
    ("mnist", "lenet5"): Recipe("lenet5", epochs=3),
}
"""The network of each (data set, architecture); other pairs train ``Recipe.default``."""


@dataclass(frozen=True)
class LibrarySpec:
    """Everything that defines a library instance; its name says it all."""

    arch: str
    samples: int
    piece: str = "whole"
    loss: str = "hinge"
    scores: str = "binary"
    lam: float = DEFAULT_LAM
    data: str = "digits"
    seed: int = 0

    @property
    def name(self) -> str:
        lam = "" if self.lam == DEFAULT_LAM else f"-lam{self.lam:g}"
        return (
            f"{self.data}-{self.arch}-{self.piece}-k{self.samples}-{self.loss}-{self.scores}{lam}"
        )

    @property
    def decompose(self) -> str | None:
        """The decomposition the piece comes from (None: the whole network)."""
        return {"b": "layer", "c": "class"}.get(self.piece[0]) if self.piece != "whole" else None


def _specs(arch: str, samples: Sequence[int], pieces: Sequence[str], kinds: Sequence[str], **kw):
    """Every (samples, piece, loss-scores kind) combination of one architecture."""
    return [
        LibrarySpec(arch, k, piece, *kind.split("-"), **kw)
        for k in samples
        for piece in pieces
        for kind in kinds
    ]


BOTH = ("hinge-binary", "ce-continuous")
ALL_KINDS = ("hinge-binary", "hinge-continuous", "ce-binary", "ce-continuous")


def library_set(name: str, data: str = "digits") -> list[LibrarySpec]:
    """The instances of the set ``name`` (one of SETS) on the data set ``data``."""
    checks.choice("library set", name, SETS)
    if name == "small":
        specs = [
            *_specs("mlp", [1], ["whole"], ["hinge-binary", "ce-continuous"]),
            *_specs("mlp", [2], ["b0"], ["hinge-continuous"]),
            *_specs("mlp", [2], ["b1"], ["ce-binary"]),
            *_specs("mlp", [4], ["c3"], ["hinge-binary"]),
            *_specs("lenet5", [1], ["b3"], ["hinge-binary"]),
        ]
    else:
        specs = [
            *_specs("mlp", [1, 2, 4, 8], ["whole"], ALL_KINDS),
            *_specs("mlp", [2, 8], ["b0", "b1"], BOTH),
            *_specs("mlp", [8], ["c0", "c5"], BOTH),
            LibrarySpec("mlp", 4, lam=1.0),
            LibrarySpec("mlp", 4, lam=20.0),
            *_specs("lenet5", [1, 2], ["whole"], [*BOTH, "hinge-continuous"]),
            *_specs("lenet5", [1], ["b0", "b1", "b2", "b3"], BOTH),
            *_specs("vgg", [1], ["whole"], BOTH),
            *_specs("vgg", [1], ["b0", "b2", "b4", "b6"], ["hinge-binary"]),
            *_specs("resnet8", [1], ["whole", "b0", "b3"], ["hinge-binary"]),
            *_specs("resnet20", [1], ["b0", "b4", "b9"], ["hinge-binary"]),
        ]
    return [replace(spec, data=data) for spec in specs]


@dataclass
class LibraryEntry:
    """One instance of a library: its file, provenance, size and reference result."""

    name: str
    file: str
    sha256: str
    arch: str
    data: str
    samples: int
    samples_per_class: int
    piece: str
    piece_layer: str
    loss: str
    scores: str
    lam: float
    seed: int
    rows: int
    cols: int
    integers: int
    nonzeros: int
    coef_min: float | None
    coef_max: float | None
    best_objective: float | None
    best_bound: float | None
    status: str
    solver: str
    solve_seconds: float
    time_limit: float
    network_sha256: str = ""
    score_columns: dict[str, list[str]] = field(default_factory=dict)
    """Whole-network MIPs (and class pieces): the MPS column of each unit's score, by the
    unit's name in the torch model; empty for a per-layer piece."""
    logit_columns: list[list[str]] = field(default_factory=list)
    """The MPS column of each sample's logit of each class (same instances)."""


@contextmanager
def deterministic_torch() -> Iterator[None]:
    """One thread and deterministic algorithms, restored afterwards: training gives the same
    weights, bit for bit, every run on a machine."""
    threads = torch.get_num_threads()
    was = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.set_num_threads(threads)


@dataclass
class Built:
    """An instance's standard form, the name of its piece's scored layer ("" for a whole
    network or a class piece), and, where the instance is the whole network's MIP, the columns
    of its scores (by unit name) and of its logits (per sample and class)."""

    form: StandardForm
    layer: str = ""
    score_columns: dict[str, list[str]] = field(default_factory=dict)
    logit_columns: list[list[str]] = field(default_factory=list)


@dataclass
class NetworkBatch:
    """An instance's trained network (as read by :func:`oamip.adapters.extract`), its digest
    and the batch its MIP is built on (a class piece: that class's samples)."""

    extracted: Extracted
    digest: str
    x: np.ndarray
    y: np.ndarray


def network_batch(
    spec: LibrarySpec, dataset: Dataset, cache_dir: str | Path | None = None
) -> NetworkBatch:
    """Train (deterministically) or load ``spec``'s network and choose its batch."""
    recipe = RECIPES.get((spec.data, spec.arch)) or Recipe.default(spec.arch)
    with deterministic_torch():
        model = trained(dataset, recipe, cache_dir).model
    batch = mip_batch(model, dataset, spec.samples, spec.seed)
    x, y = batch.x, batch.y
    if spec.decompose == "class":
        pick = y == int(spec.piece[1:])
        if not pick.any():
            raise InvalidInputError(f"instance '{spec.name}': no class {spec.piece[1:]}")
        x, y = x[pick], y[pick]
    return NetworkBatch(extract(model, x), network_digest(model), x, y)


def network_digest(model: torch.nn.Module) -> str:
    """A SHA-256 of the model's parameters and buffers (names, shapes, bytes): the same
    network trained again gives the same digest."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def instance_form(
    spec: LibrarySpec, dataset: Dataset, cache_dir: str | Path | None = None
) -> tuple[Built, NetworkBatch]:
    """``spec``'s importance MIP as a standard form, and the network and batch it comes from:
    the layered model, never folded (a binary per-layer piece, which a solve folds to an
    affine map of its scores, docs/mathematics.md §4.8, stays a benchmark of the encodings)."""
    net = network_batch(spec, dataset, cache_dir)
    settings = ImportanceSettings(loss=spec.loss, lam=spec.lam, scores=spec.scores)
    network = net.extracted.network
    if spec.decompose != "layer":
        im = build_importance_model(network, net.x, net.y, settings, fold=False)
        form = compile_model(im.model)
        return Built(form, "", *_network_columns(im, form, net.extracted)), net
    options = ScoringOptions(**asdict(settings), decompose="layer")
    pieces = decomposed_pieces(network, net.x, net.y, options, (dataset.x_train, dataset.y_train))
    index = int(spec.piece[1:])
    if index >= len(pieces):
        raise InvalidInputError(
            f"instance '{spec.name}': the {spec.arch} has {len(pieces)} blocks; piece "
            f"'{spec.piece}' does not exist"
        )
    piece = pieces[index].with_head()
    im = build_importance_model(piece.network, piece.x, piece.y, piece.options, fold=False)
    return Built(compile_model(im.model), piece.layer or ""), net


def _network_columns(im: ImportanceModel, form: StandardForm, extracted: Extracted):
    """The MPS names of the score columns (by unit name) and of the logit columns; empty
    when one of them is not a column of the form."""

    def names(ids: np.ndarray) -> np.ndarray:
        columns = form.columns_of([im.table.variables[j] for j in ids.ravel().tolist()], -1)
        return np.array([f"x{j}" for j in columns.tolist()]).reshape(ids.shape), columns

    scores = {}
    for name, unit in extracted.units.items():
        labels, columns = names(np.asarray(im.score_ids[unit.layer]))
        scores[name] = labels.tolist()
        if (columns < 0).any():
            return {}, []
    logits, columns = names(np.asarray(im.logit_ids))
    if (columns < 0).any():
        return {}, []
    return scores, logits.tolist()


class NetworkCheck:
    """Runs an answer's scores through the masked network in PyTorch (docs/mathematics.md (1),
    :func:`oamip.adapters.masks.scored_logits`) and compares the logits with the answer's.

    The network is trained again from the manifest's provenance (deterministic, seconds on
    digits; cached in a scratch folder for the run) and must have the manifest's digest; the
    check applies to instances that are a whole network's MIP on the digits data."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.dataset: Dataset | None = None

    def logits(self, entry: LibraryEntry, x: np.ndarray, columns: Sequence[str]) -> str:
        """ "" when the check does not apply; else ``ok`` or ``off``, and the largest logit
        difference (the package's own tolerance: :func:`oamip.solve.loop.logits_agree`)."""
        if not entry.score_columns or entry.data != "digits":
            return ""
        self.dataset = self.dataset or load_digits()
        spec = LibrarySpec(
            entry.arch,
            entry.samples_per_class,
            entry.piece,
            entry.loss,
            entry.scores,
            entry.lam,
            entry.data,
            entry.seed,
        )
        net = network_batch(spec, self.dataset, self.cache_dir)
        if net.digest != entry.network_sha256:
            return "n/a: the network trained here differs from the manifest's"
        index = {name: j for j, name in enumerate(columns)}
        scores = {
            name: np.clip(x[[index[c] for c in cols]], 0.0, 1.0)
            for name, cols in entry.score_columns.items()
        }
        solver = x[np.vectorize(index.__getitem__)(np.asarray(entry.logit_columns))]
        network = net.extracted.network
        big_m = interval_bounds(network, network.check_input(net.x)).big_m
        exact = scored_logits(net.extracted, net.x, scores, big_m)
        error, agree = logits_agree(solver, exact)
        return f"{'ok' if agree else 'off'} {error:.2g}"


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def reference_solve(path: Path, backend: str, time_limit: float) -> dict:
    """Solve the MPS file ``path`` with ``backend`` under ``time_limit``: the best objective and
    bound, ``optimal`` or ``open``, the solver and seconds (its solution checked first)."""
    model = read_mps(path)
    solver = backends.get(backend)
    solver.check(model.form)
    options = SolveOptions(time_limit=time_limit, threads=1, seed=0)
    result = solver.solve_form(model.form, options, False)
    objective, bound = result.objective, result.bound
    if result.solution is not None:
        check = check_solution(model.form, result.solution, objective, model.row_names)
        if not check.ok:
            raise InvalidInputError(
                f"the reference solve of {path.name} by {backend} gave a solution that fails "
                f"its own file's check: {'; '.join(check.problems)}"
            )
        objective = check.objective
    optimal = str(result.status) == "optimal"
    return {
        "best_objective": objective,
        "best_bound": objective if optimal else bound,
        "status": "optimal" if optimal else "open",
        "solver": solver.name,
        "solve_seconds": round(result.load_seconds + result.seconds, 3),
        "time_limit": time_limit,
    }


def _dataset(data: str | None) -> Dataset:
    if data is None or data == "digits":
        return load_digits()
    if not data.startswith("mnist:"):
        raise InvalidInputError(f"--data takes digits or mnist:PATH, got '{data}'")
    return load_data(data)


def build_library(
    out: str | os.PathLike,
    set_name: str = "small",
    *,
    data: str | None = None,
    reference_backend: str = DEFAULT_REFERENCE_BACKEND,
    reference_time_limit: float | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> list[LibraryEntry]:
    """Build the set ``set_name`` into ``out`` (all or nothing): one ``{name}.mps.gz`` per
    instance, ``manifest.json`` and ``manifest.csv``; the entries.

    ``data`` None or ``"digits"`` uses scikit-learn's digits, ``"mnist:PATH"`` MNIST;
    ``reference_time_limit`` None takes the set's default (REFERENCE_TIME_LIMITS); 0 skips
    the reference solves (every instance ``open``, no objective). ``cache_dir`` None trains
    every network afresh (seconds on digits).
    """
    checks.choice("library set", set_name, SETS)
    limit = (
        REFERENCE_TIME_LIMITS[set_name] if reference_time_limit is None else reference_time_limit
    )
    dataset = _dataset(data)
    specs = library_set(set_name, dataset.name)
    return build_specs(out, specs, set_name, dataset, reference_backend, limit, cache_dir, progress)


def build_specs(
    out: str | os.PathLike,
    specs: Sequence[LibrarySpec],
    label: str,
    dataset: Dataset,
    reference_backend: str = DEFAULT_REFERENCE_BACKEND,
    reference_time_limit: float = SMALL_TIME_LIMIT,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> list[LibraryEntry]:
    """Build the instances ``specs`` on ``dataset`` into ``out`` as :func:`build_library` does,
    the manifest calling the set ``label``."""
    backends.get(reference_backend)
    limit = checks.real("the reference time limit", reference_time_limit, 0.0)
    entries = []
    with staged_output(out) as folder, deterministic_torch():
        for spec in tqdm(specs, desc="library", unit="instance", disable=not progress):
            entries.append(_build_one(spec, dataset, folder, reference_backend, limit, cache_dir))
        write_manifest(folder, label, entries)
    return entries


def _build_one(
    spec: LibrarySpec,
    dataset: Dataset,
    folder: Path,
    backend: str,
    time_limit: float,
    cache_dir: str | Path | None,
) -> LibraryEntry:
    built, net = instance_form(spec, dataset, cache_dir)
    form = built.form
    path = write_mps(form, folder / f"{spec.name}.mps.gz")
    coefficients = form.coefficient_range() or (None, None)
    if time_limit > 0:
        reference = reference_solve(path, backend, time_limit)
    else:
        reference = dict(best_objective=None, best_bound=None, status="open", solver="")
        reference.update(solve_seconds=0.0, time_limit=0.0)
    return LibraryEntry(
        name=spec.name,
        file=path.name,
        sha256=sha256(path),
        arch=spec.arch,
        data=spec.data,
        samples=spec.samples * _classes(spec, dataset),
        samples_per_class=spec.samples,
        piece=spec.piece,
        piece_layer=built.layer,
        loss=spec.loss,
        scores=spec.scores,
        lam=spec.lam,
        seed=spec.seed,
        rows=form.A.shape[0],
        cols=form.num_cols,
        integers=int(form.integer.sum()),
        nonzeros=int(form.A.nnz),
        coef_min=coefficients[0],
        coef_max=coefficients[1],
        **reference,
        network_sha256=net.digest,
        score_columns=built.score_columns,
        logit_columns=built.logit_columns,
    )


def _classes(spec: LibrarySpec, dataset: Dataset) -> int:
    return 1 if spec.decompose == "class" else dataset.num_classes


def write_manifest(folder: Path, set_name: str, entries: Sequence[LibraryEntry]) -> None:
    """``manifest.json`` (the set, the package version, the machine, the entries) and
    ``manifest.csv`` (one row per entry)."""
    meta = {
        "set": set_name,
        "oamip": __version__,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "instances": entries,
    }
    write_json(folder / MANIFEST_JSON, meta)
    names = [f.name for f in fields(LibraryEntry) if f.name not in COLUMN_FIELDS]
    with open(folder / MANIFEST_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in asdict(e).items()} for e in entries)


def read_manifest(folder: str | os.PathLike) -> list[LibraryEntry]:
    """The entries of the library in ``folder`` (its ``manifest.json``), each file present."""
    folder = Path(folder)
    path = folder / MANIFEST_JSON
    if not path.is_file():
        raise InvalidInputError(
            f"'{folder}' holds no {MANIFEST_JSON}: build a library with oamip library build"
        )
    try:
        entries = [LibraryEntry(**item) for item in json.loads(path.read_text())["instances"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{path} is not a library manifest: {exc}") from None
    missing = [e.file for e in entries if not (folder / e.file).is_file()]
    if missing:
        raise InvalidInputError(
            f"{len(missing)} files of the manifest are missing from '{folder}', e.g. "
            f"{missing[0]}; rebuild the library"
        )
    return entries


def check_hashes(folder: str | os.PathLike, entries: Sequence[LibraryEntry]) -> list[str]:
    """The instances whose file no longer has the manifest's SHA-256."""
    return [e.name for e in entries if sha256(Path(folder) / e.file) != e.sha256]
