"""Pricing and cost accrual: pure functions over the folded minute series.

A held resource costs ``price per unit-hour x time held`` (time-weighted from the allocation
intervals); a consumed one (``api_requests``) costs ``price per unit x amount``. Prices come from
a catalogue: built-in defaults, or a JSON file (see docs/projections.md)::

    {"currency": "USD",
     "prices": {"cpu": {"per_hour": 0.0316},
                "memory": {"per_hour": 0.0042, "unit": "GiB"},
                "storage": {"per_month": 0.10},
                "api_requests": {"per_unit": 0.0000004}}}

A month for ``per_month`` prices is 730 hours (the average month), so that a GiB held for a whole
month of any length costs about the monthly price.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson

from novaquota.projections.exceptions import PricingError
from novaquota.projections.folds import MINUTE_US, EntityKey, ProjectionState
from novaquota.schemas.common import RESOURCE_TYPES

__all__ = [
    "DEFAULT_PRICES",
    "HOURS_PER_MONTH",
    "Catalogue",
    "CostSummary",
    "MinuteSeries",
    "crossing_time",
    "entity_cost",
    "load_catalogue",
    "minute_series",
    "month_bounds",
]

HOURS_PER_MONTH: Final = 730.0
_UNIT_SCALE: Final[dict[str, dict[str, float]]] = {
    # price unit -> how many of the resource's own unit it is
    "memory": {"MiB": 1.0, "GiB": 1024.0, "TiB": 1024.0 * 1024.0},
    "storage": {"GiB": 1.0, "TiB": 1024.0},
}
_CONSUMED: Final = frozenset({"api_requests"})

#: Defaults, in the resource's own unit: USD per unit-hour (per unit for consumed resources).
DEFAULT_PRICES: Final[dict[str, float]] = {
    "cpu": 0.0316,  # core-hour
    "memory": 0.0042 / 1024.0,  # 0.0042 per GiB-hour
    "gpu": 0.90,  # GPU-hour
    "storage": 0.10 / HOURS_PER_MONTH,  # 0.10 per GiB-month
    "floating_ips": 0.005,  # per IP-hour
    "load_balancers": 0.0225,  # per LB-hour
    "api_requests": 0.40 / 1_000_000,  # 0.40 per million requests
}


@dataclass(frozen=True)
class Catalogue:
    """USD per unit-hour (held resources) or per unit (consumed), by resource type."""

    prices: Mapping[str, float]
    currency: str = "USD"

    def price(self, resource_type: str) -> float:
        return self.prices.get(resource_type, 0.0)

    def consumed(self, resource_type: str) -> bool:
        return resource_type in _CONSUMED

    def describe(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "prices": {
                rt: {"per_unit" if rt in _CONSUMED else "per_hour": p}
                for rt, p in sorted(self.prices.items())
            },
        }


def _price_entry(rt: str, entry: Any) -> float:
    if isinstance(entry, int | float) and not isinstance(entry, bool):
        value, kind, unit = float(entry), "per_unit" if rt in _CONSUMED else "per_hour", None
    elif isinstance(entry, Mapping):
        kinds = [k for k in ("per_hour", "per_month", "per_unit") if k in entry]
        if len(kinds) != 1:
            raise PricingError(f"prices.{rt}: give exactly one of per_hour, per_month, per_unit")
        kind = kinds[0]
        raw = entry[kind]
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            raise PricingError(f"prices.{rt}.{kind}: a number, got {raw!r}")
        value, unit = float(raw), entry.get("unit")
        unknown = set(entry) - {kind, "unit"}
        if unknown:
            raise PricingError(f"prices.{rt}: unknown keys {sorted(unknown)}")
    else:
        raise PricingError(f"prices.{rt}: a number or an object, got {entry!r}")
    if not np.isfinite(value) or value < 0:
        raise PricingError(f"prices.{rt}: a finite price >= 0, got {value}")
    if (kind == "per_unit") != (rt in _CONSUMED):
        want = "per_unit" if rt in _CONSUMED else "per_hour or per_month"
        raise PricingError(f"prices.{rt}: {rt} is priced {want}")
    if unit is not None:
        scales = _UNIT_SCALE.get(rt, {})
        if unit not in scales:
            raise PricingError(f"prices.{rt}.unit: one of {sorted(scales) or ['(none)']}")
        value /= scales[unit]
    if kind == "per_month":
        value /= HOURS_PER_MONTH
    return value


def load_catalogue(path: Path | None = None, data: Mapping[str, Any] | None = None) -> Catalogue:
    """The defaults, overridden by the entries of a JSON file (or an already parsed mapping)."""
    if path is not None:
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise PricingError(f"pricing file {path} does not exist") from None
        except orjson.JSONDecodeError as exc:
            raise PricingError(f"pricing file {path}: not JSON ({exc})") from None
    prices = dict(DEFAULT_PRICES)
    currency = "USD"
    if data is not None:
        if not isinstance(data, Mapping) or not isinstance(data.get("prices", {}), Mapping):
            raise PricingError('pricing: an object {"prices": {resource_type: price}}')
        currency = str(data.get("currency", "USD"))
        for rt, entry in data.get("prices", {}).items():
            if rt not in RESOURCE_TYPES or rt == "cost":
                raise PricingError(f"prices.{rt}: unknown resource type")
            prices[rt] = _price_entry(rt, entry)
    return Catalogue({rt: p for rt, p in prices.items() if p}, currency)


def month_bounds(time_us: int) -> tuple[int, int]:
    """[start, end) of the UTC calendar month containing ``time_us``."""
    dt = datetime.fromtimestamp(time_us / 1e6, UTC)
    start = datetime(dt.year, dt.month, 1, tzinfo=UTC)
    days = calendar.monthrange(dt.year, dt.month)[1]
    end_us = int(start.timestamp()) * 1_000_000 + days * 86_400 * 1_000_000
    return int(start.timestamp()) * 1_000_000, end_us


@dataclass(frozen=True)
class MinuteSeries:
    """One series on a dense minute grid [start_minute, start_minute + n)."""

    start_minute: int
    level_start: np.ndarray  # units at each minute start (float64)
    level_end: np.ndarray  # units at each minute end
    integral: np.ndarray  # unit-seconds within each minute
    consumed: np.ndarray  # units consumed within each minute


def minute_series(
    minutes: Mapping[int, list[Any]] | None, start_us: int, end_us: int
) -> MinuteSeries:
    """Dense minute arrays for [start, end) (both rounded down to a minute; end exclusive)."""
    m0 = start_us // MINUTE_US
    m1 = max(m0, -(-end_us // MINUTE_US))
    n = m1 - m0
    d = np.zeros(n)
    w = np.zeros(n)
    c = np.zeros(n)
    base = 0
    for m, row in (minutes or {}).items():
        if m < m0:
            base += row[0]
        elif m < m1:
            d[m - m0] = row[0] / 1e6
            w[m - m0] = row[1] / 1e6
            c[m - m0] = row[2] / 1e6
    level_end = base / 1e6 + np.cumsum(d)
    level_start = level_end - d
    return MinuteSeries(m0, level_start, level_end, level_start * 60.0 + w, c)


def level_at(minutes: Mapping[int, list[Any]] | None, time_us: int) -> float:
    """Units held at ``time_us`` (minute resolution: after every change in its minute)."""
    m = time_us // MINUTE_US
    return sum(row[0] for mm, row in (minutes or {}).items() if mm <= m) / 1e6


@dataclass(frozen=True)
class CostSummary:
    start_us: int
    end_us: int
    by_resource: dict[str, float]
    per_minute: np.ndarray  # USD per minute of [start, end)
    hourly_rate: float  # USD per hour at ``end`` (held resources at their current level)

    @property
    def total(self) -> float:
        return float(sum(self.by_resource.values()))


def entity_cost(
    state: ProjectionState, entity: EntityKey, catalogue: Catalogue, start_us: int, end_us: int
) -> CostSummary:
    """Cost of one entity over [start, end): time-weighted for held resources."""
    n = max(0, -(-end_us // MINUTE_US) - start_us // MINUTE_US)
    per_minute = np.zeros(n)
    by_resource: dict[str, float] = {}
    rate = 0.0
    tenant, level, eid = entity
    for rt, price in catalogue.prices.items():
        minutes = state.series.get((tenant, level, eid, rt))
        if not minutes:
            continue
        ms = minute_series(minutes, start_us, end_us)
        if catalogue.consumed(rt):
            cost = ms.consumed * price
        else:
            cost = ms.integral * (price / 3600.0)
            if n:
                # the last minute counts only up to ``end``: drop what its changes add after it
                last_start = (start_us // MINUTE_US + n - 1) * MINUTE_US
                elapsed = (end_us - last_start) / 1e6
                lvl0 = ms.level_start[-1]
                change = ms.level_end[-1] - lvl0
                partial = (
                    lvl0 * elapsed + (ms.integral[-1] - lvl0 * 60.0) - change * (60.0 - elapsed)
                )
                cost[-1] = max(0.0, partial) * price / 3600.0
            rate += level_at(minutes, end_us) * price
        per_minute += cost
        by_resource[rt] = float(cost.sum())
    return CostSummary(start_us, end_us, by_resource, per_minute, rate)


def crossing_time(summary: CostSummary, amount: float, *, strict: bool = False) -> int | None:
    """The first time cost since ``summary.start_us`` reaches ``amount`` (passes it when
    ``strict``), interpolated within its minute; None if it does not within the summary."""
    if amount <= 0 and not strict:
        return summary.start_us
    cum = np.cumsum(summary.per_minute)
    hits = np.nonzero(cum > amount if strict else cum >= amount)[0]
    if hits.size == 0:
        return None
    i = int(hits[0])
    before = float(cum[i - 1]) if i else 0.0
    within = float(summary.per_minute[i])
    frac = (amount - before) / within if within > 0 else 0.0
    minute_start = (summary.start_us // MINUTE_US + i) * MINUTE_US
    t = minute_start + int(min(max(frac, 0.0), 1.0) * MINUTE_US)
    return max(summary.start_us, min(t, summary.end_us))
