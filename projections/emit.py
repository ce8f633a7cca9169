"""What the projection workers emit: cost alerts, ``budget_exceeded`` violations, forecast and
anomaly alerts. Pure functions of the state; every output has a deterministic id (uuid5 of what it
is about), so a rebuild derives the same ids and the worker's emitted ledger drops repeats.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from types import ModuleType
from typing import Any, Final

import pandas as pd

from novaquota.projections.cost import Catalogue, crossing_time, entity_cost, month_bounds
from novaquota.projections.folds import ProjectionState
from novaquota.projections.views import (
    CONSUMED,
    _analytics_module,
    _usage_now,
    format_us,
    hourly_series,
)
from novaquota.schemas.codec import encode
from novaquota.schemas.common import us_to_datetime
from novaquota.schemas.outputs import QuotaAlert, QuotaViolation, QuotaViolationResolved

__all__ = [
    "NAMESPACE",
    "SOURCE",
    "Emission",
    "ForecastJob",
    "budget_outputs",
    "forecast_alerts",
    "forecast_jobs",
    "forecast_outputs",
    "output_id",
]

#: uuid5 namespace of every id the projection workers emit
NAMESPACE: Final = uuid.UUID("6f1b3c52-9a0e-4f43-8d5e-2b7c1f0a9e11")
SOURCE: Final = "novaquota/projections"
log = logging.getLogger("novaquota.projections")
_US: Final = 1_000_000


def output_id(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(str(p) for p in parts)))


@dataclass(frozen=True)
class Emission:
    """One output record: topic role (``alerts`` / ``violations``), key, id and bytes."""

    role: str
    key: str
    id: str
    time_us: int
    value: bytes


def _dec(x: float, places: int = 6) -> Decimal:
    return Decimal(str(round(x, places)))


def _pct(value: float, limit: float) -> float | None:
    """Percent of ``limit``; None for a zero limit (contract section 5: null, never infinite)."""
    return value / limit * 100.0 if limit else None


def _alert(
    tenant: str,
    level: str,
    entity: str,
    resource: str,
    kind: str,
    alert_id: str,
    time_us: int,
    *,
    threshold: float | None,
    utilization: float | None,
    severity: str,
    message: str,
) -> Emission:
    data = QuotaAlert(
        alert_id=alert_id,
        tenant_id=tenant,
        level=level,
        entity_id=entity,
        resource_type=resource,
        kind=kind,
        threshold=_dec(threshold, 3) if threshold is not None else None,
        utilization=_dec(utilization, 3) if utilization is not None else None,
        severity=severity,
        message=message,
        detected_at=us_to_datetime(time_us),
    )
    value = encode(QuotaAlert.TYPE, data, source=SOURCE, id=alert_id, time_us=time_us)
    return Emission("alerts", tenant, alert_id, time_us, value)


def _ceil4(x: float) -> Decimal:
    return Decimal(repr(x)).quantize(Decimal("0.0001"), rounding=ROUND_CEILING)


def _severity(threshold: float) -> str:
    return "critical" if threshold >= 100 else "warning" if threshold >= 90 else "info"


def _budget_month(
    state: ProjectionState, catalogue: Catalogue, at_us: int, month_start: int
) -> list[Emission]:
    out: list[Emission] = []
    m0, m1 = month_bounds(month_start)
    until = min(at_us, m1)
    month = format_us(m0)[:7]
    for (tenant, level, entity), budget in sorted(state.budgets.items()):
        limit = float(budget.monthly_usd)
        summary = entity_cost(state, (tenant, level, entity), catalogue, m0, max(m0 + 1, until))
        # A zero budget has no thresholds (each would be "reached" at the month's start with no
        # cost at all); its budget_exceeded violation, at the first cost, says it all.
        for thr in budget.thresholds if limit else ():
            amount = limit * float(thr) / 100.0
            t = crossing_time(summary, amount)
            if t is None or t > until:
                continue
            aid = output_id("cost", tenant, level, entity, month, thr)
            out.append(
                _alert(
                    tenant, level, entity, "cost", "cost", aid, t,
                    threshold=float(thr),
                    utilization=float(thr),
                    severity=_severity(float(thr)),
                    message=(
                        f"cost of {level} {entity} reached {float(thr):g} % of its "
                        f"{limit:.2f} {catalogue.currency} budget for {month}"
                    ),
                )
            )  # fmt: skip
        t = crossing_time(summary, limit, strict=True) if limit >= 0 else None
        if t is None or t > until:
            continue
        vid = output_id("budget_exceeded", tenant, level, entity, month)
        used = summary.per_minute[: (t - m0) // 60_000_000 + 1].sum()
        fields: dict[str, Any] = {
            "violation_id": vid,
            "tenant_id": tenant,
            "level": level,
            "entity_id": entity,
            "resource_type": "cost",
            "kind": "budget_exceeded",
            "limit_type": "soft",
            "limit": _dec(limit, 2),
            "burst_limit": None,
            # cost at the end of the minute it passed the budget, never shown as equal to it
            "usage": max(_ceil4(float(used)), _ceil4(limit) + Decimal("0.0001")),
            "detected_at": us_to_datetime(t),
            "cause_event_id": f"cost-accrual:{month}",
            "enforcement_action": "notify",
            "severity": "critical",
            "window_start": us_to_datetime(m0),
        }
        opened = encode(
            QuotaViolation.TYPE, QuotaViolation(**fields), source=SOURCE, id=vid, time_us=t
        )
        out.append(Emission("violations", tenant, vid, t, opened))
        if at_us >= m1:  # the month is over: the episode ends with it
            rid = output_id("budget_exceeded", "resolved", tenant, level, entity, month)
            resolved = QuotaViolationResolved(
                **fields, resolved_at=us_to_datetime(m1), resolved_cause_event_id=None
            )
            value = encode(QuotaViolationResolved.TYPE, resolved, source=SOURCE, id=rid, time_us=m1)
            out.append(Emission("violations", tenant, rid, m1, value))
    return out


def budget_outputs(state: ProjectionState, catalogue: Catalogue, at_us: int) -> list[Emission]:
    """Threshold alerts and ``budget_exceeded`` episodes for the month of ``at_us`` and the
    month before it (which closes its episodes)."""
    if not state.budgets or at_us <= 0:
        return []
    m0, _ = month_bounds(at_us)
    previous, _ = month_bounds(m0 - 1)
    return _budget_month(state, catalogue, at_us, previous) + _budget_month(
        state, catalogue, at_us, m0
    )


@dataclass(frozen=True)
class ForecastJob:
    """One quota's hourly usage, taken from the state so that the math can run elsewhere."""

    key: tuple[str, str, str, str]
    limit: float
    series: pd.Series
    end_us: int


def forecast_jobs(
    state: ProjectionState, at_us: int, *, history_days: int = 14, max_entities: int = 20
) -> list[ForecastJob]:
    """Tenant-level quotas at or above half their limit (the busiest ``max_entities``), with
    ``history_days`` of hourly usage up to the last complete hour."""
    if _analytics_module("forecast") is None and _analytics_module("anomaly") is None:
        return []
    hour = 3600 * _US
    end = at_us // hour * hour
    start = end - history_days * 24 * hour
    candidates: list[tuple[float, tuple[str, str, str, str], float]] = []
    for key in state.quotas:
        if key[1] != "tenant" or key[3] in CONSUMED:
            continue
        quota = state.quota_at(key, at_us)
        if quota is None or not quota.limit:
            continue
        limit = quota.limit / 1e6
        util = _usage_now(state, key) / limit
        if util >= 0.5:
            candidates.append((-util, key, limit))
    jobs = []
    for _, key, limit in sorted(candidates)[:max_entities]:
        series = hourly_series(state, key, start, end)
        if len(series) >= 3:
            jobs.append(ForecastJob(key, limit, series, end))
    return jobs


def forecast_alerts(jobs: list[ForecastJob], *, horizon_hours: int) -> list[Emission]:
    """``forecast`` alerts (exhaustion predicted within the horizon; at most one per entity,
    resource and day) and ``anomaly`` alerts for the last complete hour. Touches no state, so
    the worker runs it in a thread."""
    forecast = _analytics_module("forecast")
    anomaly = _analytics_module("anomaly")
    out: list[Emission] = []
    for job in jobs:
        try:
            out.extend(
                _entity_alerts(
                    forecast, anomaly, job.key, job.limit, job.series, job.end_us, horizon_hours
                )
            )
        except Exception:  # analytics failures must not stop the worker
            log.exception("forecast/anomaly of %s failed", "/".join(job.key))
    return out


def forecast_outputs(
    state: ProjectionState,
    at_us: int,
    *,
    horizon_hours: int,
    history_days: int = 14,
    max_entities: int = 20,
) -> list[Emission]:
    """``forecast_alerts`` of ``forecast_jobs`` in one call."""
    jobs = forecast_jobs(state, at_us, history_days=history_days, max_entities=max_entities)
    return forecast_alerts(jobs, horizon_hours=horizon_hours)


def _entity_alerts(
    forecast: ModuleType | None,
    anomaly: ModuleType | None,
    key: tuple[str, str, str, str],
    limit: float,
    series: pd.Series,
    end: int,
    horizon_hours: int,
) -> list[Emission]:
    tenant, level, entity, rt = key
    day = format_us(end)[:10]
    out: list[Emission] = []
    if forecast is not None and limit > 0:  # a zero limit has nothing left to exhaust
        fc = forecast.fit_forecast(series, horizon_hours, level=0.95)
        ex = forecast.time_to_exhaustion(fc, limit)
        if ex is not None:
            aid = output_id("forecast", tenant, level, entity, rt, day)
            at = int(ex.at.value // 1000)
            out.append(
                _alert(
                    tenant, level, entity, rt, "forecast", aid, end,
                    threshold=100.0,
                    utilization=_pct(float(series.iloc[-1]), limit),
                    severity="warning",
                    message=(
                        f"{rt} of {level} {entity} is forecast to reach its limit "
                        f"{limit:g} at {format_us(at)} ({fc.method})"
                    ),
                )
            )  # fmt: skip
    if anomaly is not None:
        last = series.index[-1]
        for a in anomaly.detect_anomalies(series):
            if a.time != last:
                continue
            aid = output_id("anomaly", tenant, level, entity, rt, format_us(end))
            out.append(
                _alert(
                    tenant, level, entity, rt, "anomaly", aid, end,
                    threshold=None,
                    utilization=_pct(a.value, limit),
                    severity="warning",
                    message=(
                        f"{rt} of {level} {entity} was {a.value:g} in the hour to "
                        f"{format_us(end)}, expected {a.expected:g} (score {a.score:.1f})"
                    ),
                )
            )  # fmt: skip
    return out
