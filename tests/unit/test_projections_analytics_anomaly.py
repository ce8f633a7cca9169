"""Anomaly detection of projections.analytics: false-alarm budget and injected spikes."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from novaquota.projections.analytics import AnalyticsInputError, Anomaly, detect_anomalies
from novaquota.projections.analytics.backtest import seasonal_series

SERIES = 60
DAYS = 28


@pytest.mark.slow
def test_false_alarms_on_normal_traffic_stay_under_one_percent_of_series_days() -> None:
    """Count series-days with at least one anomaly, over many seeds of normal seasonal usage."""
    flagged_days = 0
    for seed in range(SERIES):
        anomalies = detect_anomalies(seasonal_series(10_000 + seed, DAYS))
        flagged_days += len({a.time.floor("D") for a in anomalies})
    assert flagged_days / (SERIES * DAYS) <= 0.01


def _inject(series: pd.Series, seed: int, count: int) -> tuple[pd.Series, list[int]]:
    rng = np.random.default_rng(seed)
    positions = sorted(rng.choice(np.arange(24, len(series) - 24, 48), count, replace=False))
    spiked = series.copy()
    for i, position in enumerate(positions):
        factor = 2.5 if i % 2 == 0 else 0.3  # spikes and drops
        spiked.iloc[position] *= factor
    return spiked, [int(p) for p in positions]


@pytest.mark.parametrize("days", [28, 10])
def test_injected_spikes_and_drops_are_caught(days: int) -> None:
    missed = extra = injected = 0
    for seed in range(20):
        series = seasonal_series(seed, days)
        spiked, positions = _inject(series, seed, 4)
        found = {spiked.index.get_loc(a.time) for a in detect_anomalies(spiked)}
        injected += len(positions)
        missed += len(set(positions) - found)
        extra += len(found - set(positions))
    assert missed == 0
    assert extra <= injected * 0.05


def test_spike_in_the_last_hour_is_caught() -> None:
    """The newest hour matters most for alerting, and sits at the edge of the decomposition."""
    for seed in range(10):
        series = seasonal_series(seed, 21)
        series.iloc[-1] *= 2.5
        anomalies = detect_anomalies(series)
        assert anomalies and anomalies[-1].time == series.index[-1]
        assert anomalies[-1].score > 0


def test_anomaly_fields() -> None:
    series = seasonal_series(4, 21, noise=0.03)
    truth = float(series.iloc[300])
    series.iloc[300] = truth * 3
    (anomaly,) = detect_anomalies(series)
    assert anomaly.time == series.index[300]
    assert anomaly.value == pytest.approx(truth * 3)
    assert anomaly.expected == pytest.approx(truth, rel=0.1)
    assert anomaly.score > 5
    data = json.loads(json.dumps(anomaly.to_dict()))
    assert data["time"].endswith("Z") and data["value"] == pytest.approx(truth * 3)


def test_drop_has_negative_score() -> None:
    series = seasonal_series(4, 21, noise=0.03)
    series.iloc[200] = 0.0
    (anomaly,) = detect_anomalies(series)
    assert anomaly.score < 0


def test_huge_spike_leaves_no_phantom_dips_in_other_weeks() -> None:
    series = seasonal_series(6, 28)
    series.iloc[400] *= 50
    anomalies = detect_anomalies(series)
    assert [a.time for a in anomalies] == [series.index[400]]


def test_filled_gaps_are_never_reported() -> None:
    series = seasonal_series(7, 21)
    series.iloc[100:130] = np.nan
    anomalies = detect_anomalies(series)
    gap = set(series.index[100:130])
    assert not any(a.time in gap for a in anomalies)


def test_steady_usage_reports_nothing() -> None:
    index = pd.date_range("2026-01-01", periods=24 * 21, freq="h", tz="UTC")
    assert detect_anomalies(pd.Series(8.0, index=index)) == []
    # allocation usage: flat for days, then a VM more or less (about 10 %): business as usual
    steps = pd.Series(np.repeat([8.0, 8.0, 9.0, 9.0, 9.0, 10.0, 9.0], 72), index=index)
    assert detect_anomalies(steps) == []
    steps.iloc[-1] = 9.0  # the newest hour steps up by one VM
    steps.iloc[-2] = 8.0
    assert detect_anomalies(steps) == []


def test_large_step_in_flat_usage_is_an_anomaly() -> None:
    index = pd.date_range("2026-01-01", periods=24 * 21, freq="h", tz="UTC")
    usage = pd.Series(10.0, index=index)
    usage.iloc[-1] = 30.0
    anomalies = detect_anomalies(usage)
    assert [a.time for a in anomalies] == [index[-1]]


def test_short_series_reports_nothing() -> None:
    series = seasonal_series(1, 1)
    series.iloc[5] *= 10
    assert detect_anomalies(series) == []


def test_deterministic_and_warning_free() -> None:
    series, _ = _inject(seasonal_series(9, 28), 9, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert detect_anomalies(series) == detect_anomalies(series.copy())


def test_threshold_controls_sensitivity() -> None:
    series, _ = _inject(seasonal_series(3, 28), 3, 4)
    loose = detect_anomalies(series, threshold=3.0)
    strict = detect_anomalies(series, threshold=8.0)
    assert {a.time for a in strict} <= {a.time for a in loose}
    assert len(strict) < len(loose)


@pytest.mark.parametrize("threshold", [0, -1, True, "5"])
def test_bad_threshold(threshold: object) -> None:
    with pytest.raises(AnalyticsInputError, match="threshold"):
        detect_anomalies(seasonal_series(1, 3), threshold=threshold)  # type: ignore[arg-type]


def test_anomaly_is_a_value_object() -> None:
    t = pd.Timestamp("2026-01-01", tz="UTC")
    assert Anomaly(t, 1.0, 2.0, -5.0) == Anomaly(t, 1.0, 2.0, -5.0)
