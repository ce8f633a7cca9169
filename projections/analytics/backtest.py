"""Backtest of :func:`fit_forecast` against the seasonal-naive baseline on synthetic usage.

``novaquota projections backtest`` (or ``python -m projections.analytics.backtest``) prints a JSON
report: per seed and on average, sMAPE and MASE of the model and of the baseline, the empirical
coverage of the model's prediction interval, and whether the model wins. Each seed evaluates
several forecast origins, one day apart, at the end of its series (rolling origin).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .anomaly import detect_anomalies
from .exceptions import AnalyticsInputError
from .forecast import fit_forecast, mase, seasonal_naive, smape
from .series import DAY, WEEK

__all__ = ["main", "measure_speed", "run_backtest", "seasonal_series"]

_EPOCH = pd.Timestamp("2026-01-05", tz="UTC")  # a Monday


def seasonal_series(
    seed: int,
    days: int,
    *,
    start: pd.Timestamp | None = None,
    level: float | None = None,
    trend: float | None = None,
    noise: float = 0.08,
) -> pd.Series:
    """``days`` of hourly usage with daily and weekly seasonality, a trend and noise.

    Shaped like compute usage: a working-day bump (peak hour, height and width drawn per seed),
    a smaller nightly batch bump, weekends lower by 10-40 %, a linear trend of ``trend`` (relative
    to the starting level, per day; drawn from -0.5 %..+1.5 % when None) and multiplicative AR(1)
    noise with standard deviation ``noise`` (so a noisy hour tends to be followed by another).
    Never negative. The same ``seed`` always gives the same series. Without ``start`` the series
    starts at midnight UTC on a weekday drawn from the seed.
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise AnalyticsInputError(f"days must be a positive integer, got {days!r}")
    if not 0 <= noise < 1:
        raise AnalyticsInputError(f"noise must be in [0, 1), got {noise!r}")
    rng = np.random.default_rng(seed)
    base = float(rng.uniform(20, 200)) if level is None else float(level)
    slope = float(rng.uniform(-0.005, 0.015)) if trend is None else float(trend)
    peak_hour = rng.uniform(11, 16)
    height = rng.uniform(0.2, 0.6)
    width = rng.uniform(2.5, 4.5)
    batch = rng.uniform(0.0, 0.15)
    weekend = rng.uniform(0.6, 0.9)
    first = _EPOCH + pd.Timedelta(days=int(rng.integers(0, 7))) if start is None else start
    index = pd.date_range(first, periods=days * DAY, freq="h")
    hour = index.hour.to_numpy() + index.minute.to_numpy() / 60
    daily = (
        1
        + height * np.exp(-0.5 * ((hour - peak_hour) / width) ** 2)
        + batch * np.exp(-0.5 * ((hour - 2) / 1.0) ** 2)
    )
    weekly = np.where(index.day_of_week.to_numpy() >= 5, weekend, 1.0)
    t_days = np.arange(len(index)) / DAY
    growth = np.maximum(1 + slope * t_days, 0.0)
    shocks = rng.normal(0.0, noise * np.sqrt(1 - 0.5**2), len(index))
    ar = np.empty(len(index))
    previous = 0.0
    for i, shock in enumerate(shocks):
        previous = 0.5 * previous + shock
        ar[i] = previous
    values = base * growth * daily * weekly * (1 + ar)
    return pd.Series(np.maximum(values, 0.0), index=index, name="usage")


def run_backtest(
    seeds: int = 5,
    days: int = 28,
    horizon: int = 24,
    *,
    origins: int = 3,
    level: float = 0.95,
    noise: float = 0.08,
) -> dict[str, Any]:
    """Rolling-origin backtest over ``seeds`` synthetic series; returns a JSON-ready report.

    Each seed's model is fitted on ``days`` of history, then again one and two days later (with
    ``origins`` = 3), forecasting ``horizon`` hours each time. The baseline is the seasonal-naive
    forecast with a weekly season when a week of history exists (else daily); MASE is scaled by
    the in-sample error of that same baseline, so a MASE ratio below 1 means the model wins.
    """
    for name, value in (
        ("seeds", seeds),
        ("days", days),
        ("horizon", horizon),
        ("origins", origins),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AnalyticsInputError(f"{name} must be a positive integer, got {value!r}")
    season = WEEK if days * DAY >= WEEK + DAY else DAY
    total_hours = days * DAY + (origins - 1) * DAY + horizon
    started = time.perf_counter()
    fits = 0
    per_seed: list[dict[str, Any]] = []
    for seed in range(seeds):
        series = seasonal_series(seed, -(-total_hours // DAY), noise=noise).iloc[:total_hours]
        rows: dict[str, list[float]] = {
            k: [] for k in ("model_smape", "model_mase", "naive_smape", "naive_mase", "coverage")
        }
        methods: set[str] = set()
        for origin in range(origins):
            cut = days * DAY + origin * DAY
            history, actual = series.iloc[:cut], series.iloc[cut : cut + horizon].to_numpy()
            fc = fit_forecast(history, horizon, level=level)
            fits += 1
            methods.add(fc.method)
            naive = seasonal_naive(history, horizon, season)
            rows["model_smape"].append(smape(actual, fc.mean))
            rows["naive_smape"].append(smape(actual, naive))
            rows["model_mase"].append(mase(actual, fc.mean, history, season))
            rows["naive_mase"].append(mase(actual, naive, history, season))
            inside = (actual >= fc.lower) & (actual <= fc.upper)
            rows["coverage"].append(float(inside.mean()))
        result = {k: round(float(np.mean(v)), 4) for k, v in rows.items()}
        result["model_wins"] = bool(
            result["model_mase"] < result["naive_mase"]
            and result["model_smape"] < result["naive_smape"]
        )
        per_seed.append({"seed": seed, "methods": sorted(methods), **result})
    elapsed = time.perf_counter() - started
    keys = ("model_smape", "model_mase", "naive_smape", "naive_mase", "coverage")
    mean = {k: round(float(np.mean([row[k] for row in per_seed])), 4) for k in keys}
    return {
        "config": {
            "seeds": seeds,
            "days": days,
            "horizon": horizon,
            "origins": origins,
            "level": level,
            "noise": noise,
            "baseline": f"seasonal_naive(season={season})",
            "mase_season": season,
        },
        "per_seed": per_seed,
        "mean": mean,
        "mase_ratio": round(mean["model_mase"] / mean["naive_mase"], 4),
        "seeds_won": sum(row["model_wins"] for row in per_seed),
        "model_wins": bool(
            mean["model_mase"] < mean["naive_mase"] and mean["model_smape"] < mean["naive_smape"]
        ),
        "fits": fits,
        "fits_per_second": round(fits / elapsed, 2) if elapsed > 0 else None,
    }


def measure_speed(series: int = 100, days: int = 28, horizon: int = 24) -> dict[str, Any]:
    """Series per second of ``fit_forecast`` and ``detect_anomalies`` on ``days`` of hourly data.

    Both wall-clock and CPU-time rates: on a shared machine the CPU-time rate (per core) is the
    one to compare between runs.
    """
    for name, value in (("series", series), ("days", days), ("horizon", horizon)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AnalyticsInputError(f"{name} must be a positive integer, got {value!r}")
    inputs = [seasonal_series(seed, days) for seed in range(series)]
    result: dict[str, Any] = {"series": series, "days": days, "horizon": horizon}
    jobs: dict[str, Callable[[pd.Series], object]] = {
        "fit_forecast": lambda s: fit_forecast(s, horizon),
        "detect_anomalies": detect_anomalies,
    }
    for name, job in jobs.items():
        wall, cpu = time.perf_counter(), time.process_time()
        for one in inputs:
            job(one)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        result[name] = {
            "series_per_second_wall": round(series / wall, 1) if wall > 0 else None,
            "series_per_second_cpu": round(series / cpu, 1) if cpu > 0 else None,
        }
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="novaquota projections backtest",
        description="Forecast accuracy (sMAPE, MASE) against the seasonal-naive baseline.",
    )
    parser.add_argument("--seeds", type=int, default=5, help="synthetic series (default 5)")
    parser.add_argument("--days", type=int, default=28, help="days of history (default 28)")
    parser.add_argument("--horizon", type=int, default=24, help="hours to forecast (default 24)")
    parser.add_argument("--origins", type=int, default=3, help="forecast origins per seed")
    parser.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--noise", type=float, default=0.08, help="noise std (default 0.08)")
    parser.add_argument(
        "--speed",
        type=int,
        metavar="N",
        help="also time fit_forecast and detect_anomalies on N series of --days days",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.add_argument(
        "--require-win",
        action="store_true",
        help="exit with status 1 if the model does not beat the baseline",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Run the backtest and print its JSON report; status 2 on bad arguments."""
    args = _parser().parse_args(list(argv))
    try:
        report = run_backtest(
            args.seeds,
            args.days,
            args.horizon,
            origins=args.origins,
            level=args.level,
            noise=args.noise,
        )
        if args.speed is not None:
            report["speed"] = measure_speed(args.speed, args.days, args.horizon)
    except AnalyticsInputError as exc:
        print(f"novaquota projections backtest: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        from novaquota.streams.settings import ensure_dir  # the CLI only: the package stays pure

        ensure_dir(args.out.parent)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 1 if args.require_win and not report["model_wins"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
