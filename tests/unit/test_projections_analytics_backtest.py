"""The backtest and its synthetic series: the model must beat the seasonal-naive baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from novaquota.projections.analytics import AnalyticsInputError
from novaquota.projections.analytics.backtest import main, run_backtest, seasonal_series


def test_seasonal_series_is_realistic_and_reproducible() -> None:
    series = seasonal_series(3, 28)
    assert len(series) == 28 * 24 and series.index.freqstr == "h"
    assert str(series.index.tz) == "UTC" and (series >= 0).all()
    assert series.equals(seasonal_series(3, 28))
    assert not series.equals(seasonal_series(4, 28))
    clean = seasonal_series(3, 28, noise=0.0, trend=0.0)
    by_hour = clean.groupby(clean.index.hour).mean()
    by_weekday = clean.groupby(clean.index.day_of_week).mean()
    assert by_hour.max() / by_hour.min() > 1.1  # daily seasonality
    assert by_weekday.iloc[5:].mean() < 0.95 * by_weekday.iloc[:5].mean()  # quieter weekends


def test_model_beats_seasonal_naive_over_five_seeds() -> None:
    report = run_backtest(seeds=5, days=28, horizon=24)
    assert report["model_wins"]
    assert report["mean"]["model_mase"] < report["mean"]["naive_mase"]
    assert report["mean"]["model_smape"] < report["mean"]["naive_smape"]
    assert report["seeds_won"] >= 4
    assert len(report["per_seed"]) == 5
    assert all(row["methods"] for row in report["per_seed"])


def test_model_beats_seasonal_naive_over_a_week_ahead() -> None:
    report = run_backtest(seeds=5, days=21, horizon=168, origins=1)
    assert report["model_wins"]


def test_report_is_deterministic_apart_from_speed() -> None:
    a, b = run_backtest(seeds=2, days=15), run_backtest(seeds=2, days=15)
    a.pop("fits_per_second")
    b.pop("fits_per_second")
    assert a == b


def test_cli_prints_json_and_writes_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "backtest.json"
    args = ["--seeds", "5", "--days", "15", "--horizon", "12", "--origins", "1"]
    assert main([*args, "--out", str(out), "--require-win"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["config"]["horizon"] == 12
    assert np.isfinite(printed["mean"]["model_mase"])


def test_cli_speed_report(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--seeds", "1", "--days", "3", "--origins", "1", "--speed", "2"]
    assert main(args) == 0
    speed = json.loads(capsys.readouterr().out)["speed"]
    assert speed["series"] == 2 and speed["days"] == 3
    assert speed["fit_forecast"]["series_per_second_cpu"] > 0
    assert speed["detect_anomalies"]["series_per_second_wall"] > 0


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "0"]) == 2
    assert "seeds must be a positive integer" in capsys.readouterr().err
    assert main(["--seeds", "1", "--days", "3", "--speed", "0"]) == 2
    assert "series must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("days", [0, -3, 2.5])
def test_seasonal_series_rejects_bad_days(days: object) -> None:
    with pytest.raises(AnalyticsInputError, match="days"):
        seasonal_series(1, days)  # type: ignore[arg-type]
