"""Pricing catalogue, time-weighted cost accrual, budget crossings and their outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from novaquota.projections.cost import (
    DEFAULT_PRICES,
    HOURS_PER_MONTH,
    crossing_time,
    entity_cost,
    load_catalogue,
    month_bounds,
)
from novaquota.projections.emit import budget_outputs, output_id
from novaquota.projections.exceptions import PricingError
from novaquota.projections.folds import FoldParams, ProjectionState, fold_batch
from novaquota.schemas.codec import decode_output
from tests.unit.test_projections_folds import T0_US, cmd, vm

HOUR = 3600 * 1_000_000


def test_default_catalogue_and_file_overrides(tmp_path: Path) -> None:
    cat = load_catalogue()
    assert cat.price("cpu") == DEFAULT_PRICES["cpu"]
    f = tmp_path / "prices.json"
    f.write_text(
        json.dumps(
            {
                "prices": {
                    "cpu": {"per_hour": 0.05},
                    "memory": {"per_hour": 0.01, "unit": "GiB"},
                    "storage": {"per_month": 0.2, "unit": "TiB"},
                    "api_requests": {"per_unit": 0.000001},
                }
            }
        )
    )
    cat = load_catalogue(f)
    assert cat.price("cpu") == 0.05
    assert cat.price("memory") == pytest.approx(0.01 / 1024)
    assert cat.price("storage") == pytest.approx(0.2 / 1024 / HOURS_PER_MONTH)
    assert cat.consumed("api_requests") and not cat.consumed("cpu")


@pytest.mark.parametrize(
    "prices",
    [
        {"cpu": -1},
        {"cpu": {"per_hour": 1, "per_month": 2}},
        {"cpu": {"per_unit": 1}},
        {"api_requests": {"per_hour": 1}},
        {"memory": {"per_hour": 1, "unit": "PiB"}},
        {"nonsense": 1},
        {"cpu": "cheap"},
    ],
)
def test_bad_catalogue_is_a_clear_error(prices: dict[str, object]) -> None:
    with pytest.raises(PricingError):
        load_catalogue(data={"prices": prices})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PricingError, match="does not exist"):
        load_catalogue(tmp_path / "nope.json")


def state_with_vm(cpu: float, minutes_alive: float | None = None) -> ProjectionState:
    st = ProjectionState()
    events = [vm("vm.created", "v1", 0, cpu)]
    if minutes_alive is not None:
        events.append(vm("vm.deleted", "v1", minutes_alive))
    fold_batch(st, events, FoldParams())
    return st


def test_cost_is_time_weighted() -> None:
    cat = load_catalogue(data={"prices": {"cpu": 1.0, "memory": 0}})
    st = state_with_vm(2, 30)
    c = entity_cost(st, ("t1", "tenant", "t1"), cat, T0_US, T0_US + 2 * HOUR)
    assert c.by_resource["cpu"] == pytest.approx(1.0)  # 2 cores x 0.5 h x 1 USD
    assert c.hourly_rate == 0
    st = state_with_vm(2)
    c = entity_cost(st, ("t1", "tenant", "t1"), cat, T0_US, T0_US + HOUR + HOUR // 2)
    assert c.total == pytest.approx(3.0)
    assert c.hourly_rate == pytest.approx(2.0)
    half_minute = entity_cost(st, ("t1", "tenant", "t1"), cat, T0_US, T0_US + 30_000_000)
    assert half_minute.total == pytest.approx(2.0 / 120)


def test_crossing_time_interpolates() -> None:
    cat = load_catalogue(data={"prices": {"cpu": 1.0, "memory": 0}})
    st = state_with_vm(1)
    c = entity_cost(st, ("t1", "tenant", "t1"), cat, T0_US, T0_US + 4 * HOUR)
    t = crossing_time(c, 1.5)
    assert t is not None and abs(t - (T0_US + int(1.5 * HOUR))) <= 1_000_000
    assert crossing_time(c, 10.0) is None


def test_month_bounds() -> None:
    m0, m1 = month_bounds(T0_US)
    assert m1 - m0 == 30 * 86400 * 1_000_000  # November


def budget_state(monthly_usd: float) -> ProjectionState:
    st = ProjectionState()
    fold_batch(
        st,
        [
            cmd("budget.set", {"level": "tenant", "entity_id": "t1", "monthly_usd": monthly_usd}),
            vm("vm.created", "v1", 0, 1),
        ],
        FoldParams(),
    )
    return st


def test_budget_crossings_emit_once_per_threshold_with_deterministic_ids() -> None:
    cat = load_catalogue(data={"prices": {"cpu": 1.0, "memory": 0}})
    st = budget_state(10)
    outs = budget_outputs(st, cat, T0_US + 9 * HOUR)  # 9 USD: 80 % crossed only
    assert [o.role for o in outs] == ["alerts"]
    outs = budget_outputs(st, cat, T0_US + 11 * HOUR)  # 11 USD: all thresholds, exceeded
    alerts = [o for o in outs if o.role == "alerts"]
    violations = [o for o in outs if o.role == "violations"]
    assert len(alerts) == 3 and len(violations) == 1
    again = budget_outputs(st, cat, T0_US + 20 * HOUR)
    assert {o.id for o in again} == {o.id for o in outs}  # same ids: the ledger drops repeats
    assert alerts[0].id == output_id("cost", "t1", "tenant", "t1", "2026-11", "80")
    env, data = decode_output(violations[0].value)
    assert env.type == "quota.violation"
    assert data.kind == "budget_exceeded"  # type: ignore[attr-defined]
    assert float(data.usage) > float(data.limit)  # type: ignore[attr-defined]
    env, alert = decode_output(alerts[1].value)
    assert alert.kind == "cost" and float(alert.threshold) == 95  # type: ignore[attr-defined]
    _, m1 = month_bounds(T0_US)
    after = budget_outputs(st, cat, m1 + HOUR)
    resolved = [o for o in after if decode_output(o.value)[0].type == "quota.violation_resolved"]
    assert len(resolved) == 1
