"""One scenario per enforcement rule (contract sections 3-5), each against one real worker.

All scenarios share one worker (a module-scoped stack) to save start-up time; each uses its own
tenant and its own day of event time (day N after 2026-11-01 for scenario N), so that a scenario
never sees another one's records and the partition watermarks only move forward. The tick
scenario uses wall-clock event times and therefore runs last.

Commands and resource events travel on two topics that are consumed independently, so every
scenario waits for one topic's effect (the tenant's watermark, via the HTTP API) before it
produces to the other one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from novaquota.ops.topics import create_topics
from tests.integration.conftest import Stack
from tests.support.events import BASE_TIME, cloudevent, command, vm_created, vm_deleted

pytestmark = pytest.mark.integration


# --- fixture ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Topics with 4 partitions and one running worker, shared by the whole module."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    s = Stack(kafka_bootstrap, prefix, 4, tmp_path_factory.mktemp("rules"))
    asyncio.run(create_topics(s.settings))
    s.start_worker()
    try:
        yield s
    finally:
        s.stop()


# --- helpers ---------------------------------------------------------------------------------


def at(day: int, seconds: float = 0) -> datetime:
    """Event time: ``seconds`` into day ``day`` after 2026-11-01 (each scenario its own day)."""
    return BASE_TIME + timedelta(days=day, seconds=seconds)


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def quota_set(tenant: str, t: datetime, resource_type: str, limit: float, **fields: Any) -> dict:
    data = {
        "level": "tenant",
        "entity_id": tenant,
        "tenant_id": tenant,
        "resource_type": resource_type,
        "limit": limit,
        **fields,
    }
    return command("quota.set", data, t=t)


def watermark(stack: Stack, tenant: str) -> datetime | None:
    status, body = stack.get(f"/api/v1/quotas/utilization?entity_id={tenant}")
    if status != 200:
        return None
    wm = body["as_of"]["event_time"]
    return ts(wm) if wm else None


def sync(stack: Stack, tenant: str, t: datetime, timeout: float = 30) -> None:
    """Wait until the tenant's state has reached event time ``t``."""
    stack.wait_for(
        lambda: (wm := watermark(stack, tenant)) is not None and wm >= t, timeout=timeout
    )


def outs(stack: Stack, topic: str, tenant: str) -> list[dict[str, Any]]:
    return [e for e in stack.outputs(topic, idle=0.5) if e["data"].get("tenant_id") == tenant]


def await_outs(
    stack: Stack, topic: str, tenant: str, n: int, timeout: float = 30, settle: float = 1.0
) -> list[dict[str, Any]]:
    """The tenant's records on ``topic`` once there are at least ``n`` (and after a settle)."""
    stack.wait_for(lambda: len(outs(stack, topic, tenant)) >= n, timeout=timeout)
    time.sleep(settle)
    return outs(stack, topic, tenant)


def violations(stack: Stack, tenant: str, n: int, **kw: Any) -> list[dict[str, Any]]:
    return await_outs(stack, "quota-violations", tenant, n, **kw)


def summary(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["data"]["kind"]) for e in records]


def utilization(stack: Stack, entity: str, level: str = "tenant", tenant: str | None = None):
    path = f"/api/v1/quotas/utilization?entity_id={entity}&level={level}"
    if tenant:
        path += f"&tenant_id={tenant}"
    status, body = stack.get(path)
    assert status == 200, body
    return {r["resource_type"]: r for r in body["resources"]}


def event(type_: str, tenant: str, t: datetime, **data: Any) -> dict:
    source = data.pop("source", "tests/producer")
    return cloudevent(type_, {"tenant_id": tenant, **data}, t=t, source=source)


# --- 1. hard limit ---------------------------------------------------------------------------


def test_01_hard_limit_episode(stack: Stack) -> None:
    tenant, d = "r01-hard", 1
    stack.produce("quota-commands", [quota_set(tenant, at(d), "cpu", 4)])
    sync(stack, tenant, at(d))
    over = vm_created(tenant, "c", cpu=1, t=at(d, 30))
    last = vm_deleted(tenant, "d", t=at(d, 60))
    stack.produce(
        "resource-events",
        [
            vm_created(tenant, "a", cpu=2, t=at(d, 10)),
            vm_created(tenant, "b", cpu=2, t=at(d, 20)),  # exactly at the limit: nothing
            over,  # 5 > 4: one episode
            vm_created(tenant, "d", cpu=1, t=at(d, 40)),  # 6: no repeat
            vm_deleted(tenant, "c", t=at(d, 50)),  # 5: still open
            last,  # 4: resolved
        ],
    )
    out = violations(stack, tenant, 2)
    assert summary(out) == [
        ("quota.violation", "over_limit"),
        ("quota.violation_resolved", "over_limit"),
    ]
    opened, resolved = (e["data"] for e in out)
    assert opened["violation_id"] == resolved["violation_id"]
    assert opened["cause_event_id"] == over["id"]
    assert ts(opened["detected_at"]) == at(d, 30)
    assert (opened["usage"], opened["limit"], opened["limit_type"]) == (5, 4, "hard")
    assert opened["level"] == "tenant" and opened["entity_id"] == tenant
    assert opened["resource_type"] == "cpu" and opened["severity"] == "critical"
    assert resolved["usage"] == 4
    # the resolution names the episode's own cause and time, and what ended it
    assert resolved["cause_event_id"] == over["id"]
    assert ts(resolved["detected_at"]) == at(d, 30)
    assert ts(resolved["resolved_at"]) == at(d, 60)
    assert resolved["resolved_cause_event_id"] == last["id"]
    cpu = utilization(stack, tenant)["cpu"]
    assert (cpu["used"], cpu["limit"], cpu["utilization"]) == (4, 4, 100.0)
    assert cpu["open_violations"] == []


# --- 2. burst --------------------------------------------------------------------------------


def test_02_burst(stack: Stack) -> None:
    tenant, d = "r02-burst", 2
    stack.produce(
        "quota-commands",
        [quota_set(tenant, at(d), "cpu", 4, burst_limit=6, burst_seconds=300)],
    )
    sync(stack, tenant, at(d))
    start = vm_created(tenant, "b", cpu=1, t=at(d, 200))
    stack.produce(
        "resource-events",
        [vm_created(tenant, "a", cpu=4, t=at(d, 100)), start],  # 5: within (limit, burst]
    )
    sync(stack, tenant, at(d, 200))
    alerts = await_outs(stack, "quota-alerts", tenant, 1)
    bursts = [e for e in alerts if e["data"]["kind"] == "burst"]
    assert len(bursts) == 1
    b = bursts[0]["data"]
    assert (b["resource_type"], b["severity"], b["level"]) == ("cpu", "warning", "tenant")
    assert b["cause_event_id"] == start["id"]
    assert outs(stack, "quota-violations", tenant) == []

    # Event time passes the clock (an event of another instance, not touching cpu) ...
    stack.produce(
        "resource-events",
        [event("volume.created", tenant, at(d, 600), volume_id="v1", size_gb=1)],
    )
    out = violations(stack, tenant, 1)
    assert summary(out) == [("quota.violation", "burst_expired")]
    exp = out[0]["data"]
    assert ts(exp["detected_at"]) == at(d, 200 + 300)
    assert exp["cause_event_id"] == start["id"]
    assert (exp["usage"], exp["limit"], exp["burst_limit"]) == (5, 4, 6)

    # ... above the burst limit, then back within it, then back within the limit.
    big = vm_created(tenant, "c", cpu=2, t=at(d, 700))  # 7 > 6
    stack.produce(
        "resource-events",
        [
            big,
            vm_deleted(tenant, "c", t=at(d, 800)),  # 5: over_burst ends, burst_expired stays
            vm_deleted(tenant, "b", t=at(d, 900)),  # 4: burst_expired ends
        ],
    )
    out = violations(stack, tenant, 4)
    assert summary(out) == [
        ("quota.violation", "burst_expired"),
        ("quota.violation", "over_burst"),
        ("quota.violation_resolved", "over_burst"),
        ("quota.violation_resolved", "burst_expired"),
    ]
    ob = out[1]["data"]
    assert ob["cause_event_id"] == big["id"] and ob["usage"] == 7
    assert ob["severity"] == "emergency"
    assert ts(ob["detected_at"]) == at(d, 700)
    assert out[2]["data"]["violation_id"] == ob["violation_id"]
    assert ts(out[2]["data"]["resolved_at"]) == at(d, 800)
    assert out[3]["data"]["violation_id"] == exp["violation_id"]
    assert ts(out[3]["data"]["resolved_at"]) == at(d, 900)
    assert (
        len([e for e in outs(stack, "quota-alerts", tenant) if e["data"]["kind"] == "burst"]) == 1
    )


# --- 3. soft limit and grace -----------------------------------------------------------------


def test_03_soft_limit_and_grace(stack: Stack) -> None:
    tenant, d = "r03-soft", 3
    stack.produce(
        "quota-commands",
        [quota_set(tenant, at(d), "storage", 100, limit_type="soft", grace_seconds=600)],
    )
    sync(stack, tenant, at(d))
    over = event("volume.created", tenant, at(d, 200), volume_id="v2", size_gb=30)
    stack.produce(
        "resource-events",
        [event("volume.created", tenant, at(d, 100), volume_id="v1", size_gb=80), over],
    )
    sync(stack, tenant, at(d, 200))
    alerts = await_outs(stack, "quota-alerts", tenant, 1)
    soft = [e["data"] for e in alerts if e["data"]["kind"] == "soft_limit"]
    assert len(soft) == 1
    assert soft[0]["resource_type"] == "storage" and soft[0]["cause_event_id"] == over["id"]
    assert outs(stack, "quota-violations", tenant) == []

    # 900 s later (an unrelated event moves event time): the grace (600 s) has run out.
    stack.produce("resource-events", [vm_created(tenant, "x", cpu=1, t=at(d, 900))])
    out = violations(stack, tenant, 1)
    assert summary(out) == [("quota.violation", "grace_expired")]
    g = out[0]["data"]
    assert ts(g["detected_at"]) == at(d, 800)
    assert g["cause_event_id"] == over["id"]
    assert (g["limit_type"], g["limit"], g["usage"]) == ("soft", 100, 110)

    stack.produce("resource-events", [event("volume.deleted", tenant, at(d, 1000), volume_id="v2")])
    out = violations(stack, tenant, 2)
    assert summary(out) == [
        ("quota.violation", "grace_expired"),
        ("quota.violation_resolved", "grace_expired"),
    ]
    assert out[1]["data"]["violation_id"] == g["violation_id"]


# --- 4. windowed consumption -----------------------------------------------------------------


def test_04_window_exceeded(stack: Stack) -> None:
    tenant, d = "r04-window", 4
    stack.produce(
        "quota-commands", [quota_set(tenant, at(d), "api_requests", 100, window="minute")]
    )
    sync(stack, tenant, at(d))
    over = event("api.requests", tenant, at(d, 80), count=50)
    stack.produce(
        "resource-events",
        [
            event("api.requests", tenant, at(d, 65), count=60),
            over,  # 110 in [60, 120): exceeded
            event("api.requests", tenant, at(d, 90), count=30),  # 140: no repeat
        ],
    )
    sync(stack, tenant, at(d, 90))
    out = violations(stack, tenant, 1)
    assert summary(out) == [("quota.violation", "window_exceeded")]
    w = out[0]["data"]
    assert (w["usage"], w["limit"], w["cause_event_id"]) == (110, 100, over["id"])
    assert ts(w["detected_at"]) == at(d, 80)
    assert w["severity"] == "warning"

    # The next minute: the window closed at 120 s.
    stack.produce("resource-events", [event("api.requests", tenant, at(d, 125), count=10)])
    out = violations(stack, tenant, 2)
    assert summary(out) == [
        ("quota.violation", "window_exceeded"),
        ("quota.violation_resolved", "window_exceeded"),
    ]
    r = out[1]["data"]
    assert r["violation_id"] == w["violation_id"]
    assert ts(r["resolved_at"]) == at(d, 120)
    api = utilization(stack, tenant)["api_requests"]
    assert (api["used"], api["limit"], api["window"]) == (10, 100, "minute")


# --- 5. threshold alerts ---------------------------------------------------------------------


def test_05_threshold_alerts(stack: Stack) -> None:
    tenant, d = "r05-threshold", 5
    stack.produce("quota-commands", [quota_set(tenant, at(d), "cpu", 100)])
    sync(stack, tenant, at(d))
    steps = [50, 80, 85, 96, 70, 82, 78, 85, 100]  # percent of the limit, one every 10 s
    events = []
    for i, pct in enumerate(steps):
        type_ = "vm.created" if i == 0 else "vm.resized"
        events.append(event(type_, tenant, at(d, 10 * (i + 1)), vm_id="a", cpu=pct, memory=1024))
    stack.produce("resource-events", events)
    alerts = await_outs(stack, "quota-alerts", tenant, 4)
    got = [
        (e["data"]["kind"], e["data"]["threshold"], e["data"]["severity"],
         e["data"]["utilization"], e["data"]["cause_event_id"])
        for e in alerts
    ]  # fmt: skip
    assert got == [
        ("threshold", 80, "warning", 80, events[1]["id"]),  # up through 80 %
        ("threshold", 95, "critical", 96, events[3]["id"]),  # up through 95 %
        # 70 % re-arms both; 82 % crosses 80 % again
        ("threshold", 80, "warning", 82, events[5]["id"]),
        # 78 % does not re-arm 80 % (not 5 points below), so 85 % is silent; 100 %: 95 % again
        ("threshold", 95, "critical", 100, events[8]["id"]),
    ]
    assert outs(stack, "quota-violations", tenant) == []  # 100 % is at the limit, not over


# --- 6. hierarchy ----------------------------------------------------------------------------


def test_06_hierarchy_rollup(stack: Stack) -> None:
    tenant, d = "r06-hier", 6
    stack.produce(
        "quota-commands",
        [
            command(
                "quota.set",
                {
                    "level": "project",
                    "entity_id": "web",
                    "tenant_id": tenant,
                    "resource_type": "cpu",
                    "limit": 4,
                },
                t=at(d),
            )
        ],
    )
    sync(stack, tenant, at(d))
    over = vm_created(
        tenant, "c", cpu=1, memory=512, project_id="web", user_id="alice", t=at(d, 30)
    )
    stack.produce(
        "resource-events",
        [
            vm_created(tenant, "a", cpu=2, memory=1024, project_id="web", user_id="alice",
                       t=at(d, 10)),
            vm_created(tenant, "b", cpu=2, memory=2048, project_id="web", user_id="bob",
                       t=at(d, 20)),
            over,  # project web: 5 > 4
            vm_created(tenant, "d", cpu=3, memory=4096, project_id="data", user_id="carol",
                       t=at(d, 40)),
        ],
    )  # fmt: skip
    out = violations(stack, tenant, 1)
    assert summary(out) == [("quota.violation", "over_limit")]
    v = out[0]["data"]
    assert (v["level"], v["entity_id"], v["tenant_id"]) == ("project", "web", tenant)
    assert (v["usage"], v["limit"], v["cause_event_id"]) == (5, 4, over["id"])
    sync(stack, tenant, at(d, 40))

    def used(level: str, entity: str) -> dict[str, Any]:
        rows = utilization(stack, entity, level, tenant)
        return {res: row["used"] for res, row in rows.items()}

    assert used("user", "alice") == {"cpu": 3, "memory": 1536, "instances": 2}
    assert used("user", "bob") == {"cpu": 2, "memory": 2048, "instances": 1}
    assert used("user", "carol") == {"cpu": 3, "memory": 4096, "instances": 1}
    assert used("project", "web") == {"cpu": 5, "memory": 3584, "instances": 3}
    assert used("project", "data") == {"cpu": 3, "memory": 4096, "instances": 1}
    assert used("tenant", tenant) == {"cpu": 8, "memory": 7680, "instances": 4}
    web = utilization(stack, "web", "project", tenant)["cpu"]
    assert (web["limit"], web["utilization"], web["open_violations"]) == (4, 125.0, ["over_limit"])
    assert utilization(stack, tenant)["cpu"]["limit"] is None  # no tenant quota


# --- 7. suspended quota ----------------------------------------------------------------------


def test_07_suspended_quota(stack: Stack) -> None:
    tenant, d = "r07-suspended", 7
    stack.produce("quota-commands", [quota_set(tenant, at(d), "cpu", 2, status="suspended")])
    sync(stack, tenant, at(d))
    stack.produce("resource-events", [vm_created(tenant, "a", cpu=3, t=at(d, 10))])
    sync(stack, tenant, at(d, 10))
    time.sleep(1.5)
    assert outs(stack, "quota-violations", tenant) == []
    cpu = utilization(stack, tenant)["cpu"]
    assert (cpu["used"], cpu["status"], cpu["open_violations"]) == (3, "suspended", [])

    activate = quota_set(tenant, at(d, 20), "cpu", 2)
    stack.produce("quota-commands", [activate])
    out = violations(stack, tenant, 1)
    assert summary(out) == [("quota.violation", "over_limit")]
    v = out[0]["data"]
    assert (v["usage"], v["limit"], v["cause_event_id"]) == (3, 2, activate["id"])
    assert ts(v["detected_at"]) == at(d, 20)


# --- 8. ordering by event time ---------------------------------------------------------------


def test_08_ordering_newest_event_wins(stack: Stack) -> None:
    tenant, d = "r08-order", 8
    stack.produce("quota-commands", [quota_set(tenant, at(d), "cpu", 2)])
    sync(stack, tenant, at(d))
    over = vm_created(tenant, "e", cpu=1, t=at(d, 120))
    stack.produce(
        "resource-events",
        [
            vm_deleted(tenant, "ghost", t=at(d, 100)),  # delete of an unknown instance ...
            vm_created(tenant, "ghost", cpu=4, t=at(d, 50)),  # ... its older create: stays gone
            vm_created(tenant, "b", cpu=1, t=at(d, 60)),
            event("vm.resized", tenant, at(d, 40), vm_id="b", cpu=8, memory=1),  # older: ignored
            vm_deleted(tenant, "c", t=at(d, 70)),  # equal times: the deletion wins
            vm_created(tenant, "c", cpu=1, t=at(d, 70)),
            vm_created(tenant, "d", cpu=1, t=at(d, 110)),  # 2: at the limit
            over,  # 3 > 2
        ],
    )
    out = violations(stack, tenant, 1)
    assert summary(out) == [("quota.violation", "over_limit")]
    assert (out[0]["data"]["usage"], out[0]["data"]["cause_event_id"]) == (3, over["id"])
    sync(stack, tenant, at(d, 120))
    rows = utilization(stack, tenant)
    assert rows["cpu"]["used"] == 3
    assert rows["instances"]["used"] == 3  # b, d, e
    assert rows["memory"]["used"] == 3 * 4096


# --- 9. templates ----------------------------------------------------------------------------


def test_09_template_free(stack: Stack) -> None:
    tenant, d = "r09-template", 9
    apply = cloudevent(
        "template.applied",
        {
            "actor": "ops@r09",
            "template": "free",
            "level": "tenant",
            "entity_id": tenant,
            "tenant_id": tenant,
        },
        t=at(d),
        source="tests/console",
    )
    stack.produce("quota-commands", [apply])
    sync(stack, tenant, at(d))

    def listed() -> list[dict[str, Any]]:
        status, body = stack.get(f"/api/v1/quotas?entity_id={tenant}")
        assert status == 200, body
        return list(body["quotas"])

    # all four expansions take effect together, with the one command (if not, the comparison
    # below says what is missing)
    with contextlib.suppress(AssertionError):
        stack.wait_for(lambda: len(listed()) >= 4, timeout=10)
    body = {"quotas": listed()}
    got = sorted(
        (q["resource_type"], q["limit"], q["burst_limit"], q["limit_type"], q["status"],
         q["level"], q["entity_id"])
        for q in body["quotas"]
    )  # fmt: skip
    assert got == [
        ("cpu", 2, 4, "hard", "active", "tenant", tenant),
        ("instances", 3, None, "hard", "active", "tenant", tenant),
        ("memory", 4096, 6144, "hard", "active", "tenant", tenant),
        ("storage", 10, None, "hard", "active", "tenant", tenant),
    ]
    audits = await_outs(stack, "audit", tenant, 4, timeout=10)
    assert len(audits) == 4
    for a in audits:
        assert a["type"].startswith("audit.")
        assert a["data"]["actor"] == "ops@r09"
        assert a["data"]["cause"] == {
            "source": "tests/console",
            "id": apply["id"],
            "type": "template.applied",
        }
    subjects = sorted(a["data"]["details"]["subject"] for a in audits)
    assert subjects == [f"quota/tenant/{tenant}/{r}" for r in ("cpu", "instances", "memory",
                                                              "storage")]  # fmt: skip


# --- 10. quota.deleted -----------------------------------------------------------------------


def test_10_quota_deleted_closes_episode(stack: Stack) -> None:
    tenant, d = "r10-qdel", 10
    stack.produce("quota-commands", [quota_set(tenant, at(d), "cpu", 2)])
    sync(stack, tenant, at(d))
    stack.produce("resource-events", [vm_created(tenant, "a", cpu=3, t=at(d, 10))])
    out = violations(stack, tenant, 1)
    assert summary(out) == [("quota.violation", "over_limit")]
    sync(stack, tenant, at(d, 10))
    delete = command(
        "quota.deleted",
        {"level": "tenant", "entity_id": tenant, "tenant_id": tenant, "resource_type": "cpu"},
        t=at(d, 20),
    )
    stack.produce("quota-commands", [delete])
    out = violations(stack, tenant, 2)
    assert summary(out) == [
        ("quota.violation", "over_limit"),
        ("quota.violation_resolved", "over_limit"),
    ]
    assert out[1]["data"]["violation_id"] == out[0]["data"]["violation_id"]
    assert out[1]["data"]["resolved_cause_event_id"] == delete["id"]
    assert ts(out[1]["data"]["resolved_at"]) == at(d, 20)
    status, body = stack.get(f"/api/v1/quotas?entity_id={tenant}")
    assert status == 200 and body["quotas"] == []
    # without the quota, more usage opens nothing
    stack.produce("resource-events", [vm_created(tenant, "b", cpu=5, t=at(d, 30))])
    sync(stack, tenant, at(d, 30))
    time.sleep(1.5)
    assert len(outs(stack, "quota-violations", tenant)) == 2


# --- 11. scheduled reservations --------------------------------------------------------------


def test_11_reservation_window(stack: Stack) -> None:
    tenant, d = "r11-reserve", 11
    stack.produce("quota-commands", [quota_set(tenant, at(d), "cpu", 10)])
    sync(stack, tenant, at(d))
    stack.produce(
        "resource-events", [vm_created(tenant, "a", cpu=6, project_id="web", t=at(d, 10))]
    )
    sync(stack, tenant, at(d, 10))
    reserve = command(
        "reservation.created",
        {
            "reservation_id": "batch-night",
            "level": "project",
            "entity_id": "batch",
            "tenant_id": tenant,
            "resource_type": "cpu",
            "amount": 6,
            "start": at(d, 1000).isoformat().replace("+00:00", "Z"),
            "end": at(d, 2000).isoformat().replace("+00:00", "Z"),
            "purpose": "nightly batch",
        },
        t=at(d, 20),
    )
    stack.produce("quota-commands", [reserve])
    sync(stack, tenant, at(d, 20))
    cpu = utilization(stack, tenant)["cpu"]
    assert (cpu["used"], cpu["reserved"], cpu["available"]) == (6, 0, 4)  # not yet
    time.sleep(1.0)
    assert outs(stack, "quota-violations", tenant) == []

    # inside the window: 6 used + 6 reserved for project batch > 10
    stack.produce(
        "resource-events",
        [event("volume.created", tenant, at(d, 1100), volume_id="v", size_gb=1)],
    )
    out = violations(stack, tenant, 1)
    assert summary(out) == [("quota.violation", "over_limit")]
    v = out[0]["data"]
    assert (v["usage"], v["limit"], v["level"]) == (12, 10, "tenant")
    assert v["cause_event_id"] == reserve["id"]
    assert ts(v["detected_at"]) == at(d, 1000)
    sync(stack, tenant, at(d, 1100))
    cpu = utilization(stack, tenant)["cpu"]
    assert (cpu["used"], cpu["reserved"], cpu["available"], cpu["utilization"]) == (6, 6, 0, 60.0)

    # after the window the reservation counts no more
    stack.produce(
        "resource-events",
        [event("volume.created", tenant, at(d, 2100), volume_id="w", size_gb=1)],
    )
    out = violations(stack, tenant, 2)
    assert summary(out)[1] == ("quota.violation_resolved", "over_limit")
    assert out[1]["data"]["violation_id"] == v["violation_id"]
    assert ts(out[1]["data"]["resolved_at"]) == at(d, 2000)
    sync(stack, tenant, at(d, 2100))
    assert utilization(stack, tenant)["cpu"]["reserved"] == 0


# --- 13. tenant.deleted ----------------------------------------------------------------------


def test_13_tenant_deleted(stack: Stack) -> None:
    tenant, d = "r13-offboard", 13
    stack.produce(
        "quota-commands",
        [quota_set(tenant, at(d), "cpu", 2), quota_set(tenant, at(d, 1), "instances", 1)],
    )
    sync(stack, tenant, at(d, 1))
    stack.produce(
        "resource-events",
        [
            vm_created(tenant, "a", cpu=3, t=at(d, 10)),  # cpu 3 > 2
            vm_created(tenant, "b", cpu=0.5, t=at(d, 20)),  # instances 2 > 1
        ],
    )
    sync(stack, tenant, at(d, 20))
    opened = violations(stack, tenant, 2)
    assert sorted((e["data"]["resource_type"], e["type"]) for e in opened) == [
        ("cpu", "quota.violation"),
        ("instances", "quota.violation"),
    ]
    offboard = command("tenant.deleted", {"tenant_id": tenant}, t=at(d, 30))
    stack.produce("quota-commands", [offboard])
    out = violations(stack, tenant, 4)
    resolved = [e["data"] for e in out if e["type"] == "quota.violation_resolved"]
    assert len(out) == 4 and len(resolved) == 2
    assert sorted(r["violation_id"] for r in resolved) == sorted(
        e["data"]["violation_id"] for e in opened
    )
    for r in resolved:
        assert r["resolved_cause_event_id"] == offboard["id"]
        assert ts(r["resolved_at"]) == at(d, 30)

    def gone() -> bool:
        status, body = stack.get(f"/api/v1/quotas/utilization?entity_id={tenant}")
        return status == 200 and body["resources"] == []

    stack.wait_for(gone, timeout=30)
    status, body = stack.get(f"/api/v1/quotas?entity_id={tenant}")
    assert status == 200 and body["quotas"] == []
    audits = await_outs(stack, "audit", tenant, 3)
    last = audits[-1]["data"]
    assert last["actor"] == "tests" and last["cause"]["id"] == offboard["id"]


# --- 14. inventory reconciliation ------------------------------------------------------------


def test_14_inventory_releases_ghost(stack: Stack) -> None:
    tenant, d = "r14-inventory", 14
    stack.produce("quota-commands", [quota_set(tenant, at(d), "cpu", 2)])
    sync(stack, tenant, at(d))
    nova = "nova/compute/host-1"
    stack.produce(
        "resource-events",
        [
            event("vm.created", tenant, at(d, 10), vm_id="ghost", cpu=2, memory=2048,
                  source=nova),
            event("vm.created", tenant, at(d, 20), vm_id="live", cpu=1, memory=1024,
                  source=nova),
        ],
    )  # fmt: skip  # the ghost's vm.deleted was lost
    out = violations(stack, tenant, 1)
    assert summary(out) == [("quota.violation", "over_limit")]
    sync(stack, tenant, at(d, 20))
    report = event(
        "inventory.reported",
        tenant,
        at(d, 110),
        source="nova/inventory",
        source_system="nova",
        as_of=at(d, 100).isoformat().replace("+00:00", "Z"),
        instances=[
            {
                "resource_id": "live",
                "kind": "vm",
                "resources": {"cpu": 1, "memory": 1024, "instances": 1},
            }
        ],
    )
    stack.produce("resource-events", [report])
    out = violations(stack, tenant, 2)
    assert summary(out)[1] == ("quota.violation_resolved", "over_limit")
    assert out[1]["data"]["violation_id"] == out[0]["data"]["violation_id"]
    assert out[1]["data"]["usage"] == 1
    sync(stack, tenant, at(d, 110))
    rows = utilization(stack, tenant)
    assert (rows["cpu"]["used"], rows["memory"]["used"], rows["instances"]["used"]) == (1, 1024, 1)
    corrections = [e for e in outs(stack, "audit", tenant) if e["type"] == "audit.correction"]
    assert len(corrections) == 1
    c = corrections[0]["data"]
    assert c["actor"] == "inventory:nova"
    assert c["cause"]["id"] == report["id"] and c["cause"]["type"] == "inventory.reported"
    assert c["details"]["subject"] == "instance/vm:ghost"
    assert c["details"]["before"]["live"] is True and c["details"]["after"]["live"] is False


# --- 15. zero limits -------------------------------------------------------------------------


def test_15_zero_limit(stack: Stack) -> None:
    """A limit of 0 ("no load balancers for this project"): the first one is over it. Before the
    fix its threshold alert carried an infinite utilization that the output schema refused, the
    agent crashed in a loop and the violation never reached the topic."""
    tenant, project, d = "r15-zero", "z-p", 15
    stack.produce(
        "quota-commands",
        [
            command(
                "quota.set",
                {
                    "level": "project",
                    "entity_id": project,
                    "tenant_id": tenant,
                    "resource_type": "load_balancers",
                    "limit": 0,
                },
                t=at(d),
            )
        ],
    )
    sync(stack, tenant, at(d))
    created = event("load_balancer.created", tenant, at(d, 10), project_id=project, lb_id="lb-1")
    stack.produce("resource-events", [created])
    out = violations(stack, tenant, 1)
    assert summary(out) == [("quota.violation", "over_limit")]
    v = out[0]["data"]
    assert (v["level"], v["entity_id"]) == ("project", project)
    assert v["resource_type"] == "load_balancers"
    assert (v["limit"], v["usage"], v["burst_limit"], v["limit_type"]) == (0, 1, None, "hard")
    assert v["cause_event_id"] == created["id"] and ts(v["detected_at"]) == at(d, 10)
    assert v.get("utilization") is None  # a violation carries no percentage at all
    sync(stack, tenant, at(d, 10))
    lbs = utilization(stack, project, "project", tenant)["load_balancers"]
    assert (lbs["limit"], lbs["used"], lbs["available"]) == (0, 1, 0)
    assert "utilization" in lbs and lbs["utilization"] is None
    assert lbs["open_violations"] == ["over_limit"]

    # The worker is alive and goes on: the next event takes effect (the episode resolves).
    worker = stack.workers[0]
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
    deleted = event("load_balancer.deleted", tenant, at(d, 20), project_id=project, lb_id="lb-1")
    stack.produce("resource-events", [deleted])
    out = violations(stack, tenant, 2)
    assert summary(out) == [
        ("quota.violation", "over_limit"),
        ("quota.violation_resolved", "over_limit"),
    ]
    r = out[1]["data"]
    assert r["violation_id"] == v["violation_id"] and r["usage"] == 0
    assert r["resolved_cause_event_id"] == deleted["id"]
    sync(stack, tenant, at(d, 20))
    lbs = utilization(stack, project, "project", tenant)["load_balancers"]
    assert (lbs["used"], lbs["utilization"], lbs["open_violations"]) == (0, None, [])
    assert outs(stack, "quota-alerts", tenant) == []  # no threshold alert, ever
    assert outs(stack, "dead-letter", tenant) == []  # and nothing failed on the way
    assert worker.proc.poll() is None, worker.tail()


# --- 12. ticks (wall-clock event times: last, so it moves the watermarks only at the end) ----


def test_12_burst_expires_by_ticks_alone(stack: Stack) -> None:
    tenant = "r12-ticks"
    now = datetime.now(UTC).replace(microsecond=0)
    stack.produce(
        "quota-commands",
        [quota_set(tenant, now - timedelta(seconds=2), "cpu", 2, burst_limit=4, burst_seconds=3)],
    )
    sync(stack, tenant, now - timedelta(seconds=2))
    start = vm_created(tenant, "a", cpu=3, t=now)
    stack.produce("resource-events", [start])  # then nothing at all
    out = violations(stack, tenant, 1, timeout=20)
    assert summary(out) == [("quota.violation", "burst_expired")]
    v = out[0]["data"]
    assert ts(v["detected_at"]) == now + timedelta(seconds=3)
    assert v["cause_event_id"] == start["id"]
    assert (v["usage"], v["limit"], v["burst_limit"]) == (3, 2, 4)
