"""Observability wiring of a worker: ``install(qa)`` adds what /metrics reports beyond the
counters the agents update themselves, and ``health`` / ``readiness`` answer /healthz and
/readyz from real state.

- Per-entity gauges (top-N by utilization): a listener on the enforcer marks the tenants that
  change; a timer folds them into ``TopEntities`` and publishes. Newly assigned partitions are
  scanned once (their tenants did not change here), revoked ones forgotten.
- Consumer lag (high watermark minus committed offset, per consumed partition), table sizes
  (RocksDB ``estimate-num-keys``), assigned partitions: refreshed by the same timer.
- Broker reachability: a background probe sends the cluster a metadata request every few
  seconds on a connection of its own (the consumer and producer hide their failures in retries).

Liveness (/healthz) fails when the worker has crashed or the broker has been unreachable for
``health_broker_timeout_seconds``; readiness (/readyz) also needs an assignment, finished table
recovery, a broker that answered the last probe, and consumer lag at most ``ready_max_lag``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from novaquota.schemas.amounts import from_micros
from novaquota.streams import faust_compat
from novaquota.streams import quota as q
from novaquota.streams.app import tables_recovered
from novaquota.streams.faust_compat import committed_offset
from novaquota.streams.metrics import EntityRow, TopEntities, consumer_lag, remove_series

if TYPE_CHECKING:
    from novaquota.streams.app import QuotaApp

__all__ = [
    "ObserveConfig",
    "Observer",
    "entity_rows",
    "health",
    "install",
    "observer_of",
    "readiness",
]

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
PROBE_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 10.0
SEED_CHUNK = 200  # tenants decoded between yields to the event loop when seeding
NUM_KEYS = "rocksdb.estimate-num-keys"


def _setting(settings: Any, name: str, default: float) -> float:
    """``settings.<name>``, else env ``NOVAQUOTA_<NAME>``, else ``default``."""
    value = getattr(settings, name, None)
    if value is None:
        raw = os.environ.get(f"NOVAQUOTA_{name.upper()}")
        if raw is None or not raw.strip():
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"NOVAQUOTA_{name.upper()} must be a number, not {raw!r}") from None
    if float(value) < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    return float(value)


@dataclass(frozen=True)
class ObserveConfig:
    metrics_top_n: int = 50
    """Entities exported in the per-entity series; 0 disables them."""
    ready_max_lag: int = 100_000
    """Readiness fails while the consumer lag (messages) exceeds this; 0 ignores lag."""
    health_broker_timeout_seconds: float = 60.0
    """Liveness fails when no broker probe succeeded for this long."""

    @classmethod
    def from_settings(cls, settings: Any) -> ObserveConfig:
        d = cls()
        return cls(
            metrics_top_n=int(_setting(settings, "metrics_top_n", d.metrics_top_n)),
            ready_max_lag=int(_setting(settings, "ready_max_lag", d.ready_max_lag)),
            health_broker_timeout_seconds=_setting(
                settings, "health_broker_timeout_seconds", d.health_broker_timeout_seconds
            ),
        )


def entity_rows(state: q.TenantState | q.SystemState) -> dict[tuple[str, str], list[EntityRow]]:
    """Every entity of a tenant (or the system) that has quotas: its resources with a limit,
    in resource units, keyed by (level, entity_id)."""
    out: dict[tuple[str, str], list[EntityRow]] = {}
    for ekey in state.quotas:
        level, entity_id = q.split_entity_key(ekey)
        rows = [
            EntityRow(
                resource_type=row["resource_type"],
                used=float(from_micros(row["used"])),
                limit=float(from_micros(row["limit"])),
                utilization=_float_or_none(row["utilization"]),
            )
            for row in q.utilization_view(state, level, entity_id)
            if row["limit"] is not None
        ]
        if rows:
            out[(level, entity_id)] = rows
    return out


def _float_or_none(value: float | None) -> float | None:
    """Utilization of a zero limit is None (contract section 5) and stays so: the gauge series
    is left out rather than exported as +Inf."""
    return None if value is None else float(value)


@dataclass
class BrokerProbe:
    started: float = field(default_factory=time.monotonic)
    last_ok: float | None = None
    reachable: bool = False
    error: str | None = None

    def ok(self) -> bool:
        """Record a success; True when the broker was unreachable before."""
        changed = not self.reachable and self.last_ok is not None
        self.last_ok = time.monotonic()
        self.reachable = True
        self.error = None
        return changed

    def failed(self, exc: BaseException) -> bool:
        """Record a failure; True when it is the first since a success (or since start)."""
        changed = self.reachable or self.error is None
        self.reachable = False
        self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return changed

    def silent_for(self) -> float:
        """Seconds since the last success (since start when none yet)."""
        return time.monotonic() - (self.last_ok if self.last_ok is not None else self.started)


class Observer:
    """Per-worker observability state (one per ``QuotaApp``)."""

    def __init__(self, qa: QuotaApp, config: ObserveConfig) -> None:
        self.qa = qa
        self.config = config
        self.top: TopEntities | None = (
            TopEntities(qa.metrics, config.metrics_top_n) if config.metrics_top_n > 0 else None
        )
        self.dirty: dict[str, q.TenantState | q.SystemState] = {}
        self.owned: set[int] = set()
        self.seeded: set[int] = set()
        self.probe = BrokerProbe()
        self._lag_labels: set[tuple[str, str]] = set()
        self._table_labels: set[tuple[str, str]] = set()
        self._refreshing = False

    # -- hooks --------------------------------------------------------------------------------

    def on_stored(self, tenant_id: str, record: Any) -> None:
        """Enforcer listener: runs on every stored change, so it only takes note."""
        self.dirty[tenant_id] = record.state

    # -- partitions ---------------------------------------------------------------------------

    def input_topics(self) -> set[str]:
        qa = self.qa
        return {
            t.get_topic_name()
            for t in (qa.resource_events, qa.quota_commands, qa.routed, qa.ticks, qa.system_totals)
        }

    def active_partitions(self) -> set[int]:
        topic = self.qa.resource_events.get_topic_name()
        return {tp.partition for tp in self.qa.app.assignor.assigned_actives() if tp.topic == topic}

    def settled(self) -> bool:
        app = self.qa.app
        return bool(not app.rebalancing and tables_recovered(app))

    # -- consumer lag -------------------------------------------------------------------------

    def lag(self) -> dict[tuple[str, int], int]:
        app = self.qa.app
        topics = self.input_topics()
        consumer: Any = app.consumer
        highs: dict[tuple[str, int], int | None] = {}
        committed: dict[tuple[str, int], int | None] = {}
        for tp in app.assignor.assigned_actives():
            if tp.topic not in topics:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched yet, consumer not started, partition moving
                high = None
            highs[(tp.topic, tp.partition)] = high
            committed[(tp.topic, tp.partition)] = committed_offset(app, tp)
        return consumer_lag(highs, committed)

    def refresh_lag(self) -> None:
        gauge = self.qa.metrics.consumer_lag
        labels_now: set[tuple[str, str]] = set()
        for (topic, partition), n in self.lag().items():
            labels = (topic, str(partition))
            labels_now.add(labels)
            gauge.labels(*labels).set(n)
        for labels in self._lag_labels - labels_now:
            remove_series(gauge, labels)
        self._lag_labels = labels_now

    # -- tables -------------------------------------------------------------------------------

    def table_keys(self) -> dict[tuple[str, str], int]:
        """Estimated keys per (table, role): ``active``/``standby`` partitions, or ``global``."""
        actives = self.active_partitions()
        sizes: dict[tuple[str, str], int] = {}
        tables: Any = self.qa.app.tables
        for table in list(tables.values()):
            store: Any = table.data
            dbs = faust_compat.open_dbs(table)
            name = str(table.name)
            is_global = bool(getattr(table, "is_global", False))
            roles = ("global",) if is_global else ("active", "standby")
            for role in roles:
                sizes.setdefault((name, role), 0)
            if dbs is None:  # the in-memory store
                with contextlib.suppress(TypeError):
                    sizes[(name, roles[0])] += len(store)
                continue
            for partition, db in list(dbs.items()):
                try:
                    n = int(db.property_int_value(NUM_KEYS) or 0)
                except Exception:  # a db closing during a rebalance
                    continue
                if roles[0] == "global":
                    role = "global"
                else:
                    role = "active" if partition in actives else "standby"
                sizes[(name, role)] += n
        return sizes

    def refresh_tables(self) -> None:
        gauge = self.qa.metrics.table_keys
        sizes = self.table_keys()
        for labels, n in sizes.items():
            gauge.labels(*labels).set(n)
        for labels in self._table_labels - set(sizes):
            remove_series(gauge, labels)
        self._table_labels = set(sizes)

    # -- top-N entities -----------------------------------------------------------------------

    async def refresh_top(self) -> None:
        top = self.top
        if top is None:
            self.dirty.clear()
            return
        if not self.settled():
            return  # fold changes in once the assignment and the tables are stable
        from novaquota.streams.agents import home_partition

        n_parts = self.qa.settings.partitions
        owned = self.active_partitions()
        gone = self.owned - owned
        if gone:
            top.drop_tenants(lambda t: home_partition(t, n_parts) in gone)
            self.seeded -= gone
        self.owned = owned
        for p in sorted(owned - self.seeded):
            if not await self._seed(top, p):
                return  # a rebalance started: try again next time
            self.seeded.add(p)
        dirty, self.dirty = self.dirty, {}
        for i, (tenant, state) in enumerate(dirty.items(), 1):
            if home_partition(tenant, n_parts) in owned:
                top.update(tenant, entity_rows(state))
            if i % SEED_CHUNK == 0:
                await asyncio.sleep(0)
        top.publish()

    async def _seed(self, top: TopEntities, partition: int) -> bool:
        """Fold in every tenant of a newly owned partition (once per assignment)."""
        from novaquota.streams.enforce import SYSTEM, TenantRecord

        for i, (tenant, raw) in enumerate(self.qa.store.records(partition), 1):
            if tenant not in self.dirty:  # a newer state is already waiting
                rec = TenantRecord.from_bytes(raw, system=tenant == SYSTEM)
                top.update(tenant, entity_rows(rec.state))
            if i % SEED_CHUNK == 0:
                await asyncio.sleep(0)
                if not self.settled():
                    return False
        return True

    # -- timers -------------------------------------------------------------------------------

    async def refresh(self) -> None:
        if self._refreshing:  # a long seed still running
            return
        self._refreshing = True
        try:
            m = self.qa.metrics
            m.assigned_partitions.set(len(self.active_partitions()))
            self.refresh_lag()
            self.refresh_tables()
            await self.refresh_top()
            ready, _ = await readiness(self.qa)
            m.ready.set(1 if ready else 0)
        finally:
            self._refreshing = False

    async def run_probe(self) -> None:
        """Ask the broker for the input topic's metadata every few seconds, forever."""
        from aiokafka.admin import AIOKafkaAdminClient

        settings = self.qa.settings
        servers = settings.bootstrap_servers
        admin: AIOKafkaAdminClient | None = None
        try:
            while True:
                try:
                    if admin is None:
                        admin = AIOKafkaAdminClient(
                            **settings.kafka_client_config(),
                            client_id=f"{settings.app_id}-health",
                            request_timeout_ms=int(PROBE_TIMEOUT_SECONDS * 1000),
                        )
                        await asyncio.wait_for(admin.start(), PROBE_TIMEOUT_SECONDS)
                    # a metadata request for no topic: cheap, and it never auto-creates one
                    await asyncio.wait_for(admin.describe_topics([]), PROBE_TIMEOUT_SECONDS)
                    if self.probe.ok():
                        log.info("broker reachable again", extra={"check": "broker"})
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self.probe.failed(exc):
                        log.warning(
                            "broker unreachable: %s",
                            self.probe.error,
                            extra={"check": "broker", "bootstrap_servers": servers},
                        )
                    if admin is not None:
                        await _close_quietly(admin)
                        admin = None
                self.qa.metrics.broker_up.set(1 if self.probe.reachable else 0)
                await asyncio.sleep(PROBE_SECONDS)
        finally:
            if admin is not None:
                await _close_quietly(admin)


async def _close_quietly(admin: Any) -> None:
    try:
        await asyncio.wait_for(admin.close(), PROBE_TIMEOUT_SECONDS)
    except Exception:  # closing a client whose connection is already gone
        log.debug("closing the broker probe failed", exc_info=True)


_observers: weakref.WeakKeyDictionary[Any, Observer] = weakref.WeakKeyDictionary()


def observer_of(qa: QuotaApp) -> Observer | None:
    return _observers.get(qa)


def install(qa: QuotaApp) -> Observer:
    """Register the listener, the refresh timer and the broker probe on ``qa``."""
    obs = Observer(qa, ObserveConfig.from_settings(qa.settings))
    _observers[qa] = obs
    if obs.top is not None and qa.enforcer is not None:
        qa.enforcer.listeners.append(obs.on_stored)
    app = qa.app

    @app.timer(interval=REFRESH_SECONDS, on_leader=False)
    async def observe_refresh() -> None:
        await obs.refresh()

    @app.task
    async def observe_broker() -> None:
        await obs.run_probe()

    return obs


async def health(qa: QuotaApp) -> tuple[bool, dict[str, Any]]:
    """Liveness: (ok, body) for ``/healthz``."""
    app: Any = qa.app
    crashed = bool(getattr(app, "crashed", False))
    body: dict[str, Any] = {"crashed": crashed}
    ok = not crashed
    if crashed:
        body["crash_reason"] = repr(app.crash_reason)
    obs = observer_of(qa)
    if obs is not None:
        silent = obs.probe.silent_for()
        broker_ok = obs.probe.reachable or silent < obs.config.health_broker_timeout_seconds
        body["broker"] = _broker_body(obs)
        ok = ok and broker_ok
    body["status"] = "ok" if ok else "failing"
    return ok, body


def _broker_body(obs: Observer) -> dict[str, Any]:
    p = obs.probe
    return {
        "reachable": p.reachable,
        "last_ok_seconds_ago": None if p.last_ok is None else round(p.silent_for(), 3),
        "error": p.error,
    }


async def readiness(qa: QuotaApp) -> tuple[bool, dict[str, Any]]:
    """Readiness: (ready, body) for ``/readyz``."""
    app = qa.app
    assigned = list(app.assignor.assigned_actives())
    recovered = tables_recovered(app)
    ready = bool(not app.rebalancing and assigned and recovered)
    body: dict[str, Any] = {
        "rebalancing": bool(app.rebalancing),
        "tables_recovered": recovered,
        "assigned_partitions": len(assigned),
    }
    obs = observer_of(qa)
    if obs is not None:
        total_lag = sum(obs.lag().values())
        max_lag = obs.config.ready_max_lag
        lag_ok = max_lag == 0 or total_lag <= max_lag
        body["broker"] = _broker_body(obs)
        body["consumer_lag"] = total_lag
        body["max_consumer_lag"] = max_lag or None
        ready = ready and obs.probe.reachable and lag_ok
    body["ready"] = ready
    return ready, {"ready": ready, **body}
