"""Read models served over HTTP: pure functions of the projection state (pandas/numpy).

Every view is computed from the folded minute series at query time, so a view of a period is
consistent with itself, and ``as_of`` is the event time the state reflects (never the wall clock).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, TypeVar

import numpy as np
import pandas as pd

from novaquota.projections.cost import Catalogue, entity_cost, minute_series, month_bounds
from novaquota.projections.exceptions import QueryError
from novaquota.projections.folds import MINUTE_US, EntityKey, ProjectionState, SeriesKey
from novaquota.schemas.common import (
    INTEGER_RESOURCES,
    LEVELS,
    RESOURCE_TYPES,
    SYSTEM_TENANT,
    parse_time_us,
    us_to_datetime,
)
from novaquota.schemas.templates import BUILTIN_TEMPLATES

__all__ = [
    "STEPS",
    "Period",
    "analytics",
    "as_of",
    "entity_key",
    "format_us",
    "history",
    "overview",
    "parse_time",
    "recommendations",
    "template_recommendation",
]

STEPS: Final[dict[str, int]] = {"minute": 60, "hour": 3600, "day": 86400}
_DEFAULT_SPAN: Final[dict[str, int]] = {"minute": 6 * 3600, "hour": 7 * 86400, "day": 90 * 86400}
MAX_POINTS: Final = 10_080
#: Views cover 1970 to 2200: the time series start at the epoch, and pandas' timestamps end in
#: 2262 (a forecast reaches past ``end``).
PERIOD_MIN_US: Final = 0
PERIOD_MAX_US: Final = 7_258_118_400_000_000
CONSUMED: Final = frozenset({"api_requests"})
UNITS: Final[dict[str, str]] = {
    "cpu": "cores",
    "memory": "MiB",
    "gpu": "units",
    "storage": "GiB",
    "bandwidth_in": "Mbit/s",
    "bandwidth_out": "Mbit/s",
    "api_requests": "requests",
}
_US: Final = 1_000_000
_T = TypeVar("_T")
log = logging.getLogger("novaquota.projections")


def format_us(time_us: int) -> str:
    return us_to_datetime(time_us).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None, name: str) -> int | None:
    """A query parameter's time (RFC 3339 with an offset, or epoch seconds) in microseconds;
    None when absent; a ``QueryError`` (400) naming the parameter when it is not a time."""
    if value is None or value == "":
        return None
    try:
        return parse_time_us(value, epoch_seconds=True)
    except ValueError as exc:
        detail = str(exc).splitlines()[0]
        raise QueryError(
            "invalid_time", f"{name}: not RFC 3339 with an offset or epoch seconds ({detail})"
        ) from None


def entity_key(entity_id: str, level: str | None, tenant_id: str | None) -> EntityKey:
    """(tenant, level, entity) from query parameters; 400 on a bad combination."""
    lvl = level or ("system" if entity_id == SYSTEM_TENANT else "tenant")
    if lvl not in LEVELS:
        raise QueryError("invalid_level", f"level: one of {', '.join(LEVELS)}")
    if lvl == "system":
        return (SYSTEM_TENANT, "system", SYSTEM_TENANT)
    if lvl == "tenant":
        if tenant_id and tenant_id != entity_id:
            raise QueryError("invalid_entity", "tenant_id must equal entity_id at level tenant")
        return (entity_id, "tenant", entity_id)
    if not tenant_id:
        raise QueryError("missing_tenant", f"tenant_id is required at level {lvl}")
    return (tenant_id, lvl, entity_id)


@dataclass(frozen=True)
class Period:
    start_us: int
    end_us: int
    step: str

    @property
    def step_us(self) -> int:
        return STEPS[self.step] * _US

    @property
    def points(self) -> int:
        return (self.end_us - self.start_us) // self.step_us

    @classmethod
    def of(
        cls, state: ProjectionState, start: str | None, end: str | None, step: str | None
    ) -> Period:
        step = step or "hour"
        if step not in STEPS:
            raise QueryError("invalid_step", f"step: one of {', '.join(STEPS)}")
        s_us = STEPS[step] * _US
        end_us = parse_time(end, "end")
        if end_us is None:
            end_us = (state.watermark // MINUTE_US + 1) * MINUTE_US
        end_us = -(-end_us // s_us) * s_us
        start_us = parse_time(start, "start")
        if start_us is None:
            start_us = end_us - _DEFAULT_SPAN[step] * _US
        start_us = start_us // s_us * s_us
        if start_us >= end_us:
            raise QueryError("invalid_period", "start must be before end")
        if start_us < PERIOD_MIN_US or end_us > PERIOD_MAX_US:
            raise QueryError("invalid_period", "a period lies within 1970-01-01 and 2200-01-01")
        period = cls(start_us, end_us, step)
        if period.points > MAX_POINTS:
            raise QueryError(
                "too_many_points",
                f"{period.points} points of {step}; at most {MAX_POINTS}: use a coarser step",
            )
        return period


def _num(x: float | None, places: int = 6) -> float | None:
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), places)


def _resources_of(state: ProjectionState, entity: EntityKey) -> list[str]:
    have = state.resource_types(entity)
    return [rt for rt in RESOURCE_TYPES if rt in have and rt != "cost"]


def _series_points(
    state: ProjectionState, key: SeriesKey, period: Period
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    ms = minute_series(state.series.get(key), period.start_us, period.end_us)
    per = STEPS[period.step] // 60
    n = period.points
    consumed = key[3] in CONSUMED
    if consumed:
        used = ms.consumed.reshape(n, per).sum(axis=1)
        peak = ms.consumed.reshape(n, per).max(axis=1)
        minute_values = ms.consumed
    else:
        used = ms.integral.reshape(n, per).sum(axis=1) / (per * 60.0)
        peak = np.maximum(ms.level_start, ms.level_end).reshape(n, per).max(axis=1)
        minute_values = ms.integral / 60.0
    points: list[dict[str, Any]] = []
    util_sum = 0.0
    limit_sum = 0.0
    with_limit = 0
    for i in range(n):
        t = period.start_us + i * period.step_us
        quota = state.quota_at(key, t)
        limit = quota.limit / 1e6 if quota is not None and quota.limit is not None else None
        window_ok = not consumed or (quota is not None and quota.window == period.step)
        util = used[i] / limit * 100.0 if limit and window_ok else None
        if util is not None and limit:
            util_sum += used[i]
            limit_sum += limit
            with_limit += 1
        points.append(
            {
                "time": format_us(t),
                "used": _num(used[i]),
                "peak": _num(peak[i]),
                "limit": _num(limit),
                "utilization": _num(util, 3),
                "peak_utilization": _num(peak[i] / limit * 100.0, 3)
                if limit and window_ok
                else None,
            }
        )
    watermark_minutes = max(0, (state.watermark - period.start_us) // MINUTE_US + 1)
    observed = minute_values[: min(len(minute_values), watermark_minutes)]
    summary = {
        "mean": _num(float(used.mean()) if n else None),
        "peak": _num(float(peak.max()) if n else None),
        "p95": _num(float(np.percentile(observed, 95)) if observed.size else None),
        "total": _num(float(ms.consumed.sum())) if consumed else None,
        # efficiency: time-weighted used ÷ limit over the steps that have a limit
        "efficiency": _num(util_sum / limit_sum, 4) if limit_sum else None,
        "steps_with_limit": with_limit,
    }
    return points, summary


def _as_of(state: ProjectionState, positions: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "event_time": format_us(state.watermark) if state.watermark else None,
        "offsets": dict(positions or {}),
    }


as_of = _as_of
"""What a view reflects: the watermark's event time and the input offsets."""


def history(
    state: ProjectionState,
    entity: EntityKey,
    *,
    resource_type: str | None,
    start: str | None,
    end: str | None,
    step: str | None,
    positions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Usage time series of one entity (one or all resources) at a resolution."""
    if resource_type is not None and resource_type not in RESOURCE_TYPES:
        raise QueryError("invalid_resource_type", f"resource_type: unknown {resource_type!r}")
    period = Period.of(state, start, end, step)
    rts = [resource_type] if resource_type else _resources_of(state, entity)
    series = []
    for rt in rts:
        if rt == "cost":
            raise QueryError("invalid_resource_type", "cost history: see the analytics view")
        points, summary = _series_points(state, (*entity, rt), period)
        series.append(
            {"resource_type": rt, "unit": UNITS.get(rt, "count"), "points": points,
             "summary": summary}
        )  # fmt: skip
    return {
        "tenant_id": entity[0],
        "level": entity[1],
        "entity_id": entity[2],
        "start": format_us(period.start_us),
        "end": format_us(period.end_us),
        "step": period.step,
        "series": series,
        "as_of": _as_of(state, positions),
    }


# --- cost, status, recommendations ---------------------------------------------------------------


def cost_view(
    state: ProjectionState, entity: EntityKey, catalogue: Catalogue, at_us: int | None = None
) -> dict[str, Any]:
    """Month to date and projected for the month of ``at_us`` (default: the watermark)."""
    at = state.watermark if at_us is None else at_us
    m0, m1 = month_bounds(at)
    summary = entity_cost(state, entity, catalogue, m0, max(m0 + 1, at))
    remaining_h = (m1 - at) / 3.6e9
    projected = summary.total + summary.hourly_rate * remaining_h
    budget = state.budgets.get(entity)
    out: dict[str, Any] = {
        "currency": catalogue.currency,
        "month": format_us(m0)[:7],
        "month_to_date": _num(summary.total, 4),
        "projected_month": _num(projected, 4),
        "hourly_rate": _num(summary.hourly_rate, 6),
        "by_resource": {rt: _num(v, 4) for rt, v in sorted(summary.by_resource.items())},
        "budget": None,
    }
    if budget is not None:
        limit = float(budget.monthly_usd)
        out["budget"] = {
            "monthly_usd": _num(limit, 2),
            "thresholds": [float(t) for t in budget.thresholds],
            "utilization": _num(summary.total / limit * 100.0, 3) if limit else None,
            "projected_utilization": _num(projected / limit * 100.0, 3) if limit else None,
        }
    return out


def _usage_now(state: ProjectionState, key: SeriesKey) -> float:
    minutes = state.series.get(key)
    if not minutes:
        return 0.0
    if key[3] in CONSUMED:
        quota = state.quota_at(key, state.watermark)
        window = quota.window if quota is not None else None
        span = {"minute": 60, "hour": 3600, "day": 86400}.get(window or "", 0) * _US
        if window == "month":
            w0, _ = month_bounds(state.watermark)
        elif span:
            w0 = state.watermark // span * span
        else:
            return 0.0
        m0 = w0 // MINUTE_US
        return sum(row[2] for m, row in minutes.items() if m >= m0) / 1e6
    wm = state.watermark // MINUTE_US
    return sum(row[0] for m, row in minutes.items() if m <= wm) / 1e6


def _utilization(used: float, limit: float) -> float | None:
    """Percent of the limit; None for a zero limit, which has no percentage (contract
    section 5: null in every view) instead of an infinity that JSON cannot carry."""
    return used / limit * 100.0 if limit else None


def _status(util: float | None, used: float) -> str:
    if util is None:  # a zero limit: any usage is over it
        return "exceeded" if used > 0 else "ok"
    if util > 100.0:
        return "exceeded"
    if util >= 95.0:
        return "critical"
    if util >= 80.0:
        return "warning"
    return "ok"


def overview(
    state: ProjectionState,
    entity: EntityKey,
    catalogue: Catalogue,
    positions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    counts = {"ok": 0, "warning": 0, "critical": 0, "exceeded": 0}
    quotas = []
    utils: list[float] = []
    for key in sorted((*entity, rt) for rt in state.resource_types(entity)):
        if key not in state.quotas:
            continue
        quota = state.quota_at(key, state.watermark)
        if quota is None or quota.limit is None:
            continue
        used = _usage_now(state, key)
        limit = quota.limit / 1e6
        util = _utilization(used, limit)
        status = _status(util, used)
        counts[status] += 1
        if util is not None:
            utils.append(util)
        quotas.append(
            {"resource_type": key[3], "limit": _num(limit), "used": _num(used),
             "utilization": _num(util, 3), "status": status, "limit_type": quota.limit_type,
             "window": quota.window}
        )  # fmt: skip
    open_v = sorted(
        (
            v
            for v in state.open_violations.values()
            if (v.get("tenant_id"), v.get("level"), v.get("entity_id")) == entity
            or (entity[1] == "tenant" and v.get("tenant_id") == entity[0])
            or entity[1] == "system"
        ),
        key=lambda v: (str(v.get("detected_at")), str(v.get("violation_id"))),
    )
    cost = cost_view(state, entity, catalogue)
    return {
        "tenant_id": entity[0],
        "level": entity[1],
        "entity_id": entity[2],
        "counts_by_status": counts,
        "quotas": quotas,
        "overall_utilization": {
            "mean": _num(float(np.mean(utils)), 3) if utils else None,
            "max": _num(float(np.max(utils)), 3) if utils else None,
        },
        "cost_this_month": cost["month_to_date"],
        "projected_monthly_cost": cost["projected_month"],
        "currency": cost["currency"],
        "open_violations": {"count": len(open_v), "items": open_v[:100]},
        "as_of": _as_of(state, positions),
    }


def _guarded(what: str, fallback: Any, fn: Callable[..., _T], *args: Any) -> tuple[_T, str | None]:
    """Analytics math is optional for a view: a failure is reported in the body, not a 500."""
    try:
        return fn(*args), None
    except Exception as exc:
        log.exception("%s failed", what)
        return fallback, f"{what} failed: {type(exc).__name__}: {exc}"


def _analytics_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"novaquota.projections.analytics.{name}")
    except ImportError:
        return None


def hourly_series(state: ProjectionState, key: SeriesKey, start_us: int, end_us: int) -> pd.Series:
    """Hourly mean usage (consumption per hour for consumed resources), tz-aware UTC, freq h."""
    h = 3600 * _US
    s0, s1 = start_us // h * h, max(start_us // h * h + h, -(-end_us // h) * h)
    ms = minute_series(state.series.get(key), s0, s1)
    n = (s1 - s0) // h
    if key[3] in CONSUMED:
        values = ms.consumed.reshape(n, 60).sum(axis=1)
    else:
        values = ms.integral.reshape(n, 60).sum(axis=1) / 3600.0
    index = pd.date_range(pd.Timestamp(s0, unit="us", tz="UTC"), periods=n, freq="h")
    series = pd.Series(values, index=index, dtype="float64")
    minutes = state.series.get(key)
    if minutes:  # hours before the entity's first record are unknown, not zero usage
        first = pd.Timestamp(min(minutes) * 60 * _US // h * h, unit="us", tz="UTC")
        series[series.index < first] = np.nan
    return series


def _forecast(
    series: pd.Series, limit: float | None, horizon: int
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    mod = _analytics_module("forecast")
    if mod is None or len(series) < 3:
        return None, None
    fc = mod.fit_forecast(series, horizon, level=0.95)
    forecast = {
        "method": fc.method,
        "level": fc.level,
        "points": [
            {"time": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "mean": _num(m), "lower": _num(lo),
             "upper": _num(up)}
            for t, m, lo, up in zip(fc.times, fc.mean, fc.lower, fc.upper, strict=True)
        ],
    }  # fmt: skip
    exhaustion = None
    if limit:
        ex = mod.time_to_exhaustion(fc, limit)
        if ex is not None:
            exhaustion = {
                "at": ex.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "earliest": ex.earliest.strftime("%Y-%m-%dT%H:%M:%SZ")
                if ex.earliest is not None
                else None,
            }
    return forecast, exhaustion


def _anomalies(anomaly: ModuleType, series: pd.Series) -> list[dict[str, Any]]:
    return [
        {"time": a.time.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": _num(a.value),
         "expected": _num(a.expected), "score": _num(a.score, 3)}
        for a in anomaly.detect_anomalies(series)
    ]  # fmt: skip


def _trend(series: pd.Series) -> dict[str, Any] | None:
    if len(series) < 2:
        return None
    y = series.to_numpy()
    x = np.arange(len(y), dtype="float64")
    slope, _ = np.polyfit(x, y, 1)
    first, last = float(y[: max(1, len(y) // 4)].mean()), float(y[-max(1, len(y) // 4) :].mean())
    direction = "flat"
    if abs(slope) * len(y) > 0.05 * max(abs(first), abs(last), 1e-9):
        direction = "up" if slope > 0 else "down"
    return {
        "slope_per_day": _num(float(slope) * 24.0),
        "change_percent": _num((last - first) / first * 100.0, 3) if first else None,
        "direction": direction,
    }


def recommendations(
    state: ProjectionState, entity: EntityKey, catalogue: Catalogue, *, days: int = 30
) -> list[dict[str, Any]]:
    """Cost savings: idle or oversized resources and quotas far above their use."""
    out: list[dict[str, Any]] = []
    end = state.watermark
    start = end - days * 86400 * _US

    def now(rt: str) -> float:
        return _usage_now(state, (*entity, rt))

    fips, instances, lbs = now("floating_ips"), now("instances"), now("load_balancers")
    if fips > instances:
        idle = fips - instances
        out.append(
            {"kind": "idle_floating_ips", "resource_type": "floating_ips",
             "message": f"{idle:g} floating IPs more than instances: release unattached ones",
             "monthly_saving": _num(idle * catalogue.price("floating_ips") * 730.0, 2)}
        )  # fmt: skip
    if lbs > 0 and instances == 0:
        out.append(
            {"kind": "idle_load_balancers", "resource_type": "load_balancers",
             "message": f"{lbs:g} load balancers with no instances behind them",
             "monthly_saving": _num(lbs * catalogue.price("load_balancers") * 730.0, 2)}
        )  # fmt: skip
    recommend = _analytics_module("recommend")
    for key in sorted((*entity, rt) for rt in state.resource_types(entity)):
        if key not in state.quotas:
            continue
        quota = state.quota_at(key, end)
        if quota is None or quota.limit is None or key[3] in CONSUMED:
            continue
        limit = quota.limit / 1e6
        usage = hourly_series(state, key, start, end)
        if recommend is not None:
            rec = recommend.right_size(key[3], usage, limit)
            if rec is not None:
                out.append(
                    {"kind": "right_size_quota", "resource_type": rec.resource_type,
                     "current_limit": _num(rec.current_limit),
                     "recommended_limit": _num(rec.recommended_limit), "message": rec.reason}
                )  # fmt: skip
        elif limit and usage.max() < 0.5 * limit:
            suggested = max(float(usage.max()) * 1.25, 1.0 if key[3] in INTEGER_RESOURCES else 0)
            out.append(
                {"kind": "right_size_quota", "resource_type": key[3],
                 "current_limit": _num(limit), "recommended_limit": _num(np.ceil(suggested)),
                 "message": f"peak {usage.max():g} of {limit:g} over {days} days"}
            )  # fmt: skip
    return out


def analytics(
    state: ProjectionState,
    entity: EntityKey,
    catalogue: Catalogue,
    *,
    start: str | None,
    end: str | None,
    horizon_hours: int = 72,
    positions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Trends, forecasts with intervals, exhaustion, anomalies, efficiency, cost, advice."""
    period = Period.of(state, start, end or None, "hour")
    anomaly = _analytics_module("anomaly")
    resources: dict[str, Any] = {}
    for rt in _resources_of(state, entity):
        key = (*entity, rt)
        series = hourly_series(state, key, period.start_us, period.end_us)
        quota = state.quota_at(key, period.end_us)
        limit = quota.limit / 1e6 if quota is not None and quota.limit is not None else None
        window = quota.window if quota is not None else None
        errors: list[str] = []
        (forecast, exhaustion), err = _guarded(
            f"forecast of {rt}",
            (None, None),
            _forecast,
            series,
            None if rt in CONSUMED else limit,
            horizon_hours,
        )
        errors += [err] if err else []
        anomalies: list[dict[str, Any]] = []
        if anomaly is not None and len(series) >= 3:
            anomalies, err = _guarded(f"anomaly detection of {rt}", [], _anomalies, anomaly, series)
            errors += [err] if err else []
        eff = None
        if (limit and rt not in CONSUMED) or (limit and window == "hour"):
            eff = _num(float(series.mean()) / limit, 4)
        resources[rt] = {
            "unit": UNITS.get(rt, "count"),
            "limit": _num(limit),
            "mean": _num(float(series.mean())),
            "peak": _num(float(series.max())),
            "p95": _num(float(series.quantile(0.95))),
            "trend": _trend(series),
            "forecast": forecast,
            "time_to_exhaustion": exhaustion,
            "anomalies": anomalies,
            "efficiency": eff,
            "errors": errors,
        }
    effs = [r["efficiency"] for r in resources.values() if r["efficiency"] is not None]
    return {
        "tenant_id": entity[0],
        "level": entity[1],
        "entity_id": entity[2],
        "start": format_us(period.start_us),
        "end": format_us(period.end_us),
        "resources": resources,
        "efficiency": _num(float(np.mean(effs)), 4) if effs else None,
        "cost": cost_view(state, entity, catalogue),
        "recommendations": _guarded(
            "recommendations", [], recommendations, state, entity, catalogue
        )[0],
        "analytics_available": _analytics_module("forecast") is not None,
        "as_of": _as_of(state, positions),
    }


def _tier_fallback(peaks: Mapping[str, float]) -> dict[str, Any]:
    for name, spec in BUILTIN_TEMPLATES.items():
        limits: dict[str, float] = {q.resource_type: float(q.limit) for q in spec.quotas}
        if all(peaks.get(rt, 0.0) <= limits.get(rt, float("inf")) * 0.8 for rt in peaks):
            return {
                "tier": name,
                "monthly_cost": float(spec.monthly_cost),
                "reason": "smallest built-in tier with 20 % headroom over the peaks",
            }
    return {"tier": "enterprise", "monthly_cost": 999.99, "reason": "peaks exceed every tier"}


def template_recommendation(
    state: ProjectionState,
    entity: EntityKey,
    *,
    days: int = 30,
    positions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The built-in tier that fits the entity's peak usage over the last ``days``."""
    end = state.watermark
    start = end - days * 86400 * _US
    peaks: dict[str, float] = {}
    for rt in ("cpu", "memory", "storage", "instances", "gpu", "load_balancers"):
        minutes = state.series.get((*entity, rt))
        if not minutes:
            continue
        ms = minute_series(minutes, start, end + MINUTE_US)  # through the watermark minute
        peaks[rt] = float(np.maximum(ms.level_start, ms.level_end).max())
    current = None
    for rt in sorted(state.resource_types(entity)):
        key = (*entity, rt)
        if key in state.quotas:
            q = state.quota_at(key, end)
            if q is not None and q.template:
                current = q.template
    recommend = _analytics_module("recommend")
    rec = None
    if recommend is not None:
        rec, _ = _guarded("tier recommendation", None, recommend.recommend_tier, peaks)
    if rec is not None:
        body: dict[str, Any] = {
            "tier": rec.tier,
            "monthly_cost": _num(float(rec.monthly_cost), 2),
            "reason": rec.reason,
            "per_resource": rec.per_resource,
        }
    else:
        body = _tier_fallback(peaks)
    return {
        "tenant_id": entity[0],
        "level": entity[1],
        "entity_id": entity[2],
        "current_template": current,
        "peaks": {rt: _num(v) for rt, v in sorted(peaks.items())},
        "period_days": days,
        "recommendation": body,
        "as_of": _as_of(state, positions),
    }
