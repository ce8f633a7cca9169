"""Pure folds: allocation intervals, gauges, windows, commands -> minute series."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from novaquota.projections.cost import level_at, minute_series
from novaquota.projections.folds import (
    MINUTE_US,
    FoldParams,
    ProjectionState,
    fold_batch,
    fold_violation,
)
from novaquota.schemas.codec import Decoded, decode

T0 = datetime(2026, 11, 2, tzinfo=UTC)
T0_US = int(T0.timestamp()) * 1_000_000
_n = 0


def ev(
    type_: str,
    data: dict[str, Any],
    minutes: float,
    *,
    source: str = "nova/host-1",
    id_: str | None = None,
) -> Decoded:
    global _n
    _n += 1
    t = (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
    body = {
        "specversion": "1.0",
        "id": id_ or f"e{_n}",
        "source": source,
        "type": type_,
        "time": t,
        "data": data,
    }
    return decode(json.dumps(body).encode())


def vm(type_: str, vm_id: str, minutes: float, cpu: float = 2, **kw: Any) -> Decoded:
    data: dict[str, Any] = {"tenant_id": kw.pop("tenant", "t1"), "vm_id": vm_id, **kw}
    if type_ != "vm.deleted":
        data |= {"cpu": cpu, "memory": 1024}
    return ev(type_, data, minutes)


def fold(*events: Decoded, params: FoldParams | None = None) -> ProjectionState:
    st = ProjectionState()
    fold_batch(st, events, params or FoldParams())
    return st


def level(st: ProjectionState, key: tuple[str, str, str, str], minutes: float) -> float:
    return level_at(st.series.get(key), T0_US + int(minutes * 60e6))


def test_vm_lifetime_is_an_interval_on_every_level() -> None:
    st = fold(
        vm("vm.created", "v1", 0, 2, project_id="p1", user_id="u1"),
        vm("vm.deleted", "v1", 30, project_id="p1", user_id="u1"),
    )
    for ent in (
        ("system", "system", "system"),
        ("t1", "tenant", "t1"),
        ("t1", "project", "p1"),
        ("t1", "user", "u1"),
    ):
        key = (*ent, "cpu")
        assert level(st, key, 10) == 2
        assert level(st, key, 31) == 0
        ms = minute_series(st.series[key], T0_US, T0_US + 3600 * 1_000_000)
        assert ms.integral.sum() == pytest.approx(2 * 30 * 60)
    assert level(st, ("t1", "tenant", "t1", "instances"), 10) == 1
    assert level(st, ("t1", "tenant", "t1", "memory"), 10) == 1024


def test_time_weighting_within_a_minute() -> None:
    st = fold(vm("vm.created", "v1", 0.5, 4))  # 30 s into the first minute
    ms = minute_series(st.series[("t1", "tenant", "t1", "cpu")], T0_US, T0_US + 2 * MINUTE_US)
    assert ms.integral.tolist() == pytest.approx([4 * 30, 4 * 60])


def test_newest_event_decides_whatever_the_arrival_order() -> None:
    a = fold(vm("vm.created", "v1", 0, 2), vm("vm.resized", "v1", 5, 8), vm("vm.deleted", "v1", 9))
    b = fold(vm("vm.deleted", "v1", 9), vm("vm.resized", "v1", 5, 8), vm("vm.created", "v1", 0, 2))
    key = ("t1", "tenant", "t1", "cpu")
    assert level(a, key, 60) == level(b, key, 60) == 0
    assert level(a, key, 6) == 8


def test_duplicates_and_redelivery_change_nothing() -> None:
    created = vm("vm.created", "v1", 0, 2)
    st = fold(created, created, vm("vm.resized", "v1", 1, 3), created)
    assert level(st, ("t1", "tenant", "t1", "cpu"), 5) == 3


def test_at_equal_times_the_release_wins() -> None:
    st = fold(vm("vm.deleted", "v1", 1), vm("vm.created", "v1", 1, 2))
    assert level(st, ("t1", "tenant", "t1", "cpu"), 5) == 0


def test_scope_change_moves_usage_between_projects() -> None:
    st = fold(
        vm("vm.created", "v1", 0, 2, project_id="p1"),
        vm("vm.resized", "v1", 10, 2, project_id="p2"),
    )
    assert level(st, ("t1", "project", "p1", "cpu"), 11) == 0
    assert level(st, ("t1", "project", "p2", "cpu"), 11) == 2
    assert level(st, ("t1", "tenant", "t1", "cpu"), 11) == 2


def net(minutes: float, bw: float, iface: str = "eth0") -> Decoded:
    data = {
        "tenant_id": "t1",
        "interface_id": iface,
        "bandwidth_in": bw,
        "bandwidth_out": 1,
        "connections": 3,
    }
    return ev("network.sampled", data, minutes, source="neutron/agent")


def test_gauge_counts_until_its_ttl() -> None:
    st = fold(net(0, 100))  # ttl 5 minutes
    key = ("t1", "tenant", "t1", "bandwidth_in")
    assert level(st, key, 4) == 100
    assert level(st, key, 6) == 0


def test_newer_sample_replaces_and_extends() -> None:
    st = fold(net(0, 100), net(3, 40))
    key = ("t1", "tenant", "t1", "bandwidth_in")
    assert level(st, key, 2) == 100
    assert level(st, key, 4) == 40
    assert level(st, key, 7) == 40
    assert level(st, key, 9) == 0
    older = fold(net(3, 40), net(0, 100))  # an older sample arriving late is ignored
    assert level(older, key, 4) == 40
    assert level(older, key, 1) == 0


def api(minutes: float, count: int, id_: str | None = None) -> Decoded:
    return ev("api.requests", {"tenant_id": "t1", "count": count}, minutes, source="gw", id_=id_)


def test_api_requests_are_consumption_deduplicated_and_late_ones_dropped() -> None:
    st = fold(api(0, 5, "a"), api(0.5, 7, "b"), api(0.7, 7, "b"), api(2, 1, "c"))
    rows = st.series[("t1", "tenant", "t1", "api_requests")]
    assert rows[T0_US // MINUTE_US][2] == 12_000_000
    late = fold(
        api(8 * 24 * 60, 1, "new"),
        api(0, 100, "old"),  # 8 days behind the tenant's watermark: late
        params=FoldParams(lateness_us=7 * 86400 * 1_000_000),
    )
    total = sum(r[2] for r in late.series[("t1", "tenant", "t1", "api_requests")].values())
    assert total == 1_000_000


def cmd(type_: str, data: dict[str, Any], minutes: float = 0) -> Decoded:
    return ev(type_, {"actor": "tests", **data}, minutes, source="console")


def test_quota_history_and_templates() -> None:
    st = fold(
        cmd(
            "quota.set",
            {"level": "tenant", "entity_id": "t1", "resource_type": "cpu", "limit": 8},
            0,
        ),
        cmd("template.applied", {"template": "free", "level": "tenant", "entity_id": "t1"}, 10),
        cmd("quota.deleted", {"level": "tenant", "entity_id": "t1", "resource_type": "cpu"}, 20),
    )
    key = ("t1", "tenant", "t1", "cpu")
    assert st.quota_at(key, T0_US + 5 * 60_000_000).limit == 8_000_000  # type: ignore[union-attr]
    q = st.quota_at(key, T0_US + 15 * 60_000_000)
    assert q is not None and q.limit == 2_000_000 and q.template == "free"
    assert st.quota_at(key, T0_US + 25 * 60_000_000) is None
    assert st.quota_at(("t1", "tenant", "t1", "storage"), T0_US + 15 * 60_000_000) is not None


def test_custom_template_shadows_and_budget_is_kept() -> None:
    st = fold(
        cmd("template.defined", {"name": "tiny", "quotas": [{"resource_type": "gpu", "limit": 1}]}),
        cmd("template.applied", {"template": "tiny", "level": "tenant", "entity_id": "t1"}, 1),
        cmd("budget.set", {"level": "tenant", "entity_id": "t1", "monthly_usd": 50}, 2),
    )
    assert st.quota_at(("t1", "tenant", "t1", "gpu"), T0_US + 120_000_000) is not None
    assert float(st.budgets[("t1", "tenant", "t1")].monthly_usd) == 50


def test_tenant_deleted_releases_everything() -> None:
    st = fold(
        vm("vm.created", "v1", 0, 2),
        net(1, 10),
        cmd("budget.set", {"level": "tenant", "entity_id": "t1", "monthly_usd": 50}, 1),
        cmd("tenant.deleted", {"tenant_id": "t1"}, 2),
    )
    assert level(st, ("t1", "tenant", "t1", "cpu"), 3) == 0
    assert level(st, ("t1", "tenant", "t1", "bandwidth_in"), 3) == 0
    assert level(st, ("system", "system", "system", "cpu"), 3) == 0
    assert st.budgets == {}


def test_events_older_than_a_tenant_deletion_never_come_back() -> None:
    deleted = cmd("tenant.deleted", {"tenant_id": "t1"}, 10)
    late = vm("vm.created", "v9", 5, 4)  # older than the deletion, read after it
    newer = vm("vm.created", "v10", 12, 1)
    a = fold(deleted, late, newer)
    b = fold(late, deleted, newer)
    key = ("t1", "tenant", "t1", "cpu")
    assert level(a, key, 20) == level(b, key, 20) == 1


def test_inventory_releases_what_its_system_no_longer_knows() -> None:
    inventory = ev(
        "inventory.reported",
        {
            "tenant_id": "t1",
            "source_system": "nova",
            "as_of": "2026-11-02T00:10:00Z",
            "instances": [
                {"resource_id": "v2", "kind": "vm", "resources": {"cpu": 4, "instances": 1}}
            ],
        },
        10,
        source="nova/reconciler",
    )
    st = fold(vm("vm.created", "v1", 0, 2), inventory)
    key = ("t1", "tenant", "t1", "cpu")
    assert level(st, key, 5) == 2
    assert level(st, key, 11) == 4  # v1 released, v2 corrected in


def test_violations_topic_tracks_open_episodes() -> None:
    st = ProjectionState()
    fold_violation(st, "quota.violation", {"violation_id": "x", "tenant_id": "t1"})
    assert "x" in st.open_violations
    fold_violation(st, "quota.violation_resolved", {"violation_id": "x"})
    assert st.open_violations == {}
