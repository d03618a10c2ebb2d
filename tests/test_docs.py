"""The README and docs/ stay navigable: every relative link reaches a file (and its #anchor a
heading), every docs page is reachable from the README, and the README stays short.

Plain files only: no server, no network. External links (http, https, mailto) are not fetched.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), the target optionally in <>, optionally with a "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\))?)>?"
                         r"(?:\s+\"[^\"]*\")?\s*\)")
# <https://example.com/page>, an autolink (always absolute)
AUTOLINK = re.compile(r"<((?:https?|mailto):[^<>\s]+)>")
# [label]: target  (a reference definition)
REFERENCE = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*<?([^\s<>]+)>?", re.MULTILINE)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str, *, blank_code: bool = True) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, inline code spans blanked unless told."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, INLINE_CODE.sub("", line) if blank_code else line))
    return lines


def links(path: Path) -> list[tuple[int, str]]:
    """Every link target in a markdown file, with its line number (a link's text may wrap)."""
    numbered = prose_lines(path.read_text(encoding="utf-8"))
    # Fenced lines become empty ones, so that offsets still give line numbers.
    by_number = dict(numbered)
    last = numbered[-1][0] if numbered else 0
    text = "\n".join(by_number.get(number, "") for number in range(1, last + 1))
    found = []
    for pattern in (INLINE_LINK, AUTOLINK, REFERENCE):
        for match in pattern.finditer(text):
            found.append((text.count("\n", 0, match.start(1)) + 1, match.group(1)))
    return sorted(found)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a file's headings (a repeated one gets -1, -2, …)."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8"), blank_code=False):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def resolve(source: Path, target: str) -> tuple[Path, str] | None:
    """The file and anchor a relative link points at; None for an external link."""
    if target.startswith(EXTERNAL):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        raise AssertionError(f"unexpected link scheme in {target!r}")
    file = (source.parent / unquote(parts.path)).resolve() if parts.path else source
    return file, unquote(parts.fragment)


def broken_links(files: list[Path], root: Path = ROOT) -> list[str]:
    """One line per link that does not reach an existing file, or heading in that file."""
    problems = []
    for source in files:
        for number, target in links(source):
            where = f"{source.relative_to(root)}:{number}: {target}"
            resolved = resolve(source, target)
            if resolved is None:
                continue
            file, anchor = resolved
            if not target.strip():
                problems.append(f"{where} (empty link)")
            elif root not in file.parents:
                problems.append(f"{where} (outside the repository)")
            elif not file.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
                problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems


def reachable_from(start: Path) -> set[Path]:
    """Markdown files reachable from `start` by following relative links."""
    seen, queue = {start}, deque([start])
    while queue:
        page = queue.popleft()
        for _, target in links(page):
            resolved = resolve(page, target)
            if resolved is None:
                continue
            file = resolved[0]
            if file.suffix == ".md" and file.exists() and file not in seen:
                seen.add(file)
                queue.append(file)
    return seen


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; keep it to 200"


def test_every_link_reaches_a_file_and_heading() -> None:
    problems = broken_links(markdown_files())
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    pages = set(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    unreachable = sorted(str(p.relative_to(ROOT)) for p in pages - reachable_from(README))
    assert not unreachable, f"not linked from README.md, directly or via docs/: {unreachable}"


def test_the_docs_link_the_openapi_document() -> None:
    """The API reference points at the source of truth, in the repository and as served."""
    targets = {target for _, target in links(DOCS / "api.md")}
    assert "../server/openapi.json" in targets
    assert any(t.startswith("http") and t.endswith("/openapi.json") for t in targets)


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Live notifications (WebSocket)", "live-notifications-websocket"),
        ("Safe retries (`Idempotency-Key`)", "safe-retries-idempotency-key"),
        ("Log out, health, description", "log-out-health-description"),
        ("A 30-second tour", "a-30-second-tour"),
        ("todo_http_requests_total", "todo_http_requests_total"),
    ],
)
def test_slugs_follow_github(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    """A missing file, a missing heading and a link in code (ignored) in a scratch page."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## Real heading\n", encoding="utf-8")
    page.write_text(
        "# Page\n\n"
        "[fine](other.md#real-heading) [self](#page) [web](https://example.com/x)\n"
        "[gone](missing.md) [bad anchor](other.md#no-such-heading) [a wrapped\n"
        "link](wrapped.md)\n"
        "`[in code](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n"
        "[ref]: also-missing.md\n",
        encoding="utf-8",
    )
    problems = broken_links([page], root=tmp_path)
    assert [p.split(" (")[0] for p in problems] == [
        "page.md:4: missing.md",
        "page.md:4: other.md#no-such-heading",
        "page.md:5: wrapped.md",
        "page.md:10: also-missing.md",
    ]
