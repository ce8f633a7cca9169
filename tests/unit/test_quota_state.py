"""Stored state: exact round trips, versioning, readable views, replay determinism."""

from __future__ import annotations

import orjson
import pytest

from novaquota.streams.quota import (
    STATE_VERSION,
    BudgetSet,
    InstanceState,
    RateLimitSet,
    ReservationCreated,
    Scope,
    StateVersionError,
    SystemState,
    TenantState,
    Tick,
)

from .test_quota_support import M, World, at


def _rich_world() -> World:
    w = World()
    w.quota("cpu", 10, burst=12, burst_seconds=30)
    w.quota("memory", 100, level="project", entity="p1", limit_type="soft", grace_seconds=60)
    w.quota("api_requests", 50, window="minute")
    w.alloc("vm1", 1, cpu=11, memory=120, instances=1)
    w.alloc("vm2", 2, cpu=0.001)
    w.release("ghost", 3)
    w.consume(60, 4)
    w.gauge("eth0", 5, bandwidth_in=12.5)
    w.do(
        ReservationCreated(
            reservation_id="r1",
            level="user",
            entity_id="u1",
            tenant_id="t1",
            resource_type="cpu",
            amount=2 * M,
            start_us=at(100),
            end_us=at(200),
            actor="ops",
            time_us=at(6),
            source="api",
            event_id="r1",
        )
    )
    w.do(
        RateLimitSet(
            level="project",
            entity_id="p1",
            tenant_id="t1",
            rate_per_second_micros=1_500_000,
            burst_micros=10 * M,
            time_us=at(7),
            source="api",
            event_id="rl",
        )
    )
    w.do(
        BudgetSet(
            level="tenant",
            entity_id="t1",
            tenant_id="t1",
            monthly_usd_micros=99_990_000,
            time_us=at(8),
            source="api",
            event_id="b",
        )
    )
    return w


def test_tenant_state_round_trip_is_exact() -> None:
    w = _rich_world()
    st = w.st
    assert st.episodes and st.clocks and st.alerts and st.windows and st.gauges
    assert st.reservations and st.deadlines and st.dedup and st.budgets and st.rate_limits
    data = st.to_bytes()
    back = TenantState.from_bytes(data)
    assert back == st
    assert back.to_bytes() == data
    assert orjson.loads(data)["v"] == STATE_VERSION


def test_restored_state_decides_like_the_original() -> None:
    w = _rich_world()
    twin = TenantState.from_bytes(w.st.to_bytes())
    from novaquota.streams.quota import apply

    a = apply(w.st, dict(w.inst), Tick(at(500)))
    b = apply(twin, dict(w.inst), Tick(at(500)))
    assert a == b and a  # burst and grace expiries, reservation start/end, gauge expiry
    assert twin == w.st


def test_replay_rederives_the_same_outputs_and_ids() -> None:
    assert _rich_world().log == _rich_world().log


def test_instance_and_system_state_round_trip() -> None:
    inst = InstanceState(Scope("t1", None, "u1"), {"cpu": 1_500}, True, "nova", 5, False, "s", "e")
    assert InstanceState.from_bytes(inst.to_bytes()) == inst
    tomb = InstanceState(Scope("t1", "p", None), {}, False, "nova", 9, True, "s", "f")
    assert InstanceState.from_bytes(tomb.to_bytes()) == tomb
    sys_st = SystemState(totals={"cpu": 3}, watermark_us=10)
    assert SystemState.from_bytes(sys_st.to_bytes()) == sys_st


def test_newer_state_version_is_refused() -> None:
    d = orjson.loads(TenantState("t1").to_bytes())
    d["v"] = STATE_VERSION + 1
    with pytest.raises(StateVersionError):
        TenantState.from_bytes(orjson.dumps(d))
    raw = orjson.loads(InstanceState(Scope("t"), {}, False, "x", 1, True, "s", "e").to_bytes())
    raw[0] = STATE_VERSION + 1
    with pytest.raises(StateVersionError):
        InstanceState.from_bytes(orjson.dumps(raw))


def test_to_dict_is_a_readable_json_view() -> None:
    w = _rich_world()
    view = w.st.to_dict()
    orjson.dumps(view)
    assert view["usage"]["project"]["p1"]["memory"] == 120 * M
    assert {q["resource_type"] for q in view["quotas"]} == {"cpu", "memory", "api_requests"}
    assert view["reservations"][0]["reservation_id"] == "r1"
    assert view["open_violations"] and view["version"] == STATE_VERSION
    orjson.dumps(SystemState().to_dict())
    orjson.dumps(w.inst["vm1"].to_dict())


def test_state_stays_bounded_as_the_watermark_advances() -> None:
    w = World()
    w.quota("api_requests", 10**6, window="minute")
    for i in range(200):
        w.consume(1, i * 600)
    w.tick(40 * 86_400)
    assert len(w.st.dedup) < 200 and len(w.st.windows) == 0
    assert len(w.st.heap) <= len(w.st.deadlines) + 32
