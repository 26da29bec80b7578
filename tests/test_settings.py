"""One settings style: every entry point takes its settings dataclass and/or keywords, whose
names and types editors and type checkers read from a ``...Keywords`` TypedDict in the
signature (``**changes: Unpack[...]``); each TypedDict matches its dataclass's fields here.
Runtime resources (an executor, arrays) are parameters beside the settings, never fields."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

import oamip
from oamip.adapters.scoring import score_sweep
from oamip.pipelines.settings import ExperimentKeywords, ExperimentSettings, PruneSettings
from oamip.pipelines.spr import SPRSettings
from oamip.pipelines.transfer import TransferSettings
from oamip.solve.options import Resources, ScoringKeywords, ScoringOptions

ENTRY_POINTS = [
    (oamip.score_neurons, ScoringOptions),
    (score_sweep, ScoringOptions),
    (oamip.prune, PruneSettings),
    (oamip.transfer, TransferSettings),
    (oamip.spr_prune, SPRSettings),
]
RESOURCES = {f.name for f in dataclasses.fields(Resources)}


def _keywords(func) -> type:
    """The TypedDict that ``func``'s ``**changes`` is typed with."""
    (variadic,) = [
        p for p in inspect.signature(func).parameters.values() if p.kind == p.VAR_KEYWORD
    ]
    hint = typing.get_type_hints(func, include_extras=True)[variadic.name]
    (keywords,) = typing.get_args(hint)
    return keywords


def _annotations(keywords: type) -> dict[str, str]:
    """Field name -> annotation as written, over the TypedDict and its bases."""
    found = {}
    for klass in reversed(keywords.__mro__):
        for name, value in vars(klass).get("__annotations__", {}).items():
            found[name] = getattr(value, "__forward_arg__", value)
    return found


@pytest.mark.parametrize("func, settings", ENTRY_POINTS, ids=lambda v: getattr(v, "__name__", ""))
def test_the_keywords_in_the_signature_are_the_settings_fields(func, settings):
    keywords = _keywords(func)
    own = set(inspect.signature(func).parameters)
    fields = {f.name: f.type for f in dataclasses.fields(settings) if f.name not in own}
    assert _annotations(keywords) == fields, keywords.__name__
    assert keywords.__total__ is False


@pytest.mark.parametrize("settings", [s for _, s in ENTRY_POINTS] + [ExperimentSettings])
def test_settings_hold_choices_not_runtime_resources(settings):
    names = {f.name for f in dataclasses.fields(settings)}
    assert not names & RESOURCES
    for field in dataclasses.fields(settings):
        assert field.metadata.get("doc"), f"{settings.__name__}.{field.name} has no doc"


def test_resources_are_parameters_beside_the_settings():
    for func in (oamip.score_neurons, score_sweep, oamip.prune):
        assert set(inspect.signature(func).parameters) >= RESOURCES
    assert "executor" in inspect.signature(oamip.transfer).parameters


def test_the_keyword_forms_extend_each_other_like_the_settings():
    assert issubclass(ExperimentSettings, ScoringOptions)
    assert set(_annotations(ScoringKeywords)) < set(_annotations(ExperimentKeywords))


@pytest.mark.parametrize("func, settings", ENTRY_POINTS, ids=lambda v: getattr(v, "__name__", ""))
def test_an_unknown_keyword_is_refused_with_the_known_ones(func, settings):
    with pytest.raises(oamip.InvalidInputError, match="unknown option.*not_an_option"):
        func(None, None, None, not_an_option=1)


def test_a_resource_without_a_decomposition_is_refused_before_any_work():
    with pytest.raises(oamip.InvalidInputError, match="executor only apply to a decomposed"):
        oamip.prune(None, "digits", executor="tcp://127.0.0.1:9")
