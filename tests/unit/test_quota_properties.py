"""Hypothesis properties of the quota core, each against an independent model."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novaquota.streams.quota import (
    Alert,
    Allocation,
    GaugeSample,
    Inventory,
    Scope,
    ViolationOpened,
    ViolationResolved,
    recompute_usage,
)

from .test_quota_support import M, World, at

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SCOPES = [Scope("t1", "p1", "u1"), Scope("t1", "p1", "u2"), Scope("t1", "p2", None), Scope("t1")]


def _totals(w: World) -> dict[str, dict[str, int]]:
    return {k: dict(v) for k, v in w.st.usage.items()}


def _assert_episodes_alternate(log: list[Any]) -> None:
    open_ids: dict[tuple[str, ...], str] = {}
    for o in log:
        if isinstance(o, ViolationOpened):
            key = (o.level, o.entity_id, o.resource_type, o.kind)
            assert key not in open_ids, f"episode {key} opened twice"
            open_ids[key] = o.violation_id
        elif isinstance(o, ViolationResolved):
            key = (o.level, o.entity_id, o.resource_type, o.kind)
            assert open_ids.pop(key) == o.violation_id


# --- one instance: order, duplicates -------------------------------------------------------------

instance_event = st.tuples(
    st.integers(0, 8),  # time (s): many ties
    st.booleans(),  # release
    st.sampled_from(["nova/a", "nova/b"]),
    st.integers(0, 5),  # cpu
    st.integers(0, 2),  # scope index
)


@SETTINGS
@given(events=st.lists(instance_event, min_size=1, max_size=10), data=st.data())
def test_any_permutation_or_duplication_of_one_instance_gives_same_totals(
    events: list[tuple[int, bool, str, int, int]], data: st.DataObject
) -> None:
    evs = [
        Allocation(
            scope=SCOPES[sc],
            instance_key="vm",
            resources={} if rel else {"cpu": cpu * M + 1, "instances": M},
            release=rel,
            time_us=at(t),
            source=src,
            event_id=f"id{i}",
        )
        for i, (t, rel, src, cpu, sc) in enumerate(events)
    ]
    extra = data.draw(st.lists(st.sampled_from(evs), max_size=5))
    shuffled = data.draw(st.permutations(evs + extra))
    a, b = World(), World()
    for e in evs:
        a.do(e)
    for e in shuffled:
        b.do(e)
    assert _totals(a) == _totals(b)
    assert a.inst == b.inst
    # independent model: the newest event by (time, release, source, id) decides
    newest = max(evs, key=lambda e: (e.time_us, e.release, e.source, e.event_id))
    expected = {} if newest.release else dict(newest.resources)
    assert b.st.usage.get("Tt1", {}) == expected


# --- many instances, gauges, inventory: never negative, equals recomputation ----------------------

op = st.one_of(
    st.tuples(
        st.just("alloc"),
        st.integers(0, 4),  # instance
        st.integers(0, 120),  # time
        st.booleans(),
        st.integers(0, 3),  # scope
        st.integers(0, 7_000_001),  # cpu micro-units
    ),
    st.tuples(
        st.just("gauge"),
        st.integers(0, 1),
        st.integers(0, 900),
        st.integers(0, 3),
        st.integers(0, 5 * M),
    ),
    st.tuples(st.just("tick"), st.integers(0, 1_500)),
    st.tuples(st.just("inventory"), st.integers(0, 120), st.lists(st.integers(0, 4), max_size=3)),
)


@SETTINGS
@given(ops=st.lists(op, max_size=40))
def test_usage_never_negative_and_equals_recomputation(ops: list[tuple[Any, ...]]) -> None:
    w = World()
    w.quota("cpu", 8, level="project", entity="p1", burst=10, burst_seconds=30)
    w.quota("cpu", 9, t=0)
    w.quota("bandwidth_in", 3, level="project", entity="p2")
    for n, o in enumerate(ops):
        if o[0] == "alloc":
            _, i, t, rel, sc, cpu = o
            w.do(
                Allocation(
                    scope=SCOPES[sc],
                    instance_key=f"vm{i}",
                    resources={"cpu": cpu},
                    release=rel,
                    time_us=at(t),
                    source="nova/x",
                    event_id=f"e{n}",
                )
            )
        elif o[0] == "gauge":
            _, i, t, sc, bw = o
            w.do(
                GaugeSample(
                    scope=SCOPES[sc],
                    interface_id=f"eth{i}",
                    resources={"bandwidth_in": bw},
                    time_us=at(t),
                    source="neutron",
                    event_id=f"g{n}",
                )
            )
        elif o[0] == "tick":
            w.tick(o[1])
        else:
            _, t, listed = o
            w.do(
                Inventory(
                    tenant_id="t1",
                    source_system="nova",
                    as_of_us=at(t),
                    instances=[(f"vm{i}", SCOPES[i % 4], {"cpu": (i + 1) * M}) for i in listed],
                    time_us=at(t),
                    source="inv",
                    event_id=f"inv{n}",
                )
            )
        for per in w.st.usage.values():
            assert per and all(v > 0 for v in per.values())
        assert recompute_usage(w.st, w.inst.values()) == w.st.usage
    _assert_episodes_alternate(w.log)


def test_counter_up_and_down_many_times_ends_where_it_started() -> None:
    w = World()
    w.alloc("base", 0, cpu=1.000001)
    start = _totals(w)
    for i in range(1, 20_001):
        cpu = 3_333_333 if i % 2 else 7_777_777
        w.alloc("vm", i * 0.001, cpu=cpu / M, memory=0.000001 * i)
    w.release("vm", 30)
    assert _totals(w) == start


# --- timers do not depend on tick granularity -----------------------------------------------------


def _model_expiries(steps: list[tuple[int, int]], limit: int, secs: int, end: int) -> list[int]:
    """Times (s) at which a burst/grace clock expires, from the usage timeline alone."""
    fired, clock, expired = [], None, False
    for t, u in steps:
        if clock is not None and not expired and clock + secs <= t:
            fired.append(clock + secs)
            expired = True
        if u > limit:
            if clock is None:
                clock, expired = t, False
        else:
            clock = None
    if clock is not None and not expired and clock + secs <= end:
        fired.append(clock + secs)
    return fired


@SETTINGS
@given(
    gaps=st.lists(st.integers(1, 40), min_size=1, max_size=25),
    usages=st.lists(st.integers(0, 20), min_size=25, max_size=25),
    secs=st.integers(1, 60),
    tick_every=st.integers(1, 45),
    soft=st.booleans(),
)
def test_timers_fire_at_the_right_event_time_for_any_tick_granularity(
    gaps: list[int], usages: list[int], secs: int, tick_every: int, soft: bool
) -> None:
    steps, t = [], 0
    for gap, u in zip(gaps, usages, strict=False):
        t += gap
        steps.append((t, u))
    end = t + 100
    kind = "grace_expired" if soft else "burst_expired"

    def run(with_ticks: bool) -> list[Any]:
        w = World()
        if soft:
            w.quota("cpu", 10, limit_type="soft", grace_seconds=secs)
        else:
            w.quota("cpu", 10, burst=15, burst_seconds=secs)
        last = 0
        for ts, u in steps:
            if with_ticks:
                for tk in range(last + tick_every, ts, tick_every):
                    w.tick(tk)
            w.alloc("vm", ts, cpu=u)
            last = ts
        w.tick(end)
        _assert_episodes_alternate(w.log)
        return [o for o in w.log if isinstance(o, ViolationOpened | ViolationResolved)]

    plain, ticked = run(False), run(True)
    assert Counter(plain) == Counter(ticked)
    detected = [
        o.detected_at_us for o in plain if isinstance(o, ViolationOpened) and o.kind == kind
    ]
    assert detected == [at(x) for x in _model_expiries(steps, 10, secs, end)]


# --- threshold hysteresis -----------------------------------------------------------------------


@SETTINGS
@given(usages=st.lists(st.integers(0, 130), min_size=1, max_size=60))
def test_threshold_alerts_follow_the_hysteresis_model(usages: list[int]) -> None:
    w = World()
    w.quota("cpu", 100)
    got = []
    for i, u in enumerate(usages):
        for o in w.alloc("vm", i + 1, cpu=u):
            if isinstance(o, Alert) and o.kind == "threshold":
                got.append((i, o.threshold))
    armed = {80: True, 95: True}
    expected = []
    for i, u in enumerate(usages):
        for thr in (80, 95):
            if armed[thr] and u > 0 and u >= thr:
                expected.append((i, thr))
                armed[thr] = False
            elif not armed[thr] and u <= thr - 5:
                armed[thr] = True
    assert got == expected
    # and directly: between two alerts for a threshold, usage fell 5 points below it
    for thr in (80, 95):
        idx = [i for i, th in got if th == thr]
        for a, b in pairwise(idx):
            assert min(usages[a + 1 : b]) <= thr - 5
