"""The README stands alone: its links stay inside the repository and lead to files that exist,
and every citation of ``docs/mathematics.md`` (a section ``§N`` or an equation ``(N)``) names a
section heading or an equation label that the document has. What it names exists: every dotted
``oamip.`` name resolves, and the ``oamip prune`` usage block lists the command's flags."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MATHEMATICS = ROOT / "docs" / "mathematics.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITING = [
    ROOT / "README.md",
    *(p for d in ("oamip", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")),
]

LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SECTION_CITE = re.compile(r"docs/mathematics\.md\s+§(\d+(?:\.\d+)*)")
EQUATION_CITE = re.compile(r"docs/mathematics\.md\s+\((\d+)\)")
HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
EQUATION_LABEL = re.compile(r"^ {4}\S.*\s\((\d+)\)\s*$", re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:")
DOTTED = re.compile(r"\boamip(?:\.[A-Za-z_]\w*)+")
FLAG = re.compile(r"--[a-z][a-z-]*")


def local_targets(text: str) -> list[str]:
    """The targets of the Markdown links in ``text`` that are paths, without any ``#anchor``."""
    targets = []
    for target in LINK.findall(text):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def broken_links(page: Path, root: Path) -> list[str]:
    """Links of ``page`` that leave ``root`` or lead to no existing file, with the reason."""
    problems = []
    for target in local_targets(page.read_text(encoding="utf-8")):
        resolved = (page.parent / target).resolve()
        if ".." in Path(target).parts or Path(target).is_absolute():
            problems.append(f"{target}: leaves the folder it is in (absolute or '..')")
        elif not resolved.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
    return problems


def missing_citations(sources: dict[str, str], document: str) -> list[str]:
    """Citations ``docs/mathematics.md §N`` and ``docs/mathematics.md (N)`` in ``sources`` (name
    -> text) that ``document`` has no section heading or equation label for."""
    sections = set(HEADING.findall(document))
    equations = set(EQUATION_LABEL.findall(document))
    missing = []
    for name, text in sources.items():
        missing += [f"{name}: §{n}" for n in SECTION_CITE.findall(text) if n not in sections]
        missing += [f"{name}: ({n})" for n in EQUATION_CITE.findall(text) if n not in equations]
    return missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_stay_in_the_repository_and_exist(page):
    problems = broken_links(page, ROOT)
    assert not problems, f"{page.relative_to(ROOT)} has bad links: {problems}"


def test_readme_names_no_path_outside_the_repository():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../" not in text, "README.md refers to a path outside the repository ('../')"
    assert "docs/mathematics.md" in local_targets(text)


def test_every_citation_of_the_mathematics_exists():
    sources = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in CITING}
    assert any(SECTION_CITE.search(t) for t in sources.values()), "no citation found at all"
    missing = missing_citations(sources, MATHEMATICS.read_text(encoding="utf-8"))
    assert not missing, (
        f"citations of docs/mathematics.md with no such section or equation: {missing}"
    )


def test_nothing_cites_the_design_file_outside_the_repository():
    here = Path(__file__).resolve()
    stale = [str(p.relative_to(ROOT)) for p in CITING if p != here and "DESIGN.md" in p.read_text()]
    assert not stale, f"these files still cite DESIGN.md (use docs/mathematics.md): {stale}"


def test_the_mathematics_has_numbered_sections_and_equations():
    document = MATHEMATICS.read_text(encoding="utf-8")
    sections = HEADING.findall(document)
    assert len(sections) == len(set(sections)), f"section numbers repeat: {sections}"
    assert {"2", "3", "4", "4.1", "5", "5.3", "6", "7"} <= set(sections)
    assert {"1", "2", "3"} <= set(EQUATION_LABEL.findall(document))


def test_the_checks_catch_bad_links_and_citations(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("x")
    page = tmp_path / "README.md"
    page.write_text(
        "[a](docs/there.md) [b](docs/there.md#part) [c](https://example.org) [d](#top)\n"
        "[e](../shared/DESIGN.md) [f](docs/missing.md) [g](/etc/hosts)\n"
    )
    problems = broken_links(page, tmp_path)
    assert [p.split(":")[0] for p in problems] == [
        "../shared/DESIGN.md",
        "docs/missing.md",
        "/etc/hosts",
    ]
    document = "## 4. MIP\n\n### 4.1 Unit\n\n    h = ReLU(a)      (1)\n"
    sources = {
        "m.py": "see docs/mathematics.md §4.1, docs/mathematics.md §4.2 and\n"
        "docs/mathematics.md (1), docs/mathematics.md (2); docs/mathematics.md\n§4"
    }
    assert missing_citations(sources, document) == ["m.py: §4.2", "m.py: (2)"]


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` (``oamip.x.y``) names a module, or an attribute of one, that exists."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        module = ".".join(parts[:split])
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as missing:
            if missing.name is not None and not module.startswith(missing.name):
                raise  # a module that exists failed to import: not a stale name
            continue
        for name in parts[split:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


def stale_names(text: str) -> list[str]:
    """The dotted ``oamip.`` names in ``text`` that do not resolve."""
    return sorted(name for name in set(DOTTED.findall(text)) if not resolves(name))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_dotted_name_in_the_docs_exists(page):
    stale = stale_names(page.read_text(encoding="utf-8"))
    assert not stale, f"{page.relative_to(ROOT)} names what does not exist (moved?): {stale}"


def test_the_name_check_catches_moved_names():
    text = "`oamip.training.spr.penalty`, oamip.spr.penalty, `oamip.ScoringOptions`, oamip.nowhere"
    assert stale_names(text) == ["oamip.nowhere", "oamip.spr.penalty"]


def prune_usage_flags(readme: str) -> set[str]:
    """The flags of the ``oamip prune [...]`` usage block in the README."""
    usage = re.search(r"```\n(oamip prune \[.*?)```", readme, re.S)
    assert usage, "README.md has no 'oamip prune [...]' usage block"
    return set(FLAG.findall(usage.group(1)))


def test_the_prune_usage_block_lists_every_flag_of_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "oamip", "prune", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    command = set(FLAG.findall(done.stdout)) - {"--help"}
    documented = prune_usage_flags((ROOT / "README.md").read_text(encoding="utf-8"))
    assert documented == command, (
        f"README usage of oamip prune: missing {sorted(command - documented)}, "
        f"unknown {sorted(documented - command)}"
    )
