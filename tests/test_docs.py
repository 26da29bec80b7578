"""The README and docs/ stand alone: their links stay inside the repository and lead to files
and headings that exist, and every citation of ``docs/mathematics.md`` (a section ``§N`` or an
equation ``(N)``) names a section heading or an equation label that the document has. What they
name exists: every dotted ``oamip.`` name resolves, the usage blocks of docs/cli.md list their
commands' flags, and every ``oamip`` command line shown uses flags the command has. The README
is a front door: at most 300 lines, a table of contents that matches its headings, and a link
to every page of docs/. (Their Python blocks run in tests/test_doc_examples.py.)"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oamip.errors import InvalidInputError

ROOT = Path(__file__).resolve().parent.parent
MATHEMATICS = ROOT / "docs" / "mathematics.md"
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
CITING = [
    *(p for p in PAGES if p != MATHEMATICS),
    *(p for d in ("oamip", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")),
]
README_MAX_LINES = 300
COMMANDS = ("prune", "spr", "transfer", "compress", "bench", "export", "library")

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
        if Path(target).is_absolute():
            problems.append(f"{target}: an absolute path")
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
        except InvalidInputError as needs:
            if "not installed" in str(needs):
                return True  # the module exists; it needs an extra this install lacks
            raise
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


HELP_ALL = """
import contextlib, io, sys
from oamip.cli import main
for command in sys.argv[1:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([command, "--help"])
        except SystemExit:
            pass
    print("=== " + command)
    print(out.getvalue())
"""


@pytest.fixture(scope="module")
def command_flags() -> dict[str, set[str]]:
    """Every subcommand's flags, from its own ``--help`` (one fresh interpreter for all)."""
    done = subprocess.run(
        [sys.executable, "-c", HELP_ALL, *COMMANDS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    parts = re.split(r"^=== (\w+)$", done.stdout, flags=re.M)[1:]
    flags = {name: set(FLAG.findall(text)) | {"--help"} for name, text in zip(*[iter(parts)] * 2)}
    assert set(flags) == set(COMMANDS) and all(len(f) > 2 for f in flags.values()), flags
    return flags


def usage_flags(page: str, command: str) -> set[str]:
    """The flags of the ``oamip COMMAND [...]`` usage block of ``page``."""
    usage = re.search(rf"```\n(oamip {command} \[.*?|oamip {command} --.*?)```", page, re.S)
    assert usage, f"docs/cli.md has no 'oamip {command} [...]' usage block"
    return set(FLAG.findall(usage.group(1)))


@pytest.mark.parametrize("command", COMMANDS)
def test_the_usage_blocks_list_every_flag_of_their_command(command, command_flags):
    documented = usage_flags((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"), command)
    actual = command_flags[command] - {"--help"}
    assert documented == actual, (
        f"docs/cli.md usage of oamip {command}: missing {sorted(actual - documented)}, "
        f"unknown {sorted(documented - actual)}"
    )


COMMAND_LINE = re.compile(r"^(?:\$\s+)?oamip\s+(\S+)(.*)$")


def command_lines(text: str) -> list[tuple[str, str]]:
    """The ``oamip COMMAND ...`` lines of the code blocks of ``text`` (``$`` prompts and
    backslash continuations followed), as ``(command, rest of the line)``."""
    found = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").split("\n"):
            match = COMMAND_LINE.match(line.strip())
            if match:
                found.append((match.group(1), match.group(2).split("#", 1)[0]))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_shown_uses_flags_the_command_has(page, command_flags):
    for command, rest in command_lines(page.read_text(encoding="utf-8")):
        if command.startswith("-"):
            assert command in ("--help", "--version", "-h"), f"{page.name}: oamip {command}"
            continue
        assert command in command_flags, f"{page.name}: no subcommand 'oamip {command}'"
        unknown = set(FLAG.findall(rest)) - command_flags[command]
        assert not unknown, f"{page.name}: 'oamip {command}' has no flag {sorted(unknown)}"


def test_the_command_line_check_reads_blocks_and_continuations():
    text = (
        "```bash\noamip prune --max-drop 1   # --not-a-flag\n"
        "oamip prune --model m.pt \\\n    --lams 1,2\n```\n"
        "oamip prune --outside-a-block\n```\n$ oamip spr --lam 0.1\n```\n"
    )
    assert command_lines(text) == [
        ("prune", " --max-drop 1   "),
        ("prune", " --model m.pt      --lams 1,2"),
        ("spr", " --lam 0.1"),
    ]


def slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's) gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_to_headings_find_them(page):
    missing = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "#" not in target or target.startswith(EXTERNAL):
            continue
        path, anchor = target.split("#", 1)
        linked = (page.parent / path).resolve() if path else page
        if linked.suffix == ".md" and linked.exists() and anchor not in anchors(linked):
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to headings that do not exist: {missing}"


def test_the_heading_anchors_are_those_of_a_markdown_renderer():
    assert slug("The whole pipeline: `oamip.prune`") == "the-whole-pipeline-oamipprune"
    assert slug("Masks that travel: transfer, pruning") == "masks-that-travel-transfer-pruning"
    assert slug("ResNet-20 at about 2x fewer MACs") == "resnet-20-at-about-2x-fewer-macs"


def test_the_readme_is_a_short_front_door():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}"
    assert not re.search(r"\]\((https?:|mailto:)", text), "README.md links outside the repository"
    linked = {(ROOT / t).resolve() for t in local_targets(text)}
    unlinked = [p.name for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link to {unlinked}"
    assert "oamip prune" in text and "python -m pytest" in text


def test_the_readme_contents_match_its_headings():
    text = README.read_text(encoding="utf-8")
    contents = re.search(r"^Contents: (.*?)\n\n", text, re.S | re.M)
    assert contents, "README.md has no 'Contents:' line"
    listed = [t[1:] for t in LINK.findall(contents.group(1)) if t.startswith("#")]
    body = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    headings = [slug(h) for h in re.findall(r"^##\s+(.+?)\s*$", body, re.M)]
    assert listed == headings, f"contents {listed} but headings {headings}"
