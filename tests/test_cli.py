"""The ``oamip`` command: the embedded default end to end, and one-line refusals of bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from oamip import backends, cli
from oamip.cli import bench as bench_command
from oamip.cli import commands
from oamip.cli import export as export_command
from oamip.cli import prune as prune_command
from oamip.cli import spr as spr_command
from oamip.pipelines import spr as spr_pipeline
from oamip.training.models import mlp

PLOTS = ("scores_per_layer.png", "units_kept_per_layer.png", "accuracy_vs_units_removed.png")
ACCURACY_SLACK = 0.02


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oamip", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "out"
    done = _run("prune", "--out", str(out))
    return done, out


def test_default_run_succeeds_and_prints_a_summary(default_run):
    done, out = default_run
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dense" in done.stdout and "mip" in done.stdout
    assert "report.json" in done.stdout


def test_default_run_uses_the_authors_settings_on_digits(default_run):
    report = json.loads((default_run[1] / "report.json").read_text())
    assert (report["dataset"], report["arch"], report["backend"]) == ("digits", "mlp", "highs")
    assert (report["loss"], report["lam"], report["threshold"]) == ("ce", 5.0, 0.1)
    assert report["scores"] == "continuous"
    assert report["n_mip_samples"] == 10
    assert report["status"] in ("optimal", "time_limit")
    assert report["solve_seconds"] > 0 and report["build_seconds"] > 0


def test_default_run_removes_units_and_keeps_accuracy(default_run):
    report = json.loads((default_run[1] / "report.json").read_text())
    assert 0 < report["units_pruned"] < report["units_total"]
    assert report["units_total"] == sum(layer["units"] for layer in report["layers"])
    assert report["units_pruned"] == sum(layer["units_pruned"] for layer in report["layers"])
    assert report["params_after"] < report["params_total"]
    assert 0 <= report["accuracy_after"] <= 1
    assert report["accuracy_after_finetune"] >= report["accuracy_before"] - ACCURACY_SLACK


def test_default_run_writes_plots(default_run):
    out = default_run[1]
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pruned_model_loads_in_a_fresh_process(default_run):
    out = default_run[1]
    report = json.loads((out / "report.json").read_text())
    code = (
        "import sys, oamip; m = oamip.load_model(sys.argv[1]); "
        "print(sum(p.numel() for p in m.parameters()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out / "pruned.pt")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == report["params_after"]


def test_a_saved_model_is_pruned_again_without_fine_tuning(default_run, tmp_path, capsys):
    first = json.loads((default_run[1] / "report.json").read_text())
    out = tmp_path / "out"
    args = ["--model", str(default_run[1] / "pruned.pt"), "--finetune-epochs", "0"]
    status = cli.main(["prune", *args, "--time-limit", "2", "--out", str(out)])
    assert status == 0, capsys.readouterr().err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy_after_finetune"] is None
    assert report["units_total"] == first["units_total"] - first["units_pruned"]
    assert report["params_total"] == first["params_after"]


def _make_bad_files(folder):
    torch.save(mlp(64, (20,), 10).state_dict(), folder / "state.pt")
    (folder / "corrupt.pt").write_bytes(b"\x00garbage")
    (folder / "empty").mkdir()
    (folder / "file").write_text("x")


BAD_ARGS = {
    "missing model file": lambda d: ["--model", str(d / "missing.pt")],
    "corrupt model file": lambda d: ["--model", str(d / "corrupt.pt")],
    "data folder without files": lambda d: ["--data", f"mnist:{d / 'empty'}"],
    "arch not fitting the state dict": lambda d: [
        "--model",
        str(d / "state.pt"),
        "--arch",
        "lenet5",
    ],
    "state dict without arch": lambda d: ["--model", str(d / "state.pt")],
    "threshold above 1": lambda d: ["--threshold", "1.5"],
    "threshold below 0": lambda d: ["--threshold", "-0.1"],
    "threshold not a number": lambda d: ["--threshold", "high"],
    "unknown data kind": lambda d: ["--data", "cifar:x"],
    "unknown backend": lambda d: ["--backend", "cplex"],
    "zero samples per class": lambda d: ["--samples-per-class", "0"],
    "non-positive time limit": lambda d: ["--time-limit", "0"],
    "out is a file": lambda d: ["--out", str(d / "file")],
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_input_gives_one_line_status_2_and_writes_nothing(case, tmp_path, capsys):
    _make_bad_files(tmp_path)
    args = BAD_ARGS[case](tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    status = cli.main(["prune", *args, *out])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.count("\n") == 1 and captured.err.startswith("oamip: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["prune", "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_real_process_prints_no_traceback(tmp_path):
    done = _run("prune", "--model", str(tmp_path / "missing.pt"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "oamip-out").exists()


COMMANDS = ("prune", "spr", "bench", "export")
FILES = ("afile", "afile/sub")


def _refuse_work(monkeypatch) -> None:
    def started(args):
        raise AssertionError("the command started working")

    monkeypatch.setattr(prune_command, "run", started)
    monkeypatch.setattr(spr_command, "run", started)
    monkeypatch.setattr(bench_command, "run", started)
    monkeypatch.setattr(export_command, "run", started)


BAD_FOLDERS = [
    *((command, "--out", path) for command in COMMANDS for path in FILES),
    *((command, "--cache-dir", path) for command in ("bench", "export") for path in FILES),
]
"""Each command and folder option, with a path that is a file or lies below one."""


@pytest.mark.parametrize(("command", "option", "path"), BAD_FOLDERS)
def test_an_unusable_folder_is_refused_before_any_work(
    command, option, path, tmp_path, monkeypatch, capsys
):
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    _refuse_work(monkeypatch)
    assert cli.main([command, option, path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{option} '{path}' cannot be a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_out_below_a_file_is_refused_by_a_real_process_without_traceback(tmp_path):
    (tmp_path / "afile").write_text("x")
    done = _run("prune", "--time-limit", "1", "--out", "afile/sub", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "'afile' exists and is not a folder" in done.stderr and "Traceback" not in done.stderr


def test_an_interrupted_run_leaves_no_new_folder(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(spr_pipeline, "train", interrupted)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["spr", "--out", "newparent/s-int"]) == cli.INTERRUPTED
    assert capsys.readouterr().err == "oamip: error: interrupted; no partial output was written\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_run_with_its_status_and_the_handlers_are_restored(
    signum, tmp_path, monkeypatch, capsys
):
    """In a program that calls ``cli.main``: SIGTERM stops the run like SIGINT (status 143 or
    130, one line), and the program's own handlers are back afterwards."""

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(spr_pipeline, "train", signalled)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert cli.main(["spr", "--out", str(tmp_path / "newparent" / "out")]) == 128 + signum
    name = signal.Signals(signum).name
    assert capsys.readouterr().err == (
        f"oamip: error: interrupted by {name}; no partial output was written\n"
    )
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before
    assert list(tmp_path.iterdir()) == []


def test_no_command_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit):
        commands.build_parser().parse_args([name, "--help"])
    assert "usage: oamip " + name in capsys.readouterr().out


@pytest.mark.parametrize("flag, expected", [([], False), (["--solver-heuristics"], True)])
def test_solver_heuristics_flag_reaches_the_solver(flag, expected, tmp_path, monkeypatch):
    """``--solver-heuristics`` goes from the command line to the solver (off by default)."""
    seen = []

    def recording(self, model, options=None, warm_start=False):
        seen.append(options.heuristics)
        raise KeyboardInterrupt

    monkeypatch.setattr(type(backends.get("highs")), "solve", recording)
    assert cli.main(["prune", *flag, "--out", str(tmp_path / "out")]) == cli.INTERRUPTED
    assert seen == [expected]
