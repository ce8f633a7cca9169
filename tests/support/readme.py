"""The fenced shell blocks of README.md and how they are marked.

A shell block's info string names its language and, after a space, whether a test runs it:
```` ```bash tested ```` (run by ``tests/integration/test_readme.py``, in order, as one script) or
```` ```bash untested ```` (shown only: it installs, starts long jobs, stops the broker, or needs a
tool the tests do not have). GitHub renders both as bash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MARKS", "README", "SHELLS", "Block", "blocks", "blocks_marked_tested", "shell_blocks"]

README = Path(__file__).resolve().parents[2] / "README.md"
SHELLS = frozenset({"bash", "sh", "shell", "console", "zsh"})
MARKS = frozenset({"tested", "untested"})

# An opening fence (``` or ~~~, indented in a list item or not), its info string, the body, and
# the closing fence of the same kind.
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>```+|~~~+)(?P<info>[^\n]*)\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
    re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    """One fenced code block: ``lang`` and ``mark`` are the first two words of its info string."""

    lang: str
    mark: str
    body: str
    line: int  # 1-based line of the opening fence

    @property
    def shell(self) -> bool:
        return self.lang in SHELLS

    @property
    def tested(self) -> bool:
        return self.shell and self.mark == "tested"

    def where(self) -> str:
        return f"README.md:{self.line}"


def blocks(text: str) -> list[Block]:
    """Every fenced code block of a Markdown text, in order."""
    found = []
    for m in _FENCE.finditer(text):
        words = m.group("info").split()
        found.append(
            Block(
                lang=words[0].lower() if words else "",
                mark=words[1].lower() if len(words) > 1 else "",
                body=m.group("body"),
                line=text.count("\n", 0, m.start()) + 1,
            )
        )
    return found


def shell_blocks(text: str) -> list[Block]:
    return [b for b in blocks(text) if b.shell]


def blocks_marked_tested(text: str) -> list[Block]:
    return [b for b in blocks(text) if b.tested]
