"""Forecasts, exhaustion and accuracy metrics of projections.analytics (pure, no broker)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novaquota.projections.analytics import (
    AnalyticsInputError,
    Exhaustion,
    Forecast,
    fit_forecast,
    mase,
    seasonal_naive,
    smape,
    time_to_exhaustion,
)
from novaquota.projections.analytics.backtest import seasonal_series

START = pd.Timestamp("2026-03-02", tz="UTC")


def hourly(values: np.ndarray | list[float], start: pd.Timestamp = START) -> pd.Series:
    return pd.Series(
        np.asarray(values, dtype=float),
        index=pd.date_range(start, periods=len(values), freq="h"),
    )


# -- model choice by history length --------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "prefix"),
    [(28, "mstl+ETS"), (15, "mstl+ETS"), (14, "s"), (3, "stl+naive")],
)
def test_method_follows_history_length(days: int, prefix: str) -> None:
    fc = fit_forecast(seasonal_series(3, days), 24)
    assert fc.method.startswith(prefix)


def test_second_week_picks_weekly_naive_only_for_a_weekly_pattern() -> None:
    weekly = seasonal_series(3, 12, noise=0.03)  # weekends 10-40 % lower
    assert fit_forecast(weekly, 24).method == "snaive(168)"
    t = np.arange(24 * 12)
    rng = np.random.default_rng(5)
    daily_only = 50 + 10 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 2, t.size)
    assert fit_forecast(hourly(daily_only), 24).method.startswith("stl+")


def test_short_histories_use_drift_or_mean() -> None:
    assert fit_forecast(seasonal_series(1, 1), 6).method == "drift"  # 24 h
    assert fit_forecast(seasonal_series(1, 1).iloc[:10], 6).method == "mean"


def test_constant_series_forecasts_the_constant_with_zero_width() -> None:
    fc = fit_forecast(hourly([4.0] * 500), 12)
    assert fc.method == "constant"
    assert (fc.mean == 4.0).all() and (fc.lower == 4.0).all() and (fc.upper == 4.0).all()


def test_single_observation() -> None:
    fc = fit_forecast(hourly([7.5]), 3)
    assert fc.method == "constant"
    assert list(fc.mean) == [7.5, 7.5, 7.5]


# -- shape and content -----------------------------------------------------------------------


def test_forecast_times_start_one_hour_after_the_last_observation() -> None:
    series = seasonal_series(2, 21)
    fc = fit_forecast(series, 48, level=0.8)
    assert fc.horizon == 48
    assert fc.times[0] == series.index[-1] + pd.Timedelta(hours=1)
    assert fc.times.freqstr == "h" and str(fc.times.tz) == "UTC"
    assert fc.level == 0.8
    assert (fc.lower <= fc.mean).all() and (fc.mean <= fc.upper).all()
    assert (fc.upper - fc.lower > 0).all()


def test_wider_level_gives_wider_interval() -> None:
    series = seasonal_series(4, 21)
    narrow, wide = fit_forecast(series, 24, level=0.5), fit_forecast(series, 24, level=0.99)
    np.testing.assert_allclose(narrow.mean, wide.mean)
    assert ((wide.upper - wide.lower) > (narrow.upper - narrow.lower)).all()


def test_forecast_follows_the_daily_pattern() -> None:
    series = seasonal_series(5, 28, noise=0.02)
    fc = fit_forecast(series, 24)
    truth = seasonal_series(5, 29, noise=0.0).iloc[-24:].to_numpy()
    # the shape of the day: forecast and noise-free truth rise and fall together
    assert np.corrcoef(fc.mean, truth)[0, 1] > 0.95
    assert smape(truth, fc.mean) < 5


def test_non_negative_history_gives_non_negative_bounds() -> None:
    rng = np.random.default_rng(0)
    values = np.clip(rng.normal(0.5, 1.0, 24 * 20), 0, None)  # mostly zeros and small values
    fc = fit_forecast(hourly(values), 72)
    assert (fc.lower >= 0).all() and (fc.mean >= 0).all()


def test_negative_values_are_allowed_and_not_clipped() -> None:
    t = np.arange(24 * 15)
    values = -50 + 10 * np.sin(2 * np.pi * t / 24) + np.random.default_rng(1).normal(0, 1, t.size)
    fc = fit_forecast(hourly(values), 24)
    assert (fc.mean < 0).all()


def test_trend_is_extrapolated() -> None:
    rng = np.random.default_rng(7)
    t = np.arange(24 * 28)
    values = 100 + 0.5 * t + 5 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, t.size)
    fc = fit_forecast(hourly(values), 24 * 7)
    expected_end = 100 + 0.5 * (t[-1] + 24 * 7)
    assert "A,A" in fc.method or "A,Ad" in fc.method
    assert abs(fc.mean[-1] - expected_end) / expected_end < 0.05


def test_deterministic() -> None:
    series = seasonal_series(11, 28)
    assert fit_forecast(series, 36) == fit_forecast(series.copy(), 36)


def test_scale_invariant() -> None:
    """Usage in MiB or in GiB: the same forecast, scaled (the fit is standardised)."""
    series = seasonal_series(12, 21)
    small, big = fit_forecast(series, 24), fit_forecast(series * 1024, 24)
    assert small.method == big.method
    np.testing.assert_allclose(big.mean, small.mean * 1024, rtol=1e-4)


def test_no_warnings_escape() -> None:
    """Hard inputs (tiny, spiky, step-shaped, zero-heavy) fit without any warning."""
    rng = np.random.default_rng(3)
    step = np.repeat([2.0, 6.0, 4.0, 10.0], 24 * 5)
    spiky = np.where(rng.random(24 * 16) < 0.02, 1e6, 1.0)
    zeros = np.where(rng.random(24 * 16) < 0.9, 0.0, 3.0)
    tiny = 1e-9 * (1 + rng.random(24 * 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for values in (step, spiky, zeros, tiny):
            fc = fit_forecast(hourly(values), 48)
            assert np.isfinite(fc.mean).all() and np.isfinite(fc.upper).all()


def test_to_dict_is_json_ready() -> None:
    fc = fit_forecast(seasonal_series(6, 15), 3)
    data = json.loads(json.dumps(fc.to_dict()))
    assert data["method"] == fc.method and data["horizon_hours"] == 3
    assert data["times"][0].endswith("Z")
    assert pd.Timestamp(data["times"][0]) == fc.times[0]
    assert data["mean"] == pytest.approx(list(fc.mean))


def test_forecast_arrays_are_read_only() -> None:
    fc = fit_forecast(seasonal_series(6, 3), 3)
    with pytest.raises(ValueError):
        fc.mean[0] = 1.0


# -- gaps and validation ------------------------------------------------------------------------


def test_gaps_are_interpolated_and_missing_rows_accepted() -> None:
    series = seasonal_series(8, 21)
    with_nans = series.copy()
    with_nans.iloc[100:110] = np.nan
    without_rows = series.drop(series.index[100:110])
    a, b = fit_forecast(with_nans, 24), fit_forecast(without_rows, 24)
    assert a == b
    assert a.times[0] == series.index[-1] + pd.Timedelta(hours=1)


def test_trailing_gap_starts_forecast_after_last_observation() -> None:
    series = seasonal_series(8, 5)
    series.iloc[-5:] = np.nan
    fc = fit_forecast(series, 4)
    assert fc.times[0] == series.index[-6] + pd.Timedelta(hours=1)


def test_other_time_zone_is_converted_to_utc() -> None:
    series = seasonal_series(9, 4)
    local = series.tz_convert("Europe/Berlin")
    assert fit_forecast(local, 6) == fit_forecast(series, 6)


@pytest.mark.parametrize(
    ("series", "message"),
    [
        (pd.Series([1.0, 2.0]), "DatetimeIndex"),
        (pd.Series([1.0], index=pd.DatetimeIndex(["2026-01-01"])), "time-zone aware"),
        (hourly([1.0, np.inf]), "infinite"),
        (hourly([np.nan, np.nan]), "no observations"),
        (hourly([1.0, 2.0]).iloc[::-1], "strictly increasing"),
        (pd.Series([1.0], index=pd.DatetimeIndex(["2026-01-01 00:30"], tz="UTC")), "whole hours"),
        (hourly(["a", "b"]) if False else pd.Series(["a"], index=hourly([1.0]).index), "numbers"),
    ],
)
def test_bad_series_is_rejected_with_a_clear_message(series: pd.Series, message: str) -> None:
    with pytest.raises(AnalyticsInputError, match=message):
        fit_forecast(series, 1)


@pytest.mark.parametrize("horizon", [0, -1, 1.5, True])
def test_bad_horizon(horizon: object) -> None:
    with pytest.raises(AnalyticsInputError, match="horizon"):
        fit_forecast(hourly([1.0, 2.0]), horizon)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [0, 1, 1.5, -0.1])
def test_bad_level(level: float) -> None:
    with pytest.raises(AnalyticsInputError, match="level"):
        fit_forecast(hourly([1.0, 2.0]), 1, level=level)


# -- time to exhaustion --------------------------------------------------------------------------


def _forecast(mean: list[float], spread: float = 1.0) -> Forecast:
    m = np.asarray(mean, dtype=float)
    return Forecast(
        times=pd.date_range(START, periods=len(m), freq="h"),
        mean=m,
        lower=m - spread,
        upper=m + spread,
        method="test",
        level=0.95,
    )


def test_exhaustion_when_mean_reaches_limit() -> None:
    fc = _forecast([5, 6, 7, 8, 9, 10], spread=2)
    ex = time_to_exhaustion(fc, 8)
    assert ex == Exhaustion(at=fc.times[3], earliest=fc.times[1])
    assert ex.to_dict() == {"at": "2026-03-02T03:00:00Z", "earliest": "2026-03-02T01:00:00Z"}
    assert time_to_exhaustion(fc, np.int64(8)) == ex  # type: ignore[arg-type]  # numpy ints too


def test_reaching_exactly_the_limit_counts() -> None:
    fc = _forecast([1, 2, 3], spread=0)
    ex = time_to_exhaustion(fc, 3)
    assert ex is not None and ex.at == ex.earliest == fc.times[2]


def test_no_exhaustion_within_horizon() -> None:
    fc = _forecast([1, 2, 3], spread=10)  # the upper bound crosses, the mean never does
    assert time_to_exhaustion(fc, 4) is None


def test_exhaustion_of_a_growing_series() -> None:
    t = np.arange(24 * 21)
    values = 50 + 0.2 * t + np.random.default_rng(2).normal(0, 1, t.size)
    series = hourly(values)
    fc = fit_forecast(series, 24 * 14)
    ex = time_to_exhaustion(fc, 200)
    assert ex is not None
    # truth: 50 + 0.2 t = 200 at t = 750, i.e. 246 h after the last observation (t = 503)
    hours = (ex.at - series.index[-1]) / pd.Timedelta(hours=1)
    assert 200 <= hours <= 300
    assert ex.earliest is not None and ex.earliest <= ex.at


@pytest.mark.parametrize("limit", [math.nan, math.inf, "10", None])
def test_bad_limit(limit: object) -> None:
    with pytest.raises(AnalyticsInputError, match="limit"):
        time_to_exhaustion(_forecast([1.0]), limit)  # type: ignore[arg-type]


# -- metrics and baseline ------------------------------------------------------------------------


def test_seasonal_naive_repeats_the_last_season() -> None:
    assert list(seasonal_naive(np.arange(10.0), 5, 3)) == [7, 8, 9, 7, 8]
    with pytest.raises(AnalyticsInputError, match="season"):
        seasonal_naive(np.arange(2.0), 1, 3)


def test_smape() -> None:
    assert smape([1, 2], [1, 2]) == 0
    assert smape([0, 0], [0, 0]) == 0
    assert smape([100], [50]) == pytest.approx(200 * 50 / 150)
    assert smape([0], [5]) == 200
    with pytest.raises(AnalyticsInputError):
        smape([1], [1, 2])
    with pytest.raises(AnalyticsInputError, match="finite"):
        smape([np.nan], [1])


def test_mase() -> None:
    insample = np.array([1.0, 2, 3, 4, 5])  # seasonal (1) naive error: 1 per step
    assert mase([6, 7], [6, 9], insample, season=1) == pytest.approx(1.0)
    with pytest.raises(AnalyticsInputError, match="undefined"):
        mase([1], [1], [2.0, 2.0, 2.0], season=1)
    with pytest.raises(AnalyticsInputError, match="more than one season"):
        mase([1], [1], [1.0, 2.0], season=24)


# -- properties ------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    length=st.integers(1, 24 * 18),
    seed=st.integers(0, 2**16),
    gap_share=st.sampled_from([0.0, 0.05, 0.3]),
    horizon=st.integers(1, 200),
    scale=st.sampled_from([1e-6, 1.0, 1e6]),
)
def test_any_non_negative_series_gives_a_sane_forecast(
    length: int, seed: int, gap_share: float, horizon: int, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    values = scale * rng.gamma(2.0, 1.0, length) * rng.choice([0.0, 1.0], length, p=[0.2, 0.8])
    values[rng.random(length) < gap_share] = np.nan
    values[-1] = scale  # keep the last hour observed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc = fit_forecast(hourly(values), horizon)
    assert fc.horizon == horizon
    assert np.isfinite(fc.mean).all() and np.isfinite(fc.lower).all()
    assert np.isfinite(fc.upper).all()
    assert (fc.lower <= fc.mean + 1e-9 * scale).all()
    assert (fc.mean <= fc.upper + 1e-9 * scale).all()
    assert (fc.lower >= 0).all()
