"""Fuzzing the certificate: random tiny instances on every installed backend against a
brute-force oracle (``tests/fuzzing.py``). A new base seed each run (``OAMIP_FUZZ_SEED`` fixes
it); every failing instance is saved under ``tests/.fuzz-failures/`` with its seed, so that
``OAMIP_FUZZ_SEED=<seed> OAMIP_FUZZ_CASES=1`` replays it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from oamip import backends
from tests import fuzzing

CASES = int(os.environ.get("OAMIP_FUZZ_CASES", "100"))
FAILURES = Path(__file__).parent / ".fuzz-failures"


def _base_seed() -> int:
    fixed = os.environ.get("OAMIP_FUZZ_SEED")
    return int(fixed) if fixed else int(time.time() * 1000) % 10**9


def _record(case: fuzzing.Instance, verdict: fuzzing.Verdict) -> Path:
    FAILURES.mkdir(exist_ok=True)
    path = FAILURES / f"seed-{case.seed}-{verdict.backend}.pt"
    torch.save({"instance": case, "verdict": verdict}, path)
    return path


@pytest.mark.slow
def test_no_wrong_answer_no_invalid_bound_no_hang_on_random_instances():
    base = _base_seed()
    names = backends.available()
    wrong, honest = [], 0
    for n in range(CASES):
        case = fuzzing.instance(base + n)
        best = fuzzing.optimum(case)
        verdict = fuzzing.judge(case, names[n % len(names)], best)
        honest += verdict.status != "optimal" and not verdict.wrong
        if verdict.wrong:
            path = _record(case, verdict)
            wrong.append(
                f"seed {case.seed} ({case.kind}, {case.scale}, {case.loss}, "
                f"{verdict.backend}): {verdict.wrong} [saved to {path}]"
            )
    print(f"fuzz: base seed {base}, {CASES} cases, {honest} honest non-optimal")
    assert not wrong, f"base seed {base}:\n" + "\n".join(wrong)
