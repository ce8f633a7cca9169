"""Every relative Markdown link in README.md and docs/*.md points to a file of this repository
(and, with a ``#fragment``, to a heading of that file), so a fresh clone has no dead links."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose(text: str) -> str:
    """The text without fenced code blocks (links and headings there are not Markdown)."""
    return _FENCE.sub("", text)


def links(text: str) -> list[str]:
    """Targets of inline links, images and reference definitions outside code."""
    prose = _CODE_SPAN.sub("", _prose(text))
    found = [m.group(1) for m in _INLINE.finditer(prose)]
    found += [m.group(1) for m in _REFERENCE.finditer(prose)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in found]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation removed,
    spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text (repeated headings get -1, -2, ...)."""
    seen: Counter[str] = Counter()
    out: set[str] = set()
    for m in _HEADING.finditer(_prose(text)):
        base = slug(m.group(1))
        out.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return out


def broken_links(doc: Path, repo: Path = REPO) -> list[str]:
    """The relative links of ``doc`` that lead nowhere inside ``repo``, with the reason."""
    problems = []
    text = doc.read_text(encoding="utf-8")
    for target in links(text):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # http(s), mailto, ...: not a file of the repository
        path_part, _, fragment = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        resolved = (doc.parent / path_part).resolve() if path_part else doc.resolve()
        if not resolved.is_relative_to(repo.resolve()):
            problems.append(f"{target}: outside the repository ({resolved})")
            continue
        if not resolved.exists():
            problems.append(f"{target}: no such file ({resolved.relative_to(repo.resolve())})")
            continue
        if (
            fragment
            and resolved.suffix == ".md"
            and unquote(fragment).lower() not in anchors(resolved.read_text(encoding="utf-8"))
        ):
            problems.append(f"{target}: no heading #{fragment} in {resolved.name}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_into_the_repository(doc: Path) -> None:
    assert broken_links(doc) == []


def test_the_readme_links_the_contract_and_it_has_sections() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/contract.md" in links(readme)
    assert not [t for t in links(readme) if "shared/" in t]
    contract = anchors((REPO / "docs" / "contract.md").read_text(encoding="utf-8"))
    assert {"1-topics", "6-http-api", "not-yet-implemented"} <= contract


def test_the_checker_reports_what_a_clone_would_miss(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "CONTRACT.md").write_text("# Contract\n")  # exists, but not in a clone
    (repo / "docs" / "a.md").write_text("# A title\n\n## Second `part` — here\n")
    doc = repo / "README.md"
    doc.write_text(
        "[ok](docs/a.md) [anchor](docs/a.md#second-part--here) [web](https://example.com/x)\n"
        "[here](#intro) [out](../shared/CONTRACT.md) [gone](docs/b.md) [bad](docs/a.md#nope)\n"
        "`[code](not/a/link.md)`\n\n```sh\n[fenced](no/such.md)\n```\n\n# Intro\n\n"
        "[ref]: <docs/missing.md>\n"
    )
    problems = broken_links(doc, repo)
    assert [p.split(":")[0] for p in problems] == [
        "../shared/CONTRACT.md",
        "docs/b.md",
        "docs/a.md#nope",
        "docs/missing.md",
    ], problems
