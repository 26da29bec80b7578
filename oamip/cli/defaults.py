"""The defaults and choices that ``oamip --help`` shows, copied from the modules that own them.

Building the parser must not import torch, Pyomo or the solvers (``oamip --help`` and argument
errors answer in a fraction of a second), and the modules that own these values do. Every copy
names its source in :data:`SOURCES` or :data:`SETTINGS`; tests/test_cli_startup.py checks each
against it, so a default changed at its source fails there instead of showing a stale value.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from types import SimpleNamespace

ARCHITECTURES = ("mlp", "lenet5", "vgg", "resnet8", "resnet20")
DATA_SPECS = "digits | mnist:PATH | fashion-mnist:PATH | npz:PATH | PATH.npz"
LOSSES = ("hinge", "ce", "fidelity")
SCORE_MODES = ("continuous", "binary")
SPARSITY_MODES = ("layer", "unit")
RESIDUAL_SCORES = ("both", "inner", "group")
BUILTIN_BACKENDS = ("cbc", "gurobi", "highs", "scip")
BACKEND_ENTRY_POINTS = "oamip.backends"
DEFAULT_LAMS = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)

BENCH_SIZES = (1, 2)
BENCH_TIME_LIMIT = 60.0
BENCH_REPEATS = 1
BENCH_THREADS = 1
BENCH_GAP_POINTS = 3
BENCH_MAX_GAP_POINTS = 10
BENCH_OUT = "oamip-bench"
EXPORT_FORMATS = ("mps", "lp")
AUX_SAMPLES = 2000

COMPRESS_TIME_LIMIT = 60.0
COMPRESS_OUT = "oamip-compressed"
LIBRARY_SETS = ("small", "standard")
LIBRARY_OUT = "oamip-library"
LIBRARY_REFERENCE_BACKEND = "highs"
LIBRARY_SMALL_TIME_LIMIT = 30.0
LIBRARY_STANDARD_TIME_LIMIT = 60.0

SPR_LAM = 0.03
SPR_ALPHA = 0.5
SPR_M_SCALE = 1.0
SPR_EPOCHS = 10
SPR_FINETUNE_EPOCHS = 1
SPR_LR = 3e-3
SPR_OUT = "oamip-spr-out"
SPR_UNITS = ("both", "inner", "group")
SPR_DEFAULT_UNITS = "inner"

SOURCES = {
    "ARCHITECTURES": "oamip.training.models:ARCHITECTURES",
    "DATA_SPECS": "oamip.training.data:DATA_SPECS",
    "LOSSES": "oamip.formulations:LOSSES",
    "SCORE_MODES": "oamip.formulations:SCORE_MODES",
    "SPARSITY_MODES": "oamip.formulations:SPARSITY_MODES",
    "RESIDUAL_SCORES": "oamip.solve.options:RESIDUAL_SCORES",
    "AUX_SAMPLES": "oamip.solve.options:DEFAULT_AUX_SAMPLES",
    "BACKEND_ENTRY_POINTS": "oamip.backends:ENTRY_POINT_GROUP",
    "DEFAULT_LAMS": "oamip.pipelines.budget:DEFAULT_LAMS",
    "BENCH_SIZES": "oamip.pipelines.bench:DEFAULT_SIZES",
    "BENCH_TIME_LIMIT": "oamip.pipelines.bench:DEFAULT_TIME_LIMIT",
    "BENCH_REPEATS": "oamip.pipelines.bench:DEFAULT_REPEATS",
    "BENCH_THREADS": "oamip.pipelines.bench:DEFAULT_THREADS",
    "BENCH_GAP_POINTS": "oamip.pipelines.bench:DEFAULT_GAP_POINTS",
    "BENCH_MAX_GAP_POINTS": "oamip.pipelines.bench:MAX_GAP_POINTS",
    "BENCH_OUT": "oamip.pipelines.bench:DEFAULT_OUT",
    "EXPORT_FORMATS": "oamip.pipelines.bench:EXPORT_FORMATS",
    "COMPRESS_TIME_LIMIT": "oamip.pipelines.compress:DEFAULT_TIME_LIMIT",
    "COMPRESS_OUT": "oamip.pipelines.compress:DEFAULT_OUT",
    "LIBRARY_SETS": "oamip.pipelines.library:SETS",
    "LIBRARY_OUT": "oamip.pipelines.library:DEFAULT_OUT",
    "LIBRARY_REFERENCE_BACKEND": "oamip.pipelines.library:DEFAULT_REFERENCE_BACKEND",
    "LIBRARY_SMALL_TIME_LIMIT": "oamip.pipelines.library:SMALL_TIME_LIMIT",
    "LIBRARY_STANDARD_TIME_LIMIT": "oamip.pipelines.library:STANDARD_TIME_LIMIT",
    "SPR_LAM": "oamip.pipelines.spr:DEFAULT_LAM",
    "SPR_ALPHA": "oamip.pipelines.spr:DEFAULT_ALPHA",
    "SPR_M_SCALE": "oamip.pipelines.spr:DEFAULT_M_SCALE",
    "SPR_EPOCHS": "oamip.pipelines.spr:DEFAULT_EPOCHS",
    "SPR_FINETUNE_EPOCHS": "oamip.pipelines.spr:DEFAULT_FINETUNE_EPOCHS",
    "SPR_LR": "oamip.pipelines.spr:DEFAULT_SPR_LR",
    "SPR_OUT": "oamip.pipelines.spr:DEFAULT_OUT",
    "SPR_UNITS": "oamip.training.spr:RESIDUAL_UNITS",
    "SPR_DEFAULT_UNITS": "oamip.training.spr:DEFAULT_RESIDUAL_UNITS",
}
"""Each plain copy -> ``module:name`` of its source (a dict source: its keys, in order)."""

SCORING = dict(
    backend="highs",
    samples_per_class=1,
    lam=5.0,
    loss="ce",
    scores="continuous",
    sparsity="layer",
    threshold=0.1,
    residual="inner",
    time_limit=20.0,
    mip_gap=1e-4,
    root_cuts=0,
    device="cpu",
)
PRUNE = SimpleNamespace(
    **SCORING,
    finetune_epochs=1,
    seed=0,
    val_fraction=0.25,
    baseline_samples=512,
    refine_steps=2,
    interpolate_steps=10,
    polish_samples=300,
)
"""The defaults of ``oamip prune``: fields of :class:`oamip.pipelines.prune.PruneSettings`."""
TRANSFER = SimpleNamespace(**SCORING, arch="mlp", hidden=(64, 32), seeds=3)
"""The defaults of ``oamip transfer``: fields of
:class:`oamip.pipelines.transfer.TransferSettings`."""

SETTINGS = {
    "PRUNE": "oamip.pipelines.settings:PruneSettings",
    "TRANSFER": "oamip.pipelines.transfer:TransferSettings",
}
"""Each copy of a settings class's defaults -> ``module:name`` of the class."""


def backend_names() -> list[str]:
    """Every backend name, as :func:`oamip.backends.known` lists them: the built-in ones and
    those other packages declare as entry points (read from their metadata, not imported)."""
    declared = {point.name for point in entry_points(group=BACKEND_ENTRY_POINTS)}
    return sorted({*BUILTIN_BACKENDS, *declared})
