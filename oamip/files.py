"""Files and output folders that are written completely or not at all.

:func:`atomic_path` writes one file under a temporary name beside it and renames it into place.
Commands check the destination before any work, stage every file in a hidden folder inside the
nearest folder that already exists on the way to it, and create the destination and move the
files into place only when everything succeeded: a failed or interrupted run leaves neither
half-written results nor new, empty folders behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from oamip.errors import InvalidInputError


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
    removed and ``out_dir`` and its parents are neither created nor touched."""
    out = check_output_folder(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=nearest_existing(out)))
    try:
        yield staging
        out.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder to write the file into; on success it is
    renamed onto ``target`` (replacing it at once, with the permissions a new file gets), on
    any error or interrupt it is removed and ``target`` is left as it was. So a reader never
    sees a half-written file. The folder must exist."""
    target = Path(target)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's file-creation mask (``mkstemp`` makes files only their owner can read)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` (dataclasses, numpy values and all) as indented JSON."""
    Path(path).write_text(json.dumps(_plain(data), indent=2) + "\n")


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
