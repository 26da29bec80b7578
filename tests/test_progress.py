"""Progress as events: long calls report to a listener (the command line's bars, a program's
callback) or, by default, to bars only where a person watches; ``progress=False`` is silent."""

from __future__ import annotations

import io

import pytest
import torch

import oamip
from oamip.progress import Bars, Event, Task, interactive, listener_for
from oamip.training.data import load_digits
from oamip.training.models import build
from oamip.training.train import train

FAST = {"time_limit": 1.0, "threads": 1}


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    return train(build("mlp", digits, (12, 8), seed=0), digits, epochs=3, lr=1e-2, progress=False)


def _tasks(events: list[Event]) -> dict[str, list[Event]]:
    found: dict[str, list[Event]] = {}
    for event in events:
        found.setdefault(event.task, []).append(event)
    return found


def test_a_budgeted_prune_reports_its_path_and_fine_tuning(trained, digits):
    events: list[Event] = []
    report = oamip.prune(
        trained,
        digits,
        max_drop=1.0,
        lams=[0.1, 10.0],
        refine_steps=0,
        interpolate_steps=0,
        finetune_epochs=1,
        on_progress=events.append,
        **FAST,
    )
    tasks = _tasks(events)
    polishing = [task for task in tasks if task.startswith("polishing")]
    lines = [e.line for task in ["lam path", *polishing] for e in tasks[task] if e.line]
    assert len(lines) == len(report.path)
    assert all(line.startswith(("lambda", "towards lambda")) for line in lines)
    assert tasks["finetune"][-1].closed and tasks["finetune"][-1].done > 0
    assert all(found[-1].closed for found in tasks.values())


def test_pieces_are_counted_and_each_gets_a_line(trained, digits):
    events: list[Event] = []
    oamip.prune(
        trained, digits, decompose="layer", finetune_epochs=0, on_progress=events.append, **FAST
    )
    (pieces,) = [found for task, found in _tasks(events).items() if task.startswith("pieces")]
    assert [e.line.split(":")[0] for e in pieces if e.line] == [
        "piece layer 1, all classes",
        "piece layer 3, all classes",
    ]
    assert pieces[-1].done == pieces[-1].total == 2


def test_progress_false_is_silent_and_the_default_is_silent_without_a_person(
    trained, digits, capsys
):
    assert not interactive()
    oamip.prune(trained, digits, finetune_epochs=1, progress=False, **FAST)
    oamip.prune(trained, digits, finetune_epochs=1, **FAST)
    oamip.spr_prune(trained, digits, epochs=1, finetune_epochs=0, group_lasso_scales=())
    assert capsys.readouterr().err == ""


def test_spr_reports_its_training(trained, digits):
    events: list[Event] = []
    oamip.spr_prune(
        trained,
        digits,
        epochs=1,
        finetune_epochs=0,
        group_lasso_scales=(),
        on_progress=events.append,
    )
    (spr,) = [found for task, found in _tasks(events).items() if task == "SPR"]
    assert spr[-1].closed and spr[-1].done == spr[-1].total > 0


def test_bars_draw_each_task_and_write_each_line():
    stream = io.StringIO()
    bars = Bars(stream=stream)
    with Task(bars, "pieces", unit="piece") as task:
        task.line("piece layer 1, all classes: optimal (0.1 s)")
        task.advance(total=2)
        task.advance()
    assert bars._open == {}
    text = stream.getvalue()
    assert "piece layer 1, all classes: optimal (0.1 s)" in text and "pieces" in text
    lines = io.StringIO()
    Task(Bars(bars=False, stream=lines), "path").line("lambda 1: 3 units pruned")
    assert lines.getvalue() == "lambda 1: 3 units pruned\n"


def test_what_progress_asks_for():
    assert listener_for(False) is None
    assert isinstance(listener_for(True), Bars)
    assert listener_for(print) is print
    assert listener_for(None) is None  # no terminal and no notebook under pytest
