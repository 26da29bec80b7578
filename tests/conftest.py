"""Slow tests run only when asked: ``python -m pytest`` (the README's command) skips the tests
marked ``slow`` so that it finishes within minutes on a 2-core machine; ``--run-slow`` (what CI's
.ci/run passes) runs them too."""

from __future__ import annotations

import pytest

RUN_SLOW = "--run-slow"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        RUN_SLOW, action="store_true", help="also run the tests marked slow (CI runs them all)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked slow unless ``--run-slow`` was given."""
    if config.getoption(RUN_SLOW):
        return
    skip = pytest.mark.skip(reason=f"slow: run with {RUN_SLOW}")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
