"""Output folders that are written completely or not at all.

Commands stage every file in a hidden folder beside the destination and move them into place
only when everything succeeded, so a failure never leaves half-written results behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from oamip.errors import InvalidInputError


@contextmanager
def staged_output(out_dir: str | os.PathLike):
    """Yield a staging folder; on success its files replace those of the same name in
    ``out_dir``, on any error the staging folder is removed and ``out_dir`` is untouched."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output path '{out}' exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        out.mkdir(exist_ok=True)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
