"""The README is a front page and docs/ holds the rest: every relative link and anchor resolves, the README
stays short, its first commands are the demo and the tests, and the pages speak to someone who has only the
repository (no issue numbers, no outside documents)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
REPO_PATH = re.compile(r"^(?:etl|tests|scripts|benchmarks|migrations|docs|deploy)/[\w./-]*$")


def prose(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation removed but hyphens and underscores, spaces to
    hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a Markdown text; a repeated heading gets -1, -2... as on GitHub."""
    found: set[str] = set()
    for line in prose(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = anchor = slug(match.group(1))
            n = 0
            while anchor in found:
                n += 1
                anchor = f"{base}-{n}"
            found.add(anchor)
    return found


def links(text: str) -> list[str]:
    """The targets of the inline links of a Markdown text, outside code."""
    return [target for line in prose(text) for target in LINK.findall(CODE_SPAN.sub("code", line))]


def broken_links(pages: list[Path], root: Path) -> list[str]:
    """Every relative link of ``pages`` whose file (inside ``root``) or heading does not exist."""
    broken = []
    for page in pages:
        for target in links(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_relative_to(root.resolve()) or not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text(encoding="utf-8"))):
                broken.append(f"{page.name}: {target} (no such heading)")
    return broken


# -- the checker on a small sample: it can fail --------------------------------------------------------------------

def test_slugs_are_githubs() -> None:
    assert slug("Two daemons on one PostgreSQL or MariaDB database, for availability") == (
        "two-daemons-on-one-postgresql-or-mariadb-database-for-availability")
    assert slug("MariaDB (and MySQL)") == "mariadb-and-mysql"
    assert slug("Reports and `check`") == "reports-and-check"
    assert slug("systemd: a timer") == "systemd-a-timer"
    assert slug("sync_runs and the-rest") == "sync_runs-and-the-rest"
    assert anchors("# A\n\n## A\n\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_the_link_checker_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text("# X page\n\n## Some heading\n\nBack to [the top](../README.md#top).\n")
    readme = tmp_path / "README.md"
    readme.write_text("# Top\n\n## Here\n\n"
                      "[good](docs/x.md#some-heading) [good too](docs/x.md) [self](#here) [web](https://example.com)\n"
                      "[no file](docs/y.md) [no heading](docs/x.md#other-heading) [no anchor here](#there)\n"
                      "`[in code](docs/z.md)`\n\n```\n[fenced](docs/w.md)\n```\n")
    assert broken_links([readme, tmp_path / "docs" / "x.md"], tmp_path) == [
        "README.md: docs/y.md (no such file)", "README.md: docs/x.md#other-heading (no such heading)",
        "README.md: #there (no such heading)"]


def test_a_link_out_of_the_repository_is_broken(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "outside.md").write_text("# Outside\n")
    page = tmp_path / "repo" / "README.md"
    page.write_text("[out](../outside.md)\n")
    assert broken_links([page], tmp_path / "repo") == ["README.md: ../outside.md (no such file)"]


# -- the README and docs/ -------------------------------------------------------------------------------------------

def test_every_relative_link_and_anchor_resolves() -> None:
    assert len(PAGES) > 5
    assert broken_links(PAGES, ROOT) == []


def test_the_readme_is_a_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 300
    commands = [line for line in text.splitlines() if line.startswith(("bash ", "smartcar-etl ", "python3 "))]
    assert commands[0].startswith("bash scripts/demo.sh") and commands[1].startswith("bash scripts/test.sh")
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name}" in text, f"the README links to no docs/{page.name}"


def test_the_quick_start_migrates_before_doctor() -> None:
    """The first command a newcomer copies must not fail: doctor needs a migrated database."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Using it with Smartcar")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert block is not None
    steps = [line.split()[1] for line in block.group(1).splitlines() if line.startswith("smartcar-etl ")]
    assert steps[:2] == ["db", "doctor"], steps


def test_the_pages_speak_to_someone_with_only_the_repository() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"\bissues?\s+#?\d", text, re.I), f"{page.name}: an issue number"
        assert not re.search(r"\bthe contract\b", text, re.I), f"{page.name}: the contract"
        assert "../shared" not in text, page.name


def test_the_files_the_pages_name_exist() -> None:
    missing = []
    for page in PAGES:
        for span in CODE_SPAN.findall(page.read_text(encoding="utf-8")):
            name = span.strip("`").split(":")[0]
            if REPO_PATH.match(name) and not (ROOT / name).exists():
                missing.append(f"{page.name}: {name}")
    assert missing == []
