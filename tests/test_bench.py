"""``oamip bench`` and ``oamip export`` on a tiny instance set: digits MLP, one sample a class."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
from pathlib import Path

import highspy
import numpy as np
import pytest

from oamip import backends
from oamip.backends import SolveOptions, Status, compile_model
from oamip.cli import bench as bench_command
from oamip.cli import export as export_command
from oamip.errors import BackendUnavailableError, InvalidInputError
from oamip.pipelines import bench
from oamip.training.data import load_digits

INSTALLED = backends.available()
STATUSES = {str(s) for s in Status}
PNG_MAGIC = b"\x89PNG"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="module")
def instance(cache):
    spec = bench.parse_instance("digits-mlp-k1-binary")
    return bench.build_instance(spec, load_digits(), cache)


def parse(adder, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    adder(parser)
    return parser.parse_args(argv)


def test_instance_names_round_trip_through_specs():
    specs = bench.instance_specs(with_mnist=True, sizes=(1, 3))
    assert len(specs) == 3 * 2 * 2
    assert all(bench.parse_instance(s.name) == s for s in specs)
    assert {s.data for s in bench.instance_specs(with_mnist=False)} == {"digits"}


def test_bench_writes_table_json_and_plots(cache, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--sizes", "1", "--time-limit", "0.5", "--gap-points", "1"]
    argv += ["--cache-dir", str(cache), "--out", str(out)]
    assert bench_command.run(parse(bench_command.add_arguments, argv)) == 0
    with open(out / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == [f.name for f in dataclasses.fields(bench.BenchRow)]
    assert len(table) == 2 * len(INSTALLED)
    assert {row["backend"] for row in table} == set(INSTALLED)
    assert {row["status"] for row in table} <= STATUSES
    record = json.loads((out / "results.json").read_text())
    assert len(record["rows"]) == len(table)
    assert len(record["gap_over_time"]) == 2 * len(table)
    for name in ("profile.png", "gap.png"):
        assert (out / name).read_bytes()[:4] == PNG_MAGIC
    assert "digits-mlp-k1-binary" in capsys.readouterr().out


def test_backends_agree_on_the_instance_with_scores_fixed(cache):
    spec = bench.parse_instance("digits-mlp-k1-binary")
    fixed = bench.build_instance(spec, load_digits(), cache)
    im = fixed.importance
    im.fix_scores(im.all_ones())
    fixed.form = compile_model(im.model)
    rows = bench.run_benchmark([fixed], INSTALLED, time_limit=20)
    assert all(r.status == "optimal" for r in rows)
    objectives = [r.objective for r in rows]
    assert max(objectives) - min(objectives) <= 1e-5
    assert objectives[0] == pytest.approx(im.objective_at(im.all_ones()), rel=1e-2)


def row(instance: str, backend: str, status: str, seconds: float) -> bench.BenchRow:
    return bench.BenchRow(
        instance, backend, 0, status, 1.0, 1.0, 0.0, seconds, 0, 0.0, 0, 0, 1, 1, 9
    )


def test_performance_ratios_divide_by_the_best_and_fail_to_infinity():
    rows = [
        row("a", "fast", "optimal", 1.0),
        row("a", "slow", "optimal", 4.0),
        row("b", "fast", "time_limit", 9.0),
        row("b", "slow", "optimal", 2.0),
    ]
    assert bench.performance_ratios(rows) == {"fast": [1.0, math.inf], "slow": [4.0, 1.0]}


@pytest.mark.skipif("gurobi" not in INSTALLED, reason="gurobipy not installed")
def test_too_big_for_gurobi_licence_is_a_row_not_a_crash(cache):
    spec = bench.parse_instance("digits-mlp-k3-continuous")
    big = bench.build_instance(spec, load_digits(), cache)
    assert big.form.num_rows > 2000
    (result,) = bench.run_benchmark([big], ["gurobi"], time_limit=1)
    assert result.status == "error"
    assert "licence" in result.message and "2000" in result.message


def lp_relaxation_optimum(form) -> float:
    relaxed = dataclasses.replace(form, integer=np.zeros_like(form.integer))
    result = backends.get("highs").solve(relaxed, SolveOptions())
    assert result.status == Status.OPTIMAL
    return result.objective


@pytest.mark.parametrize("fmt", bench.EXPORT_FORMATS)
def test_export_reads_back_into_highs_with_the_same_optimum(instance, cache, tmp_path, fmt):
    argv = ["--instance", instance.name, "--format", fmt, "--cache-dir", str(cache)]
    args = parse(export_command.add_arguments, argv + ["--out", str(tmp_path)])
    assert export_command.run(args) == 0
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    read = h.readModel(str(tmp_path / f"{instance.name}.{fmt}"))
    assert read != highspy.HighsStatus.kError  # a warning: tiny weights HiGHS ignores
    lp = h.getLp()
    integer = [int(t) for t in lp.integrality_]
    assert sum(integer) == int(instance.form.integer.sum())
    h.changeColsIntegrality(
        lp.num_col_, np.arange(lp.num_col_, dtype=np.int32), np.zeros(lp.num_col_, dtype=np.uint8)
    )
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    expected = lp_relaxation_optimum(instance.form)
    assert h.getInfo().objective_function_value == pytest.approx(expected, rel=1e-7, abs=1e-7)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: bench.parse_instance("digits-resnet-k1-binary"), InvalidInputError),
        (lambda: bench.parse_instance("digits-lenet5-k1-binary"), InvalidInputError),
        (lambda: bench.instance_specs(False, sizes=(0,)), InvalidInputError),
        (lambda: bench.instance_specs(False, scores=("fuzzy",)), InvalidInputError),
        (lambda: bench.run_benchmark([], ["highs"], time_limit=0), InvalidInputError),
        (lambda: bench.run_benchmark([], ["highs"], time_limit=1, repeats=0), InvalidInputError),
        (lambda: bench.run_benchmark([], ["highs"], time_limit=math.nan), InvalidInputError),
        (lambda: bench.run_benchmark([], ["highs"], time_limit=1, repeats=1.5), InvalidInputError),
        (lambda: bench.run_benchmark([], ["highs"], time_limit=1, threads=0), InvalidInputError),
        (lambda: bench.run_benchmark([], ["nosuch"], time_limit=1), BackendUnavailableError),
    ],
)
def test_bad_arguments_raise(call, error):
    with pytest.raises(error):
        call()


def test_mnist_instance_without_data_is_refused(tmp_path):
    args = parse(export_command.add_arguments, ["--instance", "mnist-lenet5-k1-binary"])
    args.out = str(tmp_path / "out")
    with pytest.raises(InvalidInputError, match="--data mnist:PATH"):
        export_command.run(args)
    assert not (tmp_path / "out").exists()


def test_data_other_than_mnist_is_refused(tmp_path):
    args = parse(bench_command.add_arguments, ["--data", "digits", "--out", str(tmp_path)])
    with pytest.raises(InvalidInputError, match="mnist:PATH"):
        bench_command.run(args)


@pytest.mark.parametrize("points", ["-1", "2000"])
def test_gap_points_out_of_range_are_refused_before_any_work(points, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "build_instances", lambda *args: pytest.fail("instances were built"))
    argv = ["--gap-points", points, "--out", str(tmp_path / "out")]
    with pytest.raises(InvalidInputError, match=f"--gap-points .* 0 to 10, got {points}"):
        bench_command.run(parse(bench_command.add_arguments, argv))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--backends", "--scores", "--sizes"])
def test_an_empty_list_is_refused(option, capsys):
    with pytest.raises(SystemExit):
        parse(bench_command.add_arguments, [option, ","])
    assert f"argument {option}: expected" in capsys.readouterr().err


def test_the_cache_dir_help_names_the_default(monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    parser = argparse.ArgumentParser()
    bench_command.add_arguments(parser)
    default = bench.default_cache_dir().relative_to(Path.home())
    assert f"~/{default.as_posix()}" in " ".join(parser.format_help().split())
