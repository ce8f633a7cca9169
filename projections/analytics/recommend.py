"""Quota right-sizing and service-tier recommendations from observed usage.

Both read peaks of hourly usage (in the resource's own unit: cores, MiB, GiB, counts) and say in
plain words why they recommend what they do, so that a person can check the reasoning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

from novaquota.schemas.common import INTEGER_RESOURCES, RESOURCE_TYPES
from novaquota.schemas.templates import BUILTIN_TEMPLATES

from .exceptions import AnalyticsInputError
from .series import DAY, prepare_hourly

__all__ = [
    "DECREASE_BELOW",
    "HEADROOM",
    "INCREASE_ABOVE",
    "QuotaRecommendation",
    "TierRecommendation",
    "recommend_tier",
    "right_size",
]

#: A recommended limit leaves this much room above the observed peak.
HEADROOM: Final = 0.25
#: Raise the limit when the peak reaches this share of it.
INCREASE_ABOVE: Final = 0.9
#: Lower the limit when peak plus headroom stays below this share of it ...
DECREASE_BELOW: Final = 0.5
#: ... and only on at least a week of history: a quiet weekend is no reason to shrink a quota.
_MIN_DECREASE_HOURS: Final = 7 * DAY
_MIN_HOURS: Final = DAY

_UNITS: Final[dict[str, str]] = {
    "cpu": "cores",
    "memory": "MiB",
    "storage": "GiB",
    "gpu": "GPUs",
    "bandwidth_in": "Mbit/s",
    "bandwidth_out": "Mbit/s",
    "cost": "USD",
}


def _fmt(value: float, resource_type: str) -> str:
    unit = _UNITS.get(resource_type)
    number = f"{value:,.3f}".rstrip("0").rstrip(".")
    return f"{number} {unit}" if unit else number


def _fmt_pair(value: float, other: float, resource_type: str, joiner: str) -> str:
    """``20 of 32 cores``: two amounts of one resource, the unit said once."""
    unit = _UNITS.get(resource_type)
    left, right = (f"{v:,.3f}".rstrip("0").rstrip(".") for v in (value, other))
    return f"{left} {joiner} {right}" + (f" {unit}" if unit else "")


def _check_resource(resource_type: str) -> None:
    if resource_type not in RESOURCE_TYPES:
        raise AnalyticsInputError(
            f"unknown resource type {resource_type!r}; one of {', '.join(RESOURCE_TYPES)}"
        )


def _nice_ceiling(value: float, resource_type: str) -> float:
    """``value`` rounded up to two significant digits (whole units for counted resources)."""
    if value <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    if resource_type in INTEGER_RESOURCES or resource_type in ("cpu", "memory", "storage"):
        step = max(step, 1.0)
    rounded = math.ceil(round(value / step, 9)) * step
    return float(round(rounded, 6))


@dataclass(frozen=True)
class QuotaRecommendation:
    """A recommended limit for one resource; ``action`` is ``set``, ``increase`` or ``decrease``."""

    resource_type: str
    current_limit: float | None
    recommended_limit: float
    reason: str
    action: str = "set"
    peak: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "resource_type": self.resource_type,
            "action": self.action,
            "current_limit": self.current_limit,
            "recommended_limit": self.recommended_limit,
            "peak": self.peak,
            "reason": self.reason,
        }


def right_size(
    resource_type: str, usage: pd.Series, limit: float | None
) -> QuotaRecommendation | None:
    """A better limit for ``resource_type`` given its hourly ``usage``, or None if it fits.

    The peak is the highest observed hourly value (a limit below it would have refused
    something that ran). Recommended: the peak plus :data:`HEADROOM`, rounded up to two
    significant digits. With no limit, that is the recommendation; a limit whose peak reaches
    :data:`INCREASE_ABOVE` of it is raised; one that peak plus headroom does not fill to
    :data:`DECREASE_BELOW` is lowered, if at least a week of usage backs it. Less than a day of
    observations recommends nothing (None), as does a limit that is already about right.
    """
    _check_resource(resource_type)
    if limit is not None and (
        isinstance(limit, bool)
        or not isinstance(limit, int | float | np.number)
        or not math.isfinite(limit)
        or limit < 0
    ):
        raise AnalyticsInputError(f"limit must be a finite number >= 0 or None, got {limit!r}")
    hourly = prepare_hourly(usage, name="usage")
    observed = hourly.values[hourly.observed]
    if observed.size < _MIN_HOURS:
        return None
    if (observed < 0).any():
        raise AnalyticsInputError("usage must not be negative")
    peak = float(np.max(observed))
    hours = int(observed.size)
    span = f"over {hours / DAY:.1f} days" if hours >= 2 * DAY else f"over {hours} hours"
    target = max(_nice_ceiling(peak * (1 + HEADROOM), resource_type), 1.0)
    headroom = f"{HEADROOM:.0%} headroom"
    peak_text = f"peak {_fmt(peak, resource_type)} {span}"
    if limit is None:
        return QuotaRecommendation(
            resource_type,
            None,
            target,
            f"no quota is set; {peak_text}; {_fmt(target, resource_type)} leaves {headroom}",
            "set",
            peak,
        )
    limit = float(limit)
    if limit == 0 and peak == 0:
        return None  # "none of this resource", and none was used: the limit is right as it is
    share = f"{peak / limit:.0%} of the limit" if limit > 0 else "above a zero limit"
    if peak >= INCREASE_ABOVE * limit:
        recommended = max(target, _nice_ceiling(limit * (1 + HEADROOM), resource_type))
        return QuotaRecommendation(
            resource_type,
            limit,
            recommended,
            f"{peak_text} is {share} {_fmt(limit, resource_type)}; raise it to "
            f"{_fmt(recommended, resource_type)} for {headroom}",
            "increase",
            peak,
        )
    if target <= DECREASE_BELOW * limit and hours >= _MIN_DECREASE_HOURS:
        return QuotaRecommendation(
            resource_type,
            limit,
            target,
            f"{peak_text} is only {share} {_fmt(limit, resource_type)}; "
            f"{_fmt(target, resource_type)} still leaves {headroom}",
            "decrease",
            peak,
        )
    return None


@dataclass(frozen=True)
class TierRecommendation:
    """The cheapest built-in tier whose base limits cover the peaks (``fits``), and why.

    ``per_resource`` maps each resource of the peaks to ``peak``, the tier's ``limit`` and
    ``burst_limit`` (None where the tier sets none), ``utilization`` (percent of the limit, or
    None) and ``fits``.
    """

    tier: str
    monthly_cost: float
    reason: str
    per_resource: dict[str, dict[str, Any]]
    fits: bool = field(default=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "monthly_cost": self.monthly_cost,
            "fits": self.fits,
            "reason": self.reason,
            "per_resource": self.per_resource,
        }


def _tier_limits() -> list[tuple[str, float, dict[str, tuple[float, float | None]]]]:
    tiers = []
    for name, spec in BUILTIN_TEMPLATES.items():
        limits: dict[str, tuple[float, float | None]] = {
            q.resource_type: (
                float(q.limit),
                None if q.burst_limit is None else float(q.burst_limit),
            )
            for q in spec.quotas
        }
        tiers.append((name, float(spec.monthly_cost), limits))
    return sorted(tiers, key=lambda t: t[1])


def recommend_tier(peaks: Mapping[str, float]) -> TierRecommendation:
    """The cheapest built-in tier whose limits (not burst limits) cover every peak.

    Base limits, because a tier is chosen for sustained use; burst limits are for short spikes
    and expire after ``burst_seconds``. A tier without a quota for a resource ("-" in the
    contract's table) covers it if it is above the cheapest tier that does set one (enterprise
    sets no GPU quota: unlimited), and covers only a zero peak if it is below (free and developer
    include no GPUs or load balancers). Resources that no tier limits always fit. If no tier
    covers the peaks, the largest tier is returned with ``fits=False`` and the shortfall named.
    """
    checked: dict[str, float] = {}
    for resource_type, value in peaks.items():
        _check_resource(resource_type)
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise AnalyticsInputError(f"peak of {resource_type} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise AnalyticsInputError(f"peak of {resource_type} must be finite and >= 0")
        checked[resource_type] = float(value)
    tiers = _tier_limits()
    first_with = {
        rt: next((i for i, (_, _, limits) in enumerate(tiers) if rt in limits), None)
        for rt in checked
    }
    shortfalls: list[str] = []
    for index, (name, cost, limits) in enumerate(tiers):
        rows: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        for rt, peak in sorted(checked.items()):
            limit, burst = limits.get(rt, (None, None))
            if limit is not None:
                fits = peak <= limit
                if not fits:
                    missing.append(f"{rt} {_fmt_pair(peak, limit, rt, '>')}")
            else:
                first = first_with[rt]
                fits = first is None or index > first or peak == 0
                if not fits:
                    missing.append(f"{rt} is not included")
            utilization = round(100 * peak / limit, 1) if limit else None
            rows[rt] = {
                "peak": peak,
                "limit": limit,
                "burst_limit": burst,
                "utilization": utilization,
                "fits": fits,
            }
        if not missing:
            covered = [
                f"{rt} {_fmt_pair(row['peak'], row['limit'], rt, 'of')}"
                for rt, row in rows.items()
                if row["limit"] is not None
            ]
            reason = f"{name} ({cost:.2f} USD/month) is the cheapest tier whose limits cover "
            reason += "the peaks" + (f": {', '.join(covered)}" if covered else "")
            unlimited = [rt for rt in rows if first_with[rt] is None]
            if unlimited:
                reason += f" (no tier limits {', '.join(unlimited)})"
            if shortfalls:
                reason += f"; {shortfalls[-1]}"
            return TierRecommendation(name, cost, reason + ".", rows, True)
        shortfalls.append(f"{name} is too small ({'; '.join(missing)})")
        last = (name, cost, rows, missing)
    name, cost, rows, missing = last
    reason = (
        f"no built-in tier covers the peaks: even {name} falls short ({'; '.join(missing)}); "
        "a custom template is needed"
    )
    return TierRecommendation(name, cost, reason + ".", rows, False)
