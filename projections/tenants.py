"""The tenants list (``GET /api/v1/tenants``): every tenant's highest utilization, paged.

Pure functions of the projection state. Utilization is the overview's (used / limit x 100 of the
tenant-level quotas in force at the watermark), but usage "now" comes from
``ProjectionState.now_cache``, which ``flush`` keeps current once a series has been asked for:
the first list sums each series once, later ones only the minutes since, so a list over 10,000
tenants costs a pass over the tenants, not over their history. Cost month to date, which does
need the month's series, is computed for the rows of the page only.

Pages are keyset pages: ``next_page_token`` carries the sort, the filter and the sort key of the
last row, so a page never repeats or skips a tenant that kept its place, whatever changed
elsewhere in between.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from novaquota.projections.cost import Catalogue, entity_cost, month_bounds
from novaquota.projections.exceptions import QueryError
from novaquota.projections.folds import MINUTE_US, ProjectionState, SeriesKey
from novaquota.schemas.common import SYSTEM_TENANT

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "SORTS",
    "tenant_rows",
    "tenants_page",
    "usage_now",
]

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200
SORTS: Final = ("utilization", "tenant_id")
MAX_PREFIX: Final = 256
_CONSUMED: Final = frozenset({"api_requests"})
_WINDOW_US: Final[dict[str, int]] = {
    "minute": 60_000_000,
    "hour": 3_600_000_000,
    "day": 86_400_000_000,
}
_NO_WINDOW: Final = 1 << 62
"""A start minute no consumption reaches: the series has no window to count it in."""


def _sum(per: Mapping[int, list[int]], lo: int, hi: int, col: int) -> int:
    """Σ row[col] over the minutes lo..hi (inclusive), by whichever is shorter to walk."""
    if hi < lo:
        return 0
    if hi - lo + 1 <= len(per):
        total = 0
        for m in range(lo, hi + 1):
            row = per.get(m)
            if row is not None:
                total += row[col]
        return total
    return sum(row[col] for m, row in per.items() if lo <= m <= hi)


def _window_start(state: ProjectionState, key: SeriesKey) -> int:
    quota = state.quota_at(key, state.watermark)
    window = quota.window if quota is not None else None
    if window == "month":
        return month_bounds(state.watermark)[0] // MINUTE_US
    span = _WINDOW_US.get(window or "")
    if not span:
        return _NO_WINDOW
    return state.watermark // span * span // MINUTE_US


def usage_now(state: ProjectionState, key: SeriesKey) -> float:
    """What ``views`` calls usage now (held at the watermark; consumed: in the quota's
    current window), from the cache; equal to the full sum (``test_projections_tenants``)."""
    per = state.series.get(key)
    if not per:
        return 0.0
    wm = state.watermark // MINUTE_US
    now = state.now_cache.get(key)
    if key[3] in _CONSUMED:
        w0 = _window_start(state, key)
        if now is None or now[2] != w0:  # first asked, or a new window began
            consumed = 0 if w0 == _NO_WINDOW else _sum(per, w0, max(per), 2)
            now = state.now_cache[key] = [wm, 0, w0, consumed]
        return now[3] / 1e6
    if now is None:
        now = state.now_cache[key] = [wm, _sum(per, min(per), wm, 0), _NO_WINDOW, 0]
    elif now[0] < wm:
        now[1] += _sum(per, now[0] + 1, wm, 0)
        now[0] = wm
    return now[1] / 1e6


def tenant_rows(
    state: ProjectionState, tenants: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """One row per tenant (every tenant the state knows, or those of ``tenants`` it knows):
    ``tenant_id``, ``utilization`` (the highest of its tenant-level quotas in force; None
    without one, or when only zero limits are in force), ``resource_type`` of that highest,
    ``resources`` (tenant-level quotas in force) and ``open_violations`` (episodes still open,
    any level of the tenant)."""
    if tenants is None:
        names = {e[0] for e in state.by_entity if e[1] == "tenant" and e[0] != SYSTEM_TENANT}
    else:
        names = {t for t in tenants if (t, "tenant", t) in state.by_entity and t != SYSTEM_TENANT}
    for tenant, order in state.deleted_tenants.items():
        if tenant in names and state.tenant_watermark.get(tenant, -1) <= order[0]:
            names.discard(tenant)  # deleted, and nothing since
    violations: dict[str, int] = {}
    for v in state.open_violations.values():
        t = v.get("tenant_id")
        if isinstance(t, str):
            violations[t] = violations.get(t, 0) + 1
    rows = []
    for tenant in names:
        best: float | None = None
        best_rt: str | None = None
        resources = 0
        for rt in sorted(state.by_entity.get((tenant, "tenant", tenant), ())):
            key = (tenant, "tenant", tenant, rt)
            if key not in state.quotas:
                continue
            quota = state.quota_at(key, state.watermark)
            if quota is None or quota.limit is None:
                continue
            resources += 1
            if not quota.limit:
                continue  # a zero limit has no percentage (contract section 5)
            util = usage_now(state, key) / (quota.limit / 1e6) * 100.0
            if best is None or util > best:
                best, best_rt = util, rt
        rows.append(
            {"tenant_id": tenant, "utilization": None if best is None else round(best, 3),
             "resource_type": best_rt, "resources": resources,
             "open_violations": violations.get(tenant, 0)}
        )  # fmt: skip
    return rows


def _key(row: Mapping[str, Any], sort: str) -> list[Any]:
    if sort == "tenant_id":
        return [row["tenant_id"]]
    util = row["utilization"]
    return [0, -util, row["tenant_id"]] if util is not None else [1, 0, row["tenant_id"]]


def encode_token(sort: str, q: str, key: list[Any]) -> str:
    raw = orjson.dumps({"s": sort, "q": q, "k": key})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, sort: str, q: str) -> list[Any]:
    bad = QueryError("invalid_page_token", "page_token: not a next_page_token of this listing")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise bad from None
    if not isinstance(body, dict) or body.get("s") != sort or body.get("q") != q:
        raise bad
    key = body.get("k")
    shape = (str,) if sort == "tenant_id" else (int, int | float, str)
    if (
        not isinstance(key, list)
        or len(key) != len(shape)
        or not all(
            isinstance(k, t) and not isinstance(k, bool) for k, t in zip(key, shape, strict=True)
        )
    ):
        raise bad
    return key


def _page_size(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_PAGE_SIZE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE_SIZE:
        raise QueryError("invalid_page_size", f"page_size: an integer 1-{MAX_PAGE_SIZE}")
    return int(value)


def tenants_page(
    state: ProjectionState,
    catalogue: Catalogue,
    *,
    only: str | None = None,
    page_size: str | None = None,
    page_token: str | None = None,
    sort: str | None = None,
    q: str | None = None,
) -> dict[str, Any]:
    """One page of the list. ``only``: the one tenant a tenant-scoped caller may see (its row,
    if the state knows it); None: every tenant. Bad parameters raise ``QueryError`` (400)."""
    size = _page_size(page_size)
    order = sort or "utilization"
    if order not in SORTS:
        raise QueryError("invalid_sort", f"sort: one of {', '.join(SORTS)}")
    prefix = q or ""
    if len(prefix) > MAX_PREFIX:
        raise QueryError("invalid_query", f"q: at most {MAX_PREFIX} characters")
    after = decode_token(page_token, order, prefix) if page_token else None
    rows = tenant_rows(state, None if only is None else [only])
    if prefix:
        rows = [r for r in rows if r["tenant_id"].startswith(prefix)]
    keyed = sorted(((_key(r, order), r) for r in rows), key=lambda kr: kr[0])
    total = len(keyed)
    if after is not None:
        keyed = [kr for kr in keyed if kr[0] > after]
    page = keyed[:size]
    more = len(keyed) > size
    m0, _ = month_bounds(state.watermark)
    end = max(m0 + 1, state.watermark)
    out = []
    for _, row in page:
        tenant = row["tenant_id"]
        cost = entity_cost(state, (tenant, "tenant", tenant), catalogue, m0, end)
        out.append({**row, "cost_month_to_date": round(cost.total, 4)})
    return {
        "tenants": out,
        "total": total,
        "next_page_token": encode_token(order, prefix, page[-1][0]) if more else None,
    }
