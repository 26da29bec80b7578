"""Slow tests run only when asked: ``python -m pytest`` (the README's command) skips the tests
marked ``slow`` so that it finishes within minutes on a 2-core machine. A marker expression
chooses them as usual: ``-m "slow or not slow"`` (what CI's .ci/run passes) runs everything,
``-m slow`` only the slow ones."""

from __future__ import annotations

import pytest

SELECT_ALL = '-m "slow or not slow"'


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``-m``, skip the tests marked slow, saying how to run them."""
    if config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason=f"slow: run with {SELECT_ALL} (or -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
