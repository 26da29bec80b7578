"""Slow tests run only when asked: ``python -m pytest`` (the README's command) skips the tests
marked ``slow`` so that it finishes within minutes on a 2-core machine. A marker expression
chooses them as usual: ``-m "slow or not slow"`` (what CI's .ci/run passes) runs everything,
``-m slow`` only the slow ones.

Ctrl-C is Python's KeyboardInterrupt in every test, however pytest was started: a shell
without job control starts a background command (``pytest ... &``) with SIGINT ignored, and
Python then leaves it ignored, so the tests of interrupts (and the drivers they start, which
inherit the disposition) would wait for a signal that never comes."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """SIGINT raises KeyboardInterrupt here and in the processes the tests start, as in a
    terminal, even when pytest inherited it ignored."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


SELECT_ALL = '-m "slow or not slow"'


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``-m``, skip the tests marked slow, saying how to run them."""
    if config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason=f"slow: run with {SELECT_ALL} (or -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
