"""What the tests that drive a real subprocess (signals, checkpoints) share."""

from __future__ import annotations

import subprocess
import time


def wait_for(process: subprocess.Popen, lines: list[str], word: str, seconds: float) -> str:
    """The first line of ``process``'s output that starts with ``word``, read within
    ``seconds``; every line read is kept in ``lines`` for the failure message."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith(word + " "):
            return line
    raise AssertionError(f"no {word} line within {seconds} s; output:\n" + "\n".join(lines))
