"""Admission checks (contract section 6) and read views."""

from __future__ import annotations

from novaquota.streams.quota import Scope, check, quota_of, usage_of, utilization_view

from .test_quota_support import M, World, at


def test_check_walks_user_project_and_tenant() -> None:
    w = World()
    w.quota("cpu", 4, level="user", entity="u1")
    w.quota("cpu", 6, level="project", entity="p1")
    w.quota("cpu", 20)
    w.alloc("vm1", 1, cpu=3, project="p1", user="u2")
    res = check(w.st, Scope("t1", "p1", "u1"), {"cpu": 4 * M}, at(2))
    assert not res.allowed and "project p1" in res.reason
    assert [(c.level, c.allowed) for c in res.checks] == [
        ("user", True),
        ("project", False),
        ("tenant", True),
    ]
    assert check(w.st, Scope("t1", "p1", "u1"), {"cpu": 3 * M}, at(2)).allowed
    assert check(w.st, Scope("t1", "p2", "u1"), {"cpu": 4 * M}, at(2)).allowed


def test_check_uses_burst_while_the_clock_runs() -> None:
    w = World()
    w.quota("cpu", 10, burst=15, burst_seconds=60)
    w.alloc("vm1", 1, cpu=9)
    res = check(w.st, Scope("t1"), {"cpu": 4 * M}, at(2))
    [c] = res.checks
    assert res.allowed and c.using_burst and c.available == 1 * M
    assert not check(w.st, Scope("t1"), {"cpu": 7 * M}, at(2)).allowed
    w.alloc("vm2", 3, cpu=2)  # 11: clock starts at 3
    assert check(w.st, Scope("t1"), {"cpu": 1 * M}, at(62)).checks[0].using_burst
    res = check(w.st, Scope("t1"), {"cpu": 1 * M}, at(63))
    assert not res.allowed and "burst time used up" in res.reason


def test_only_deny_answers_false() -> None:
    w = World()
    w.quota("cpu", 1, enforcement_action="warn")
    w.quota("memory", 1, enforcement_action="deny")
    res = check(w.st, Scope("t1"), {"cpu": 5 * M}, at(1))
    assert res.allowed and res.warnings and "enforcement warn" in res.reason
    assert not check(w.st, Scope("t1"), {"memory": 5 * M}, at(1)).allowed


def test_views_report_quota_usage_and_windowed_usage() -> None:
    w = World()
    w.quota("api_requests", 100, window="hour", level="project", entity="p1")
    w.consume(30, 10)
    q = quota_of(w.st, "project", "p1", "api_requests")
    assert q is not None and q.window == "hour" and q.limit == 100 * M
    assert usage_of(w.st, "project", "p1", "api_requests") == 30 * M
    [row] = utilization_view(w.st, "project", "p1")
    assert (row["utilization"], row["available"], row["window"]) == (30.0, 70 * M, "hour")
    assert usage_of(w.st, "project", "p1", "api_requests", now_us=at(3_600)) == 0
    w.alloc("vm", 11, cpu=1)
    rows = {r["resource_type"]: r for r in utilization_view(w.st, "project", "p1")}
    assert rows["cpu"]["limit"] is None and rows["cpu"]["used"] == 1 * M
