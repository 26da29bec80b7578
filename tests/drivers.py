"""What the tests that drive a real subprocess (signals, checkpoints) share."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
import weakref

_OUTPUT: weakref.WeakKeyDictionary[subprocess.Popen, queue.Queue] = weakref.WeakKeyDictionary()
"""Each driven process's output lines, read by a thread of its own so that a silent process
cannot block a test past its deadline (``None`` marks the end of the output)."""


def _output(process: subprocess.Popen) -> queue.Queue:
    """The queue of ``process``'s output lines, its reading thread started on first use."""
    if process not in _OUTPUT:
        lines: queue.Queue = queue.Queue()

        def pump() -> None:
            for line in process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        _OUTPUT[process] = lines
    return _OUTPUT[process]


def wait_for(process: subprocess.Popen, lines: list[str], word: str, seconds: float) -> str:
    """The first line of ``process``'s output that starts with ``word``, read within
    ``seconds`` (a deadline kept even when the process prints nothing); every line read is
    kept in ``lines`` for the failure message."""
    output = _output(process)
    deadline = time.time() + seconds
    while (left := deadline - time.time()) > 0:
        try:
            line = output.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            output.put(None)
            break
        lines.append(line.rstrip())
        if line.startswith(word + " "):
            return line
    raise AssertionError(f"no {word} line within {seconds} s; output:\n" + "\n".join(lines))


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to ``process``'s whole process group (started with ``start_new_session``), even
    when ``process`` itself has ended: the workers it spawned may not have."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
