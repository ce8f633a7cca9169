"""The policy engine, pure: every condition kind, every action, cooldown, hysteresis, and
determinism (the same inputs give the same actions and ids, however often ``advance`` runs)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pytest

from novaquota.projections.policy.engine import (
    Episode,
    Observation,
    PolicyAction,
    PolicyEngine,
    action_id,
)
from novaquota.schemas.codec import decode, encode
from novaquota.schemas.outputs import QuotaAlert
from novaquota.schemas.policies import Policy

D = Decimal
US = 1_000_000
MIN = 60 * US
H = 3600 * US
DAY = 24 * H
T0 = 1_795_000_000 * US - (1_795_000_000 * US) % DAY  # a UTC midnight (a Friday)
K = ("acme", "tenant", "acme", "cpu")
QUOTA = {"resource_type": "cpu", "limit": D(10), "limit_type": "hard", "status": "active"}


def policy(when: dict[str, Any], then: Any = None, **rule: Any) -> Policy:
    return Policy.model_validate(
        {
            "name": "p",
            "rules": [
                {
                    "name": "r",
                    "when": when,
                    "then": then or [{"alert": {"severity": "warning"}}],
                    "cooldown_seconds": 0,
                    **rule,
                }
            ],
        }
    )


def obs(
    t: int,
    usage: float | str,
    limit: float | str | None = 10,
    key: tuple[str, str, str, str] = K,
    **kw: Any,
) -> Observation:
    lim = None if limit is None else D(str(limit))
    quota = {**QUOTA, "resource_type": key[3], "limit": lim} if lim is not None else None
    return Observation(key, t, D(str(usage)), lim, quota=kw.pop("quota", quota), **kw)


def times(actions: Iterable[PolicyAction]) -> list[int]:
    return [(a.time_us - T0) // MIN for a in actions]


# --- utilization -----------------------------------------------------------------------------


def test_utilization_above_for_a_duration_fires_when_the_duration_is_reached() -> None:
    e = PolicyEngine([policy({"utilization": {"above": 90, "for": "1h"}})])
    assert e.observe(obs(T0, 5)) == []
    assert e.observe(obs(T0 + 10 * MIN, 9.5)) == []
    assert e.advance(T0 + 69 * MIN) == []
    got = e.advance(T0 + 3 * H)
    assert times(got) == [70]  # since + for, not the time advance ran
    assert got[0].figures["utilization"] == "95"
    assert got[0].figures["since"].startswith("2026-")


def test_utilization_that_drops_before_the_duration_does_not_fire() -> None:
    e = PolicyEngine([policy({"utilization": {"above": 90, "for": "1h"}})])
    e.observe(obs(T0, 9.5))
    e.observe(obs(T0 + 59 * MIN, 8))
    e.observe(obs(T0 + 61 * MIN, 9.6))
    assert e.advance(T0 + 120 * MIN) == []
    assert times(e.advance(T0 + 3 * H)) == [121]


def test_utilization_below_and_zero_or_missing_limits() -> None:
    e = PolicyEngine([policy({"utilization": {"below": 10, "for": "7d"}})])
    e.observe(obs(T0, 0))
    e.observe(obs(T0, 0, limit=0, key=("b", "tenant", "b", "cpu")))  # no percentage
    e.observe(obs(T0, 0, limit=None, key=("c", "tenant", "c", "cpu")))  # no quota
    got = e.advance(T0 + 8 * DAY)
    assert [(a.key[0], times([a])[0]) for a in got] == [("acme", 7 * 24 * 60)]


def test_threshold_edges_are_inclusive() -> None:
    e = PolicyEngine([policy({"utilization": {"above": 90}})])
    assert len(e.observe(obs(T0, 9))) == 1  # exactly 90 %


# --- time to exhaustion, violations, tier, time of day -------------------------------------


def test_time_to_exhaustion_below() -> None:
    e = PolicyEngine([policy({"time_to_exhaustion": {"below": "1d"}})])
    assert e.observe(obs(T0, 5, time_to_exhaustion_seconds=3 * 86400)) == []
    # no news: the exhaustion comes closer as event time passes
    got = e.advance(T0 + 3 * DAY)
    assert len(got) == 1 and (got[0].time_us - T0) == 2 * DAY + 1
    assert got[0].figures["time_to_exhaustion_seconds"] == 86399
    e2 = PolicyEngine([policy({"time_to_exhaustion": {"below": "1d"}})])
    assert e2.observe(obs(T0, 5, time_to_exhaustion_seconds=None)) == []
    assert e2.advance(T0 + 30 * DAY) == []


def test_violation_episodes_in_a_window_with_kinds() -> None:
    e = PolicyEngine(
        [policy({"violations": {"at_least": 2, "within": "1h", "kinds": ["over_limit"]}})]
    )
    e.observe(obs(T0, 5))
    assert e.violation(Episode(K, "v1", "over_limit", T0)) == []
    assert e.violation(Episode(K, "v2", "over_burst", T0 + 10 * MIN)) == []  # other kind
    assert e.violation(Episode(K, "v1", "over_limit", T0 + 11 * MIN)) == []  # same episode
    assert e.violation(Episode(K, "v3", "over_limit", T0 + 61 * MIN)) == []  # v1 aged out
    got = e.violation(Episode(K, "v4", "over_limit", T0 + 62 * MIN))
    assert times(got) == [62] and got[0].figures["violations"] == 2


def test_tier_in() -> None:
    e = PolicyEngine([policy({"tier": {"in": ["free", "developer"]}})])
    assert e.observe(obs(T0, 1, tier="growth")) == []
    assert len(e.observe(obs(T0 + MIN, 1, tier="free"))) == 1


def test_time_of_day_window_wrapping_midnight_and_weekdays() -> None:
    e = PolicyEngine([policy({"time_of_day": {"from": "22:00", "to": "06:00"}})])
    e.observe(obs(T0 + 12 * H, 1))
    got = e.advance(T0 + 2 * DAY)
    assert times(got) == [22 * 60, (24 + 22) * 60]  # each night, at 22:00 (re-armed at 06:00)
    weekday = PolicyEngine(
        [policy({"time_of_day": {"from": "09:00", "to": "10:00", "weekdays": ["mon"]}})]
    )
    weekday.observe(obs(T0, 1))  # T0 is a Friday
    got = weekday.advance(T0 + 7 * DAY)
    assert times(got) == [(5 * 24 + 9) * 60]  # the Monday


def test_all_and_any_nest() -> None:
    cond = {
        "all": [
            {"utilization": {"above": 80}},
            {
                "any": [
                    {"tier": {"in": ["free"]}},
                    {"time_of_day": {"from": "00:00", "to": "01:00"}},
                ]
            },
        ]
    }
    e = PolicyEngine([policy(cond)])
    assert e.observe(obs(T0 + 2 * H, 9, tier="growth")) == []  # 90 %, but neither branch
    assert len(e.observe(obs(T0 + 3 * H, 9, tier="free"))) == 1
    e2 = PolicyEngine([policy(cond)])
    e2.observe(obs(T0 + 2 * H, 9, tier="growth"))
    assert times(e2.advance(T0 + DAY + 2 * H)) == [24 * 60]  # the next 00:00


# --- actions ---------------------------------------------------------------------------------


def _fire(then: dict[str, Any] | str, *observations: Observation) -> list[PolicyAction]:
    e = PolicyEngine([policy({"utilization": {"above": 0}}, [then])])
    out: list[PolicyAction] = []
    for o in observations:
        out.extend(e.observe(o))
    return out


@pytest.mark.parametrize(
    ("spec", "usage", "limit", "parent", "resource", "expected"),
    [
        ({"factor": 1.5}, 9, 10, None, "cpu", "15"),
        ({"step": 4}, 9, 10, None, "cpu", "14"),
        ({"factor": 1.5, "ceiling": 12}, 9, 10, None, "cpu", "12"),
        ({"factor": 1.5}, 9, 10, 13, "cpu", "13"),  # never above the parent's limit
        ({"factor": 1.5}, 5, 5, None, "instances", "8"),  # counted: rounded up
        ({"factor": 2, "ceiling": 10}, 9, 10, None, "cpu", None),  # at the ceiling: nothing
        ({"factor": 2}, 9, 10, 10, "cpu", None),  # parent already reached
        ({"factor": 0.5}, 1, 10, None, "cpu", "5"),
        ({"factor": 0.5, "floor": 7}, 1, 10, None, "cpu", "7"),
        ({"factor": 0.1, "headroom": "50%"}, 4, 10, None, "cpu", "6"),  # usage + 50 %
        ({"factor": 0.1, "headroom": 3}, 4, 10, None, "cpu", "7"),  # usage + 3
        ({"step": -8, "headroom": {"percent": 0}}, 0, 10, None, "cpu", "2"),
        ({"step": -5, "floor": 10, "ceiling": 10}, 0, 10, None, "cpu", None),  # floor = ceiling
        ({"factor": 0.5}, 9.5, 10, None, "cpu", None),  # headroom leaves nothing to take
    ],
)
def test_adjust_limit(
    spec: dict[str, Any],
    usage: float,
    limit: float,
    parent: float | None,
    resource: str,
    expected: str | None,
) -> None:
    key = ("acme", "tenant", "acme", resource)
    got = _fire(
        {"adjust_limit": spec},
        obs(T0, usage, limit, key=key, parent_limit=None if parent is None else D(parent)),
    )
    if expected is None:
        assert got == []
        return
    (a,) = got
    assert a.kind == "adjust_limit" and a.limit == D(expected) and a.previous_limit == D(limit)
    type_, data = a.command() or ("", {})
    assert type_ == "quota.set" and data["actor"] == "policy/p@1"
    # the command is valid as it stands
    decoded = decode(encode(type_, data, source="novaquota/policy", id=a.action_id, time_us=T0))
    assert decoded.data.limit == D(expected)  # type: ignore[union-attr]
    assert decoded.data.cause is not None and decoded.data.cause.rule == "r"


def test_adjust_raises_a_burst_limit_below_the_new_limit() -> None:
    q = {**QUOTA, "burst_limit": D(12), "burst_seconds": 60}
    (a,) = _fire({"adjust_limit": {"factor": 2}}, obs(T0, 9, quota=q))
    data = (a.command() or ("", {}))[1]
    assert data["limit"] == D(20) and data["burst_limit"] == D(20)


def test_switch_template_once_per_entity() -> None:
    e = PolicyEngine(
        [policy({"utilization": {"above": 50}}, [{"switch_template": {"template": "growth"}}])]
    )
    a1 = e.observe(obs(T0, 9, tier="startup"))
    a2 = e.observe(obs(T0, 9, key=("acme", "tenant", "acme", "memory"), tier="startup"))
    assert [a.kind for a in a1 + a2] == ["switch_template", "switch_template"]
    assert a1[0].action_id == a2[0].action_id  # one command for the entity
    type_, data = a1[0].command() or ("", {})
    assert type_ == "template.applied" and data["template"] == "growth"
    decode(encode(type_, data, source="novaquota/policy", id=a1[0].action_id, time_us=T0))
    assert e.observe(obs(T0, 9, key=("x", "tenant", "x", "cpu"), tier="growth")) == []


def test_suspend_and_resume() -> None:
    (s,) = _fire("suspend", obs(T0, 9))
    type_, data = s.command() or ("", {})
    assert type_ == "quota.set" and data["status"] == "suspended" and data["limit"] == D(10)
    assert _fire("suspend", obs(T0, 9, status="suspended")) == []
    (r,) = _fire({"resume": None}, obs(T0, 9, status="suspended"))
    assert (r.command() or ("", {}))[1]["status"] == "active"
    assert _fire("resume", obs(T0, 9)) == []


def test_alert_is_a_valid_policy_alert() -> None:
    (a,) = _fire({"alert": {"severity": "critical", "message": "busy"}}, obs(T0, 9.5))
    assert a.command() is None
    data = a.alert()
    assert data is not None
    alert = QuotaAlert.model_validate(data)
    assert alert.kind == "policy" and alert.severity == "critical" and alert.message == "busy"
    assert alert.alert_id == a.action_id and alert.utilization == D(95)


# --- cooldown and hysteresis -----------------------------------------------------------------


def test_cooldown_delays_a_second_firing() -> None:
    e = PolicyEngine([policy({"utilization": {"above": 90}}, cooldown_seconds="1h")])
    assert times(e.observe(obs(T0, 9.5))) == [0]
    e.observe(obs(T0 + 5 * MIN, 5))  # clears: re-armed
    assert e.observe(obs(T0 + 10 * MIN, 9.5)) == []  # true again, but cooling down
    assert times(e.advance(T0 + 2 * H)) == [60]  # fires when the cooldown ends


def test_a_rule_that_fired_waits_for_its_condition_to_clear() -> None:
    e = PolicyEngine([policy({"utilization": {"above": 90}})])
    assert len(e.observe(obs(T0, 9.5))) == 1
    assert e.observe(obs(T0 + MIN, 9.7)) == []
    assert e.advance(T0 + DAY) == []


def test_hysteresis_points_and_duration() -> None:
    e = PolicyEngine(
        [policy({"utilization": {"above": 90}}, hysteresis={"points": 5, "for": "10m"})]
    )
    assert len(e.observe(obs(T0, 9.5))) == 1
    e.observe(obs(T0 + MIN, 8.8))  # 88 %: not clear by 5 points
    assert e.observe(obs(T0 + 2 * MIN, 9.2)) == []
    e.observe(obs(T0 + 3 * MIN, 8))  # 80 %: clear, for 10 minutes from here
    assert e.observe(obs(T0 + 8 * MIN, 9.2)) == []  # too soon
    e.observe(obs(T0 + 9 * MIN, 8))
    assert e.advance(T0 + 18 * MIN) == []
    assert times(e.observe(obs(T0 + 20 * MIN, 9.2))) == [20]


# --- scope, versions, determinism ------------------------------------------------------------


def test_scope_patterns() -> None:
    p = Policy.model_validate(
        {
            "name": "p",
            "scope": {"tenants": ["acme-*"], "levels": "tenant", "resource_types": ["cpu"]},
            "rules": [{"name": "r", "when": {"utilization": {"above": 0}}, "then": "suspend"}],
        }
    )
    e = PolicyEngine([p])
    assert e.observe(obs(T0, 1, key=("other", "tenant", "other", "cpu"))) == []
    assert e.observe(obs(T0, 1, key=("acme-1", "project", "web", "cpu"))) == []
    assert e.observe(obs(T0, 1, key=("acme-1", "tenant", "acme-1", "memory"))) == []
    assert len(e.observe(obs(T0, 1, key=("acme-1", "tenant", "acme-1", "cpu")))) == 1


def test_a_new_version_starts_afresh_and_a_deleted_policy_stops() -> None:
    v1 = policy({"utilization": {"above": 90}})
    e = PolicyEngine([v1])
    (a1,) = e.observe(obs(T0, 9.5))
    v2 = v1.model_copy(update={"version": 2})
    (a2,) = e.set_policy(v2, T0 + MIN)  # evaluated at once, its rule armed
    assert a2.actor == "policy/p@2" and a2.action_id != a1.action_id
    assert e.set_policy(v2, T0 + 2 * MIN) == []  # the same version again: nothing
    assert e.set_policy(v1, T0 + 2 * MIN) == [] and e.policies["p"].version == 2  # older
    assert e.delete_policy("p", T0 + 3 * MIN)
    assert e.observe(obs(T0 + 4 * MIN, 5)) == [] and e.observe(obs(T0 + 5 * MIN, 9.9)) == []
    view = e.describe("p")
    assert view is not None and [v["version"] for v in view["versions"]] == [1, 2, 0]


def _workload(e: PolicyEngine, step_minutes: int) -> list[PolicyAction]:
    out: list[PolicyAction] = []
    keys = [(f"t{i}", "tenant", f"t{i}", "cpu") for i in range(4)]
    for m in range(0, 3 * 24 * 60, 7):
        for i, k in enumerate(keys):
            u = (m * (i + 3)) % 11
            if m % (13 * (i + 1)) == 0:
                out.extend(e.observe(obs(T0 + m * MIN, u, key=k)))
                if u >= 8:
                    out.extend(e.violation(Episode(k, f"v{m}-{i}", "over_limit", T0 + m * MIN)))
        if m % step_minutes == 0:
            out.extend(e.advance(T0 + m * MIN))
    out.extend(e.advance(T0 + 4 * DAY))
    return out


POLICIES = [
    policy({"utilization": {"above": 85, "for": "30m"}}, [{"adjust_limit": {"step": 2}}]),
    Policy.model_validate(
        {
            "name": "q",
            "rules": [
                {
                    "name": "idle",
                    "when": {"utilization": {"below": 20, "for": "2h"}},
                    "then": [{"alert": {"severity": "info"}}],
                    "cooldown": "3h",
                },
                {
                    "name": "noisy",
                    "when": {"violations": {"at_least": 2, "within": "6h"}},
                    "then": ["suspend"],
                },
            ],
        }
    ),
]


def test_the_same_inputs_give_the_same_actions_and_ids() -> None:
    first = _workload(PolicyEngine(POLICIES), 60)
    second = _workload(PolicyEngine(POLICIES), 60)
    assert first and [a.to_dict() for a in first] == [a.to_dict() for a in second]
    assert {a.kind for a in first} == {"adjust_limit", "alert", "suspend"}
    # how often event time is advanced does not change what is done, nor when
    rarely = _workload(PolicyEngine(POLICIES), 24 * 60)
    assert sorted(a.action_id for a in rarely) == sorted(a.action_id for a in first)
    a = first[0]
    assert a.action_id == action_id(a.policy, a.version, a.rule, 0, a.key, a.time_us)


def test_state_survives_a_round_trip_through_json() -> None:
    e = PolicyEngine(POLICIES)
    k = ("t0", "tenant", "t0", "cpu")
    e.observe(obs(T0, 9.5, key=k))
    e.violation(Episode(k, "v1", "over_limit", T0))
    restored = PolicyEngine.from_json(json.loads(json.dumps(e.to_json())))
    assert restored.to_json() == e.to_json()
    assert [a.to_dict() for a in restored.advance(T0 + DAY)] == [
        a.to_dict() for a in e.advance(T0 + DAY)
    ]
