"""Prometheus metrics of the policy worker, on an injected registry.

Label values are bounded: ``kind`` is one of the five action kinds; ``policy`` one of the
policies loaded (a handful per deployment).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["PolicyMetrics"]


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "policy_messages", "Records read from the log", ["topic_role"], registry=r
        )
        self.actions = Counter(
            "policy_actions", "Actions the rules took", ["policy", "kind"], registry=r
        )
        self.emitted = Counter("policy_emitted", "Commands and alerts sent", ["kind"], registry=r)
        self.suppressed = Counter(
            "policy_suppressed",
            "Actions not sent: already in the emitted ledger, or computed while re-reading the log",
            registry=r,
        )
        self.watermark = Gauge(
            "policy_watermark_seconds", "Event time the policies are evaluated at", registry=r
        )
        self.ready = Gauge("policy_ready", "1 once caught up with the log", registry=r)
