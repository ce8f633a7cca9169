"""Prometheus metrics of the projection workers, on an injected registry.

Label values are bounded: ``projection`` is one of a fixed few, ``partition`` is
``<topic>:<partition>`` of the input topics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ProjectionMetrics"]


class ProjectionMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "projection_events",
            "Input records folded into a projection",
            ["projection"],
            registry=r,
        )
        self.rejected = Counter(
            "projection_rejected",
            "Input records the codec rejects (they never count)",
            ["reason"],
            registry=r,
        )
        self.lag = Gauge(
            "projection_lag_seconds",
            "Wall clock now minus the event time of the last folded event",
            ["projection"],
            registry=r,
        )
        self.position = Gauge(
            "projection_position",
            "Next offset to fold, per input partition",
            ["partition"],
            registry=r,
        )
        self.emitted = Counter(
            "projection_emitted",
            "Alerts and violations sent",
            ["kind"],
            registry=r,
        )
        self.ready = Gauge("projection_ready", "1 once caught up with the log", registry=r)
