"""The policy feed, pure: usage from allocation events, quotas and tiers from the command topic,
violations and forecasts from the output topics, the policies' own commands taken as applied,
and the same actions from the same log (also after a JSON round trip of the state)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from novaquota.projections.policy.feed import PolicyFeed
from novaquota.schemas.codec import Decoded, decode, encode
from novaquota.schemas.policies import Policy

US = 1_000_000
H = 3600 * US
T0 = 1_793_491_200 * US  # 2026-11-01T00:00:00Z


def ev(type_: str, t: int, i: list[int] = [0], **data: Any) -> Decoded:  # noqa: B006
    i[0] += 1
    return decode(encode(type_, data, source="tests", id=f"e{i[0]}", time_us=t))


def cmd(type_: str, t: int, **data: Any) -> Decoded:
    return ev(type_, t, actor="ops", **data)


def policy_set(t: int, **p: Any) -> Decoded:
    return cmd("policy.set", t, **Policy.model_validate(p).model_dump(mode="json"))


GROW = {
    "name": "grow",
    "rules": [
        {
            "name": "r",
            "when": {"utilization": {"above": 90, "for": "1h"}},
            "then": [{"adjust_limit": {"factor": 2}}],
        }
    ],
}


def test_usage_follows_the_newest_event_per_instance_and_scope() -> None:
    f = PolicyFeed()
    f.event(cmd("quota.set", T0, level="tenant", tenant_id="a", resource_type="cpu", limit=10))
    f.event(ev("vm.created", T0 + 2, tenant_id="a", project_id="p", vm_id="v1", cpu=4, memory=1))
    f.event(ev("vm.resized", T0 + 3, tenant_id="a", project_id="p", vm_id="v1", cpu=6, memory=1))
    # an older event about the same instance changes nothing
    f.event(ev("vm.created", T0 + 1, tenant_id="a", project_id="p", vm_id="v1", cpu=9, memory=1))
    assert f.usage[("a", "tenant", "a", "cpu")] == 6 * US
    assert f.usage[("a", "project", "p", "cpu")] == 6 * US
    f.event(ev("vm.deleted", T0 + 4, tenant_id="a", project_id="p", vm_id="v1"))
    assert f.usage[("a", "tenant", "a", "cpu")] == 0
    assert f.engine.keys[("a", "tenant", "a", "cpu")].usage == 0


def test_templates_tiers_parents_and_tenant_deletion() -> None:
    f = PolicyFeed()
    f.event(cmd("template.applied", T0, level="tenant", tenant_id="a", template="free"))
    f.event(cmd("quota.set", T0, level="project", tenant_id="a", entity_id="p",
                resource_type="cpu", limit=1))  # fmt: skip
    assert f.tiers[("a", "tenant", "a")] == "free"
    ks = f.engine.keys[("a", "project", "p", "cpu")]
    assert ks.parent_limit == Decimal(2) and ks.tier is None
    assert f.engine.keys[("a", "tenant", "a", "cpu")].tier == "free"
    f.event(cmd("template.defined", T0, name="lab", quotas=[{"resource_type": "gpu", "limit": 3}]))
    f.event(cmd("template.applied", T0, level="tenant", tenant_id="b", template="lab"))
    assert f.quotas[("b", "tenant", "b", "gpu")]["limit"] == Decimal(3)
    f.event(cmd("tenant.deleted", T0 + 1, tenant_id="a"))
    assert not any(k[0] == "a" for k in f.quotas)
    assert f.engine.keys[("a", "tenant", "a", "cpu")].limit is None


def test_violations_and_forecasts_from_the_output_topics() -> None:
    f = PolicyFeed()
    f.event(
        policy_set(
            T0,
            name="v",
            rules=[
                {"name": "twice", "when": {"violations": {"at_least": 2, "within": "1d"}},
                 "then": "suspend"},
                {"name": "soon", "when": {"time_to_exhaustion": {"below": "6h"}},
                 "then": [{"alert": {"severity": "warning"}}]},
            ],
        )
    )  # fmt: skip
    f.event(cmd("quota.set", T0, level="tenant", tenant_id="a", resource_type="cpu", limit=10))
    key = {"tenant_id": "a", "level": "tenant", "entity_id": "a", "resource_type": "cpu"}
    v = {**key, "kind": "over_limit", "detected_at": "2026-11-01T01:00:00Z"}
    assert f.output("quota.violation", {**v, "violation_id": "v1"}) == []
    (s,) = f.output("quota.violation", {**v, "violation_id": "v2"})
    assert s.kind == "suspend" and s.figures["violations"] == 2
    msg = "cpu of tenant a is forecast to reach its limit 10 at 2026-11-01T06:00:00.000000Z (ets)"
    fc = {**key, "kind": "forecast", "detected_at": "2026-11-01T01:00:00Z", "message": msg}
    (a,) = f.output("quota.alert", fc)
    assert a.kind == "alert" and a.figures["time_to_exhaustion_seconds"] == 5 * 3600
    assert f.output("quota.alert", {**fc, "kind": "anomaly"}) == []
    assert f.output("quota.violation", {"garbage": 1}) == []


def test_late_episodes_count_from_when_they_are_read() -> None:
    f = PolicyFeed()
    f.event(
        policy_set(T0, name="v", rules=[
            {"name": "r", "when": {"violations": {"at_least": 2, "within": "1h"}},
             "then": "suspend"}
        ])
    )  # fmt: skip
    f.event(cmd("quota.set", T0, level="tenant", tenant_id="a", resource_type="cpu", limit=10))
    f.event(ev("vm.created", T0 + 48 * H, tenant_id="a", vm_id="v", cpu=1, memory=1))
    f.advance()
    key = {"tenant_id": "a", "level": "tenant", "entity_id": "a", "resource_type": "cpu"}
    for i, at in enumerate(("2026-11-01T01:00:00Z", "2026-11-01T05:00:00Z")):
        acts = f.output(
            "quota.violation",
            {**key, "kind": "over_limit", "detected_at": at, "violation_id": str(i)},
        )
    assert [a.kind for a in acts] == ["suspend"] and acts[0].time_us == T0 + 48 * H


def test_own_commands_are_taken_as_applied() -> None:
    f = PolicyFeed()
    f.event(policy_set(T0, **GROW))
    f.event(cmd("quota.set", T0, level="tenant", tenant_id="a", resource_type="cpu", limit=10,
                burst_limit=12))  # fmt: skip
    f.event(ev("vm.created", T0 + 1, tenant_id="a", vm_id="v", cpu=9.5, memory=1))
    (a,) = f.advance(T0 + 3 * H)
    assert a.limit == Decimal(20)
    q = f.quotas[("a", "tenant", "a", "cpu")]
    assert q["limit"] == Decimal(20) and q["burst_limit"] == Decimal(20)
    assert f.advance(T0 + 10 * H) == []  # 47.5 % now: nothing more
    # the command coming back through the topic changes nothing
    type_, data = a.command() or ("", {})
    back = decode(encode(type_, data, source="novaquota/policy", id=a.action_id, time_us=a.time_us))
    assert f.event(back) == []


def _log() -> list[Decoded]:
    out = [policy_set(T0, **GROW)]
    for i in range(6):
        tenant = f"t{i}"
        out.append(cmd("quota.set", T0, level="tenant", tenant_id=tenant, resource_type="cpu",
                       limit=10))  # fmt: skip
        for h in range(48):
            cpu = (h * (i + 1)) % 11
            if cpu:
                out.append(ev("vm.created", T0 + h * H + i, tenant_id=tenant, vm_id=f"v{h}",
                              cpu=cpu, memory=1))  # fmt: skip
            out.append(ev("vm.deleted", T0 + h * H + 30 * 60 * US, tenant_id=tenant,
                          vm_id=f"v{h - 1}"))  # fmt: skip
    return out


def test_the_same_log_gives_the_same_actions_and_a_restored_state_continues_alike() -> None:
    log = _log()
    runs = []
    for _ in range(2):
        f = PolicyFeed()
        acts = [a for d in log for a in (*f.event(d), *f.advance())]
        runs.append([a.to_dict() for a in acts])
    assert runs[0] and runs[0] == runs[1]
    half = len(log) // 2
    f = PolicyFeed()
    first = [a for d in log[:half] for a in (*f.event(d), *f.advance())]
    g = PolicyFeed.from_json(json.loads(json.dumps(f.to_json())))
    assert g.to_json() == f.to_json()
    rest = [a for d in log[half:] for a in (*g.event(d), *g.advance())]
    assert [a.to_dict() for a in first + rest] == runs[0]
