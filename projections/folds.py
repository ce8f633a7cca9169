"""Pure folds: decoded inputs -> the projection state (no Kafka, no clock, no I/O).

Usage is tracked as the contract says (contract section 3): per resource instance, the newest
event decides what it holds. Every change of what an instance holds becomes a *delta* at its event
time on each entity the instance counts for (system ⊃ tenant ⊃ project ⊃ user), and deltas are
accumulated per UTC minute as three numbers:

- ``D``: the sum of the deltas in the minute (exact micro-units), so the level at the start of a
  minute is the running sum of ``D`` over the minutes before it;
- ``W``: the sum of ``delta x (minute end - event time)`` in micro-unit-seconds (an integer), so
  the time integral of usage over the minute is ``level at its start x 60 + W`` (time-weighted
  means and cost);
- ``C``: consumption in the minute (``api_requests``; exact micro-units).

The sums commute, so the order in which partitions interleave does not change a view; per
instance, an event older than the one that decided its holdings changes neither what it holds now
nor the history (the history shows each instance as the events seen in its order revealed it).
A gauge (``network.sampled``) is an instance that expires: its sample adds ``+v`` at its time and
``-v`` at ``time + ttl``; a newer sample within the ttl cancels the expiry and replaces it.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from novaquota.schemas.allocation import (
    ALLOCATION_TYPES,
    RELEASE_TYPES,
    instance_key,
    is_release,
    resources_of,
)
from novaquota.schemas.amounts import to_micros
from novaquota.schemas.codec import Decoded
from novaquota.schemas.commands import (
    BudgetSet,
    QuotaDeleted,
    QuotaSet,
    TemplateApplied,
    TemplateDefined,
    TenantDeleted,
)
from novaquota.schemas.common import SYSTEM_TENANT, datetime_to_us
from novaquota.schemas.resource_events import (
    ApiRequests,
    InventoryReported,
    NetworkSampled,
    ResourceEvent,
)
from novaquota.schemas.templates import BUILTIN_TEMPLATES

__all__ = [
    "DAY_MINUTES",
    "MINUTE_US",
    "Budget",
    "FoldParams",
    "FoldStats",
    "Held",
    "ProjectionState",
    "QuotaChange",
    "entities_of",
    "flush",
    "fold_batch",
    "fold_event",
    "fold_violation",
    "source_system_of",
]

MINUTE_US: Final = 60_000_000
DAY_MINUTES: Final = 1440
_US: Final = 1_000_000
#: rank of an inventory correction: at equal times it beats both an event and a release
_INVENTORY_RANK: Final = 2

SeriesKey = tuple[str, str, str, str]  # (tenant_id, level, entity_id, resource_type)
EntityKey = tuple[str, str, str]  # (tenant_id, level, entity_id)
Order = tuple[int, int, str, str]  # (time_us, release/inventory rank, source, id)


def source_system_of(source: str) -> str:
    """The producing system of a CloudEvent source: ``nova/compute/host-17`` -> ``nova``."""
    s = source.split("://", 1)[1] if "://" in source else source
    return s.strip("/").split("/", 1)[0] or source


@dataclass(slots=True)
class Held:
    """What one instance (or gauge) holds, and the event that decided it."""

    order: Order
    project: str | None
    user: str | None
    resources: dict[str, int]
    origin: str  # source system of the deciding event

    @property
    def time_us(self) -> int:
        return self.order[0]

    def to_json(self) -> list[Any]:
        return [list(self.order), self.project, self.user, self.resources, self.origin]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Held:
        o = raw[0]
        return cls((int(o[0]), int(o[1]), str(o[2]), str(o[3])), raw[1], raw[2], raw[3], raw[4])


@dataclass(frozen=True, slots=True)
class QuotaChange:
    """A quota as of ``time_us`` (``limit`` None: deleted)."""

    time_us: int
    limit: int | None  # micro-units
    limit_type: str = "hard"
    window: str | None = None
    template: str | None = None

    def to_json(self) -> list[Any]:
        return [self.time_us, self.limit, self.limit_type, self.window, self.template]

    @classmethod
    def from_json(cls, raw: list[Any]) -> QuotaChange:
        return cls(int(raw[0]), raw[1], raw[2], raw[3], raw[4])


@dataclass(frozen=True, slots=True)
class Budget:
    monthly_usd: Decimal
    thresholds: tuple[Decimal, ...]
    set_at_us: int

    def to_json(self) -> list[Any]:
        return [str(self.monthly_usd), [str(t) for t in self.thresholds], self.set_at_us]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Budget:
        return cls(Decimal(raw[0]), tuple(Decimal(t) for t in raw[1]), int(raw[2]))


@dataclass(frozen=True, slots=True)
class FoldParams:
    gauge_ttl_us: int = 300 * _US
    lateness_us: int = 7 * 86400 * _US


@dataclass(slots=True)
class FoldStats:
    folded: int = 0
    ignored: int = 0
    late: int = 0
    duplicates: int = 0
    last_event_time_us: int | None = None


@dataclass
class Dirty:
    """Keys changed since the last commit: what the store must write."""

    instances: set[tuple[str, str]] = field(default_factory=set)
    gauges: set[tuple[str, str]] = field(default_factory=set)
    #: (series, UTC day index): the store keeps one value per series and day
    series: set[tuple[SeriesKey, int]] = field(default_factory=set)
    quotas: set[SeriesKey] = field(default_factory=set)
    templates: set[str] = field(default_factory=set)
    budgets: set[EntityKey] = field(default_factory=set)
    tenants: set[str] = field(default_factory=set)
    api_seen: list[tuple[str, str, int]] = field(default_factory=list)
    violations: set[str] = field(default_factory=set)

    def clear(self) -> None:
        for value in vars(self).values():
            value.clear()


@dataclass
class ProjectionState:
    """Everything the views are computed from (the in-memory twin of the store)."""

    instances: dict[str, dict[str, Held]] = field(default_factory=dict)
    gauges: dict[str, dict[str, Held]] = field(default_factory=dict)
    series: dict[SeriesKey, dict[int, list[int]]] = field(default_factory=dict)
    quotas: dict[SeriesKey, list[QuotaChange]] = field(default_factory=dict)
    templates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    budgets: dict[EntityKey, Budget] = field(default_factory=dict)
    tenant_watermark: dict[str, int] = field(default_factory=dict)
    #: tenant -> the order of its latest ``tenant.deleted``: nothing older can come back
    deleted_tenants: dict[str, Order] = field(default_factory=dict)
    api_seen: dict[tuple[str, str], int] = field(default_factory=dict)
    open_violations: dict[str, dict[str, Any]] = field(default_factory=dict)
    watermark: int = 0
    dirty: Dirty = field(default_factory=Dirty)
    by_entity: dict[EntityKey, set[str]] = field(default_factory=dict)
    #: the current batch's deltas: (tenant, project, user, minute) -> resource -> [D, W, C]
    pending: dict[tuple[str, str | None, str | None, int], dict[str, list[int]]] = field(
        default_factory=dict
    )
    #: Tenant-level usage "now", kept current by ``flush`` once the tenants list has asked for
    #: a series (``projections.tenants``), so listing 10,000 tenants does not re-sum their
    #: whole history: series -> [through minute, held level through it (micro-units), start
    #: minute of the consumption window, consumed since then]. Derived, never stored.
    now_cache: dict[SeriesKey, list[int]] = field(default_factory=dict, compare=False)

    def resource_types(self, entity: EntityKey) -> set[str]:
        """Resources the entity has a series or a quota for (an index, not a scan)."""
        return self.by_entity.get(entity, set())

    def reindex(self) -> None:
        self.by_entity.clear()
        for t, lvl, e, rt in (*self.series, *self.quotas):
            self.by_entity.setdefault((t, lvl, e), set()).add(rt)

    def mark_all_dirty(self) -> None:
        """Everything is to be written (a state loaded or built elsewhere)."""
        d = self.dirty
        d.instances.update((t, k) for t, per in self.instances.items() for k in per)
        d.gauges.update((t, k) for t, per in self.gauges.items() for k in per)
        d.series.update((k, m // DAY_MINUTES) for k, per in self.series.items() for m in per)
        d.quotas.update(self.quotas)
        d.templates.update(self.templates)
        d.budgets.update(self.budgets)
        d.tenants.update(self.tenant_watermark)
        d.tenants.update(self.deleted_tenants)
        d.api_seen.extend((s, i, t) for (s, i), t in self.api_seen.items())
        d.violations.update(self.open_violations)

    def entities(self) -> Iterable[EntityKey]:
        seen: set[EntityKey] = set()
        for t, lvl, e, _ in self.series:
            if (t, lvl, e) not in seen:
                seen.add((t, lvl, e))
                yield (t, lvl, e)

    def quota_at(self, key: SeriesKey, time_us: int) -> QuotaChange | None:
        changes = self.quotas.get(key)
        if not changes:
            return None
        current: QuotaChange | None = None
        for ch in changes:
            if ch.time_us > time_us:
                break
            current = ch
        return current if current is not None and current.limit is not None else None


def entities_of(tenant: str, project: str | None, user: str | None) -> list[EntityKey]:
    """The entities a scope counts for: system, tenant, project (if any), user (if any)."""
    return _entities(tenant, project, user)


# --- deltas ------------------------------------------------------------------------------------


def _add(
    state: ProjectionState,
    tenant: str,
    project: str | None,
    user: str | None,
    resources: Mapping[str, int],
    time_us: int,
    sign: int,
    *,
    consumption: bool = False,
) -> None:
    """Queue a delta of every resource in ``resources`` at ``time_us``; ``flush`` rolls the
    batch's deltas up the hierarchy once per scope and minute rather than once per event."""
    minute = time_us // MINUTE_US
    to_end_us = (minute + 1) * MINUTE_US - time_us
    k = (tenant, project, user, minute)
    agg = state.pending.get(k)
    if agg is None:
        agg = state.pending[k] = {}
    for rt, amount in resources.items():
        if not amount:
            continue
        row = agg.get(rt)
        if row is None:
            row = agg[rt] = [0, 0, 0]
        if consumption:
            row[2] += sign * amount
        else:
            # micro-unit-seconds to the end of the minute, truncated per event (exact sums)
            w = amount * to_end_us // 1_000_000
            row[0] += sign * amount
            row[1] += sign * w


def flush(state: ProjectionState) -> None:
    """Add the batch's deltas (per scope, minute and resource) to every entity's series."""
    pending = state.pending
    if not pending:
        return
    series = state.series
    dirty = state.dirty.series
    cache = state.now_cache
    for (tenant, project, user, minute), per_rt in pending.items():
        for ent in _entities(tenant, project, user):
            t, lvl, e = ent
            for rt, (d, w, c) in per_rt.items():
                key = (t, lvl, e, rt)
                per = series.get(key)
                if per is None:
                    per = series[key] = {}
                    state.by_entity.setdefault(ent, set()).add(rt)
                row = per.get(minute)
                if row is None:
                    per[minute] = [d, w, c]
                else:
                    row[0] += d
                    row[1] += w
                    row[2] += c
                dirty.add((key, minute // DAY_MINUTES))
                if cache:
                    now = cache.get(key)
                    if now is not None:
                        if minute <= now[0]:
                            now[1] += d
                        if minute >= now[2]:
                            now[3] += c
    pending.clear()


_SYSTEM_ENTITY: Final = (SYSTEM_TENANT, "system", SYSTEM_TENANT)


def _entities(tenant: str, project: str | None, user: str | None) -> list[EntityKey]:
    if project:
        if user:
            return [
                _SYSTEM_ENTITY,
                (tenant, "tenant", tenant),
                (tenant, "project", project),
                (tenant, "user", user),
            ]
        return [_SYSTEM_ENTITY, (tenant, "tenant", tenant), (tenant, "project", project)]
    if user:
        return [_SYSTEM_ENTITY, (tenant, "tenant", tenant), (tenant, "user", user)]
    return [_SYSTEM_ENTITY, (tenant, "tenant", tenant)]


def _replace(state: ProjectionState, tenant: str, old: Held | None, new: Held, t: int) -> None:
    """The instance held ``old`` and now holds ``new`` from ``t`` on."""
    if old is not None and old.project == new.project and old.user == new.user:
        diff = dict(new.resources)
        for rt, amount in old.resources.items():
            diff[rt] = diff.get(rt, 0) - amount
        _add(state, tenant, new.project, new.user, diff, t, 1)
        return
    if old is not None:
        _add(state, tenant, old.project, old.user, old.resources, t, -1)
    _add(state, tenant, new.project, new.user, new.resources, t, 1)


def _decide(state: ProjectionState, tenant: str, key: str, new: Held) -> bool:
    per = state.instances.get(tenant)
    if per is None:
        per = state.instances[tenant] = {}
    old = per.get(key)
    if old is not None and new.order <= old.order:
        return False
    per[key] = new
    state.dirty.instances.add((tenant, key))
    _replace(state, tenant, old, new, new.order[0])
    return True


def _gauge(state: ProjectionState, tenant: str, key: str, new: Held, ttl_us: int) -> bool:
    per = state.gauges.get(tenant)
    if per is None:
        per = state.gauges[tenant] = {}
    old = per.get(key)
    if old is not None and new.order <= old.order:
        return False
    t = new.order[0]
    if old is not None and t < old.time_us + ttl_us:
        # the old sample stops counting at t instead of at its expiry
        _add(state, tenant, old.project, old.user, old.resources, t, -1)
        _add(state, tenant, old.project, old.user, old.resources, old.time_us + ttl_us, 1)
    _add(state, tenant, new.project, new.user, new.resources, t, 1)
    _add(state, tenant, new.project, new.user, new.resources, t + ttl_us, -1)
    per[key] = new
    state.dirty.gauges.add((tenant, key))
    return True


def _release_all(state: ProjectionState, tenant: str, order: Order, ttl_us: int) -> None:
    """``tenant.deleted``: every instance and live gauge of the tenant stops counting."""
    for key, old in list(state.instances.get(tenant, {}).items()):
        if old.resources and old.order < order:
            _decide(state, tenant, key, Held(order, old.project, old.user, {}, old.origin))
    at = order[0]
    for key, old in list(state.gauges.get(tenant, {}).items()):
        if old.order >= order or not old.resources:
            continue
        if at < old.time_us + ttl_us:  # cut the live sample short
            _add(state, tenant, old.project, old.user, old.resources, at, -1)
            _add(state, tenant, old.project, old.user, old.resources, old.time_us + ttl_us, 1)
        state.gauges[tenant][key] = Held(order, old.project, old.user, {}, old.origin)
        state.dirty.gauges.add((tenant, key))


# --- events and commands -----------------------------------------------------------------------


def _advance(state: ProjectionState, tenant: str, time_us: int) -> None:
    if time_us > state.tenant_watermark.get(tenant, -1):
        state.tenant_watermark[tenant] = time_us
        state.dirty.tenants.add(tenant)
    if time_us > state.watermark:
        state.watermark = time_us


def _set_quota(
    state: ProjectionState,
    key: SeriesKey,
    time_us: int,
    limit: Decimal,
    limit_type: str = "hard",
    window: str | None = None,
    template: str | None = None,
) -> None:
    change = QuotaChange(time_us, to_micros(limit), limit_type, window, template)
    insort(state.quotas.setdefault(key, []), change, key=lambda c: c.time_us)
    state.by_entity.setdefault(key[:3], set()).add(key[3])
    state.dirty.quotas.add(key)


def _delete_quota(state: ProjectionState, key: SeriesKey, time_us: int) -> None:
    if key in state.quotas:
        insort(state.quotas[key], QuotaChange(time_us, None), key=lambda c: c.time_us)
        state.dirty.quotas.add(key)


#: built-in tiers as (resource_type, limit, limit_type, window) entries, validated once
_BUILTIN_ENTRIES: Final[dict[str, list[tuple[str, Decimal, str, str | None]]]] = {
    name: [(q.resource_type, q.limit, q.limit_type, q.window) for q in spec.quotas]
    for name, spec in BUILTIN_TEMPLATES.items()
}


def _template_entries(
    state: ProjectionState, name: str
) -> list[tuple[str, Decimal, str, str | None]] | None:
    """A custom template (which shadows a built-in one of the same name) or a built-in tier."""
    custom = state.templates.get(name)
    if custom is not None:
        return [
            (
                e["resource_type"],
                Decimal(str(e["limit"])),
                e.get("limit_type") or "hard",
                e.get("window"),
            )
            for e in custom
        ]
    return _BUILTIN_ENTRIES.get(name)


def _command(state: ProjectionState, ev: Decoded, params: FoldParams) -> bool:
    data = ev.data
    t = ev.time_us
    if isinstance(data, QuotaSet):
        qkey: SeriesKey = (data.tenant_id, data.level, data.entity_id, data.resource_type)
        _set_quota(state, qkey, t, data.limit, data.limit_type, data.window)
    elif isinstance(data, QuotaDeleted):
        _delete_quota(state, (data.tenant_id, data.level, data.entity_id, data.resource_type), t)
    elif isinstance(data, TemplateDefined):
        state.templates[data.name] = [
            {
                "resource_type": q.resource_type,
                "limit": str(q.limit),
                "limit_type": q.limit_type,
                "window": q.window,
            }
            for q in data.quotas
        ]
        state.dirty.templates.add(data.name)
    elif isinstance(data, TemplateApplied):
        entries = _template_entries(state, data.template)
        if entries is None:
            return False  # unknown template: the enforcement worker rejects it (audited)
        for rt, limit, limit_type, window in entries:
            tkey: SeriesKey = (data.tenant_id, data.level, data.entity_id, rt)
            _set_quota(state, tkey, t, limit, limit_type, window, data.template)
    elif isinstance(data, BudgetSet):
        key = (data.tenant_id, data.level, data.entity_id)
        state.budgets[key] = Budget(data.monthly_usd, tuple(data.thresholds), t)
        state.dirty.budgets.add(key)
    elif isinstance(data, TenantDeleted):
        tenant = data.tenant_id
        order: Order = (t, 1, ev.source, ev.id)
        _release_all(state, tenant, order, params.gauge_ttl_us)
        if order > state.deleted_tenants.get(tenant, (-1, 0, "", "")):
            state.deleted_tenants[tenant] = order
            state.dirty.tenants.add(tenant)
        for qkey in [k for k in state.quotas if k[0] == tenant]:
            _delete_quota(state, qkey, t)
        for bkey in [k for k in state.budgets if k[0] == tenant]:
            del state.budgets[bkey]
            state.dirty.budgets.add(bkey)
    else:
        return False  # reservations and rate limits do not change these views
    return True


def _inventory(state: ProjectionState, ev: Decoded, data: InventoryReported) -> None:
    tenant = data.tenant_id
    as_of = datetime_to_us(data.as_of)
    system = data.source_system
    order: Order = (as_of, _INVENTORY_RANK, ev.source, ev.id)
    listed: set[str] = set()
    for inst in data.instances:
        key = instance_key(inst)
        listed.add(key)
        held = {rt: a for rt, a in resources_of(inst).items() if a}
        old = state.instances.get(tenant, {}).get(key)
        if old is not None and (
            old.time_us > as_of
            or (
                old.resources == held
                and old.project == inst.project_id
                and old.user == inst.user_id
                and old.origin == system
            )
        ):
            continue
        _decide(state, tenant, key, Held(order, inst.project_id, inst.user_id, held, system))
    for key, old in list(state.instances.get(tenant, {}).items()):
        if old.resources and old.origin == system and key not in listed and old.time_us <= as_of:
            _decide(state, tenant, key, Held(order, old.project, old.user, {}, system))


def fold_event(state: ProjectionState, ev: Decoded, params: FoldParams, stats: FoldStats) -> None:
    """Fold one validated input (``schemas.codec.decode`` accepted it)."""
    type_ = ev.type
    if ev.kind == "command":
        if _command(state, ev, params):
            stats.folded += 1
        else:
            stats.ignored += 1
        return
    data = ev.data
    assert isinstance(data, ResourceEvent)
    tenant = data.tenant_id
    t = ev.time_us
    deleted = state.deleted_tenants.get(tenant)
    if deleted is not None and t <= deleted[0] and type_ != "api.requests":
        # older than the tenant's deletion, which released everything (whatever the order in
        # which the two topics were read)
        stats.ignored += 1
        return
    if type_ in ALLOCATION_TYPES or type_ in RELEASE_TYPES:
        release = is_release(ev)
        held = Held(
            (t, 1 if release else 0, ev.source, ev.id),
            data.project_id,
            data.user_id,
            {} if release else {rt: a for rt, a in resources_of(ev).items() if a},
            source_system_of(ev.source),
        )
        _decide(state, tenant, instance_key(ev), held)
    elif isinstance(data, NetworkSampled):
        held = Held(
            (t, 0, ev.source, ev.id),
            data.project_id,
            data.user_id,
            resources_of(ev),
            source_system_of(ev.source),
        )
        _gauge(state, tenant, instance_key(ev), held, params.gauge_ttl_us)
    elif isinstance(data, ApiRequests):
        dedup = (ev.source, ev.id)
        if dedup in state.api_seen:
            stats.duplicates += 1
            return
        if t < state.tenant_watermark.get(tenant, t) - params.lateness_us:
            stats.late += 1
            return
        state.api_seen[dedup] = t
        state.dirty.api_seen.append((ev.source, ev.id, t))
        _add(
            state,
            tenant,
            data.project_id,
            data.user_id,
            {"api_requests": to_micros(data.count)},
            t,
            1,
            consumption=True,
        )
    elif isinstance(data, InventoryReported):
        _inventory(state, ev, data)
    else:  # pragma: no cover - the codec knows no other resource type
        stats.ignored += 1
        return
    _advance(state, tenant, t)
    stats.folded += 1
    stats.last_event_time_us = t


def fold_batch(state: ProjectionState, events: Iterable[Decoded], params: FoldParams) -> FoldStats:
    """Fold a consumed batch in log order."""
    stats = FoldStats()
    for ev in events:
        fold_event(state, ev, params, stats)
    flush(state)
    return stats


def fold_violation(state: ProjectionState, type_: str, data: Mapping[str, Any]) -> None:
    """Track open violation episodes from the violations topic (for the overview)."""
    vid = str(data.get("violation_id", ""))
    if not vid:
        return
    if type_ == "quota.violation":
        state.open_violations[vid] = dict(data)
    elif type_ == "quota.violation_resolved":
        state.open_violations.pop(vid, None)
    else:
        return
    state.dirty.violations.add(vid)
