"""All Prometheus metrics in one place, on an injected registry (contract section 8).

Per-entity series (``quota_utilization``, ``quota_usage``, ``quota_limit``) are bounded: only the
top-N entities by utilization are exported (``NOVAQUOTA_METRICS_TOP_N``), so a million tenants do
not become a million series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        entity = ["entity_id", "resource_type", "level"]
        self.utilization = Gauge(
            "quota_utilization", "Used / limit x 100 (top-N entities)", entity, registry=r
        )
        self.usage = Gauge("quota_usage", "Current usage (top-N entities)", entity, registry=r)
        self.limit = Gauge("quota_limit", "Quota limit (top-N entities)", entity, registry=r)
        self.violations = Counter(
            "quota_violations", "Violation episodes opened", ["resource_type", "kind"], registry=r
        )
        self.check_duration = Histogram(
            "quota_check_duration_seconds",
            "Admission check latency",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.cache_hit_ratio = Gauge("quota_cache_hit_ratio", "Check cache hit ratio", registry=r)
        self.events_processed = Counter(
            "quota_events_processed",
            "Input messages by CloudEvent type and outcome",
            ["type", "outcome"],
            registry=r,
        )
        self.event_lag = Histogram(
            "quota_event_lag_seconds",
            "Event time to processed (wall clock)",
            registry=r,
            buckets=(*LATENCY_BUCKETS, 30, 60, 300, 3600),
        )
        self.dead_letter = Counter(
            "quota_dead_letter", "Messages sent to the dead-letter topic", ["reason"], registry=r
        )
