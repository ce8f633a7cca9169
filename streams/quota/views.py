"""Read helpers for admission checks and HTTP views (they never change state).

``now_us`` defaults to the state's watermark; reservations count while start ≤ now < end and
windowed quotas read the window that contains ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .decide import recount
from .evaluate import utilization_pct
from .inputs import Scope
from .state import (
    C_START,
    Q_ACTION,
    Q_BURST,
    Q_BURST_S,
    Q_GRACE_S,
    Q_LIMIT,
    Q_STATUS,
    Q_TYPE,
    Q_WINDOW,
    InstanceState,
    Quota,
    QuotaBook,
    TenantState,
)
from .tokenbucket import Bucket, new_bucket
from .units import ACTIVE, HARD, SEC_US, SEP, SOFT, entity_key, fmt_amount

__all__ = [
    "CheckResult",
    "LevelCheck",
    "bucket_of",
    "check",
    "check_system",
    "next_deadline",
    "quota_of",
    "recompute_usage",
    "reserved_of",
    "store_bucket",
    "tenant_totals",
    "usage_of",
    "utilization_view",
]


def _raw(book: QuotaBook, ekey: str, res: str) -> list[Any] | None:
    per = book.quotas.get(ekey)
    return per.get(res) if per is not None else None


def usage_of(
    book: QuotaBook,
    level: str,
    entity_id: str,
    resource_type: str,
    window: str | None = None,
    now_us: int | None = None,
) -> int:
    """Used amount; for a windowed resource the count of ``window`` (default: the quota's)."""
    ekey = entity_key(level, entity_id)
    raw = _raw(book, ekey, resource_type)
    if window is None and raw is not None:
        window = raw[Q_WINDOW]
    now = book.watermark_us if now_us is None else now_us
    return book.used(ekey, resource_type, window, now)


def reserved_of(
    book: QuotaBook, level: str, entity_id: str, resource_type: str, now_us: int | None = None
) -> int:
    now = book.watermark_us if now_us is None else now_us
    return book.reserved(entity_key(level, entity_id), resource_type, now)


def quota_of(book: QuotaBook, level: str, entity_id: str, resource_type: str) -> Quota | None:
    ekey = entity_key(level, entity_id)
    raw = _raw(book, ekey, resource_type)
    return Quota.from_raw(ekey, resource_type, raw) if raw is not None else None


def utilization_view(
    book: QuotaBook, level: str, entity_id: str, now_us: int | None = None
) -> list[dict[str, Any]]:
    """Per resource with a quota or usage: limit, burst_limit, used, reserved, utilization %,
    available (limit - used - reserved, never below 0). Utilization is None without a quota
    and for a zero limit (contract section 5), so every HTTP view renders it as null."""
    ekey = entity_key(level, entity_id)
    now = book.watermark_us if now_us is None else now_us
    quotas = book.quotas.get(ekey, {})
    resources = list(quotas)
    if isinstance(book, TenantState):
        resources += [r for r in book.usage.get(ekey, {}) if r not in quotas]
    rows = []
    for res in sorted(resources):
        raw = quotas.get(res)
        window = raw[Q_WINDOW] if raw is not None else None
        used = book.used(ekey, res, window, now)
        reserved = book.reserved(ekey, res, now)
        row: dict[str, Any] = {"resource_type": res, "used": used, "reserved": reserved}
        if raw is None:
            row.update(
                limit=None,
                burst_limit=None,
                utilization=None,
                available=None,
                limit_type=None,
                status=None,
                window=None,
            )
        else:
            limit = raw[Q_LIMIT]
            row.update(
                limit=limit,
                burst_limit=raw[Q_BURST],
                utilization=utilization_pct(used, limit),
                available=max(0, limit - used - reserved),
                limit_type=raw[Q_TYPE],
                status=raw[Q_STATUS],
                window=window,
                open_violations=sorted(book.episodes.get(ekey + SEP + res, {})),
            )
        rows.append(row)
    return rows


def tenant_totals(state: TenantState) -> dict[str, int]:
    """The tenant's absolute usage per resource (what a worker publishes for system totals)."""
    return dict(state.usage.get("T" + state.tenant_id, {}))


def recompute_usage(
    state: TenantState, instances: Iterable[InstanceState]
) -> dict[str, dict[str, int]]:
    """Usage from scratch (live instances + live gauges), shaped like ``state.usage``."""
    return recount(state, instances)


def next_deadline(book: QuotaBook) -> int | None:
    """Earliest pending expiry (event time), so the glue ticks only tenants that need it."""
    return min(book.deadlines.values()) if book.deadlines else None


def bucket_of(state: TenantState, level: str, entity_id: str, now_us: int) -> Bucket | None:
    """The entity's token bucket (a full new one if it has a rate limit but no bucket yet)."""
    ekey = entity_key(level, entity_id)
    raw = state.buckets.get(ekey)
    if raw is not None:
        return Bucket.from_list(raw)
    limit = state.rate_limits.get(ekey)
    return new_bucket(limit[0], limit[1], now_us) if limit is not None else None


def store_bucket(state: TenantState, level: str, entity_id: str, bucket: Bucket) -> None:
    state.buckets[entity_key(level, entity_id)] = bucket.to_list()


# --- admission check (contract §6) ---------------------------------------------------------------


@dataclass(slots=True)  # not frozen: built per check on the hot path, never mutated
class LevelCheck:
    level: str
    entity_id: str
    resource_type: str
    limit: int
    burst_limit: int | None
    used: int
    reserved: int
    requested: int
    available: int
    using_burst: bool
    allowed: bool
    warning: str | None = None
    kind: str = "quota"
    """``quota``, or ``rate_limit`` for a token bucket (limit = capacity, available = tokens)."""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class CheckResult:
    allowed: bool
    reason: str
    checks: list[LevelCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "checks": [c.to_dict() for c in self.checks],
            "warnings": list(self.warnings),
        }


def check(
    state: TenantState, scope: Scope, resources: Mapping[str, int], now_us: int
) -> CheckResult:
    """May ``scope`` take ``resources`` now? Every level (user, project, tenant) that has an
    active quota must allow every resource; system quotas are checked by the caller from the
    system snapshot (``check_system``)."""
    levels = []
    if scope.user_id is not None:
        levels.append(("user", scope.user_id))
    if scope.project_id is not None:
        levels.append(("project", scope.project_id))
    levels.append(("tenant", scope.tenant_id))
    return _check_levels(state, levels, resources, now_us)


def check_system(book: QuotaBook, resources: Mapping[str, int], now_us: int) -> CheckResult:
    """System-level quotas against the system snapshot (not reserved atomically)."""
    return _check_levels(book, [("system", "system")], resources, now_us)


def _check_levels(
    book: QuotaBook, levels: list[tuple[str, str]], resources: Mapping[str, int], now_us: int
) -> CheckResult:
    checks: list[LevelCheck] = []
    denials: list[str] = []
    warnings: list[str] = []
    for level, entity_id in levels:
        ekey = entity_key(level, entity_id)
        per = book.quotas.get(ekey)
        if per is None:
            continue
        for res, requested in resources.items():
            raw = per.get(res)
            if raw is None or raw[Q_STATUS] != ACTIVE:
                continue
            c = _check_one(book, level, entity_id, ekey, res, raw, requested, now_us)
            checks.append(c)
            if not c.allowed:
                denials.append(c.warning or "")
            elif c.warning:
                warnings.append(c.warning)
    if denials:
        return CheckResult(False, "; ".join(denials), checks, warnings)
    bursting = [f"{c.level} {c.entity_id}: {c.resource_type}" for c in checks if c.using_burst]
    reason = "within quota"
    if bursting:
        reason = "within the burst limit (above the limit) of " + ", ".join(bursting)
    if warnings:
        reason = "allowed with warnings: " + "; ".join(warnings)
    return CheckResult(True, reason, checks, warnings)


def _check_one(
    state: QuotaBook,
    level: str,
    entity_id: str,
    ekey: str,
    res: str,
    raw: list[Any],
    requested: int,
    now_us: int,
) -> LevelCheck:
    limit, burst, ltype = raw[Q_LIMIT], raw[Q_BURST], raw[Q_TYPE]
    used = state.used(ekey, res, raw[Q_WINDOW], now_us)
    reserved = state.reserved(ekey, res, now_us)
    if isinstance(state, TenantState):
        reserved += state.granted(ekey, res, now_us)
    available = max(0, limit - used - reserved)
    clock = state.clocks.get(ekey + SEP + res)
    secs = raw[Q_GRACE_S] if ltype == SOFT else raw[Q_BURST_S]
    clock_expired = (
        clock is not None and secs is not None and clock[C_START] + secs * SEC_US <= now_us
    )
    using_burst = False
    allowed = True
    warning: str | None = None
    if requested > available:
        who = f"{level} {entity_id}"
        within_burst = burst is not None and requested <= burst - used - reserved
        if within_burst and not clock_expired:
            using_burst = True
            if ltype == SOFT:
                warning = f"{who}: {res} over soft limit, grace running"
        else:
            detail = (
                f"{who}: {res} request {fmt_amount(requested)} exceeds available "
                f"{fmt_amount(available)} (limit {fmt_amount(limit)}, used {fmt_amount(used)}, "
                f"reserved {fmt_amount(reserved)}"
                + (f", burst limit {fmt_amount(burst)}" if burst is not None else "")
                + (", burst time used up" if clock_expired and ltype == HARD else "")
                + ")"
            )
            if ltype == SOFT and not clock_expired:
                warning = detail + "; soft limit, grace running"
            elif raw[Q_ACTION] == "deny":
                allowed = False
                warning = detail
            else:
                warning = f"{detail}; enforcement {raw[Q_ACTION]}"
    return LevelCheck(
        level,
        entity_id,
        res,
        limit,
        burst,
        used,
        reserved,
        requested,
        available,
        using_burst,
        allowed,
        warning,
    )
