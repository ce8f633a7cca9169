"""Inputs of the decision function, built by the glue from decoded events and commands.

Amounts are int micro-units, times int microseconds since the epoch (UTC). ``source`` and
``event_id`` are the CloudEvent ``source`` and ``id``; together they identify an input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Allocation",
    "BudgetSet",
    "Consumption",
    "GaugeSample",
    "Input",
    "Inventory",
    "InventoryItem",
    "PolicyChanged",
    "QuotaDeleted",
    "QuotaSet",
    "RateLimitSet",
    "Reconcile",
    "ReservationCancelled",
    "ReservationCreated",
    "Scope",
    "SystemTotals",
    "TenantDeleted",
    "Tick",
    "source_system_of",
]


def source_system_of(source: str) -> str:
    """The producing system of a CloudEvent source: ``nova/compute/host-17`` → ``nova``."""
    s = source.split("://", 1)[1] if "://" in source else source
    return s.strip("/").split("/", 1)[0] or source


@dataclass(frozen=True, slots=True)
class Scope:
    tenant_id: str
    project_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    """What one resource instance holds now (``release``: it holds nothing any more)."""

    scope: Scope
    instance_key: str
    resources: Mapping[str, int]
    release: bool
    time_us: int
    source: str
    event_id: str
    source_system: str | None = None
    """Defaults to the first path segment of ``source``."""

    @property
    def system(self) -> str:
        return self.source_system or source_system_of(self.source)


@dataclass(frozen=True, slots=True, kw_only=True)
class GaugeSample:
    """``network.sampled``: the latest sample of an interface counts until it is too old."""

    scope: Scope
    interface_id: str
    resources: Mapping[str, int]
    time_us: int
    source: str
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Consumption:
    """``api.requests``: additive, windowed, deduplicated by (source, event_id)."""

    scope: Scope
    resource_type: str
    amount: int
    time_us: int
    source: str
    event_id: str


InventoryItem = tuple[str, Scope, Mapping[str, int]]
"""(instance_key, scope, resources) of one live instance."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Inventory:
    """Every live instance ``source_system`` knows for the tenant at ``as_of_us``."""

    tenant_id: str
    source_system: str
    as_of_us: int
    instances: Sequence[InventoryItem]
    time_us: int
    source: str
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaSet:
    level: str
    entity_id: str
    tenant_id: str | None
    """None (or "system") for system-level quotas."""
    resource_type: str
    limit: int
    limit_type: str = "hard"
    burst_limit: int | None = None
    burst_seconds: int | None = None
    grace_seconds: int | None = None
    window: str | None = None
    status: str = "active"
    enforcement_action: str = "deny"
    actor: str = ""
    time_us: int
    source: str
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaDeleted:
    level: str
    entity_id: str
    tenant_id: str | None
    resource_type: str
    actor: str = ""
    time_us: int
    source: str
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationCreated:
    reservation_id: str
    level: str
    entity_id: str
    tenant_id: str
    resource_type: str
    amount: int
    start_us: int
    end_us: int
    purpose: str = ""
    actor: str = ""
    time_us: int
    source: str
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationCancelled:
    reservation_id: str
    tenant_id: str
    actor: str = ""
    time_us: int
    source: str
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSet:
    level: str
    entity_id: str
    tenant_id: str
    rate_per_second_micros: int
    burst_micros: int
    actor: str = ""
    time_us: int
    source: str
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetSet:
    level: str
    entity_id: str
    tenant_id: str
    monthly_usd_micros: int
    thresholds: tuple[int, ...] = (80, 95, 100)
    actor: str = ""
    time_us: int
    source: str
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantDeleted:
    tenant_id: str
    actor: str = ""
    time_us: int
    source: str
    event_id: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Advances event time (fires burst/grace expiries, expires gauges, closes windows)."""

    time_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconcile:
    """Safety net: recompute usage from the instances and correct (with an audit) any drift."""

    time_us: int
    source: str
    event_id: str
    actor: str = "reconciler"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyChanged:
    """``policy.set`` / ``policy.deleted``: the enforcement state keeps no policy, it only
    audits the change (the policy worker acts on it)."""

    name: str
    version: int | None
    """None for a deletion."""
    policy: Mapping[str, object] | None
    actor: str = ""
    time_us: int
    source: str
    event_id: str


@dataclass(frozen=True, slots=True)
class SystemTotals:
    """Absolute usage of all tenants (summed by the owner of the reserved tenant ``system``)."""

    totals: Mapping[str, int]
    time_us: int


Input = (
    Allocation
    | GaugeSample
    | Consumption
    | Inventory
    | QuotaSet
    | QuotaDeleted
    | ReservationCreated
    | ReservationCancelled
    | RateLimitSet
    | BudgetSet
    | TenantDeleted
    | Tick
    | Reconcile
    | SystemTotals
    | PolicyChanged
)
