"""Usage bookkeeping: instance ordering, tombstones, inventory, gauges, windows, offboarding."""

from __future__ import annotations

from datetime import UTC, datetime

from novaquota.streams.quota import (
    Allocation,
    Inventory,
    QuotaSet,
    Reconcile,
    Scope,
    SystemState,
    SystemTotals,
    TenantDeleted,
    apply_system,
    expired,
    recompute_usage,
    source_system_of,
    tenant_totals,
    usage_of,
    window_bounds,
)

from .test_quota_support import (
    M,
    S,
    World,
    alerts,
    at,
    audits,
    opened,
    rejected,
    resolved,
)


def test_vm_lifecycle_counts_at_every_level_and_release_subtracts_exactly() -> None:
    w = World()
    w.alloc("vm:1", 1, cpu=2.5, memory=4096, instances=1)
    w.alloc("vm:2", 2, cpu=0.125, memory=512, instances=1, project="p2", user="u2")
    assert w.used(res="cpu") == 2_625_000 and w.used("project", "p1") == 2_500_000
    w.alloc("vm:1", 3, cpu=4, memory=8192, instances=1)  # resize: now holds exactly this
    assert w.used(res="cpu") == 4_125_000 and w.used("user", "u1", "memory") == 8192 * M
    w.release("vm:1", 4)
    w.release("vm:2", 5, project="p2", user="u2")
    assert w.st.usage == {}  # only non-zero entries are kept
    assert not w.inst["vm:1"].live and w.inst["vm:1"].resources == {}


def test_newest_event_wins_and_release_beats_create_at_equal_time() -> None:
    w = World()
    w.alloc("vm", 10, cpu=4, event_id="b")
    w.alloc("vm", 5, cpu=8, event_id="a")  # older: ignored
    assert w.used() == 4 * M
    w.release("vm", 10, event_id="c")  # same time as the create: the release wins
    w.alloc("vm", 10, cpu=2, event_id="z")  # same time, create: loses to the release
    assert w.used() == 0
    w.alloc("vm", 11, cpu=2, event_id="d")
    assert w.used() == 2 * M


def test_equal_time_creates_are_ordered_by_source_then_id() -> None:
    a, b = World(), World()
    a.alloc("vm", 1, cpu=1, source="nova/a", event_id="x")
    a.alloc("vm", 1, cpu=3, source="nova/b", event_id="a")
    b.alloc("vm", 1, cpu=3, source="nova/b", event_id="a")
    b.alloc("vm", 1, cpu=1, source="nova/a", event_id="x")
    assert a.used() == b.used() == 3 * M


def test_delete_of_unknown_instance_leaves_a_tombstone_until_retention() -> None:
    w = World()
    w.release("vm", 10)
    assert "vm" in w.inst and not w.inst["vm"].live
    w.alloc("vm", 5, cpu=4)  # a late, older create does not resurrect it
    assert w.used() == 0
    day = 86_400
    w.tick(10 + 30 * day)
    assert not expired(w.inst["vm"], w.st.watermark_us)
    w.tick(10 + 30 * day + 1)
    assert expired(w.inst["vm"], w.st.watermark_us)
    w.alloc("vm", 6, cpu=4)  # past retention the tombstone is forgotten (documented)
    assert w.used() == 4 * M
    assert not expired(w.inst["vm"], w.st.watermark_us)  # live instances never expire


def test_source_system_defaults_to_first_path_segment() -> None:
    assert source_system_of("nova/compute/host-17") == "nova"
    assert source_system_of("/cinder/volume") == "cinder"
    assert source_system_of("https://octavia.example/api") == "octavia.example"
    w = World()
    w.alloc("vm", 1, cpu=1, source="nova/compute/host-17")
    assert w.inst["vm"].source_system == "nova"
    w.do(
        Allocation(
            scope=Scope("t1"),
            instance_key="x",
            resources={"storage": M},
            release=False,
            time_us=at(2),
            source="svc/1",
            event_id="e",
            source_system="cinder",
        )
    )
    assert w.inst["x"].source_system == "cinder"


def test_inventory_releases_missing_corrects_different_and_adds_unknown() -> None:
    w = World()
    w.alloc("vm:a", 1, cpu=2)
    w.alloc("vm:b", 2, cpu=4)
    w.alloc("vol:c", 3, storage=100, source="cinder/vol")
    w.alloc("vm:e", 50, cpu=1)  # newer than the inventory: left alone
    w.alloc("vm:f", 4, cpu=1)
    inv = Inventory(
        tenant_id="t1",
        source_system="nova",
        as_of_us=at(40),
        instances=[
            ("vm:a", Scope("t1", "p1", "u1"), {"cpu": 3 * M}),
            ("vm:d", Scope("t1", "p2", None), {"cpu": 1 * M}),
            ("vm:f", Scope("t1", "p1", "u1"), {"cpu": 1 * M}),
        ],
        time_us=at(60),
        source="reconciler/nova",
        event_id="inv1",
    )
    out = w.do(inv)
    corrections = audits(out, "audit.correction")
    assert sorted(a.subject for a in corrections) == [
        "instance/vm:a",
        "instance/vm:b",
        "instance/vm:d",
    ]
    by = {a.subject: a for a in corrections}
    assert by["instance/vm:a"].before["resources"] == {"cpu": 2 * M}
    assert by["instance/vm:a"].after["resources"] == {"cpu": 3 * M}
    assert by["instance/vm:b"].after["live"] is False
    assert by["instance/vm:d"].before is None
    assert w.used() == (3 + 1 + 1 + 1) * M  # a + d + e + f
    assert w.used(res="storage") == 100 * M  # other source systems are untouched
    assert w.inst["vm:e"].resources == {"cpu": 1 * M}
    # an older event arriving after the inventory does not undo it
    w.alloc("vm:b", 30, cpu=4)
    assert not w.inst["vm:b"].live
    assert recompute_usage(w.st, w.inst.values()) == w.st.usage
    assert w.do(inv) == []  # same (source, id): no further effect


def test_network_gauges_expire_after_ttl_of_watermark() -> None:
    w = World()
    w.quota("bandwidth_in", 150, level="project", entity="p1")
    w.gauge("eth0", 0, bandwidth_in=100, connections=10)
    w.gauge("eth1", 200, bandwidth_in=40)
    assert w.used("project", "p1", "bandwidth_in") == 140 * M
    w.gauge("eth0", 250, bandwidth_in=120)  # latest sample of an interface replaces it
    assert w.used("project", "p1", "bandwidth_in") == 160 * M
    assert len(opened(w.log)) == 1
    w.gauge("eth0", 240, bandwidth_in=999)  # older than the stored sample: ignored
    assert w.used("project", "p1", "bandwidth_in") == 160 * M
    w.tick(500)  # eth1 (t=200) is exactly ttl old: still counts
    assert w.used("project", "p1", "bandwidth_in") == 160 * M
    out = w.tick(500.000001)
    assert w.used("project", "p1", "bandwidth_in") == 120 * M
    assert len(resolved(out)) == 1
    w.tick(551)
    assert w.st.usage == {} and w.st.gauges == {}
    w.gauge("eth9", 100, bandwidth_in=1)  # already older than the ttl: counts nothing
    assert w.st.usage == {}


def test_consumption_is_deduplicated_and_late_is_rejected_without_change() -> None:
    w = World()
    w.quota("api_requests", 1000, window="day")
    w.consume(10, 0, event_id="a")
    w.consume(10, 1, event_id="a")  # same (source, id): no effect
    assert usage_of(w.st, "tenant", "t1", "api_requests", now_us=at(2)) == 10 * M
    w.tick(8 * 86_400 + 43_200)
    before = w.st.to_bytes()
    [r] = rejected(w.consume(5, 86_400 - 1))  # more than 7 days behind the watermark
    assert r.reason == "late"
    assert w.st.to_bytes() == before
    w.consume(5, 8 * 86_400 + 3_600)  # within lateness: counted in its (current) window
    assert usage_of(w.st, "tenant", "t1", "api_requests") == 5 * M


def test_late_consumption_lands_in_its_own_window() -> None:
    w = World()
    w.quota("api_requests", 100, window="minute")
    w.consume(10, 61)
    w.consume(50, 59)  # previous minute: closed, so it does not count for this minute
    assert usage_of(w.st, "tenant", "t1", "api_requests") == 10 * M
    assert usage_of(w.st, "tenant", "t1", "api_requests", window="hour") == 60 * M


def test_month_windows_are_calendar_months() -> None:
    for y, m in ((2024, 2), (2024, 12), (2025, 1), (2000, 3), (2100, 2)):
        start = datetime(y, m, 1, tzinfo=UTC)
        end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
        s_us, e_us = int(start.timestamp()) * S, int(end.timestamp()) * S
        assert window_bounds("month", s_us) == (s_us, e_us)
        assert window_bounds("month", e_us - 1) == (s_us, e_us)
    assert window_bounds("hour", at(3_601.5)) == (at(3_600), at(7_200))


def test_tenant_deleted_releases_everything_and_marks_purged() -> None:
    w = World()
    w.quota("cpu", 1)
    w.alloc("vm", 1, cpu=2)
    [v] = opened(w.log)
    out = w.do(
        TenantDeleted(tenant_id="t1", actor="ops", time_us=at(5), source="api", event_id="d")
    )
    [r] = resolved(out)
    assert r.violation_id == v.violation_id and r.usage == 0
    [a] = audits(out, "audit.tenant_deleted")
    assert a.before["usage"] == {"cpu": 2 * M} and a.before["instances"] == 1
    assert out[-1] is a
    assert w.st.purged and w.inst == {} and w.st.usage == {} and w.st.quotas == {}
    w.alloc("vm2", 6, cpu=1)  # a later event starts a fresh tenant
    assert not w.st.purged and w.used() == 1 * M


def test_recompute_usage_matches_and_reconcile_corrects_drift() -> None:
    w = World()
    w.quota("cpu", 5)
    w.alloc("vm1", 1, cpu=2)
    w.alloc("vm2", 2, cpu=2, project="p2", user=None)
    w.gauge("eth0", 3, connections=7)
    assert recompute_usage(w.st, w.inst.values()) == w.st.usage
    w.st.usage["Tt1"]["cpu"] = 9 * M  # simulate drift from a torn write
    out = w.do(Reconcile(time_us=at(4), source="recon", event_id="r1"))
    [a] = audits(out, "audit.correction")
    assert (a.before, a.after, a.subject) == (9 * M, 4 * M, "usage/Tt1/cpu")
    assert w.st.usage["Tt1"]["cpu"] == 4 * M
    assert tenant_totals(w.st) == {"cpu": 4 * M, "connections": 7 * M}


def test_wrong_tenant_and_bad_amounts_are_rejected() -> None:
    w = World()
    before = w.st.to_bytes()
    out = w.do(
        Allocation(
            scope=Scope("t2"),
            instance_key="vm",
            resources={"cpu": M},
            release=False,
            time_us=at(1),
            source="s",
            event_id="e",
        )
    )
    assert rejected(out)[0].reason == "wrong_tenant"
    out = w.do(
        Allocation(
            scope=Scope("t1"),
            instance_key="vm",
            resources={"cpu": -1},
            release=False,
            time_us=at(1),
            source="s",
            event_id="e",
        )
    )
    assert rejected(out)[0].reason == "invalid"
    assert rejected(w.quota("cpu", 1, burst=0.5))[0].reason == "invalid"
    assert rejected(w.quota("cpu", 1, level="tenant", entity="other"))[0].reason == "invalid"
    assert w.st.to_bytes() == before and w.inst == {}


def test_reserved_system_tenant_is_refused_by_apply() -> None:
    w = World(tenant="system")
    out = w.alloc("vm", 1, cpu=1)
    assert rejected(out)[0].reason == "reserved_tenant" and w.st.usage == {}


def test_system_state_evaluates_system_quotas_on_totals() -> None:
    sys_st = SystemState()
    out = apply_system(
        sys_st,
        QuotaSet(
            level="system",
            entity_id="global",
            tenant_id=None,
            resource_type="cpu",
            limit=100 * M,
            burst_limit=120 * M,
            burst_seconds=10,
            time_us=at(0),
            source="api",
            event_id="q",
        ),
    )
    assert audits(out, "audit.quota_set")
    out = apply_system(sys_st, SystemTotals({"cpu": 110 * M}, at(1)))
    assert sorted(a.kind for a in alerts(out)) == ["burst", "threshold", "threshold"]
    [v] = opened(apply_system(sys_st, SystemTotals({"cpu": 110 * M}, at(11))))
    assert (v.kind, v.tenant_id, v.level, v.detected_at_us) == (
        "burst_expired",
        "system",
        "system",
        at(11),
    )
    [r] = resolved(apply_system(sys_st, SystemTotals({"cpu": 90 * M}, at(12))))
    assert r.violation_id == v.violation_id
    assert SystemState.from_bytes(sys_st.to_bytes()) == sys_st
