"""What every benchmark script shares: where the data is, and how results are written.

A script adds ``--data`` and ``--data-dir`` with :func:`add_data_arguments` and reads
:func:`data_spec` (``--data``, else its archive in the data folder: ``--data-dir``, else
``$OAMIP_DATA``, else a ``shared/data`` folder beside the repository), takes :func:`run_info`
when it starts and writes ``results/NAME.json`` and ``results/NAME.md`` with
:func:`write_results`, which records in both the command line, the date, the machine, the git
commit (and whether the tree had uncommitted changes) and the oamip version.
``python benchmarks/index.py`` then lists the new files in ``results/INDEX.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from oamip.files import atomic_path, write_json
from oamip.pipelines.bench import machine
from oamip.version import __version__

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA_ENV = "OAMIP_DATA"
"""The environment variable naming the folder of the data archives."""
MNIST = "mnist-10k.npz"
FASHION_MNIST = "fashion-mnist-14k.npz"


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """``--data-dir DIR``: the folder of the data archives (see :func:`data_dir`)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder of the data archives (default: ${DATA_ENV}, else shared/data beside the "
        "repository)",
    )


def data_dir(given: Path | None = None) -> Path:
    """The folder of the data archives: ``given`` (``--data-dir``), else ``$OAMIP_DATA``,
    else the first ``shared/data`` folder beside the repository or one of its parents; exits
    with a message saying how to set it when none exists."""
    env = os.environ.get(DATA_ENV)
    if given is not None or env:
        folder = Path(given or env).expanduser()
        if not folder.is_dir():
            raise SystemExit(f"data folder {folder} does not exist; {_how_to_set()}")
        return folder
    for parent in ROOT.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    raise SystemExit(f"no shared/data folder found beside {ROOT}; {_how_to_set()}")


def _how_to_set() -> str:
    return f"pass --data-dir DIR or set {DATA_ENV}=DIR (the folder holding {MNIST})"


def add_data_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--data SPEC`` (a data spec of ``oamip.training.data.load_data``) and ``--data-dir``,
    the folder of the archive ``default`` that is read when ``--data`` is not given."""
    add_data_dir(parser)
    parser.add_argument(
        "--data",
        default=None,
        metavar="SPEC",
        help=f"a data spec for load_data (default: the data folder's {default})",
    )


def data_spec(args: argparse.Namespace, default: str, kind: str = "npz") -> str:
    """``args.data``, else ``kind:PATH`` of the archive ``default`` in the data folder."""
    return args.data or f"{kind}:{data_dir(args.data_dir) / default}"


def run_info(argv: Sequence[str] | None = None) -> dict:
    """Where and how this run happens: the command line (the script's, with ``argv`` if given
    instead of ``sys.argv[1:]``), date and machine (platform, CPU count and model, memory,
    Python and library versions), git commit and oamip version."""
    return {
        **machine(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "command": command_line(argv),
        **_git_state(),
        "oamip": __version__,
    }


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this script (its arguments: ``argv``, default
    ``sys.argv[1:]``), as run from the repository's root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    arguments = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", str(shown), *arguments])


def _cpu_model() -> str:
    """The processor's model name (Linux's /proc/cpuinfo, else what platform says)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    """The machine's physical memory in GiB, where the system says."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _git_state() -> dict:
    """The repository's commit and whether tracked files differ from it (None: no git)."""
    commit = _git("rev-parse", "HEAD")
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if changes is None else bool(changes)}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance_line(run: dict) -> str:
    """One Markdown line saying how a result was produced."""
    commit = run["commit"][:12] if run["commit"] else "unknown"
    dirty = " with uncommitted changes" if run["dirty"] else ""
    return (
        f"Produced by `{run['command']}` on {run['date']}: oamip {run['oamip']}, commit "
        f"{commit}{dirty}; {run['cpus']} CPUs ({run['cpu_model']}), {run['memory_gib']} GiB, "
        f"{run['platform']}; Python {run['python']}, HiGHS {run['highspy']}, Pyomo "
        f"{run['pyomo']}, numpy {run['numpy']}, torch {run['torch']}."
    )


def write_results(name: str, record: dict, markdown: str, run: dict) -> list[Path]:
    """Write ``results/<name>.json`` (``record`` with the run's provenance under ``run``, in
    place of any it had) and
    ``results/<name>.md`` (``markdown`` followed by the provenance line), each all or nothing;
    the paths written."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    with atomic_path(json_path) as tmp:
        write_json(tmp, {"run": run, **{k: v for k, v in record.items() if k != "run"}})
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"{markdown.rstrip()}\n\n{provenance_line(run)}\n")
    return [json_path, md_path]


def today(run: dict) -> str:
    """The run's date, ``YYYY-MM-DD``, as the results' file names end."""
    return run["date"][:10]
