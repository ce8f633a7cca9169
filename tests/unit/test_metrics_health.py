"""/healthz and /readyz from worker state, and the observer's refresh, on a stand-in app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from novaquota.streams import observe
from novaquota.streams.agents import home_partition
from novaquota.streams.enforce import TenantRecord
from novaquota.streams.metrics import Metrics
from novaquota.streams.settings import Settings
from novaquota.streams.store.faust_base import FaustBase
from novaquota.streams.store.records import record_key
from novaquota.streams.store.tenant_store import TenantStore

from .test_quota_support import World

PARTS = 4
TOPICS = ("resource-events", "quota-commands", "internal-routed", "internal-ticks", "st")


class FakeTopic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


class FakeConsumer:
    def __init__(self) -> None:
        self.high: dict[TP, int] = {}
        self._committed_offset: dict[TP, int | None] = {}

    def highwater(self, tp: TP) -> int | None:
        return self.high.get(tp)


class FakeDb:
    def __init__(self, rows: dict[bytes, bytes]) -> None:
        self.rows = rows

    def items(self, from_key: bytes = b"") -> list[tuple[bytes, bytes]]:
        return sorted((k, v) for k, v in self.rows.items() if k >= from_key)

    def property_int_value(self, name: str) -> int:
        assert name == "rocksdb.estimate-num-keys"
        return len(self.rows)


class FakeStore:
    offset_key = b"__faust\x00offset__"

    def __init__(self) -> None:
        self._dbs: dict[int, FakeDb] = {p: FakeDb({}) for p in range(PARTS)}

    def _db_for_partition(self, p: int) -> FakeDb:
        return self._dbs[p]


class FakeApp:
    def __init__(self) -> None:
        self.rebalancing = False
        self.crashed = False
        self.crash_reason: BaseException | None = None
        self.actives: set[TP] = set()
        self.assignor = SimpleNamespace(assigned_actives=lambda: set(self.actives))
        done = asyncio.Event()
        done.set()
        self.tables_done = done
        self.consumer = FakeConsumer()
        self.store = FakeStore()
        self.tables = SimpleNamespace(
            recovery=SimpleNamespace(completed=done),
            values=lambda: [SimpleNamespace(name="state", data=self.store, is_global=False)],
        )
        self.timers: list[Callable[[], Any]] = []
        self.tasks: list[Callable[[], Any]] = []

    def timer(self, interval: float, on_leader: bool) -> Callable[[Any], Any]:
        def deco(fn: Any) -> Any:
            self.timers.append(fn)
            return fn

        return deco

    def task(self, fn: Any) -> Any:
        self.tasks.append(fn)
        return fn


class FakeQuotaApp:
    """The attributes of ``QuotaApp`` that observability reads (hashed by identity, weakly
    referenceable, as ``QuotaApp``)."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


def make_qa() -> Any:
    app = FakeApp()
    topics = {name: FakeTopic(f"p.{name}") for name in TOPICS}
    qa = FakeQuotaApp(
        app=app,
        settings=Settings(partitions=PARTS, topic_prefix="p."),
        metrics=Metrics(CollectorRegistry()),
        resource_events=topics["resource-events"],
        quota_commands=topics["quota-commands"],
        routed=topics["internal-routed"],
        ticks=topics["internal-ticks"],
        system_totals=topics["st"],
        store=TenantStore(
            FaustBase(SimpleNamespace(data=app.store)), lambda t: home_partition(t, PARTS)
        ),
        enforcer=SimpleNamespace(listeners=[]),
    )
    return qa


def assign(qa: Any, *partitions: int) -> None:
    qa.app.actives = {
        TP(t.get_topic_name(), p)
        for p in partitions
        for t in (qa.resource_events, qa.quota_commands, qa.routed)
    }


def gauge(qa: Any, name: str, **labels: str) -> float | None:
    value = qa.metrics.registry.get_sample_value(name, labels or None)
    return None if value is None else float(value)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("METRICS_TOP_N", "READY_MAX_LAG", "HEALTH_BROKER_TIMEOUT_SECONDS"):
        monkeypatch.delenv(f"NOVAQUOTA_{name}", raising=False)


def test_install_registers_the_listener_timer_and_probe() -> None:
    qa = make_qa()
    obs = observe.install(qa)
    assert qa.enforcer.listeners == [obs.on_stored]
    assert len(qa.app.timers) == 1 and len(qa.app.tasks) == 1
    assert observe.observer_of(qa) is obs


def test_top_n_zero_registers_no_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVAQUOTA_METRICS_TOP_N", "0")
    qa = make_qa()
    obs = observe.install(qa)
    assert obs.top is None and qa.enforcer.listeners == []


def test_readiness_needs_broker_assignment_recovery_and_bounded_lag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOVAQUOTA_READY_MAX_LAG", "100")
    qa = make_qa()
    obs = observe.install(qa)
    ready, body = asyncio.run(observe.readiness(qa))
    assert not ready and body["assigned_partitions"] == 0
    assign(qa, 0, 1)
    ready, body = asyncio.run(observe.readiness(qa))
    assert not ready and body["broker"]["reachable"] is False  # no probe answered yet
    obs.probe.ok()
    ready, body = asyncio.run(observe.readiness(qa))
    assert ready and body["consumer_lag"] == 0 and body["ready"] is True
    # 150 messages behind on one partition: over the bound
    tp = TP("p.resource-events", 1)
    qa.app.consumer.high[tp] = 250
    qa.app.consumer._committed_offset[tp] = 100
    ready, body = asyncio.run(observe.readiness(qa))
    assert not ready and body["consumer_lag"] == 150 and body["max_consumer_lag"] == 100
    qa.app.consumer._committed_offset[tp] = 200
    assert asyncio.run(observe.readiness(qa))[0]
    qa.app.rebalancing = True
    assert not asyncio.run(observe.readiness(qa))[0]
    qa.app.rebalancing = False
    qa.app.tables_done.clear()
    ready, body = asyncio.run(observe.readiness(qa))
    assert not ready and body["tables_recovered"] is False


def test_health_fails_on_crash_or_a_long_broker_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVAQUOTA_HEALTH_BROKER_TIMEOUT_SECONDS", "30")
    qa = make_qa()
    obs = observe.install(qa)
    ok, body = asyncio.run(observe.health(qa))
    assert ok and body["status"] == "ok"  # starting up: within the timeout
    obs.probe.started -= 31
    ok, body = asyncio.run(observe.health(qa))
    assert not ok and body["status"] == "failing" and body["broker"]["last_ok_seconds_ago"] is None
    obs.probe.ok()
    obs.probe.failed(ConnectionError("refused"))
    ok, body = asyncio.run(observe.health(qa))
    assert ok and body["broker"] == {
        "reachable": False,
        "last_ok_seconds_ago": pytest.approx(0, abs=5),
        "error": "ConnectionError: refused",
    }
    obs.probe.last_ok = time.monotonic() - 31
    assert not asyncio.run(observe.health(qa))[0]
    obs.probe.ok()
    qa.app.crashed = True
    qa.app.crash_reason = RuntimeError("agent died")
    ok, body = asyncio.run(observe.health(qa))
    assert not ok and "agent died" in body["crash_reason"]


def _tenant_rows(tenant: str, used: float) -> bytes:
    w = World(tenant)
    w.quota("cpu", 10)
    w.alloc("vm", 1, cpu=used)
    return TenantRecord(w.st).to_bytes()


def test_refresh_seeds_new_partitions_folds_changes_and_forgets_moved_tenants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOVAQUOTA_METRICS_TOP_N", "2")
    qa = make_qa()
    obs = observe.install(qa)
    tenants = {f"t{i}": float(i + 1) for i in range(8)}
    for t, used in tenants.items():
        p = home_partition(t, PARTS)
        qa.app.store._dbs[p].rows[record_key(t)] = _tenant_rows(t, used)
    qa.app.store._dbs[0].rows[FakeStore.offset_key] = b"123"
    owned = sorted({home_partition(t, PARTS) for t in ("t7", "t6")})
    assign(qa, *owned)
    asyncio.run(obs.refresh())

    def exported() -> dict[str, float]:
        return {
            s.labels["entity_id"]: s.value
            for f in qa.metrics.registry.collect()
            if f.name == "quota_utilization"
            for s in f.samples
        }

    on_owned = {t: u for t, u in tenants.items() if home_partition(t, PARTS) in owned}
    best = sorted(on_owned, key=lambda t: -on_owned[t])[:2]
    assert exported() == {t: on_owned[t] * 10 for t in best}  # % of a limit of 10
    assert gauge(qa, "quota_assigned_partitions") == len(owned)
    assert gauge(qa, "quota_table_keys", table="state", role="active") == sum(
        len(qa.app.store._dbs[p].rows) for p in owned
    )
    assert gauge(qa, "quota_worker_ready") == 0  # the broker probe has not answered

    # a stored change (the listener) moves a tenant to the top at the next refresh
    low = min(on_owned, key=lambda t: on_owned[t])
    w = World(low)
    w.quota("cpu", 10)
    w.alloc("vm", 1, cpu=9.5)
    qa.enforcer.listeners[0](low, TenantRecord(w.st))
    asyncio.run(obs.refresh())
    assert low in exported() and exported()[low] == pytest.approx(95.0)

    # the partitions move away: their tenants' series disappear
    assign(qa)
    asyncio.run(obs.refresh())
    assert exported() == {}
    assert gauge(qa, "quota_top_entities") == 0


def test_lag_gauges_follow_the_assignment() -> None:
    qa = make_qa()
    obs = observe.install(qa)
    assign(qa, 2)
    tp = TP("p.resource-events", 2)
    qa.app.consumer.high[tp] = 40
    qa.app.consumer._committed_offset[tp] = 15
    obs.refresh_lag()
    assert gauge(qa, "quota_consumer_lag_messages", topic="p.resource-events", partition="2") == 25
    assign(qa, 3)
    obs.refresh_lag()
    assert (
        gauge(qa, "quota_consumer_lag_messages", topic="p.resource-events", partition="2") is None
    )
