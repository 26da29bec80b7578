"""Files and output folders that are written completely or not at all.

:func:`atomic_path` writes one file under a temporary name beside it and renames it into place.
Commands check the destination before any work, stage every file in a hidden folder inside the
nearest folder that already exists on the way to it, and create the destination and move the
files into place only when everything succeeded: a failed or interrupted run leaves neither
half-written results nor new, empty folders behind. SIGINT and SIGTERM are held back while
those folders and files are made, moved or removed, and delivered right after, so an interrupt
cannot leave a stray temporary or half a set of files; runs writing the same destination take
turns moving their files in, so it ends with the whole set of one run, never a mix.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from oamip.errors import InvalidInputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, concurrent runs are not kept apart
    fcntl = None

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a run: held back while output files are moved or cleaned up."""


def check_output_folder(path: str | os.PathLike, option: str = "output folder") -> Path:
    """``path`` (user expanded) if it is, or can be created as, a folder this process can write;
    creates nothing, so a command can refuse a bad ``--out`` before it starts working."""
    folder = Path(path).expanduser()
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise InvalidInputError(
            f"{option} '{folder}' cannot be a folder: '{existing}' exists and is not a folder; "
            "name another folder"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise InvalidInputError(
            f"{option} '{folder}': cannot write in '{existing}' ({exc.strerror}); "
            "name a folder you can write to"
        ) from None
    return folder


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a dangling link counts as existing)."""
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


@contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder; on success its files replace those of the same name in
    ``out_dir`` (created with its parents), on any error or interrupt the staging folder is
    removed and ``out_dir`` and its parents are neither created nor touched.

    The files are moved in as one set: under a lock on ``out_dir`` (a second run writing it
    waits for the first to finish moving) and with SIGINT and SIGTERM held back until the
    last file is in place, so ``out_dir`` never ends with files from two runs."""
    out = check_output_folder(out_dir)
    staging: Path | None = None
    try:
        with signals_held():
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=nearest_existing(out)))
        yield staging
        with signals_held():
            _move_all(staging, out)
            staging.rmdir()
            staging = None
    finally:
        with signals_held():
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)


def _move_all(staging: Path, out: Path) -> None:
    """Move every entry of ``staging`` into ``out`` (created with its parents) under its lock."""
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        for item in sorted(staging.iterdir()):
            os.replace(item, out / item.name)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder``, waiting while another process holds it;
    the lock goes with the process, so a killed run never leaves it held."""
    if fcntl is None:
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs, then deliver them to the handlers in
    place: the block (a few file-system calls, or the wait for another run's) is never cut in
    half by an interrupt, even one whose default action ends the process.

    Works in the main thread, where Python runs signal handlers; elsewhere it changes nothing
    (an interrupt is raised only in the main thread). A signal whose handler Python did not
    install is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HELD_SIGNALS}
    held = [s for s, handler in previous.items() if handler is not None]
    caught: list[int] = []
    for signum in held:
        signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for signum in held:
            signal.signal(signum, previous[signum])
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder to write the file into; on success it is
    renamed onto ``target`` (replacing it at once, with the permissions a new file gets), on
    any error or interrupt it is removed and ``target`` is left as it was. So a reader never
    sees a half-written file. The folder must exist."""
    target = Path(target)
    tmp: Path | None = None
    try:
        with signals_held():
            tmp = _temporary_file(target)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        with signals_held():
            if tmp is not None:
                tmp.unlink(missing_ok=True)


def _temporary_file(target: Path) -> Path:
    """A new, empty, hidden file beside ``target``."""
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    return Path(name)


def _umask() -> int:
    """The process's file-creation mask (``mkstemp`` makes files only their owner can read)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` (dataclasses, numpy values and all) as indented JSON."""
    Path(path).write_text(json.dumps(plain(data), indent=2) + "\n")


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses as dicts, arrays and tuples as lists, numpy
    scalars as Python ones, infinities and NaN as None."""
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
