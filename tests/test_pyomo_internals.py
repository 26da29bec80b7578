"""Pyomo's private attributes: read only by the standard-form compiler, checked on first use.

If a Pyomo release renames or changes one of them, ``test_the_internals_read_still_hold`` fails
with a message naming the attribute (and so does the first compilation for a user).
"""

from __future__ import annotations

import ast
import re
from importlib.metadata import version
from pathlib import Path

import pyomo.environ as pyo
import pytest
from packaging.specifiers import SpecifierSet
from pyomo.core.base.matrix_constraint import MatrixConstraint

from oamip.backends import compile_model, standard_form
from oamip.backends.standard_form import TESTED_PYOMO, check_pyomo_internals
from oamip.errors import PyomoVersionError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "oamip"


@pytest.fixture
def fresh_check():
    """Run the once-only check again, and again after the test (it caches its success)."""
    check_pyomo_internals.cache_clear()
    yield
    check_pyomo_internals.cache_clear()


def test_the_internals_read_still_hold(fresh_check):
    check_pyomo_internals()


def test_a_renamed_attribute_is_named_on_first_use(fresh_check, monkeypatch):
    """Simulate a Pyomo whose MatrixConstraint keeps its data under another name."""
    original = MatrixConstraint.__init__

    def renamed(self, *args):
        original(self, *args)
        self._A_values = self._A_data
        del self._A_data

    monkeypatch.setattr(MatrixConstraint, "__init__", renamed)
    model = pyo.ConcreteModel()
    model.x = pyo.Var()
    model.obj = pyo.Objective(expr=model.x)
    with pytest.raises(PyomoVersionError) as info:
        compile_model(model)
    message = str(info.value)
    assert "MatrixConstraint._A_data" in message and "does not exist" in message
    assert f"pyomo{TESTED_PYOMO}" in message


def test_an_attribute_that_changed_meaning_is_named():
    holder = type("Holder", (), {"_lb": None})()
    with pytest.raises(PyomoVersionError, match=r"VarData\._lb .*holds None, not 1\.5"):
        standard_form._check_internal("VarData._lb", holder, "_lb", 1.5)


def _private_reads(path: Path) -> set[str]:
    """Underscored attributes read from objects other than ``self``/``cls``, and underscored
    names given to ``attrgetter``/``getattr`` as strings."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and re.fullmatch(r"_[a-zA-Z]\w*", node.attr)
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            and not (isinstance(node.value, ast.Name) and node.value.id[0].isupper())
        ):
            names.add(node.attr)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("attrgetter", "getattr"):
            names.update(
                arg.value
                for arg in node.args
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("_")
            )
    return names


PYOMO_INTERNALS = {
    "_A_data",
    "_A_indices",
    "_A_indptr",
    "_lb",
    "_ub",
    "_domain",
    "_fixed",
    "_value",
    "_active",
    "_x",
    "_data",
    "_lower",
    "_upper",
}


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_only_the_standard_form_reads_pyomo_internals(path):
    if path.name == "standard_form.py" and path.parent.name == "backends":
        return
    assert not _private_reads(path) & PYOMO_INTERNALS


def test_every_internal_the_compiler_reads_is_checked(fresh_check, monkeypatch):
    checked = set()
    monkeypatch.setattr(
        standard_form, "_check_internal", lambda label, owner, name, value: checked.add(name)
    )
    check_pyomo_internals()
    read = _private_reads(PACKAGE / "backends" / "standard_form.py") - {"_check_internal"}
    assert read == checked == PYOMO_INTERNALS


def test_pyproject_states_the_tested_pyomo_versions_and_this_one_is_among_them():
    dependencies = re.search(
        r"\ndependencies = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S
    )
    assert f'"pyomo{TESTED_PYOMO}"' in dependencies.group(1)
    assert version("pyomo") in SpecifierSet(TESTED_PYOMO)
