"""Stored state: one ``TenantState`` per tenant, one ``InstanceState`` per resource instance,
one ``SystemState`` for the reserved tenant ``system``.

Records inside the states are plain lists/dicts/ints/strings (layouts below, index constants
``Q_*``, ``E_*``, ...), so that ``to_bytes``/``from_bytes`` are one orjson call each and a round
trip is exact. Every stored value carries ``version`` so that a later release can migrate it
(``_MIGRATIONS``); a value from a newer release raises ``StateVersionError``.

Layouts (keys: ``ekey`` = entity key, ``qk`` = quota key, see ``units``):

- quotas[ekey][res] = [limit_type, limit, burst_limit, burst_s, grace_s, window, status,
  action, set_at_us, cause_event_id]
- episodes[qk][kind] = [violation_id, detected_at_us, cause_event_id, window_end_us|None]
- clocks[qk] = [start_us, cause_event_id, alerted 0|1]   (burst or grace clock; due = start +
  seconds of the quota, so changing the seconds moves the expiry)
- alerts[qk] = thresholds already fired and not yet re-armed
- reservations[id] = [holder ekey, res, amount, start_us, end_us, purpose, actor, cause, at_us]
- grants[id] = [project|None, user|None, {res: amount}, expires_us, resource_id|None,
  idempotency_key|None, granted_at_us, actor]   (admission grants, wall-clock TTL)
- admissions[idempotency_key] = [grant id|None, allowed 0|1, reason, at_us]  (repeat answers)
- windows[qk] = [minute_start, count, hour_start, count, day_start, count, month_start, count]
- gauges[interface] = [project|None, user|None, resources, time_us, source, event_id]
- deadlines[item] = due_us, heap = [[due_us, item], ...] (lazy-deletion heap over deadlines);
  items: "c"+qk clock expiry, "w"+qk window close, "s"/"e"+id reservation start/end,
  "g"+interface gauge expiry.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .config import DEFAULT_CONFIG
from .exceptions import StateVersionError
from .inputs import Scope
from .units import CODE_LEVEL, SEP, SYSTEM_TENANT, split_entity_key, split_quota_key
from .windows import WINDOW_INDEX, window_start

__all__ = [
    "STATE_VERSION",
    "InstanceState",
    "Quota",
    "QuotaBook",
    "Reservation",
    "SystemState",
    "TenantState",
    "expired",
]

STATE_VERSION: Final = 1

# quota record
Q_TYPE, Q_LIMIT, Q_BURST, Q_BURST_S, Q_GRACE_S, Q_WINDOW, Q_STATUS, Q_ACTION, Q_AT, Q_CAUSE = range(
    10
)
# episode record
E_ID, E_AT, E_CAUSE, E_WEND = range(4)
# clock record
C_START, C_CAUSE, C_ALERTED = range(3)
# reservation record
R_EKEY, R_RES, R_AMOUNT, R_START, R_END, R_PURPOSE, R_ACTOR, R_CAUSE, R_AT = range(9)
# gauge record
G_PROJECT, G_USER, G_RES, G_TIME, G_SOURCE, G_EVENT = range(6)

_MIGRATIONS: dict[int, Callable[[Any], Any]] = {}
"""version → function upgrading a decoded value of that version to version + 1."""


def _upgrade(value: Any, version: int, what: str) -> Any:
    if version > STATE_VERSION:
        raise StateVersionError(f"{what} version {version} is newer than {STATE_VERSION}")
    while version < STATE_VERSION:
        value = _MIGRATIONS[version](value)
        version += 1
    return value


@dataclass(frozen=True, slots=True)
class Quota:
    """Read view of one quota record."""

    level: str
    entity_id: str
    resource_type: str
    limit_type: str
    limit: int
    burst_limit: int | None
    burst_seconds: int | None
    grace_seconds: int | None
    window: str | None
    status: str
    enforcement_action: str
    set_at_us: int
    cause_event_id: str

    @classmethod
    def from_raw(cls, ekey: str, res: str, raw: list[Any]) -> Quota:
        level, entity_id = split_entity_key(ekey)
        return cls(level, entity_id, res, *raw)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Reservation:
    """Read view of one scheduled reservation."""

    reservation_id: str
    level: str
    entity_id: str
    resource_type: str
    amount: int
    start_us: int
    end_us: int
    purpose: str
    actor: str
    cause_event_id: str
    created_at_us: int

    @classmethod
    def from_raw(cls, rid: str, raw: list[Any]) -> Reservation:
        level, entity_id = split_entity_key(raw[R_EKEY])
        return cls(rid, level, entity_id, *raw[1:])

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class QuotaBook(abc.ABC):
    """What tenant and system states share: quotas, episodes, clocks, alerts, deadlines."""

    tenant_id: str
    watermark_us: int = 0
    quotas: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    episodes: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    clocks: dict[str, list[Any]] = field(default_factory=dict)
    alerts: dict[str, list[int]] = field(default_factory=dict)
    deadlines: dict[str, int] = field(default_factory=dict)
    heap: list[list[Any]] = field(default_factory=list)
    dedup: dict[str, int] = field(default_factory=dict)
    """(source + SEP + event_id) → event time, for non-idempotent inputs (consumption, commands)."""
    next_prune_us: int = 0
    version: int = STATE_VERSION

    def used(self, ekey: str, res: str, window: str | None, now_us: int) -> int:
        raise NotImplementedError

    def reserved(self, ekey: str, res: str, now_us: int) -> int:
        return 0

    def _common_dict(self) -> dict[str, Any]:
        quotas = [
            Quota.from_raw(ek, res, raw).to_dict()
            for ek, per in self.quotas.items()
            for res, raw in per.items()
        ]
        episodes = []
        for qk, per_kind in self.episodes.items():
            ek, res = split_quota_key(qk)
            level, entity_id = split_entity_key(ek)
            for kind, ep in per_kind.items():
                episodes.append(
                    {
                        "level": level,
                        "entity_id": entity_id,
                        "resource_type": res,
                        "kind": kind,
                        "violation_id": ep[E_ID],
                        "detected_at_us": ep[E_AT],
                        "cause_event_id": ep[E_CAUSE],
                        "window_end_us": ep[E_WEND],
                    }
                )
        return {
            "version": self.version,
            "tenant_id": self.tenant_id,
            "watermark_us": self.watermark_us,
            "quotas": quotas,
            "open_violations": episodes,
            "clocks": {
                qk.replace(SEP, "/"): {
                    "start_us": c[C_START],
                    "cause_event_id": c[C_CAUSE],
                }
                for qk, c in self.clocks.items()
            },
            "fired_thresholds": {qk.replace(SEP, "/"): v for qk, v in self.alerts.items()},
            "pending_deadlines": sorted(
                [t, item.replace(SEP, "/")] for item, t in self.deadlines.items()
            ),
        }


def _window_count(counters: list[int] | None, window: str, now_us: int) -> int:
    if counters is None:
        return 0
    i = 2 * WINDOW_INDEX[window]
    return counters[i + 1] if counters[i] == window_start(window, now_us) else 0


@dataclass(slots=True)
class TenantState(QuotaBook):
    """Everything about one tenant except its instances (those are ``InstanceState`` rows)."""

    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    """ekey → resource → amount (allocations and gauges; only non-zero entries)."""
    windows: dict[str, list[int]] = field(default_factory=dict)
    gauges: dict[str, list[Any]] = field(default_factory=dict)
    reservations: dict[str, list[Any]] = field(default_factory=dict)
    rate_limits: dict[str, list[int]] = field(default_factory=dict)
    """ekey → [rate micro-tokens/s, burst micro-tokens]."""
    buckets: dict[str, list[int]] = field(default_factory=dict)
    """ekey → ``Bucket.to_list()`` (written by admission)."""
    budgets: dict[str, list[Any]] = field(default_factory=dict)
    """ekey → [monthly_usd_micros, thresholds, set_at_us, cause_event_id]."""
    grants: dict[str, list[Any]] = field(default_factory=dict)
    """Admission grants held until their instance's allocation arrives or their TTL passes."""
    admissions: dict[str, list[Any]] = field(default_factory=dict)
    """idempotency key → the answer given, so a repeated request gets the same one."""
    purged: bool = False

    def used(self, ekey: str, res: str, window: str | None, now_us: int) -> int:
        if window is None:
            per = self.usage.get(ekey)
            return per.get(res, 0) if per is not None else 0
        return _window_count(self.windows.get(ekey + SEP + res), window, now_us)

    def reserved(self, ekey: str, res: str, now_us: int) -> int:
        """Reserved-in-window on top of usage: max(0, amount - holder's own usage) per live
        reservation held by the entity itself or, for the tenant, by anyone in it."""
        if not self.reservations:
            return 0
        total = 0
        whole_tenant = ekey[0] == "T"
        usage = self.usage
        for r in self.reservations.values():
            if r[R_RES] != res or not (r[R_START] <= now_us < r[R_END]):
                continue
            holder = r[R_EKEY]
            if whole_tenant or holder == ekey:
                per = usage.get(holder)
                own = per.get(res, 0) if per is not None else 0
                if r[R_AMOUNT] > own:
                    total += r[R_AMOUNT] - own
        return total

    def granted(self, ekey: str, res: str, now_us: int) -> int:
        """Held by admission grants not expired at ``now_us``, for the entity ``ekey``."""
        if not self.grants:
            return 0
        code, eid = ekey[0], ekey[1:]
        total = 0
        for g in self.grants.values():
            if g[3] <= now_us:  # expired: its release record is on its way
                continue
            if (code == "P" and g[0] != eid) or (code == "U" and g[1] != eid):
                continue
            total += g[2].get(res, 0)
        return total

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": self.version,
                "t": self.tenant_id,
                "wm": self.watermark_us,
                "q": self.quotas,
                "ep": self.episodes,
                "ck": self.clocks,
                "al": self.alerts,
                "dl": self.deadlines,
                "hp": self.heap,
                "dd": self.dedup,
                "np": self.next_prune_us,
                "u": self.usage,
                "w": self.windows,
                "g": self.gauges,
                "r": self.reservations,
                "rl": self.rate_limits,
                "bk": self.buckets,
                "bg": self.budgets,
                "gr": self.grants,
                "ad": self.admissions,
                "pg": self.purged,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TenantState:
        d = orjson.loads(data)
        d = _upgrade(d, d["v"], "TenantState")
        return cls(
            tenant_id=d["t"],
            watermark_us=d["wm"],
            quotas=d["q"],
            episodes=d["ep"],
            clocks=d["ck"],
            alerts=d["al"],
            deadlines=d["dl"],
            heap=d["hp"],
            dedup=d["dd"],
            next_prune_us=d["np"],
            usage=d["u"],
            windows=d["w"],
            gauges=d["g"],
            reservations=d["r"],
            rate_limits=d["rl"],
            buckets=d["bk"],
            budgets=d["bg"],
            grants=d.get("gr", {}),  # added in 0.2 without a version bump: absent means none
            admissions=d.get("ad", {}),
            purged=d["pg"],
        )

    def to_dict(self) -> dict[str, Any]:
        """A readable JSON view (not the storage format)."""
        out = self._common_dict()
        usage: dict[str, dict[str, dict[str, int]]] = {}
        for ek, per in self.usage.items():
            usage.setdefault(CODE_LEVEL[ek[0]], {})[ek[1:]] = dict(per)
        out.update(
            usage=usage,
            reservations=[
                Reservation.from_raw(rid, raw).to_dict() for rid, raw in self.reservations.items()
            ],
            gauges={
                iface: {
                    "project_id": g[G_PROJECT],
                    "user_id": g[G_USER],
                    "resources": g[G_RES],
                    "time_us": g[G_TIME],
                }
                for iface, g in self.gauges.items()
            },
            rate_limits={
                ek: {"rate_per_second_micros": v[0], "burst_micros": v[1]}
                for ek, v in self.rate_limits.items()
            },
            budgets={
                ek: {"monthly_usd_micros": v[0], "thresholds": v[1]}
                for ek, v in self.budgets.items()
            },
            dedup_entries=len(self.dedup),
            purged=self.purged,
        )
        return out


@dataclass(slots=True)
class SystemState(QuotaBook):
    """System-level quotas, evaluated against the summed tenant totals (``SystemTotals``)."""

    tenant_id: str = SYSTEM_TENANT
    totals: dict[str, int] = field(default_factory=dict)

    def used(self, ekey: str, res: str, window: str | None, now_us: int) -> int:
        return 0 if window is not None else self.totals.get(res, 0)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": self.version,
                "t": self.tenant_id,
                "wm": self.watermark_us,
                "q": self.quotas,
                "ep": self.episodes,
                "ck": self.clocks,
                "al": self.alerts,
                "dl": self.deadlines,
                "hp": self.heap,
                "dd": self.dedup,
                "np": self.next_prune_us,
                "tt": self.totals,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SystemState:
        d = orjson.loads(data)
        d = _upgrade(d, d["v"], "SystemState")
        return cls(
            tenant_id=d["t"],
            watermark_us=d["wm"],
            quotas=d["q"],
            episodes=d["ep"],
            clocks=d["ck"],
            alerts=d["al"],
            deadlines=d["dl"],
            heap=d["hp"],
            dedup=d["dd"],
            next_prune_us=d["np"],
            totals=d["tt"],
        )

    def to_dict(self) -> dict[str, Any]:
        out = self._common_dict()
        out["totals"] = dict(self.totals)
        return out


@dataclass(frozen=True, slots=True)
class InstanceState:
    """One resource instance of a tenant (glue key: f"{tenant_id}\\x1f{instance_key}").

    ``version`` = (time_us, is_release, source, event_id) of the newest event applied; a
    released instance stays as a tombstone (live False, no resources) until ``expired``.
    """

    scope: Scope
    resources: dict[str, int]
    live: bool
    source_system: str
    time_us: int
    is_release: bool
    source: str
    event_id: str
    schema_version: int = STATE_VERSION

    @property
    def version(self) -> tuple[int, bool, str, str]:
        return (self.time_us, self.is_release, self.source, self.event_id)

    def to_bytes(self) -> bytes:
        s = self.scope
        return orjson.dumps(
            [
                self.schema_version,
                s.tenant_id,
                s.project_id,
                s.user_id,
                self.resources,
                self.live,
                self.source_system,
                self.time_us,
                self.is_release,
                self.source,
                self.event_id,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> InstanceState:
        d = orjson.loads(data)
        d = _upgrade(d, d[0], "InstanceState")
        return cls(Scope(d[1], d[2], d[3]), d[4], d[5], d[6], d[7], d[8], d[9], d[10])

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.scope.tenant_id,
            "project_id": self.scope.project_id,
            "user_id": self.scope.user_id,
            "resources": dict(self.resources),
            "live": self.live,
            "source_system": self.source_system,
            "time_us": self.time_us,
            "is_release": self.is_release,
            "source": self.source,
            "event_id": self.event_id,
        }


def expired(instance: InstanceState, watermark_us: int, retention_us: int | None = None) -> bool:
    """True when a tombstone is older than the retention (default 30 days) and may be purged."""
    if instance.live:
        return False
    if retention_us is None:
        retention_us = DEFAULT_CONFIG.tombstone_retention_us
    return instance.time_us < watermark_us - retention_us
