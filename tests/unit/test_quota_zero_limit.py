"""A quota limit of 0 ("none of this resource", contract section 5), end to end without a broker.

Any positive usage is over a zero limit, ``utilization`` is null in every output and view, and no
threshold alert fires for it. Each scenario runs the pure core and then puts everything it emitted
through the real output encoding (``encode_output``) and the schemas' output models, which is
where an infinite utilization used to be refused and the agent crashed in a loop.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from pydantic import ValidationError

from novaquota.projections.analytics.recommend import right_size
from novaquota.projections.cost import load_catalogue
from novaquota.projections.emit import ForecastJob, budget_outputs, forecast_alerts
from novaquota.projections.folds import FoldParams, ProjectionState, fold_batch
from novaquota.projections.views import analytics, history, overview
from novaquota.schemas.codec import decode_output
from novaquota.schemas.outputs import QuotaAlert
from novaquota.streams.quota import Output, Scope, check, utilization_view
from novaquota.streams.translate import encode_output
from tests.unit.test_projections_cost import budget_state
from tests.unit.test_projections_folds import T0_US, cmd, ev

from .test_quota_support import M, World, alerts, at, opened, resolved

HOUR = 3600 * 1_000_000


# --- helpers ---------------------------------------------------------------------------------


def zero_quota(**quota: Any) -> World:
    """Tenant ``z`` with a load_balancers quota of 0 on project ``z-p`` (the defect report)."""
    w = World("z")
    w.quota("load_balancers", 0, level="project", entity="z-p", **quota)
    return w


def lb(w: World, key: str, t: float, n: float = 1) -> list[Output]:
    """A ``load_balancer.created`` (``n`` load balancers held by instance ``key``) in z-p."""
    return w.alloc(key, t, project="z-p", user=None, load_balancers=n)


def lb_gone(w: World, key: str, t: float) -> list[Output]:
    return w.release(key, t, project="z-p", user=None)


def wire(outs: list[Output]) -> list[tuple[str, str, dict[str, Any]]]:
    """(topic, CloudEvent type, JSON ``data``) of each output exactly as the worker sends it,
    each one validated by the output models the way a consumer of the topics decodes it."""
    records = []
    for out in outs:
        topic, body = encode_output(out, cause_type="load_balancer.created", cause_source="tests")
        envelope, _model = decode_output(body)  # raises if the schemas refuse the record
        records.append((topic, envelope.type, orjson.loads(body)["data"]))
    return records


def wire_alerts(w: World) -> list[dict[str, Any]]:
    return [data for _topic, type_, data in wire(w.log) if type_ == "quota.alert"]


# --- the core, and its outputs on the wire ---------------------------------------------------


def test_smallest_case_opens_over_limit_and_fires_no_threshold_alert() -> None:
    w = zero_quota()
    out = lb(w, "lb-1", 1)
    [v] = opened(out)
    assert (v.kind, v.level, v.entity_id, v.resource_type) == (
        "over_limit",
        "project",
        "z-p",
        "load_balancers",
    )
    assert (v.limit, v.burst_limit, v.usage, v.severity) == (0, None, 1 * M, "critical")
    assert (v.detected_at_us, v.cause_event_id) == (at(1), "ev2")
    assert alerts(out) == []
    assert w.st.alerts == {}  # no threshold is armed either


def test_smallest_case_on_the_wire_is_valid_and_reaches_the_violations_topic() -> None:
    w = zero_quota()
    lb(w, "lb-1", 1)
    records = wire(w.log)
    assert [(topic, type_) for topic, type_, _ in records] == [
        ("audit", "audit.command_applied"),  # the quota.set
        ("quota-violations", "quota.violation"),
    ]
    data = records[1][2]
    assert (data["kind"], data["limit"], data["usage"], data["burst_limit"]) == (
        "over_limit",
        0,
        1,
        None,
    )
    assert (data["level"], data["entity_id"], data["limit_type"]) == ("project", "z-p", "hard")


def test_usage_exactly_zero_at_a_zero_limit_is_not_a_violation() -> None:
    w = zero_quota()
    assert opened(w.alloc("vm-1", 1, project="z-p", cpu=2, memory=512)) == []  # other resources
    assert lb(w, "lb-0", 2, n=0) == []  # an instance that holds no load balancer
    [v] = opened(lb(w, "lb-1", 3))
    [r] = resolved(lb_gone(w, "lb-1", 4))
    assert (r.violation_id, r.usage, r.resolved_at_us) == (v.violation_id, 0, at(4))
    assert w.st.episodes == {} and alerts(w.log) == []
    wire(w.log)


def test_setting_a_zero_limit_over_zero_usage_emits_only_its_audit() -> None:
    w = World("z")
    w.alloc("vm-1", 1, project="z-p", cpu=1)
    out = w.quota("load_balancers", 0, level="project", entity="z-p", t=2)
    assert [type(o).__name__ for o in out] == ["Audit"]


def test_lowering_a_limit_to_zero_fires_no_threshold_alert_and_rearms_them() -> None:
    w = World("z")
    w.quota("load_balancers", 10, level="project", entity="z-p")
    [a] = alerts(lb(w, "lb-1", 1, n=8), "threshold")
    assert (a.threshold, a.utilization) == (80, 80.0)
    out = w.quota("load_balancers", 0, level="project", entity="z-p", t=2)
    assert [v.kind for v in opened(out)] == ["over_limit"] and alerts(out) == []
    assert w.st.alerts == {}  # crossings of the old limit are forgotten
    assert alerts(lb(w, "lb-2", 3)) == []  # more usage over the zero limit: still silent
    out = w.quota("load_balancers", 10, level="project", entity="z-p", t=4)  # 9 of 10
    assert [r.kind for r in resolved(out)] == ["over_limit"]
    assert [(a.threshold, a.utilization) for a in alerts(out)] == [(80, 90.0)]
    wire(w.log)


def test_soft_zero_limit_warns_with_null_utilization_then_grace_expires() -> None:
    w = zero_quota(limit_type="soft", grace_seconds=60)
    out = lb(w, "lb-1", 10)
    [a] = alerts(out)
    assert (a.kind, a.threshold, a.utilization, a.severity) == ("soft_limit", None, None, "warning")
    assert opened(out) == []  # soft: the grace runs first
    assert w.tick(69) == []
    [v] = opened(w.tick(70))
    assert (v.kind, v.limit_type, v.usage) == ("grace_expired", "soft", 1 * M)
    assert (v.detected_at_us, v.cause_event_id) == (at(70), "ev2")
    [r] = resolved(lb_gone(w, "lb-1", 80))
    assert r.violation_id == v.violation_id
    [alert] = wire_alerts(w)
    assert alert["kind"] == "soft_limit" and "utilization" in alert
    assert alert["utilization"] is None  # JSON null, present


def test_zero_limit_with_a_burst_limit_follows_the_burst_rules() -> None:
    w = zero_quota(burst=2, burst_seconds=60)
    out = lb(w, "lb-1", 10)  # 1: above the limit, within the burst limit
    [a] = alerts(out)
    assert (a.kind, a.utilization) == ("burst", None)
    assert opened(out) == []
    [ob] = opened(lb(w, "lb-2", 20, n=2))  # 3 > 2
    assert (ob.kind, ob.severity, ob.burst_limit) == ("over_burst", "emergency", 2 * M)
    [exp] = opened(w.tick(70))  # the clock started at 10
    assert (exp.kind, exp.detected_at_us, exp.cause_event_id) == ("burst_expired", at(70), "ev2")
    [r] = resolved(lb_gone(w, "lb-2", 80))  # 1: within burst again
    assert r.violation_id == ob.violation_id
    [r] = resolved(lb_gone(w, "lb-1", 90))  # 0: at the limit
    assert r.violation_id == exp.violation_id and w.st.clocks == {}
    assert alerts(w.log, "threshold") == []
    [alert] = wire_alerts(w)
    assert alert["utilization"] is None


def test_burst_limit_equal_to_a_zero_limit_leaves_no_burst_band() -> None:
    """burst_limit = limit = 0: the first unit is above the burst limit (over_burst at once, no
    burst alert); the burst clock runs as for any burst quota, so burst_expired follows."""
    w = zero_quota(burst=0, burst_seconds=60)
    out = lb(w, "lb-1", 10)
    [ob] = opened(out)
    assert (ob.kind, ob.limit, ob.burst_limit) == ("over_burst", 0, 0)
    assert alerts(out) == []
    [exp] = opened(w.tick(70))
    assert exp.kind == "burst_expired"
    assert sorted(r.kind for r in resolved(lb_gone(w, "lb-1", 80))) == [
        "burst_expired",
        "over_burst",
    ]
    violations = [data for _, type_, data in wire(w.log) if type_ == "quota.violation"]
    assert [(d["kind"], d["limit"], d["burst_limit"]) for d in violations] == [
        ("over_burst", 0, 0),
        ("burst_expired", 0, 0),
    ]


def test_windowed_zero_limit_is_exceeded_by_the_first_request() -> None:
    w = World("z")
    w.quota("api_requests", 0, window="minute")
    [v] = opened(w.consume(1, 10))
    assert (v.kind, v.limit, v.usage) == ("window_exceeded", 0, 1 * M)
    [r] = resolved(w.tick(61))
    assert r.violation_id == v.violation_id
    assert alerts(w.log) == []
    wire(w.log)


def test_utilization_view_is_null_for_a_zero_limit() -> None:
    w = zero_quota()
    [row] = utilization_view(w.st, "project", "z-p")
    assert (row["limit"], row["used"], row["available"], row["utilization"]) == (0, 0, 0, None)
    lb(w, "lb-1", 1)
    [row] = utilization_view(w.st, "project", "z-p")
    assert (row["used"], row["available"], row["utilization"]) == (1 * M, 0, None)
    assert row["open_violations"] == ["over_limit"]


def test_admission_at_a_zero_limit_allows_only_nothing() -> None:
    w = zero_quota()
    scope = Scope("z", "z-p", None)
    denied = check(w.st, scope, {"load_balancers": 1 * M}, at(1))
    assert denied.allowed is False and denied.checks[0].available == 0
    assert check(w.st, scope, {"load_balancers": 0}, at(1)).allowed is True


def test_the_alert_model_takes_a_null_utilization_but_never_a_non_finite_one() -> None:
    base = {
        "alert_id": "a1",
        "tenant_id": "z",
        "level": "project",
        "entity_id": "z-p",
        "resource_type": "load_balancers",
        "kind": "burst",
        "severity": "warning",
        "message": "m",
    }
    assert QuotaAlert.model_validate({**base, "utilization": None}).utilization is None
    assert QuotaAlert.model_validate({**base, "utilization": 12.5}).utilization == Decimal("12.5")
    for bad in (float("inf"), float("nan"), "Infinity"):
        with pytest.raises(ValidationError):
            QuotaAlert.model_validate({**base, "utilization": bad})
    with pytest.raises(ValidationError):  # present, even when null
        QuotaAlert.model_validate(base)


# --- projections -----------------------------------------------------------------------------


def _lb_created(lb_id: str, minutes: float) -> Any:
    return ev("load_balancer.created", {"tenant_id": "t1", "lb_id": lb_id}, minutes)


def zero_limit_projection() -> ProjectionState:
    """Tenant t1: load_balancers and gpu limited to 0; one load balancer for 8 days, then two."""
    st = ProjectionState()
    quotas = [
        cmd("quota.set", {"level": "tenant", "entity_id": "t1", "resource_type": rt, "limit": 0})
        for rt in ("load_balancers", "gpu")
    ]
    vm = ev(
        "vm.created",
        {"tenant_id": "t1", "vm_id": "v1", "cpu": 1, "memory": 512, "gpu": 0},
        0,
    )
    fold_batch(
        st, [*quotas, vm, _lb_created("lb-1", 1), _lb_created("lb-2", 8 * 24 * 60)], FoldParams()
    )
    return st


def test_overview_shows_null_utilization_and_the_right_status() -> None:
    st = zero_limit_projection()
    body = overview(st, ("t1", "tenant", "t1"), load_catalogue(data={"prices": {}}))
    rows = {q["resource_type"]: q for q in body["quotas"]}
    assert (rows["load_balancers"]["utilization"], rows["load_balancers"]["status"]) == (
        None,
        "exceeded",
    )
    assert (rows["gpu"]["utilization"], rows["gpu"]["status"]) == (None, "ok")
    assert body["overall_utilization"] == {"mean": None, "max": None}
    json.dumps(body, allow_nan=False)


def test_history_and_analytics_of_a_zero_limit_hold_no_infinity() -> None:
    st = zero_limit_projection()
    entity = ("t1", "tenant", "t1")
    h = history(st, entity, resource_type="load_balancers", start=None, end=None, step="hour")
    points = h["series"][0]["points"]
    assert points and all(p["utilization"] is None for p in points)
    assert all(p["peak_utilization"] is None for p in points)
    a = analytics(st, entity, load_catalogue(data={"prices": {}}), start=None, end=None)
    lbs = a["resources"]["load_balancers"]
    assert (lbs["limit"], lbs["efficiency"], lbs["time_to_exhaustion"]) == (0, None, None)
    json.dumps(h, allow_nan=False)
    json.dumps(a, allow_nan=False)


def test_a_zero_limit_nothing_uses_is_not_worth_raising() -> None:
    hours = pd.date_range("2026-11-01", periods=8 * 24, freq="h", tz="UTC")
    idle = pd.Series(np.zeros(len(hours)), index=hours)
    assert right_size("load_balancers", idle, 0) is None
    used = right_size("load_balancers", idle + 1, 0)
    assert used is not None and used.action == "increase"  # usage above "none" is worth a look


def test_a_zero_budget_fires_no_cost_threshold_alert_only_its_violation() -> None:
    cat = load_catalogue(data={"prices": {"cpu": 1.0, "memory": 0}})
    outs = budget_outputs(budget_state(0), cat, T0_US + HOUR)
    assert [o.role for o in outs] == ["violations"]
    _env, data = decode_output(outs[0].value)
    assert data.kind == "budget_exceeded"  # type: ignore[attr-defined]


def test_anomaly_alerts_of_a_zero_limit_carry_null_utilization() -> None:
    hours = pd.date_range("2026-11-01", periods=14 * 24, freq="h", tz="UTC")
    rng = np.random.default_rng(7)
    values = 2.0 + 0.1 * rng.standard_normal(len(hours))
    values[-1] = 40.0  # the last complete hour is far off
    job = ForecastJob(
        ("t1", "tenant", "t1", "load_balancers"), 0.0, pd.Series(values, index=hours), T0_US
    )
    [emission] = forecast_alerts([job], horizon_hours=24)
    _env, alert = decode_output(emission.value)
    assert alert.kind == "anomaly" and alert.utilization is None  # type: ignore[attr-defined]
