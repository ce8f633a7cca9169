"""Pure analytics for the projections: forecasts, anomalies, recommendations, backtests.

No Kafka, no Faust, no clock: every function maps its arguments to a result, the same one every
time. The method and its accuracy are described in ``docs/forecasting.md``.
"""

from __future__ import annotations

from .anomaly import Anomaly, detect_anomalies
from .exceptions import AnalyticsInputError
from .forecast import (
    Exhaustion,
    Forecast,
    fit_forecast,
    mase,
    seasonal_naive,
    smape,
    time_to_exhaustion,
)
from .recommend import QuotaRecommendation, TierRecommendation, recommend_tier, right_size

__all__ = [
    "AnalyticsInputError",
    "Anomaly",
    "Exhaustion",
    "Forecast",
    "QuotaRecommendation",
    "TierRecommendation",
    "detect_anomalies",
    "fit_forecast",
    "mase",
    "recommend_tier",
    "right_size",
    "seasonal_naive",
    "smape",
    "time_to_exhaustion",
]
