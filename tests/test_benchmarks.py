"""benchmarks/: the shared results writer and data-path resolver, and the results index."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import common, index

FILES = sorted(p.name for p in index.RESULTS.iterdir() if p.is_file() and p != index.INDEX)


def test_the_index_is_current():
    assert index.INDEX.read_text() == index.render(), "run: python benchmarks/index.py"


@pytest.mark.parametrize("name", FILES)
def test_the_index_lists_every_results_file(name):
    assert f"[{name}]({name})" in index.INDEX.read_text()


def test_the_data_folder_comes_from_the_option_then_the_environment(tmp_path, monkeypatch):
    option, env = tmp_path / "option", tmp_path / "env"
    option.mkdir()
    env.mkdir()
    monkeypatch.setenv(common.DATA_ENV, str(env))
    assert common.data_dir(option) == option
    assert common.data_dir() == env
    args = argparse.Namespace(data=None, data_dir=None)
    assert common.data_spec(args, "x.npz") == f"npz:{env / 'x.npz'}"
    args.data = "digits"
    assert common.data_spec(args, "x.npz") == "digits"


def test_a_missing_data_folder_says_how_to_set_it(tmp_path, monkeypatch):
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match=f"--data-dir DIR or set {common.DATA_ENV}"):
        common.data_dir()


def test_without_option_or_environment_a_shared_data_folder_beside_the_repository(monkeypatch):
    monkeypatch.delenv(common.DATA_ENV, raising=False)
    shared = [p / "shared" / "data" for p in common.ROOT.parents]
    found = next((folder for folder in shared if folder.is_dir()), None)
    if found is None:
        with pytest.raises(SystemExit, match="no shared/data folder"):
            common.data_dir()
    else:
        assert common.data_dir() == found


def test_results_record_command_machine_commit_and_version(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    run = common.run_info(["--flag", "a b"])
    written = common.write_results("demo-2026-01-01", {"rows": [1]}, "# Demo\n", run)
    assert [p.name for p in written] == ["demo-2026-01-01.json", "demo-2026-01-01.md"]
    record = json.loads(written[0].read_text())
    assert record["rows"] == [1]
    for key in ("command", "date", "cpus", "cpu_model", "memory_gib", "platform", "commit"):
        assert record["run"][key], key
    assert record["run"]["command"].endswith("--flag 'a b'")
    assert isinstance(record["run"]["dirty"], bool)
    assert record["run"]["oamip"] == common.__version__
    text = written[1].read_text()
    assert text.startswith("# Demo\n\nProduced by `python ")
    assert run["commit"][:12] in text


def test_every_bench_script_uses_the_shared_writer():
    for script in sorted(Path(common.__file__).parent.glob("bench_*.py")):
        source = script.read_text()
        assert "write_results(" in source, script.name
        assert "shared/data" not in source and "'shared'" not in source, script.name
