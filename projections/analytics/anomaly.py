"""Anomalies: hours whose usage is far from its seasonal expectation, by a robust z-score.

Non-negative usage is first put on a log scale (see ``_LOG_OFFSET``), where its noise is about
the same in busy and quiet hours. The series is then decomposed into trend + seasonality +
remainder (STL with daily, or MSTL with daily and weekly seasonality: the decomposition the
forecasts use); the most extreme hours are set aside and the series refitted without them.
The remainder's median and MAD give a robust location and scale that a few outliers cannot
inflate; an hour is anomalous when ``|remainder - median| / scale >= threshold``. The scale
is at least 0.02 on that scale (about 4 % of the median level), so a nearly noise-free series
(usage that holds still for days, then steps) does not turn every small step into an anomaly.

Hours that were gaps (filled by interpolation) are never reported. A series needs two days of
history before it has a daily pattern to compare against; shorter ones report nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from .exceptions import AnalyticsInputError
from .series import DAY, decompose, prepare_hourly

__all__ = ["DEFAULT_THRESHOLD", "MIN_RELATIVE_SCALE", "Anomaly", "detect_anomalies"]

#: Robust z-score at or above which an hour is anomalous. Gaussian noise passes 5 once in
#: ~1.7 million hours; residuals of real usage have heavier tails, and the backtest generator's
#: (autocorrelated noise, seasonal fit error) measure well under the 1 %-of-series-days budget.
DEFAULT_THRESHOLD: Final = 5.0
#: Floor of the scale: on the log scale (or, for series with negative values, relative to the
#: median absolute level). Allocation usage is often flat for days and then steps as a VM comes
#: or goes; a step of about 10 % of the level is business as usual, not an anomaly (it scores
#: under 3 with this floor), while one of 25 % or more still scores above 5.
MIN_RELATIVE_SCALE: Final = 0.02
#: Usage is decomposed as log(usage + offset), offset = this times the median level: noise on
#: usage grows with the level (a busy hour wobbles more in absolute terms than a quiet one); on
#: this scale it grows much less, so one scale fits every hour of the day. A plain log (small
#: offset) over-corrects: dips towards zero explode and, at 25 % noise, 1.6 % of series-days
#: raised a false alarm; with offset = median level, 0.14 % (measured, 100 series x 28 days).
_LOG_OFFSET: Final = 1.0
#: Fits per series at most, each after setting the most extreme hours aside.
_MAX_PASSES: Final = 5
#: Hours set aside in one pass score at least this share of that pass's highest score.
_SET_ASIDE_SHARE: Final = 0.7
#: MAD of a normal distribution times this is its standard deviation.
_MAD_TO_SIGMA: Final = 1.4826


@dataclass(frozen=True)
class Anomaly:
    """One anomalous hour: its ``value``, the ``expected`` value and the signed robust z ``score``.

    A positive score is a spike above the expectation, a negative one a drop below it.
    """

    time: pd.Timestamp
    value: float
    expected: float
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "value": self.value,
            "expected": self.expected,
            "score": self.score,
        }


def _robust_z(resid: np.ndarray, observed: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    centre = float(np.median(resid[observed]))
    scale = max(float(np.median(np.abs(resid[observed] - centre))) * _MAD_TO_SIGMA, floor)
    if scale <= 0:  # e.g. a zero series with one non-zero blip: nothing to measure against
        scale = float(np.finfo(float).eps) * max(1.0, float(np.max(np.abs(resid))))
    return (resid - centre) / scale, centre


def _scores(
    work: np.ndarray, observed: np.ndarray, threshold: float, floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Robust z-scores of ``work`` around its seasonal fit, and that fit (plus the median offset).

    An outlier must not bend the fit it is measured against: a spike leaks into the weekly
    pattern and shows up as phantom dips at the same hour in the other weeks. So, as in a
    generalised ESD test, the most extreme hours (at or above the threshold and within
    ``_SET_ASIDE_SHARE`` of the highest score, which keeps the phantoms of a big spike in) are set
    aside, replaced by interpolating their neighbouring hours, and the series is fitted again,
    until no new hour reaches the threshold (at most ``_MAX_PASSES`` fits). The replacement comes
    from the neighbours, not from a fit, because a fit already carries the spike's leak; and
    statsmodels' robust STL does not help: with three or four weekly cycles, the phantoms get
    the low robustness weights and the spike is fitted as seasonality.
    """
    aside = np.zeros(len(work), dtype=bool)
    clean = work
    for _ in range(_MAX_PASSES):
        dec = decompose(clean)
        fitted = dec.trend + dec.seasonal.sum(axis=1)
        scores, centre = _robust_z(work - fitted, observed, floor)
        magnitude = np.where(aside, 0.0, np.abs(scores))
        new = (magnitude >= threshold) & (magnitude >= _SET_ASIDE_SHARE * magnitude.max())
        if not new.any():
            break
        aside |= new
        positions = np.arange(len(work))
        clean = work.copy()
        clean[aside] = np.interp(positions[aside], positions[~aside], work[~aside])
    return scores, fitted + centre


def detect_anomalies(series: pd.Series, *, threshold: float = DEFAULT_THRESHOLD) -> list[Anomaly]:
    """The anomalous hours of an hourly ``series``, in time order (see module doc)."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold <= 0:
        raise AnalyticsInputError(f"threshold must be a positive number, got {threshold!r}")
    hourly = prepare_hourly(series)
    y = hourly.values
    if len(y) < 2 * DAY or np.ptp(y) == 0:
        return []
    observed = hourly.observed
    typical = float(np.median(np.abs(y[observed])))
    offset = _LOG_OFFSET * typical
    logged = bool((y >= 0).all() and offset > 0)
    work = np.log(y + offset) if logged else y
    scores, smooth = _scores(
        work, observed, threshold, MIN_RELATIVE_SCALE * (1.0 if logged else typical)
    )
    flagged = np.flatnonzero(observed & (np.abs(scores) >= threshold))
    expected = smooth
    if logged:
        expected = np.exp(expected) - offset
    return [
        Anomaly(
            time=hourly.index[i],
            value=float(y[i]),
            expected=float(expected[i]),
            score=float(scores[i]),
        )
        for i in flagged
    ]
