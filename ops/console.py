"""What every ``novaquota`` command shares on the terminal (contract section 7).

- ``--output text|json`` (``add_output_option``): a command's report goes to standard output,
  as text for people (the default) or as one JSON document for programs (``print_json``), and
  nothing else goes to standard output then. Diagnostics (rejected lines, notes, progress)
  go to standard error in both modes.
- Progress bars (``Bar``, ``add_progress_options``): rich bars on standard error for the long
  reads, shown only when standard error is a terminal, and never with ``--no-progress`` (or
  ``-q``/``--quiet``).
- ``package_version``: the installed distribution's version, for ``--version``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

__all__ = [
    "OUTPUTS",
    "Bar",
    "add_output_option",
    "add_progress_options",
    "package_version",
    "print_fields",
    "print_json",
    "print_table",
    "progress_wanted",
]

OUTPUTS = ("text", "json")


def package_version() -> str:
    """The version of this code: ``novaquota.__version__``, the one source the package
    metadata is built from."""
    from novaquota import __version__

    return __version__


def add_output_option(parser: argparse.ArgumentParser, what: str = "the report") -> None:
    parser.add_argument(
        "--output",
        choices=OUTPUTS,
        default="text",
        help=f"{what} on standard output as text (default) or as one JSON document",
    )


def add_progress_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress",
        "-q",
        "--quiet",
        dest="no_progress",
        action="store_true",
        help="no progress bar (there is none anyway when standard error is not a terminal)",
    )


def progress_wanted(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_table(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> None:
    """Aligned columns with a header; None shows as ``-``."""
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    for row in [columns, *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_fields(obj: Mapping[str, Any]) -> None:
    """``key: value`` lines, one per field (nested values as compact JSON)."""
    width = max((len(k) for k in obj), default=0)
    for key, value in obj.items():
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        print(f"{key + ':':<{width + 1}} {shown}")


class Bar:
    """A rich progress bar on standard error, or nothing at all when ``enabled`` is false.

    ``with Bar("reading the log", enabled=progress_wanted(args)) as bar:
    bar.update(done, total)``; ``total=None`` shows a bar without an end (a pulse)."""

    def __init__(self, description: str, *, enabled: bool, unit: str = "records") -> None:
        self.description = description
        self.enabled = enabled
        self.unit = unit
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Bar:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        count: list[ProgressColumn] = (
            [DownloadColumn()]
            if self.unit == "bytes"
            else [MofNCompleteColumn(), TextColumn(self.unit)]
        )
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            *count,
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=None)
        return self

    def update(self, done: int, total: int | None = None, description: str | None = None) -> None:
        if self._progress is None:
            return
        extra: dict[str, Any] = {} if description is None else {"description": description}
        self._progress.update(self._task, completed=done, total=total, **extra)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
