"""Signals and concurrent runs, in real processes.

SIGINT and SIGTERM stop ``oamip`` the same way at any moment: during its start-up (seconds of
imports) and while it writes its output, with one line on stderr, status 130 or 143, and no
staging folder or partial file left. Two runs writing one ``--out`` leave the whole set of files
of one of them. Moments inside a run are reached by small driver scripts that import oamip,
wrap one of its functions to signal the process itself at that point, and call
``oamip.cli.main``: nothing in the library knows it is being tested.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs the /proc file system (Linux)"
)

STOPS = [signal.SIGINT, signal.SIGTERM]
FAST = ["--time-limit", "2", "--finetune-epochs", "0"]
"""Options that keep a real ``oamip prune`` run short."""
START_UP_SECONDS = 60
RUN_SECONDS = 300


def _names(folder: Path) -> list[str]:
    """Every entry below ``folder``, hidden ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _spawn(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _handles(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _wait_for_handler(process: subprocess.Popen) -> None:
    """Wait until ``oamip`` has installed its SIGTERM handler (Python's own start-up does not
    handle SIGTERM, so this is the first moment the command can answer a signal)."""
    deadline = time.monotonic() + START_UP_SECONDS
    while not _handles(process.pid, signal.SIGTERM):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "oamip never installed its signal handlers"
        time.sleep(0.001)


def _torch_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def _one_error_line(stderr: str, signum: int) -> None:
    name = signal.Signals(signum).name
    assert stderr == f"oamip: error: interrupted by {name}; no partial output was written\n"


COMMANDS = {
    "python -m oamip": [sys.executable, "-m", "oamip"],
    "console script": [str(Path(sys.executable).with_name("oamip"))],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("signum", STOPS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_during_start_up_exits_with_one_line(command, signum, tmp_path):
    if not Path(COMMANDS[command][0]).exists():
        pytest.skip("the oamip console script is not installed")
    process = _spawn([*COMMANDS[command], "prune", *FAST, "--out", "out"], tmp_path)
    _wait_for_handler(process)
    assert not _torch_loaded(process.pid), "the signal must arrive before torch is imported"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=START_UP_SECONDS)
    assert process.returncode == 128 + signum
    _one_error_line(stderr, signum)
    assert stdout == ""
    assert _names(tmp_path) == []


def _driver(tmp_path: Path, body: str) -> Path:
    """A script that runs ``body`` (which prepares the moment to signal at) and then
    ``oamip`` with the script's arguments, exiting with its status."""
    script = tmp_path / "driver.py"
    script.write_text(
        "import os, signal, sys, time\nimport oamip.cli\n"
        + textwrap.dedent(body)
        + "\nraise SystemExit(oamip.cli.main(sys.argv[1:]))\n"
    )
    return script


def _run_driver(script: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
    )


def _stopped_with_one_error_line(done: subprocess.CompletedProcess, signum: int) -> None:
    """Status 128 + ``signum``, the error line last on stderr, once, and no traceback
    (progress bars share stderr with it)."""
    assert done.returncode == 128 + signum, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.count("oamip: error:") == 1
    _one_error_line(done.stderr.splitlines()[-1] + "\n", signum)


WRITE_HALF_A_REPORT_THEN_SIGNAL = """
import oamip.cli.prune as command

def write_report(report, folder, *_):
    (folder / "report.json").write_text('{"dataset": "dig')
    os.kill(os.getpid(), SIGNUM)
    time.sleep(30)
    raise AssertionError("the signal did not stop the run")

command.write_report = write_report
"""


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.slow
def test_a_signal_while_writing_output_leaves_nothing(signum, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    body = WRITE_HALF_A_REPORT_THEN_SIGNAL.replace("SIGNUM", str(int(signum)))
    script = _driver(tmp_path, body)
    done = _run_driver(script, ["prune", *FAST, "--out", str(work / "new" / "out")], work)
    _stopped_with_one_error_line(done, signum)
    assert _names(work) == []


SIGNAL_AFTER_THE_FIRST_MOVE = """
import oamip.files

moves = []

def replace(source, target):
    os.rename(source, target)
    if os.path.basename(os.path.dirname(target)) == "out":  # a move into --out
        moves.append(target)
        if len(moves) == 1:
            os.kill(os.getpid(), SIGNUM)
            time.sleep(0.2)

oamip.files.os.replace = replace
"""


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.slow
def test_a_signal_while_moving_the_files_in_lets_the_whole_set_arrive(signum, tmp_path):
    """A signal between the moves of two files is delivered once all are in place: the
    folder holds the complete new set, never half of it, and the run still reports it."""
    work = tmp_path / "work"
    out = work / "out"
    out.mkdir(parents=True)
    (out / "report.json").write_text('{"old": true}')
    (out / "notes.txt").write_text("the user's")
    script = _driver(tmp_path, SIGNAL_AFTER_THE_FIRST_MOVE.replace("SIGNUM", str(int(signum))))
    done = _run_driver(script, ["prune", *FAST, "--out", str(out)], work)
    _stopped_with_one_error_line(done, signum)
    assert _names(work) == [
        "out",
        "out/accuracy_vs_units_removed.png",
        "out/notes.txt",
        "out/pruned.pt",
        "out/report.json",
        "out/scores_per_layer.png",
        "out/units_kept_per_layer.png",
    ]
    assert "old" not in json.loads((out / "report.json").read_text())
    assert (out / "notes.txt").read_text() == "the user's"


WRITER = """
import sys, time
from pathlib import Path
from oamip.files import staged_output

import oamip.files

name, out, sync = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
pause, start, files = float(sys.argv[4]), float(sys.argv[5]), sys.argv[6:]
real_replace = oamip.files.os.replace

def slow_replace(source, target):
    real_replace(source, target)
    time.sleep(pause)

oamip.files.os.replace = slow_replace
with staged_output(out) as folder:
    for file in files:
        (folder / file).write_text(name)
    (sync / f"{name}.ready").touch()
    while not (sync / "go").exists():
        time.sleep(0.005)
    time.sleep(start)
"""
FILES = ("a.txt", "b.txt", "c.txt", "d.txt")


def test_concurrent_runs_on_one_out_leave_the_files_of_one_run(tmp_path):
    """Run "slow" moves its four files in at 0.2 s intervals, run "fast" starts moving 0.1 s
    later at 0.01 s intervals: file by file, "fast" would overtake "slow" and leave a mix."""
    work, sync = tmp_path / "work", tmp_path / "sync"
    work.mkdir()
    sync.mkdir()
    out = work / "new" / "out"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    runs = {"slow": ("0.2", "0"), "fast": ("0.01", "0.1")}
    processes = [
        _spawn([sys.executable, str(script), name, str(out), str(sync), *timing, *FILES], work)
        for name, timing in runs.items()
    ]
    deadline = time.monotonic() + START_UP_SECONDS
    while not all((sync / f"{name}.ready").exists() for name in runs):
        assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (sync / "go").touch()
    for process in processes:
        _, stderr = process.communicate(timeout=RUN_SECONDS)
        assert process.returncode == 0, stderr
    assert _names(work) == ["new", "new/out", *(f"new/out/{file}" for file in FILES)]
    writers = {(out / file).read_text() for file in FILES}
    assert len(writers) == 1, {file: (out / file).read_text() for file in FILES}


def test_the_entry_point_imports_nothing_heavy():
    """``import oamip.cli`` (what the console script does before ``main``) loads neither
    torch nor numpy, so the signal handlers are in place within milliseconds."""
    code = "import sys, oamip.cli; print(sorted({'torch', 'numpy', 'pyomo'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


LIBRARY_WRITER = """
import os, signal, sys
from pathlib import Path
import oamip.files

real_replace = oamip.files.os.replace

def replace(source, target):
    real_replace(source, target)
    os.kill(os.getpid(), signal.SIGTERM)

oamip.files.os.replace = replace
with oamip.files.staged_output(Path(sys.argv[1])) as folder:
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text(name)
print("SIGTERM was not delivered")
"""


def test_a_default_sigterm_during_the_moves_ends_the_process_after_the_whole_set(tmp_path):
    """A program that leaves SIGTERM at its default (the process ends) and writes with
    ``staged_output``: the signal ends it only once every file is in and the staging folder
    is gone."""
    script = tmp_path / "writer.py"
    script.write_text(LIBRARY_WRITER)
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, str(script), str(work / "out")], capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGTERM, done.stdout + done.stderr
    assert _names(work) == ["out", "out/a.txt", "out/b.txt", "out/c.txt"]
