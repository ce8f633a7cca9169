"""Observability wiring of a worker: ``install(qa)`` adds what /metrics reports beyond the
counters the agents update themselves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streams.app import tables_recovered

if TYPE_CHECKING:
    from streams.app import QuotaApp

__all__ = ["health", "install", "readiness"]


def install(qa: QuotaApp) -> None:
    return None


async def health(qa: QuotaApp) -> tuple[bool, dict[str, Any]]:
    """Liveness: (ok, body) for ``/healthz``."""
    return True, {"status": "ok"}


async def readiness(qa: QuotaApp) -> tuple[bool, dict[str, Any]]:
    """Readiness: (ready, body) for ``/readyz``."""
    app = qa.app
    assigned = list(app.assignor.assigned_actives())
    recovered = tables_recovered(app)
    ready = bool(not app.rebalancing and assigned and recovered)
    return ready, {
        "ready": ready,
        "rebalancing": bool(app.rebalancing),
        "tables_recovered": recovered,
        "assigned_partitions": len(assigned),
    }
