"""``novaquota simulate``: the seeded workload simulator."""

from __future__ import annotations

import sys

from streams.settings import Settings

__all__ = ["main"]


def main(argv: list[str], settings: Settings) -> int:
    print("novaquota simulate: not available yet", file=sys.stderr)
    return 2
