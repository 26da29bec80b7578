"""Output folders and files: checked before any work, written all or nothing, nothing new left
on failure."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from torch import nn

import oamip
from oamip.errors import InvalidInputError
from oamip.files import (
    atomic_path,
    check_output_folder,
    folder_lock,
    signals_held,
    staged_output,
)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_success_creates_missing_parents_and_replaces_same_named_files(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with staged_output(out) as folder:
        (folder / "x.txt").write_text("first")
    with staged_output(out) as folder:
        (folder / "x.txt").write_text("second")
    assert (out / "x.txt").read_text() == "second"
    assert _tree(tmp_path) == ["a", "a/b", "a/b/out", "a/b/out/x.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_or_interrupted_run_leaves_no_new_folders(tmp_path, error):
    with pytest.raises(error), staged_output(tmp_path / "np1" / "np2" / "out") as folder:
        (folder / "x.txt").write_text("half")
        raise error
    assert _tree(tmp_path) == []


def test_a_failed_run_leaves_an_existing_folder_untouched(tmp_path):
    (tmp_path / "x.txt").write_text("kept")
    with pytest.raises(RuntimeError), staged_output(tmp_path) as folder:
        (folder / "x.txt").write_text("half")
        raise RuntimeError
    assert _tree(tmp_path) == ["x.txt"]
    assert (tmp_path / "x.txt").read_text() == "kept"


def test_a_failing_spr_prune_leaves_no_new_folders(tmp_path):
    no_hidden_layer = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(InvalidInputError, match="SPR needs"):
        oamip.spr_prune(no_hidden_layer, "digits", out=tmp_path / "np1" / "np2" / "out")
    assert _tree(tmp_path) == []


def test_a_missing_nested_folder_passes_the_check_and_is_not_created(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("where", ["afile", "afile/sub", "afile/sub/deeper"])
def test_a_file_on_the_way_is_refused(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InvalidInputError, match="'.*afile' exists and is not a folder"):
        check_output_folder(tmp_path / where, "--out")
    with pytest.raises(InvalidInputError, match="not a folder"), staged_output(tmp_path / where):
        pytest.fail("staged_output must refuse before the run starts")
    assert _tree(tmp_path) == ["afile"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc file system")
def test_a_folder_that_cannot_be_written_is_refused():
    with pytest.raises(InvalidInputError, match="--out '/proc/x': cannot write in '/proc'"):
        check_output_folder("/proc/x", "--out")


def test_atomic_path_replaces_the_file_at_once_with_new_file_permissions(tmp_path):
    target = tmp_path / "model.txt"
    target.write_text("old")
    target.chmod(0o600)
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert _tree(tmp_path) == ["model.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_path_leaves_the_old_file_and_no_temporary_on_failure(tmp_path, error):
    target = tmp_path / "model.txt"
    target.write_text("old")
    with pytest.raises(error), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise error
    assert target.read_text() == "old"
    assert _tree(tmp_path) == ["model.txt"]


def test_atomic_path_creates_nothing_on_failure_when_there_was_no_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert _tree(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def recorded_sigterm():
    """SIGTERM handled by a recorder for the test (a real signal, sent to this process)."""
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, previous)


def test_signals_held_delivers_a_signal_after_the_block(recorded_sigterm):
    with signals_held():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0.05)
        assert recorded_sigterm == []
    assert recorded_sigterm == [signal.SIGTERM]


def test_signals_held_turns_ctrl_c_into_an_interrupt_after_the_block():
    steps = []
    with pytest.raises(KeyboardInterrupt), signals_held():
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.05)
        steps.append("block finished")
    assert steps == ["block finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_while_files_move_in_is_delivered_after_the_whole_set(
    tmp_path, recorded_sigterm, monkeypatch
):
    real_replace = os.replace
    seen_at_each_move = []

    def replace(source, target):
        real_replace(source, target)
        signal.raise_signal(signal.SIGTERM)
        seen_at_each_move.append(list(recorded_sigterm))

    out = tmp_path / "out"
    with staged_output(out) as folder:
        for name in ("a", "b", "c"):
            (folder / name).write_text(name)
        monkeypatch.setattr(os, "replace", replace)
    assert seen_at_each_move == [[], [], []]
    assert recorded_sigterm == [signal.SIGTERM]
    assert _tree(tmp_path) == ["out", "out/a", "out/b", "out/c"]


def test_folder_lock_makes_a_second_holder_wait(tmp_path):
    events = []
    held = threading.Event()

    def first_holder():
        with folder_lock(tmp_path):
            held.set()
            time.sleep(0.3)
            events.append("first releases")

    thread = threading.Thread(target=first_holder)
    thread.start()
    held.wait()
    with folder_lock(tmp_path):
        events.append("second holds")
    thread.join()
    assert events == ["first releases", "second holds"]
