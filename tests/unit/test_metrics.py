"""Metrics: bounded per-entity series (top-N), consumer lag, entity rows from quota state."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from novaquota.streams.metrics import EntityRow, Metrics, TopEntities, consumer_lag
from novaquota.streams.observe import ObserveConfig, entity_rows

from .test_quota_support import World


def _rows(util: float, res: str = "cpu", limit: float = 100.0) -> list[EntityRow]:
    return [EntityRow(res, used=util * limit / 100, limit=limit, utilization=util)]


def _series(m: Metrics, name: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in m.registry.collect():
        if family.name != name:
            continue
        for s in family.samples:
            out[(s.labels["entity_id"], s.labels["resource_type"], s.labels["level"])] = s.value
    return out


def test_metrics_keep_the_contract_names() -> None:
    m = Metrics(CollectorRegistry())
    m.violations.labels("cpu", "over_limit").inc()
    m.events_processed.labels("vm.created", "accepted").inc()
    m.dead_letter.labels("malformed_json").inc()
    m.check_duration.observe(0.002)
    m.event_lag.observe(0.5)
    m.cache_hit_ratio.set(0.9)
    text = generate_latest(m.registry).decode()
    for line in (
        'quota_violations_total{kind="over_limit",resource_type="cpu"} 1.0',
        'quota_events_processed_total{outcome="accepted",type="vm.created"} 1.0',
        'quota_dead_letter_total{reason="malformed_json"} 1.0',
        "quota_check_duration_seconds_count 1.0",
        "quota_event_lag_seconds_count 1.0",
        "quota_cache_hit_ratio 0.9",
    ):
        assert line in text
    for name in ("quota_utilization", "quota_usage", "quota_limit", "quota_consumer_lag_messages"):
        assert f"# TYPE {name} gauge" in text


def test_top_n_exports_only_the_highest_entities() -> None:
    m = Metrics(CollectorRegistry())
    top = TopEntities(m, n=3)
    for i in range(1000):
        top.update(f"t{i}", {("tenant", f"t{i}"): _rows(i / 10)})
    top.publish()
    util = _series(m, "quota_utilization")
    assert set(util) == {
        ("t999", "cpu", "tenant"),
        ("t998", "cpu", "tenant"),
        ("t997", "cpu", "tenant"),
    }
    assert util[("t999", "cpu", "tenant")] == pytest.approx(99.9)
    assert _series(m, "quota_limit")[("t998", "cpu", "tenant")] == 100.0
    assert _series(m, "quota_usage")[("t997", "cpu", "tenant")] == pytest.approx(99.7)
    assert len(top) <= top.capacity == 12  # memory stays O(N), not O(tenants)


def test_top_n_replaces_a_tenant_and_removes_stale_series() -> None:
    m = Metrics(CollectorRegistry())
    top = TopEntities(m, n=2)
    top.update("a", {("tenant", "a"): _rows(90), ("project", "a-p1"): _rows(95, "memory")})
    top.update("b", {("tenant", "b"): _rows(50)})
    top.publish()
    assert set(_series(m, "quota_utilization")) == {
        ("a-p1", "memory", "project"),
        ("a", "cpu", "tenant"),
    }
    # the project's quota is deleted and the tenant drops: b enters, a-p1's series disappear
    top.update("a", {("tenant", "a"): _rows(10)})
    top.publish()
    assert set(_series(m, "quota_utilization")) == {("b", "cpu", "tenant"), ("a", "cpu", "tenant")}
    assert ("a-p1", "memory", "project") not in _series(m, "quota_usage")
    assert ("a-p1", "memory", "project") not in _series(m, "quota_limit")


def test_top_n_drops_tenants_that_moved_away() -> None:
    m = Metrics(CollectorRegistry())
    top = TopEntities(m, n=5)
    for t in ("a", "b", "c"):
        top.update(t, {("tenant", t): _rows(80)})
    assert top.drop_tenants(lambda t: t in {"a", "c"}) == 2
    top.publish()
    assert set(_series(m, "quota_utilization")) == {("b", "cpu", "tenant")}
    assert (
        next(
            s.value
            for f in m.registry.collect()
            for s in f.samples
            if s.name == "quota_top_entities"
        )
        == 1
    )


def test_top_n_zero_exports_nothing() -> None:
    m = Metrics(CollectorRegistry())
    top = TopEntities(m, n=0)
    top.update("a", {("tenant", "a"): _rows(99)})
    top.publish()
    assert _series(m, "quota_utilization") == {}
    with pytest.raises(ValueError, match="top-N"):
        TopEntities(m, n=-1)


def _brute_top(scores: dict[str, float], n: int) -> list[str]:
    return [k for k, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


@pytest.mark.parametrize("seed", range(5))
def test_top_n_matches_a_full_ranking_when_the_pool_holds_everyone(seed: int) -> None:
    rng = random.Random(seed)
    top = TopEntities(Metrics(CollectorRegistry()), n=5, pool_factor=20)  # pool of 100
    scores: dict[str, float] = {}
    for _ in range(2000):
        t = f"t{rng.randrange(100)}"
        if rng.random() < 0.1:
            top.update(t, {})  # all quotas deleted
            scores.pop(t, None)
            continue
        s = round(rng.uniform(0, 150), 2)
        top.update(t, {("tenant", t): _rows(s)})
        scores[t] = s
        assert [k[2] for k, _ in top.top()] == _brute_top(scores, 5)


@pytest.mark.parametrize("seed", range(5))
def test_top_n_is_exact_with_a_small_pool_while_utilization_rises(seed: int) -> None:
    """Usage that only grows (the alerting case) never loses a top entity."""
    rng = random.Random(seed)
    top = TopEntities(Metrics(CollectorRegistry()), n=5)  # pool of 20 for 10,000 tenants
    scores: dict[str, float] = {}
    for _ in range(20_000):
        t = f"t{rng.randrange(10_000)}"
        s = scores.get(t, 0.0) + rng.uniform(0, 10)
        scores[t] = s
        top.update(t, {("tenant", t): _rows(s)})
    assert len(top) <= 20
    assert [k[2] for k, _ in top.top()] == _brute_top(scores, 5)


def test_usage_over_a_zero_limit_ranks_first_without_a_utilization_series() -> None:
    """Contract section 5: a zero limit has no utilization, so no +Inf sample is exported;
    usage above it is over the limit, so the entity still ranks first (usage and limit shown)."""
    m = Metrics(CollectorRegistry())
    top = TopEntities(m, n=1)
    top.update("a", {("tenant", "a"): _rows(99)})
    top.update("b", {("tenant", "b"): [EntityRow("load_balancers", 1.0, 0.0, None)]})
    top.publish()
    assert _series(m, "quota_utilization") == {}
    assert _series(m, "quota_usage") == {("b", "load_balancers", "tenant"): 1.0}
    assert _series(m, "quota_limit") == {("b", "load_balancers", "tenant"): 0.0}
    assert all(math.isfinite(s.value) for f in m.registry.collect() for s in f.samples)


def test_zero_usage_at_a_zero_limit_ranks_as_unused() -> None:
    m = Metrics(CollectorRegistry())
    top = TopEntities(m, n=1)
    top.update("a", {("tenant", "a"): _rows(10)})
    top.update("b", {("tenant", "b"): [EntityRow("gpu", 0.0, 0.0, None)]})
    top.publish()
    assert _series(m, "quota_utilization") == {("a", "cpu", "tenant"): 10.0}


def test_a_limit_set_to_zero_drops_its_utilization_series_only() -> None:
    m = Metrics(CollectorRegistry())
    top = TopEntities(m, n=2)
    top.update("a", {("tenant", "a"): _rows(50)})
    top.publish()
    assert _series(m, "quota_utilization") == {("a", "cpu", "tenant"): 50.0}
    top.update("a", {("tenant", "a"): [EntityRow("cpu", 50.0, 0.0, None)]})
    top.publish()
    assert _series(m, "quota_utilization") == {}
    assert _series(m, "quota_limit") == {("a", "cpu", "tenant"): 0.0}


def test_entity_rows_of_a_zero_limit_carry_no_utilization() -> None:
    """Before the fix ``float(None)`` raised in the observer's timer for every zero limit."""
    w = World("t1")
    w.quota("load_balancers", 0, level="project", entity="z-p")
    w.quota("gpu", 0)
    w.alloc("lb1", 1, project="z-p", load_balancers=1)
    rows = entity_rows(w.st)
    assert rows[("project", "z-p")] == [EntityRow("load_balancers", 1.0, 0.0, None)]
    assert rows[("tenant", "t1")] == [EntityRow("gpu", 0.0, 0.0, None)]


def test_consumer_lag_is_highwater_minus_committed() -> None:
    highs: dict[tuple[str, int], int | None] = {("re", 0): 100, ("re", 1): 7, ("qc", 0): None}
    committed: dict[tuple[str, int], int | None] = {("re", 0): 40, ("re", 1): None}
    assert consumer_lag(highs, committed) == {("re", 0): 60, ("re", 1): 7}
    # a commit ahead of a stale high watermark is never negative lag
    assert consumer_lag({("re", 0): 5}, {("re", 0): 9}) == {("re", 0): 0}


def test_entity_rows_cover_every_level_with_a_limit() -> None:
    w = World("t1")
    w.quota("cpu", 10)
    w.quota("memory", 8192)
    w.quota("cpu", 4, level="project", entity="p1")
    w.alloc("vm1", 1, cpu=3, memory=2048, project="p1", user="u1")
    rows = entity_rows(w.st)
    assert set(rows) == {("tenant", "t1"), ("project", "p1")}
    by_res = {r.resource_type: r for r in rows[("tenant", "t1")]}
    assert by_res["cpu"] == EntityRow("cpu", used=3.0, limit=10.0, utilization=30.0)
    assert by_res["memory"].utilization == pytest.approx(25.0)
    [p1] = rows[("project", "p1")]
    assert (p1.used, p1.limit, p1.utilization) == (3.0, 4.0, 75.0)
    # the user has usage but no quota: no series for it
    assert ("user", "u1") not in rows


def test_observe_config_reads_settings_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    class S:
        metrics_top_n = 7

    monkeypatch.setenv("NOVAQUOTA_READY_MAX_LAG", "250")
    monkeypatch.delenv("NOVAQUOTA_HEALTH_BROKER_TIMEOUT_SECONDS", raising=False)
    cfg = ObserveConfig.from_settings(S())
    assert (cfg.metrics_top_n, cfg.ready_max_lag, cfg.health_broker_timeout_seconds) == (
        7,
        250,
        60.0,
    )
    monkeypatch.setenv("NOVAQUOTA_METRICS_TOP_N", "lots")
    with pytest.raises(ValueError, match="NOVAQUOTA_METRICS_TOP_N must be a number"):
        ObserveConfig.from_settings(object())
    monkeypatch.setenv("NOVAQUOTA_METRICS_TOP_N", "-1")
    with pytest.raises(ValueError, match="metrics_top_n must be >= 0"):
        ObserveConfig.from_settings(object())
