"""The extension examples of docs/extending.md, kept honest by running them.

1. A formulation variant: the importance MIP with an L1 multi-class margin loss
   ``sum_{j != y} max(0, margin + z_j - z_y)`` instead of cross-entropy, built from the
   formulation's own pieces (variable table, row blocks, logit and score handles) and solved by
   every installed backend, checked against brute force over all binary score vectors.
2. A backend: scipy's ``milp`` as one module, taken from docs/extending.md's "A backend"
   section, added by one ``register`` call and, in a fresh interpreter, as an installed entry
   point that ``oamip.backends``, the generic backend tests, ``--backend`` and ``oamip bench``
   find without any import.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyomo.environ as pyo
import pytest
from pyomo.core.expr.numeric_expr import LinearExpression

from oamip import backends
from oamip.adapters import extract
from oamip.backends import SolveOptions, Status
from oamip.formulations.blocks import RowBlock
from oamip.formulations.importance import (
    ImportanceModel,
    ImportanceSettings,
    build_importance_model,
    sparsity_term,
)
from tests import nets

MARGIN = 1.0
LAM = 2.0


# --- 1. a formulation variant ----------------------------------------------------------------


def l1_margin_values(logits: np.ndarray, labels: np.ndarray, margin: float) -> np.ndarray:
    """``sum_{j != y} max(0, margin + z_j - z_y)`` per sample."""
    rows = np.arange(len(labels))
    terms = np.maximum(0.0, margin + logits - logits[rows, labels][:, None])
    terms[rows, labels] = 0.0
    return terms.sum(axis=1)


def build_l1_margin_model(network, x, y, settings: ImportanceSettings) -> ImportanceModel:
    """The importance MIP with the L1 margin loss: build the standard model, switch off its
    cross-entropy cuts, add one epigraph variable per (sample, wrong class) and a new objective."""
    im = build_importance_model(network, x, y, settings)
    im.model.ce_cuts.deactivate()
    im.model.objective.deactivate()
    n, classes = im.logit_ids.shape
    k, j = np.nonzero(np.arange(classes)[None, :] != im.y[:, None])
    u = im.table.add("l1_margin", np.zeros(len(k)), np.full(len(k), np.inf))
    rows = RowBlock()
    r = rows.new_rows(np.full(len(k), MARGIN), np.inf)
    rows.terms(r, u, 1.0)
    rows.terms(r, im.logit_ids[k, j], -1.0)
    rows.terms(r, im.logit_ids[k, im.y[k]], 1.0)
    rows.attach(im.table, "l1_margin_rows")
    ids, coefs = [], []
    for layer, score in im.score_ids.items():
        ids += score.tolist()
        coefs += [1.0 / network.layers[layer].n_units] * len(score)
    ids += u.tolist()
    coefs += [settings.lam / n] * len(u)
    im.model.l1_objective = pyo.Objective(
        expr=LinearExpression(
            constant=0.0, linear_coefs=coefs, linear_vars=[im.table.variables[i] for i in ids]
        )
    )
    return im


def brute_force(im: ImportanceModel, margin: float, lam: float) -> float:
    """The variant's optimum over every binary score vector keeping ``min_keep`` units a layer."""
    sizes = {i: len(ids) for i, ids in im.score_ids.items()}
    best = np.inf
    for bits in itertools.product((0.0, 1.0), repeat=sum(sizes.values())):
        scores, start = {}, 0
        for i, size in sizes.items():
            scores[i] = np.array(bits[start : start + size])
            start += size
        if min(v.sum() for v in scores.values()) < im.settings.min_keep:
            continue
        loss = l1_margin_values(im.forward(scores), im.y, margin)
        best = min(best, sparsity_term(im.network, scores, "layer") + lam * float(np.mean(loss)))
    return best


@pytest.fixture(scope="module")
def variant():
    model = nets.mlp(seed=3, sizes=(4, 4, 3, 3))
    x = np.random.default_rng(3).uniform(0, 1, (5, 4))
    y = np.array([0, 1, 2, 0, 1])
    network = extract(model, x).network
    settings = ImportanceSettings(lam=LAM, scores="binary")
    im = build_l1_margin_model(network, x, y, settings)
    return im, brute_force(im, MARGIN, LAM)


@pytest.mark.parametrize("name", backends.available())
def test_l1_margin_variant_matches_brute_force_on_every_backend(variant, name):
    im, optimum = variant
    result = backends.get(name).solve(im.model, SolveOptions(time_limit=30))
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(optimum, abs=1e-5)
    scores = im.score_values()
    loss = l1_margin_values(im.forward(scores), im.y, MARGIN)
    assert sparsity_term(im.network, scores, "layer") + LAM * loss.mean() == pytest.approx(
        optimum, abs=1e-5
    )


# --- 2. a backend ----------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def readme_blocks(section: str) -> list[tuple[str, str]]:
    """The fenced code blocks ``(language, text)`` of the docs/extending.md section with this
    heading."""
    text = (ROOT / "docs" / "extending.md").read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```(\w+)[^\n]*\n(.*?)```", text[start : end if end > 0 else None], re.S)


BLOCKS = readme_blocks("A backend")
MODULE = next(code for lang, code in BLOCKS if "class ScipyMilpBackend(Backend)" in code)
REGISTRATION = next(code for lang, code in BLOCKS if "backends.register(" in code)
PYPROJECT = next(code for lang, code in BLOCKS if lang == "toml")


def entry_points_txt(pyproject: str) -> str:
    """A pyproject ``[project.entry-points."group"]`` table as the ``entry_points.txt`` that
    installing the package writes."""
    group = re.search(r'^\[project\.entry-points\."([\w.]+)"\]$', pyproject, re.M).group(1)
    entries = re.findall(r'^([\w-]+) = "([\w.]+:[\w.]+)"$', pyproject, re.M)
    assert entries, pyproject
    return f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries)


def install(site: Path, entry_points: str) -> Path:
    """Install the README's module into the folder ``site`` as the distribution
    ``oamip-scipy`` declaring ``entry_points``, as pip would (a ``*.dist-info`` folder)."""
    site.mkdir()
    (site / "oamip_scipy.py").write_text(MODULE)
    info = site / "oamip_scipy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: oamip-scipy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    return site


def fresh_python(site: Path, *args: str, timeout: float = 300) -> str:
    """Run ``python args`` in a fresh interpreter that has ``site`` on its path; its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def readme_backend(tmp_path, monkeypatch):
    """The README's module importable, and its registration block run."""
    (tmp_path / "oamip_scipy.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    exec(REGISTRATION, {})
    yield
    sys.modules.pop("oamip_scipy", None)


def test_a_registered_backend_is_available_and_solves_the_variant(variant, readme_backend):
    im, optimum = variant
    assert "scipy" in backends.available()
    result = backends.get("scipy").solve(im.model)
    assert result.backend == "scipy"
    assert result.status == Status.OPTIMAL
    assert result.objective == pytest.approx(optimum, abs=1e-5)
    assert result.bound == pytest.approx(optimum, abs=1e-5)


FOUND_WITHOUT_IMPORT = """
import sys
from oamip import backends

assert "oamip_scipy" not in sys.modules, "loaded before anything asked for a backend"
assert "scipy" in backends.available() and "scipy" in backends.known()
from tests.test_backends import milp_model

model, expected = milp_model()
result = backends.get("scipy").solve(model)
print(result.backend, result.status, result.objective == expected, model.x.value + 0.0)
"""


def test_an_installed_entry_point_backend_is_found_without_any_import(tmp_path):
    site = install(tmp_path / "site", entry_points_txt(PYPROJECT))
    output = fresh_python(site, "-c", FOUND_WITHOUT_IMPORT)
    assert output.split() == ["scipy", "optimal", "True", "4.0"]


def test_the_generic_backend_tests_run_on_an_entry_point_backend(tmp_path):
    site = install(tmp_path / "site", entry_points_txt(PYPROJECT))
    tests = [
        "-m",
        "pytest",
        "tests/test_backends.py",
        "-k",
        "scipy",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    summary = fresh_python(site, *tests).strip().splitlines()[-1]
    passed = re.match(r"(\d+) passed, \d+ deselected", summary)
    assert passed and int(passed.group(1)) >= 15, summary


@pytest.mark.slow
def test_the_command_line_sees_an_entry_point_backend(tmp_path):
    """``--backend`` lists it and ``oamip bench`` solves with it (one small instance: the
    time goes to training the digits network and importing torch)."""
    site = install(tmp_path / "site", entry_points_txt(PYPROJECT))
    assert re.search(
        r"--backend \{[^}]*\bscipy\b", fresh_python(site, "-m", "oamip", "prune", "--help")
    )
    out = tmp_path / "bench"
    bench = ["--backends", "scipy", "--sizes", "1", "--scores", "binary", "--time-limit", "0.5"]
    bench += ["--gap-points", "0", "--cache-dir", str(tmp_path / "zoo"), "--out", str(out)]
    fresh_python(site, "-m", "oamip", "bench", *bench)
    with open(out / "results.csv") as handle:
        (row,) = csv.DictReader(handle)
    assert row["backend"] == "scipy" and row["status"] in ("optimal", "time_limit")
    assert float(row["objective"]) > 0


BROKEN = """
import warnings
from oamip import backends
from oamip.errors import BackendUnavailableError

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    names = backends.available()
assert "scipy" in names and not {"broken", "misnamed"} & set(names), names
assert {"broken", "misnamed"} <= set(backends.known())
assert len(caught) == 2, [str(w.message) for w in caught]
for name in ("broken", "misnamed"):
    try:
        backends.get(name)
    except BackendUnavailableError as exc:
        print(exc)
"""


def test_a_broken_entry_point_is_named_and_does_not_break_the_others(tmp_path):
    broken = "broken = oamip_no_such_module:Backend\nmisnamed = oamip_scipy:ScipyMilpBackend\n"
    site = install(tmp_path / "site", entry_points_txt(PYPROJECT) + broken)
    lines = fresh_python(site, "-c", BROKEN).splitlines()
    assert len(lines) == 2
    assert "'broken = oamip_no_such_module:Backend'" in lines[0]
    assert "ModuleNotFoundError" in lines[0] and "oamip_no_such_module" in lines[0]
    assert "'misnamed = oamip_scipy:ScipyMilpBackend'" in lines[1]
    assert "names a backend called 'scipy'" in lines[1]
