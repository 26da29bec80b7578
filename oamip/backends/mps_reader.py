"""Read a free MPS file (plain or gzipped) back into a :class:`StandardForm`.

The reader is how a solver's answer is checked against the file the solver was given, not
against the Pyomo model it came from: ``oamip bench --library`` recomputes every objective and
row from the matrices read here. It reads the free MPS that
:func:`oamip.backends.export.write_mps` writes and what other tools write in the same format:
``OBJSENSE``, rows ``N``/``E``/``L``/``G``, integer markers, ``RHS`` (on the objective: minus
its constant), ``RANGES`` and the bounds ``UP LO FX FR MI PL BV LI UI``. Names hold no spaces
(free MPS). Quadratic sections and semi-continuous bounds are refused with a clear error.
The columns of the form are named: ``form.variables[j]`` is column ``j``'s name.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from oamip.backends.standard_form import StandardForm
from oamip.errors import CapabilityError, InvalidInputError

_SECTIONS = ("NAME", "OBJSENSE", "ROWS", "COLUMNS", "RHS", "RANGES", "BOUNDS", "ENDATA")
_REFUSED = ("QUADOBJ", "QMATRIX", "QSECTION", "QCMATRIX", "SOS", "INDICATORS", "GENCONS")
_ROW_KINDS = ("N", "E", "L", "G")


@dataclass
class MpsModel:
    """A model read from MPS: its standard form and the names of its rows (by form row)."""

    form: StandardForm
    row_names: list[str]
    name: str = ""

    @property
    def column_names(self) -> list[str]:
        return self.form.variables


@dataclass
class _Reader:
    """The state of one pass over the file's lines."""

    path: Path
    name: str = ""
    maximize: bool = False
    objective: str | None = None
    free: set[str] = field(default_factory=set)
    rows: dict[str, int] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    columns: dict[str, int] = field(default_factory=dict)
    integer: list[bool] = field(default_factory=list)
    entries: list[tuple[int, int, float]] = field(default_factory=list)
    cost: dict[int, float] = field(default_factory=dict)
    rhs: dict[int, float] = field(default_factory=dict)
    ranges: dict[int, float] = field(default_factory=dict)
    constant: float = 0.0
    bounds: list[tuple[str, str, float | None]] = field(default_factory=list)
    in_integer: bool = False

    def fail(self, number: int, why: str) -> InvalidInputError:
        return InvalidInputError(f"{self.path}, line {number}: {why}")


def read_mps(path: str | os.PathLike) -> MpsModel:
    """The model of the free MPS file ``path`` (``.gz`` read through gzip)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"MPS file '{path}' does not exist")
    reader = _Reader(path)
    section = None
    for number, line in _lines(path):
        if not line[0].isspace():
            section = _section(reader, number, line)
            continue
        fields = line.split()
        if section == "OBJSENSE":
            reader.maximize = _sense(reader, number, fields[0])
        elif section == "ROWS":
            _row(reader, number, fields)
        elif section == "COLUMNS":
            _column(reader, number, fields)
        elif section in ("RHS", "RANGES"):
            _values(reader, number, fields, section)
        elif section == "BOUNDS":
            _bound_line(reader, number, fields)
        else:
            raise reader.fail(number, f"data outside a known section: '{line.strip()}'")
    if section != "ENDATA":
        raise InvalidInputError(f"{path} ends without ENDATA: the file is cut short")
    return _model(reader)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip() and not line.startswith("*"):
                    yield number, line.rstrip("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read MPS file '{path}': {exc}") from None


def _section(reader: _Reader, number: int, line: str) -> str:
    fields = line.split()
    head = fields[0].upper()
    if head in _REFUSED:
        raise CapabilityError(f"{reader.path}: section {head} is not read (linear MILP only)")
    if head not in _SECTIONS:
        raise reader.fail(number, f"unknown section '{head}'")
    if head == "NAME":
        reader.name = " ".join(fields[1:])
    if head == "OBJSENSE" and len(fields) > 1:
        reader.maximize = _sense(reader, number, fields[1])
    return head


def _sense(reader: _Reader, number: int, word: str) -> bool:
    word = word.upper()
    if word not in ("MAX", "MAXIMIZE", "MIN", "MINIMIZE"):
        raise reader.fail(number, f"OBJSENSE must be MIN or MAX, got '{word}'")
    return word.startswith("MAX")


def _row(reader: _Reader, number: int, fields: list[str]) -> None:
    if len(fields) != 2 or fields[0].upper() not in _ROW_KINDS:
        raise reader.fail(number, "a ROWS line is 'KIND NAME' with KIND one of N E L G")
    kind, name = fields[0].upper(), fields[1]
    if name in reader.rows or name == reader.objective:
        raise reader.fail(number, f"row '{name}' is declared twice")
    if kind == "N":
        if reader.objective is None:
            reader.objective = name
        else:
            reader.free.add(name)  # later free rows are ignored, as solvers do
        return
    reader.rows[name] = len(reader.kinds)
    reader.kinds.append(kind)


def _number(reader: _Reader, number: int, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise reader.fail(number, f"'{text}' is not a number") from None


def _column(reader: _Reader, number: int, fields: list[str]) -> None:
    if len(fields) >= 3 and fields[1].strip("'").upper() == "MARKER":
        marker = fields[2].strip("'").upper()
        if marker not in ("INTORG", "INTEND"):
            raise reader.fail(number, f"unknown marker '{fields[2]}'")
        reader.in_integer = marker == "INTORG"
        return
    if len(fields) not in (3, 5):
        raise reader.fail(number, "a COLUMNS line is 'COLUMN ROW VALUE [ROW VALUE]'")
    column = reader.columns.setdefault(fields[0], len(reader.columns))
    if column == len(reader.integer):
        reader.integer.append(reader.in_integer)
    for row, value in zip(fields[1::2], fields[2::2], strict=True):
        coef = _number(reader, number, value)
        if row == reader.objective:
            reader.cost[column] = reader.cost.get(column, 0.0) + coef
        elif row in reader.rows:
            reader.entries.append((reader.rows[row], column, coef))
        elif row not in reader.free:
            raise reader.fail(number, f"row '{row}' is not declared in ROWS")


def _values(reader: _Reader, number: int, fields: list[str], section: str) -> None:
    if len(fields) % 2 == 1:
        fields = fields[1:]  # the vector's name
    for row, value in zip(fields[0::2], fields[1::2], strict=True):
        amount = _number(reader, number, value)
        if row == reader.objective and section == "RHS":
            reader.constant = -amount
        elif row in reader.rows:
            target = reader.rhs if section == "RHS" else reader.ranges
            target[reader.rows[row]] = amount
        elif row not in reader.free:
            raise reader.fail(number, f"row '{row}' is not declared in ROWS")


_BOUND_KINDS = ("UP", "LO", "FX", "FR", "MI", "PL", "BV", "LI", "UI")


def _bound_line(reader: _Reader, number: int, fields: list[str]) -> None:
    kind = fields[0].upper()
    if kind == "SC":
        raise CapabilityError(f"{reader.path}: semi-continuous bounds (SC) are not read")
    if kind not in _BOUND_KINDS:
        raise reader.fail(number, f"unknown bound kind '{fields[0]}'")
    valued = kind not in ("FR", "MI", "PL", "BV")
    rest = fields[1:]
    if len(rest) == (3 if valued else 2) or (kind == "BV" and len(rest) == 3):
        rest = rest[1:]  # the bound vector's name
    if not rest or rest[0] not in reader.columns:
        raise reader.fail(number, f"bound on an unknown column: '{' '.join(fields)}'")
    value = _number(reader, number, rest[1]) if valued else None
    reader.bounds.append((kind, rest[0], value))


def _model(reader: _Reader) -> MpsModel:
    n, m = len(reader.columns), len(reader.kinds)
    lower, upper = np.zeros(n), np.full(n, np.inf)
    integer = np.array(reader.integer, dtype=bool)
    for kind, column, value in reader.bounds:
        _apply_bound(kind, reader.columns[column], value, lower, upper, integer)
    row_lower, row_upper = _row_sides(reader, m)
    c = np.zeros(n)
    for column, coef in reader.cost.items():
        c[column] = coef
    if reader.entries:
        rows, cols, data = (np.array(v) for v in zip(*reader.entries, strict=True))
    else:
        rows, cols, data = np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    A = sp.csr_matrix((data.astype(float), (rows, cols)), shape=(m, n))
    A.sum_duplicates()
    form = StandardForm(
        variables=list(reader.columns),
        col_lower=lower,
        col_upper=upper,
        integer=integer,
        c=c,
        c0=reader.constant,
        maximize=reader.maximize,
        A=A,
        row_lower=row_lower,
        row_upper=row_upper,
    )
    return MpsModel(form, list(reader.rows), reader.name)


def _apply_bound(kind, j, value, lower, upper, integer) -> None:
    """One BOUNDS line on column ``j`` (the meanings of the MPS standard)."""
    if kind in ("UP", "UI"):
        upper[j] = value
    elif kind in ("LO", "LI"):
        lower[j] = value
    elif kind == "FX":
        lower[j] = upper[j] = value
    elif kind == "FR":
        lower[j], upper[j] = -np.inf, np.inf
    elif kind == "MI":
        lower[j] = -np.inf
    elif kind == "PL":
        upper[j] = np.inf
    elif kind == "BV":
        lower[j], upper[j] = 0.0, 1.0
    if kind in ("UI", "LI", "BV"):
        integer[j] = True


def _row_sides(reader: _Reader, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``lower <= a x <= upper`` from its kind, right-hand side and range."""
    lower, upper = np.full(m, -np.inf), np.full(m, np.inf)
    for i, kind in enumerate(reader.kinds):
        rhs = reader.rhs.get(i, 0.0)
        span = reader.ranges.get(i)
        if kind == "E":
            lower[i] = upper[i] = rhs
            if span is not None:
                lower[i], upper[i] = (rhs, rhs + span) if span > 0 else (rhs + span, rhs)
        elif kind == "L":
            upper[i] = rhs
            lower[i] = -np.inf if span is None else rhs - abs(span)
        else:
            lower[i] = rhs
            upper[i] = np.inf if span is None else rhs + abs(span)
    return lower, upper
