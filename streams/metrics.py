"""All Prometheus metrics in one place, on an injected registry (contract section 8).

Per-entity series (``quota_utilization``, ``quota_usage``, ``quota_limit``) are bounded: only the
top-N entities by utilization are exported (``NOVAQUOTA_METRICS_TOP_N``), so a million tenants do
not become a million series. ``TopEntities`` keeps them incrementally from the tenants that
change, never by scanning every tenant. A zero limit has no utilization (contract section 5): its
``quota_utilization`` series is left out (``quota_usage`` and ``quota_limit`` are exported), so
no dashboard ever sees ``+Inf``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["EntityKey", "EntityRow", "Metrics", "TopEntities", "consumer_lag", "remove_series"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The worker's metrics. Counters are updated by the agents as things happen; gauges of
    state (lag, table sizes, top-N entities) are refreshed by ``streams.observe`` timers."""

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
        self.batch_messages = Histogram(
            "quota_write_batch_messages",
            "Input messages per write batch (written and acknowledged together)",
            registry=r,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
        )
        self.batch_seconds = Histogram(
            "quota_write_batch_seconds",
            "Time to write one batch: changelog acknowledged, RocksDB, outputs handed over",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.dead_letter = Counter(
            "quota_dead_letter", "Messages sent to the dead-letter topic", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "quota_duplicates",
            "Input messages ignored as a second message with a known (source, id), by type",
            ["type"],
            registry=r,
        )
        self.internal_errors = Counter(
            "quota_internal_errors",
            "Messages whose processing raised unexpectedly (dead-lettered as internal_error)",
            ["stage"],
            registry=r,
        )
        self.live_clients = Gauge(
            "quota_live_clients", "Open subscriptions of /api/v1/quotas/live", registry=r
        )
        self.live_lagging = Counter(
            "quota_live_lagging",
            "Live subscribers disconnected with a lagging notice (they read too slowly)",
            registry=r,
        )
        # -- worker state, refreshed by timers ---------------------------------------------
        self.consumer_lag = Gauge(
            "quota_consumer_lag_messages",
            "Messages in a consumed partition past the group's committed offset",
            ["topic", "partition"],
            registry=r,
        )
        self.table_keys = Gauge(
            "quota_table_keys",
            "Estimated keys per table on this worker (RocksDB estimate-num-keys)",
            ["table", "role"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "quota_assigned_partitions",
            "Partitions of the resource-events topic this worker owns",
            registry=r,
        )
        self.broker_up = Gauge(
            "quota_broker_up", "1 when the last broker probe answered, else 0", registry=r
        )
        self.ready = Gauge("quota_worker_ready", "1 when /readyz answers 200, else 0", registry=r)
        self.top_entities = Gauge(
            "quota_top_entities",
            "Entities exported in the per-entity series (at most NOVAQUOTA_METRICS_TOP_N)",
            registry=r,
        )


EntityKey = tuple[str, str, str]
"""(tenant_id, level, entity_id)."""


@dataclass(frozen=True, slots=True)
class EntityRow:
    """One resource of one entity, in resource units (floats: Prometheus samples are)."""

    resource_type: str
    used: float
    limit: float
    utilization: float | None
    """None for a zero limit: exported without a ``quota_utilization`` series."""


@dataclass(slots=True)
class _Entry:
    score: float
    rows: tuple[EntityRow, ...]


class TopEntities:
    """The entities with the highest utilization, exported as per-entity gauges.

    A pool of up to ``pool_factor * n`` candidates is kept, updated from the tenants that
    change: an entity enters when it beats the lowest candidate, and a tenant's entities are
    replaced as a whole whenever it changes. An entity that falls out of the pool comes back
    the next time its tenant changes (utilization only moves when state does), so the
    exported top N stays exact unless more than ``(pool_factor - 1) * n`` candidates drop
    below an unchanged outsider at once. Memory and work per update are O(pool), never
    O(tenants).
    """

    def __init__(self, metrics: Metrics, n: int, pool_factor: int = 4) -> None:
        if n < 0:
            raise ValueError(f"top-N must be >= 0, not {n}")
        if pool_factor < 1:
            raise ValueError(f"pool_factor must be >= 1, not {pool_factor}")
        self.metrics = metrics
        self.n = n
        self.capacity = n * pool_factor
        self._entries: dict[EntityKey, _Entry] = {}
        self._by_tenant: dict[str, set[EntityKey]] = {}
        self._min: tuple[float, EntityKey] | None = None  # cached lowest entry, None = unknown
        self._published: set[tuple[str, str, str]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def update(
        self, tenant_id: str, entities: Mapping[tuple[str, str], Iterable[EntityRow]]
    ) -> None:
        """Replace what is known of ``tenant_id``: its entities ``{(level, entity_id): rows}``
        (only resources that have a limit)."""
        if self.capacity == 0:
            return
        for key in self._by_tenant.pop(tenant_id, ()):
            self._remove(key)
        for (level, entity_id), rows in entities.items():
            row_t = tuple(rows)
            if not row_t:
                continue
            score = max(_rank(r) for r in row_t)
            self._offer((tenant_id, level, entity_id), _Entry(score, row_t))

    def drop_tenants(self, gone: Callable[[str], bool]) -> int:
        """Forget the tenants for which ``gone(tenant_id)`` is true (their partitions moved to
        another worker); returns how many entities were dropped."""
        dropped = 0
        for tenant in [t for t in self._by_tenant if gone(t)]:
            for key in self._by_tenant.pop(tenant):
                self._remove(key)
                dropped += 1
        return dropped

    def top(self) -> list[tuple[EntityKey, tuple[EntityRow, ...]]]:
        """The exported entities, highest utilization first (ties by key, deterministically)."""
        ranked = sorted(self._entries.items(), key=lambda kv: (-kv[1].score, kv[0]))
        return [(key, e.rows) for key, e in ranked[: self.n]]

    def publish(self) -> None:
        """Set the per-entity gauges to the current top N and remove series that left it."""
        m = self.metrics
        labels_now: set[tuple[str, str, str]] = set()
        for (_tenant, level, entity_id), rows in self.top():
            for row in rows:
                labels = (entity_id, row.resource_type, level)
                labels_now.add(labels)
                if row.utilization is None:
                    remove_series(m.utilization, labels)  # e.g. the limit was set to 0
                else:
                    m.utilization.labels(*labels).set(row.utilization)
                m.usage.labels(*labels).set(row.used)
                m.limit.labels(*labels).set(row.limit)
        for labels in self._published - labels_now:
            for gauge in (m.utilization, m.usage, m.limit):
                remove_series(gauge, labels)
        self._published = labels_now
        m.top_entities.set(min(self.n, len(self._entries)))

    # -- internals ----------------------------------------------------------------------------

    def _remove(self, key: EntityKey) -> None:
        self._entries.pop(key, None)
        if self._min is not None and self._min[1] == key:
            self._min = None

    def _lowest(self) -> tuple[float, EntityKey]:
        if self._min is None:
            key, entry = min(self._entries.items(), key=lambda kv: (kv[1].score, kv[0]))
            self._min = (entry.score, key)
        return self._min

    def _offer(self, key: EntityKey, entry: _Entry) -> None:
        if len(self._entries) >= self.capacity:
            low_score, low_key = self._lowest()
            if entry.score <= low_score:
                return
            self._evict(low_key)
        self._entries[key] = entry
        self._by_tenant.setdefault(key[0], set()).add(key)
        if self._min is not None and entry.score < self._min[0]:
            self._min = (entry.score, key)

    def _evict(self, key: EntityKey) -> None:
        self._remove(key)
        keys = self._by_tenant.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_tenant[key[0]]


def remove_series(gauge: Gauge, labels: Iterable[str]) -> None:
    """Drop one labelled series (no error when it is not there)."""
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


def _rank(row: EntityRow) -> float:
    """How urgent a row is: its utilization; usage above a zero limit is over the limit by more
    than any percentage says, so it ranks first (as +inf, which is never exported)."""
    if row.utilization is None:
        return math.inf if row.used > 0 else 0.0
    return -1.0 if math.isnan(row.utilization) else row.utilization


def consumer_lag(
    highwaters: Mapping[tuple[str, int], int | None],
    committed: Mapping[tuple[str, int], int | None],
) -> dict[tuple[str, int], int]:
    """Messages past the committed offset per (topic, partition): ``highwater - committed``,
    never below 0. A partition whose high watermark is unknown yet is left out; one with no
    committed offset counts from offset 0."""
    lag: dict[tuple[str, int], int] = {}
    for tp, high in highwaters.items():
        if high is None:
            continue
        done = committed.get(tp) or 0
        lag[tp] = max(0, int(high) - int(done))
    return lag
