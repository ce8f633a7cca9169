"""Right-sizing and tier recommendations of projections.analytics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from novaquota.projections.analytics import (
    AnalyticsInputError,
    QuotaRecommendation,
    recommend_tier,
    right_size,
)


def usage(values: list[float] | np.ndarray) -> pd.Series:
    index = pd.date_range("2026-02-02", periods=len(values), freq="h", tz="UTC")
    return pd.Series(np.asarray(values, dtype=float), index=index)


TWO_WEEKS = np.tile(np.r_[np.full(12, 10.0), np.full(12, 20.0)], 14)  # peak 20


def test_no_limit_recommends_peak_plus_headroom() -> None:
    rec = right_size("cpu", usage(TWO_WEEKS), None)
    assert rec is not None
    assert rec == QuotaRecommendation("cpu", None, 25.0, rec.reason, "set", 20.0)
    assert "no quota" in rec.reason and "peak 20 cores" in rec.reason


def test_limit_under_pressure_is_raised() -> None:
    rec = right_size("cpu", usage(TWO_WEEKS), 21)
    assert rec is not None and rec.action == "increase"
    assert rec.recommended_limit > 21 and rec.recommended_limit >= 25
    assert "95% of the limit" in rec.reason


def test_oversized_limit_is_lowered() -> None:
    rec = right_size("cpu", usage(TWO_WEEKS), 200)
    assert rec is not None and rec.action == "decrease" and rec.recommended_limit == 25.0
    assert "only 10% of the limit" in rec.reason


def test_well_sized_limit_needs_nothing() -> None:
    assert right_size("cpu", usage(TWO_WEEKS), 30) is None


def test_no_decrease_without_a_week_of_history() -> None:
    assert right_size("cpu", usage(TWO_WEEKS[: 24 * 3]), 200) is None
    # ... but a raise does not wait
    assert right_size("cpu", usage(TWO_WEEKS[: 24 * 3]), 20) is not None


def test_less_than_a_day_recommends_nothing() -> None:
    assert right_size("cpu", usage(TWO_WEEKS[:10]), None) is None


@pytest.mark.parametrize(
    ("resource", "peak", "expected"),
    [("instances", 7, 9.0), ("memory", 5000, 6300.0), ("storage", 0.4, 1.0), ("cost", 3.3, 4.2)],
)
def test_rounding_by_resource(resource: str, peak: float, expected: float) -> None:
    rec = right_size(resource, usage([peak] * 48), None)
    assert rec is not None and rec.recommended_limit == expected


def test_to_dict_is_json_ready() -> None:
    rec = right_size("memory", usage(TWO_WEEKS * 1024), 1024 * 100)
    assert rec is not None
    data = json.loads(json.dumps(rec.to_dict()))
    assert data["action"] == "decrease" and data["current_limit"] == 102400.0


@pytest.mark.parametrize(
    ("resource", "limit", "message"),
    [("cores", 10, "unknown resource type"), ("cpu", -1, "limit"), ("cpu", float("nan"), "limit")],
)
def test_bad_arguments(resource: str, limit: float, message: str) -> None:
    with pytest.raises(AnalyticsInputError, match=message):
        right_size(resource, usage(TWO_WEEKS), limit)


def test_negative_usage_is_rejected() -> None:
    with pytest.raises(AnalyticsInputError, match="negative"):
        right_size("cpu", usage([-1.0] * 30), None)


# -- tiers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peaks", "tier"),
    [
        ({}, "free"),
        ({"cpu": 2, "memory": 4096, "storage": 10, "instances": 3}, "free"),  # exactly at limits
        ({"cpu": 2.001}, "developer"),
        ({"cpu": 20, "memory": 30_000}, "startup"),
        ({"cpu": 1, "gpu": 1}, "startup"),  # free and developer include no GPUs
        ({"cpu": 1, "load_balancers": 3}, "growth"),
        ({"gpu": 9}, "enterprise"),  # enterprise sets no GPU quota: unlimited
        ({"instances": 400}, "enterprise"),
        ({"cpu": 1, "floating_ips": 50}, "free"),  # no tier limits floating IPs
    ],
)
def test_cheapest_fitting_tier(peaks: dict[str, float], tier: str) -> None:
    rec = recommend_tier(peaks)
    assert rec.tier == tier and rec.fits
    assert set(rec.per_resource) == set(peaks)
    assert all(row["fits"] for row in rec.per_resource.values())


def test_tier_reason_names_the_numbers_and_the_tier_below() -> None:
    rec = recommend_tier({"cpu": 20, "memory": 30_000})
    assert rec.monthly_cost == pytest.approx(99.99)
    assert "cpu 20 of 32 cores" in rec.reason
    assert "developer is too small (cpu 20 > 8 cores" in rec.reason
    assert rec.per_resource["cpu"] == {
        "peak": 20.0,
        "limit": 32.0,
        "burst_limit": 48.0,
        "utilization": 62.5,
        "fits": True,
    }


def test_base_limits_not_burst_limits_decide() -> None:
    # 10 cores fit developer's burst limit (12) but not its limit (8)
    assert recommend_tier({"cpu": 10}).tier == "startup"


def test_nothing_fits() -> None:
    rec = recommend_tier({"cpu": 2000, "memory": 10})
    assert rec.tier == "enterprise" and not rec.fits
    assert "custom template" in rec.reason and "cpu 2,000 > 1,000 cores" in rec.reason
    assert rec.per_resource["cpu"]["fits"] is False and rec.per_resource["memory"]["fits"]
    assert json.loads(json.dumps(rec.to_dict()))["fits"] is False


@pytest.mark.parametrize(
    ("peaks", "message"),
    [
        ({"vcpu": 1}, "unknown resource type"),
        ({"cpu": -1}, "finite and >= 0"),
        ({"cpu": float("inf")}, "finite and >= 0"),
        ({"cpu": "2"}, "must be a number"),
    ],
)
def test_bad_peaks(peaks: dict[str, float], message: str) -> None:
    with pytest.raises(AnalyticsInputError, match=message):
        recommend_tier(peaks)
