"""One scenario per enforcement rule (contract section 5)."""

from __future__ import annotations

from novaquota.streams.quota import (
    Config,
    Output,
    ReservationCancelled,
    ReservationCreated,
    check,
    reserved_of,
    utilization_view,
)
from novaquota.streams.quota.inputs import QuotaDeleted, Scope

from .test_quota_support import (
    M,
    S,
    World,
    alerts,
    at,
    audits,
    opened,
    resolved,
    violations,
)


def test_hard_quota_opens_once_and_resolves_with_same_id() -> None:
    w = World()
    w.quota("cpu", 10)
    assert opened(w.alloc("vm1", 1, cpu=8)) == []
    out = w.alloc("vm2", 2, cpu=3)
    [v] = opened(out)
    assert (v.kind, v.severity, v.level, v.entity_id) == ("over_limit", "critical", "tenant", "t1")
    assert (v.usage, v.limit, v.detected_at_us, v.cause_event_id) == (11 * M, 10 * M, at(2), "ev3")
    assert violations(w.alloc("vm3", 3, cpu=1)) == []  # no repeats while it stays open
    assert violations(w.release("vm3", 4)) == []
    [r] = resolved(w.release("vm2", 5))
    assert r.violation_id == v.violation_id and r.resolved_at_us == at(5)
    [again] = opened(w.alloc("vm4", 6, cpu=5))
    assert again.violation_id != v.violation_id


def test_exactly_at_limit_is_not_a_violation_and_recovers() -> None:
    w = World()
    w.quota("cpu", 10)
    assert violations(w.alloc("vm1", 1, cpu=10)) == []
    [row] = [r for r in utilization_view(w.st, "tenant", "t1") if r["resource_type"] == "cpu"]
    assert (row["used"], row["available"], row["utilization"]) == (10 * M, 0, 100.0)
    assert check(w.st, Scope("t1"), {"cpu": 1}, at(2)).allowed is False
    assert check(w.st, Scope("t1"), {"cpu": 0}, at(2)).allowed is True
    w.alloc("vm1", 3, cpu=6)
    [row] = [r for r in utilization_view(w.st, "tenant", "t1") if r["resource_type"] == "cpu"]
    assert (row["used"], row["available"]) == (6 * M, 4 * M)
    assert check(w.st, Scope("t1"), {"cpu": 4 * M}, at(4)).allowed is True
    # over, then back to exactly the limit: resolved (usage <= limit)
    [v] = opened(w.alloc("vm2", 5, cpu=5))
    [r] = resolved(w.alloc("vm2", 6, cpu=4))
    assert r.violation_id == v.violation_id and w.used() == 10 * M


def test_burst_alert_then_burst_expired_at_clock_start_plus_seconds() -> None:
    w = World()
    w.quota("cpu", 10, burst=15, burst_seconds=60)
    assert alerts(w.alloc("vm1", 5, cpu=9), "burst") == []
    out = w.alloc("vm2", 10, cpu=3)  # 12: above limit, within burst; the clock starts here
    [b] = alerts(out, "burst")
    assert (b.severity, b.time_us, b.cause_event_id) == ("warning", at(10), "ev3")
    assert opened(out) == []
    assert alerts(w.alloc("vm3", 20, cpu=1), "burst") == []  # once per episode
    assert w.tick(69) == []
    [v] = opened(w.tick(70))
    assert v.kind == "burst_expired" and v.severity == "critical"
    assert v.detected_at_us == at(10) + 60 * S and v.cause_event_id == "ev3"
    assert violations(w.alloc("vm4", 80, cpu=1)) == []
    out = w.release("vm2", 100)  # 11: still above the limit
    assert violations(out) == []
    [r] = resolved(w.release("vm3", 101))  # 10: back at the limit
    assert r.violation_id == v.violation_id and w.st.clocks == {}
    # a new excursion starts a new clock and a new burst alert
    assert len(alerts(w.alloc("vm5", 200, cpu=2), "burst")) == 1


def test_burst_expiry_fires_when_the_next_event_passes_the_deadline() -> None:
    w = World()
    w.quota("cpu", 10, burst=15, burst_seconds=60)
    w.alloc("vm1", 10, cpu=12)
    out = w.alloc("vm1", 500, cpu=5)  # no ticks: the drop at 500 first fires the expiry at 70
    assert [(type(o).__name__, getattr(o, "kind", "")) for o in violations(out)] == [
        ("ViolationOpened", "burst_expired"),
        ("ViolationResolved", "burst_expired"),
    ]
    assert opened(out)[0].detected_at_us == at(70)


def test_over_burst_is_emergency_and_ends_at_burst_limit() -> None:
    w = World()
    w.quota("cpu", 10, burst=15, burst_seconds=3600)
    [v] = opened(w.alloc("vm1", 1, cpu=16))
    assert (v.kind, v.severity, v.burst_limit) == ("over_burst", "emergency", 15 * M)
    assert alerts(w.log, "burst") == []  # above burst, not within it
    out = w.alloc("vm1", 2, cpu=15)
    [r] = resolved(out)
    assert r.violation_id == v.violation_id
    assert len(alerts(out, "burst")) == 1  # now within the burst range
    # the clock kept running from the first excursion at t=1
    [e] = opened(w.tick(3601))
    assert e.kind == "burst_expired" and e.detected_at_us == at(1) + 3600 * S


def test_soft_quota_alerts_then_grace_expires() -> None:
    w = World()
    w.quota("cpu", 10, limit_type="soft", grace_seconds=100)
    out = w.alloc("vm1", 5, cpu=11)
    assert opened(out) == []
    [a] = alerts(out, "soft_limit")
    assert a.severity == "warning"
    res = check(w.st, Scope("t1"), {"cpu": 5 * M}, at(6))
    assert res.allowed and res.warnings  # soft admits with a warning while grace runs
    assert alerts(w.alloc("vm2", 6, cpu=1), "soft_limit") == []
    assert w.tick(104) == []
    [v] = opened(w.tick(105))
    assert (v.kind, v.detected_at_us, v.cause_event_id) == ("grace_expired", at(105), "ev2")
    res = check(w.st, Scope("t1"), {"cpu": 5 * M}, at(106))
    assert not res.allowed  # grace expired and enforcement_action is deny
    w.release("vm2", 110)
    [r] = resolved(w.alloc("vm1", 111, cpu=10))
    assert r.violation_id == v.violation_id


def test_window_exceeded_resolves_when_the_window_closes() -> None:
    w = World()
    w.quota("api_requests", 100, window="minute")
    assert opened(w.consume(60, 10)) == []
    [v] = opened(w.consume(50, 20))
    assert (v.kind, v.severity, v.window, v.usage) == (
        "window_exceeded",
        "warning",
        "minute",
        110 * M,
    )
    assert v.window_end_us == at(60)
    assert violations(w.consume(10, 30)) == []
    assert resolved(w.tick(59.999999)) == []
    [r] = resolved(w.tick(60))
    assert r.violation_id == v.violation_id and r.resolved_at_us == at(60)
    assert violations(w.consume(10, 61)) == []
    # an event past the window end closes it too (no tick needed)
    [v2] = opened(w.consume(95, 62))
    out = w.consume(1, 125)
    assert [o.violation_id for o in resolved(out)] == [v2.violation_id]


def test_windowed_quota_counts_each_level() -> None:
    w = World()
    w.quota("api_requests", 10, level="project", entity="p1", window="hour")
    w.consume(6, 1, project="p1")
    w.consume(6, 2, project="p2")
    assert opened(w.log) == []
    [v] = opened(w.consume(5, 3, project="p1"))
    assert (v.level, v.entity_id, v.usage) == ("project", "p1", 11 * M)


def test_threshold_alerts_once_per_crossing_with_rearm_hysteresis() -> None:
    w = World()
    w.quota("cpu", 100)
    w.alloc("vm", 1, cpu=79)
    assert alerts(w.log, "threshold") == []
    [a] = alerts(w.alloc("vm", 2, cpu=80), "threshold")
    assert (a.threshold, a.severity, a.utilization) == (80, "warning", 80.0)
    for t, cpu in ((3, 85), (4, 76), (5, 81)):
        assert alerts(w.alloc("vm", t, cpu=cpu)) == []  # 76 > 75: not re-armed
    assert alerts(w.alloc("vm", 6, cpu=75)) == []  # re-armed at threshold - 5
    assert [a.threshold for a in alerts(w.alloc("vm", 7, cpu=80))] == [80]
    [c] = alerts(w.alloc("vm", 8, cpu=96))
    assert (c.threshold, c.severity) == (95, "critical")
    w.alloc("vm", 9, cpu=10)
    assert [a.threshold for a in alerts(w.alloc("vm", 10, cpu=97))] == [80, 95]


def test_threshold_config_is_respected() -> None:
    w = World(config=Config(thresholds=(50,), rearm_points=10, critical_threshold=50))
    w.quota("cpu", 10)
    [a] = alerts(w.alloc("vm", 1, cpu=5))
    assert (a.threshold, a.severity) == (50, "critical")
    w.alloc("vm", 2, cpu=4.5)
    assert alerts(w.alloc("vm", 3, cpu=5)) == []
    w.alloc("vm", 4, cpu=4)
    assert len(alerts(w.alloc("vm", 5, cpu=5))) == 1


def test_suspended_quota_counts_nothing_and_closes_episodes() -> None:
    w = World()
    w.quota("cpu", 10)
    [v] = opened(w.alloc("vm", 1, cpu=12))
    out = w.quota("cpu", 10, t=2, status="suspended")
    [r] = resolved(out)
    assert r.violation_id == v.violation_id
    assert violations(w.alloc("vm", 3, cpu=20)) == [] and alerts(w.alloc("vm", 4, cpu=21)) == []
    assert check(w.st, Scope("t1"), {"cpu": 100 * M}, at(5)).allowed
    [v2] = opened(w.quota("cpu", 10, t=6))  # re-activated: evaluated at once
    assert v2.detected_at_us == at(6) and v2.violation_id != v.violation_id


def test_changing_or_deleting_a_quota_reevaluates_at_once() -> None:
    w = World()
    w.quota("cpu", 10)
    w.alloc("vm", 1, cpu=8)
    [v] = opened(w.quota("cpu", 7, t=2))
    out = w.quota("cpu", 20, t=3)
    assert [o.violation_id for o in resolved(out)] == [v.violation_id]
    assert audits(out, "audit.quota_set")[0].before["limit"] == 7 * M
    [v2] = opened(w.quota("cpu", 5, t=4))
    out = w.do(
        QuotaDeleted(
            level="tenant",
            entity_id="t1",
            tenant_id="t1",
            resource_type="cpu",
            actor="admin",
            time_us=at(5),
            source="api",
            event_id="del1",
        )
    )
    assert [o.violation_id for o in resolved(out)] == [v2.violation_id]
    assert audits(out, "audit.quota_deleted")[0].after is None
    assert w.st.quotas == {} and w.st.episodes == {} and w.st.alerts == {}


def test_hierarchy_user_usage_counts_for_project_and_tenant() -> None:
    w = World()
    w.quota("cpu", 4, level="user", entity="u1")
    w.quota("cpu", 6, level="project", entity="p1")
    w.quota("cpu", 8)
    out = w.alloc("vm1", 1, cpu=5, project="p1", user="u1")
    assert [(v.level, v.entity_id) for v in opened(out)] == [("user", "u1")]
    out = w.alloc("vm2", 2, cpu=2, project="p1", user="u2")
    assert [(v.level, v.entity_id) for v in opened(out)] == [("project", "p1")]
    out = w.alloc("vm3", 3, cpu=2, project="p2", user="u3")
    assert [(v.level, v.entity_id) for v in opened(out)] == [("tenant", "t1")]
    assert (w.used("user", "u1"), w.used("project", "p1"), w.used()) == (5 * M, 7 * M, 9 * M)


def _reserve(
    w: World, rid: str, amount: float, start: float, end: float, *, t: float = 0, **kw: str
) -> list[Output]:
    return w.do(
        ReservationCreated(
            reservation_id=rid,
            level=kw.get("level", "project"),
            entity_id=kw.get("entity", "p1"),
            tenant_id="t1",
            resource_type="cpu",
            amount=round(amount * M),
            start_us=at(start),
            end_us=at(end),
            purpose="batch",
            actor="ops",
            time_us=at(t),
            source="api",
            event_id=w.next_id(),
        )
    )


def test_reservation_counts_only_inside_its_window_minus_own_usage() -> None:
    w = World()
    w.quota("cpu", 10)
    _reserve(w, "r1", 4, 100, 200)
    w.alloc("vm-other", 1, cpu=7, project="p2", user="u9")
    assert reserved_of(w.st, "tenant", "t1", "cpu") == 0  # not yet in its window
    assert opened(w.log) == []
    [v] = opened(w.tick(100))  # 7 + 4 reserved > 10, at the reservation's start
    assert (v.kind, v.detected_at_us, v.usage, v.reserved) == ("over_limit", at(100), 11 * M, 4 * M)
    assert v.cause_event_id == "ev2"  # the reservation.created command
    assert reserved_of(w.st, "project", "p1", "cpu") == 4 * M
    # the holder's own usage fills the reservation first: max(0, 4 - 3) = 1
    w.alloc("vm-p1", 110, cpu=3, project="p1")
    assert reserved_of(w.st, "tenant", "t1", "cpu") == 1 * M
    w.alloc("vm-p1", 120, cpu=5, project="p1")
    assert reserved_of(w.st, "tenant", "t1", "cpu") == 0
    w.release("vm-p1", 130, project="p1")
    [row] = utilization_view(w.st, "tenant", "t1")
    assert (row["used"], row["reserved"], row["utilization"], row["available"]) == (
        7 * M,
        4 * M,
        70.0,
        0,
    )
    [r] = resolved(w.tick(200))  # the reservation left its window
    assert r.violation_id == v.violation_id
    assert reserved_of(w.st, "tenant", "t1", "cpu") == 0 and w.st.reservations == {}


def test_reservation_cancel_releases_capacity() -> None:
    w = World()
    w.quota("cpu", 10)
    w.alloc("vm", 1, cpu=8, project="p2")
    [v] = opened(_reserve(w, "r1", 5, 0, 1000, t=2))  # already in its window: counts at once
    assert v.reserved == 5 * M
    assert not check(w.st, Scope("t1", "p2"), {"cpu": 1 * M}, at(3)).allowed
    out = w.do(
        ReservationCancelled(
            reservation_id="r1",
            tenant_id="t1",
            actor="ops",
            time_us=at(4),
            source="api",
            event_id="c1",
        )
    )
    assert [o.violation_id for o in resolved(out)] == [v.violation_id]
    assert audits(out, "audit.reservation_cancelled")
    assert check(w.st, Scope("t1", "p2"), {"cpu": 2 * M}, at(5)).allowed


def test_user_reservation_counts_for_user_and_tenant() -> None:
    w = World()
    _reserve(w, "r1", 3, 0, 100, level="user", entity="u7")
    w.tick(1)
    assert reserved_of(w.st, "user", "u7", "cpu") == 3 * M
    assert reserved_of(w.st, "tenant", "t1", "cpu") == 3 * M
    assert reserved_of(w.st, "project", "p1", "cpu") == 0
