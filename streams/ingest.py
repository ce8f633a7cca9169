"""Ingest-side helpers shared by every agent: dead-letter records and decode outcomes.

Pure functions; the agents send what these build.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["dead_letter_headers", "header_value"]


def dead_letter_headers(
    reason: str,
    message: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    original: Sequence[tuple[str, bytes]] | None = None,
) -> list[tuple[str, bytes]]:
    """The contract's error headers, after the original headers (kept, so nothing is lost)."""
    headers = [(k, v) for k, v in (original or ()) if not k.startswith("error.")]
    headers += [
        ("error.reason", reason.encode()),
        ("error.message", message.encode("utf-8", "replace")[:4096]),
        ("error.topic", topic.encode()),
        ("error.partition", str(partition).encode()),
        ("error.offset", str(offset).encode()),
    ]
    return headers


def header_value(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for k, v in headers or ():
        if k == name:
            return v
    return None
