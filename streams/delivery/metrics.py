"""The delivery worker's Prometheus metrics, on an injected registry (contract section 8).

Labels are bounded: ``channel`` takes the configured channel names, ``outcome``/``result`` a
fixed handful of values, ``type`` the three delivered record types.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["DeliveryMetrics"]

LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sent = Counter(
            "delivery_sent",
            "Records done on a channel: outcome delivered or dead_lettered",
            ["channel", "outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "delivery_attempts",
            "Send attempts: result ok, retryable_error or permanent_error",
            ["channel", "result"],
            registry=r,
        )
        self.dead_letter = Counter(
            "delivery_dead_letter",
            "Records written to the delivery dead-letter topic (channel '-': undecodable)",
            ["channel"],
            registry=r,
        )
        self.unrouted = Counter(
            "delivery_unrouted",
            "Records that matched no route (skipped)",
            ["type"],
            registry=r,
        )
        self.invalid = Counter(
            "delivery_invalid",
            "Records that are not a violation, resolve or alert (dead-lettered)",
            ["reason"],
            registry=r,
        )
        self.skipped = Counter(
            "delivery_skipped",
            "Deliveries not sent again after a restart: the last commit marked them done",
            ["channel"],
            registry=r,
        )
        self.lag = Histogram(
            "delivery_lag_seconds",
            "Record timestamp on its topic to delivered or dead-lettered (wall clock)",
            ["channel"],
            registry=r,
            buckets=LAG_BUCKETS,
        )
        self.rate_limited = Counter(
            "delivery_rate_limited_seconds",
            "Seconds attempts waited for a token of the channel's rate limit",
            ["channel"],
            registry=r,
        )
        self.in_flight = Gauge(
            "delivery_in_flight",
            "Records read and not yet done on every channel they were routed to",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "delivery_consumer_lag_messages",
            "Messages of a topic past the delivery group's committed offsets",
            ["topic"],
            registry=r,
        )
        self.ready = Gauge(
            "delivery_ready", "1 while the consumer is running and assigned", registry=r
        )
