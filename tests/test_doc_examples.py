"""Every Python block of the README and of docs/*.md runs as written.

A page's plain ```python blocks run in order, as one script, in a fresh interpreter and an empty
folder (later blocks use what earlier ones define). A ```python script block is a complete
script of its own and runs alone (a process pool needs one: its workers import the script
again). A ```python NAME.py block is a module that the page's other blocks import: it is saved
under that name in the folder first. A ```python no-run block cannot run here; such blocks are
few, and each says why in a comment on its first line. Each block keeps its line number in the
page, so a traceback names the page's own line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[ \t]*([\w.-]*)[ \t]*$")
KINDS = ("", "script", "no-run")
MODULE = re.compile(r"^\w+\.py$")
MAX_NO_RUN = 3
TIMEOUT = 600


@dataclass
class Block:
    page: Path
    line: int  # the page's line number of the block's first line of code
    language: str
    kind: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, with their language and kind (the word after it)."""
    found, lines = [], page.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening and opening.group(1):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            code = "\n".join(lines[i + 1 : end]) + "\n"
            found.append(Block(page, i + 2, opening.group(1), opening.group(2), code))
            i = end
        elif lines[i].startswith("```"):
            i = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        i += 1
    return found


def python_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.language == "python"]


def script(parts: list[Block]) -> str:
    """``parts`` as one script whose line numbers are those of their page."""
    lines: list[str] = []
    for block in parts:
        lines += [""] * (block.line - 1 - len(lines))
        lines += block.code.rstrip("\n").split("\n")
    return "\n".join(lines) + "\n"


def runs() -> list[tuple[str, list[Block]]]:
    """What the tests run: each page's plain blocks as one script (after its module blocks),
    each script block alone."""
    found = []
    for page in PAGES:
        pyblocks = python_blocks(page)
        plain = [b for b in pyblocks if b.kind == "" or MODULE.match(b.kind)]
        if plain:
            found.append((str(page.relative_to(ROOT)), plain))
        found += [(f"{b.where} (script)", [b]) for b in pyblocks if b.kind == "script"]
    return found


def run_script(name: str, parts: list[Block], folder: Path) -> subprocess.CompletedProcess:
    """Run ``parts`` as one script in ``folder``; module blocks are saved as their files."""
    for module in (b for b in parts if MODULE.match(b.kind)):
        (folder / module.kind).write_text(module.code, encoding="utf-8")
    parts = [b for b in parts if not MODULE.match(b.kind)]
    file = folder / (re.sub(r"\W+", "_", name).strip("_") + ".py")
    file.write_text(script(parts), encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "Agg",
    }
    return subprocess.run(
        [sys.executable, file.name],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.mark.slow
@pytest.mark.parametrize("name, parts", runs(), ids=[name for name, _ in runs()])
def test_the_python_blocks_run_as_written(name, parts, tmp_path):
    done = run_script(name, parts, tmp_path)
    assert done.returncode == 0, (
        f"{name}: the blocks at lines {[b.line for b in parts]} failed "
        f"(line numbers below are the page's):\n{done.stderr[-4000:]}"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_python_block_is_valid_python_of_a_known_kind(page):
    for block in python_blocks(page):
        known = block.kind in KINDS or MODULE.match(block.kind)
        assert known, f"{block.where}: unknown kind '{block.kind}', use {KINDS} or NAME.py"
        compile(script([block]), block.where, "exec")


def test_blocks_that_cannot_run_are_few_and_say_why():
    no_run = [b for page in PAGES for b in python_blocks(page) if b.kind == "no-run"]
    assert len(no_run) <= MAX_NO_RUN, [b.where for b in no_run]
    for block in no_run:
        first = block.code.split("\n", 1)[0]
        assert re.match(r"#\s*\w.{10,}", first), f"{block.where}: say why on the first line"


def test_a_process_pool_is_started_only_under_a_main_guard():
    for page in PAGES:
        for block in python_blocks(page):
            if re.search(r"n_jobs\s*=\s*(?!1\b)\d", block.code):
                assert block.kind in ("script", "no-run"), f"{block.where}: use ```python script"
                assert 'if __name__ == "__main__":' in block.code, block.where


def test_the_readme_starts_with_a_complete_example():
    first = python_blocks(ROOT / "README.md")[0]
    assert first.kind == "", "the README's first Python block must run"
    for name in ("oamip.score_neurons", "oamip.apply_masks", "oamip.remove_pruned", "nn.Linear"):
        assert name in first.code, f"the README's first example does not use {name}"


def test_the_checks_find_blocks_and_keep_line_numbers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\na = 1\n```\n\ntext\n\n```python script\nb = 2\n```\n"
        "```bash\noamip prune\n```\n```python no-run\n# needs a cluster at that address\n"
        "c = 3\n```\n```\nplain\n```\n"
    )
    found = blocks(page)
    assert [(b.language, b.kind, b.line) for b in found] == [
        ("python", "", 4),
        ("python", "script", 10),
        ("bash", "", 13),
        ("python", "no-run", 16),
    ]
    assert script(found[:2]).split("\n")[3] == "a = 1"
    assert script(found[:2]).split("\n")[9] == "b = 2"
