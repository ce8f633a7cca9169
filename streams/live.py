"""The live feed's pure parts: subscription filters, message shapes, usage snapshots and the
bounded per-client queue (contract section 6, ``/api/v1/quotas/live``).

No Kafka, no aiohttp here: ``streams.live_web`` wires these to the worker, the internal live
topic and the WebSocket. Keeping them apart lets the unit tests drive coalescing and the lagging
rule with plain values.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from novaquota.schemas.common import RESOURCE_TYPES, format_time_us
from novaquota.streams import quota as q
from novaquota.streams.errors import ApiError
from novaquota.streams.quota.evaluate import utilization_pct

__all__ = [
    "ALL_TENANTS_TYPES",
    "LAGGING_CLOSE_CODE",
    "LIVE_LEVELS",
    "LIVE_SCOPES",
    "MESSAGE_TYPES",
    "Filters",
    "Subscriber",
    "UsageDiff",
    "alert_message",
    "lagging_message",
    "parse_filters",
    "usage_messages",
    "usage_rows",
    "violation_message",
]

LIVE_LEVELS = ("tenant", "project", "user")
LIVE_SCOPES = ("tenant", "all")
MESSAGE_TYPES = ("usage_updated", "quota_exceeded", "violation_resolved", "alert", "cost_alert")
"""What ``types`` may name (``lagging`` is always sent)."""
ALL_TENANTS_TYPES = frozenset(MESSAGE_TYPES) - {"usage_updated"}
"""What ``scope=all`` offers: violations and alerts of every tenant, never usage."""
LAGGING_CLOSE_CODE = 1013
"""WebSocket close code after a ``lagging`` notice ("try again later", RFC 6455 registry)."""

Row = tuple[str, str, str, int, int | None, int]
"""(level, entity_id, resource_type, used, limit, reserved); amounts in micro-units."""


@dataclass(frozen=True)
class Filters:
    """What one subscription wants: one tenant (``tenant_id``), or every tenant
    (``tenant_id`` None, ``scope="all"``: admins only), optionally narrowed by level, entity,
    resource and message ``types`` (None: every type the scope offers)."""

    tenant_id: str | None
    level: str | None = None
    entity_id: str | None = None
    resource_type: str | None = None
    types: frozenset[str] | None = None

    @property
    def all_tenants(self) -> bool:
        return self.tenant_id is None

    def wants(self, type_: str) -> bool:
        if self.types is not None:
            return type_ in self.types
        return not self.all_tenants or type_ in ALL_TENANTS_TYPES

    def accepts(self, message: Mapping[str, Any]) -> bool:
        """A violation or alert message: its type, tenant and entity are wanted."""
        if not self.wants(message["type"]):
            return False
        if not self.all_tenants and message["data"].get("tenant_id") != self.tenant_id:
            return False
        return self.matches(*message_entity(message))

    def matches(self, level: str, entity_id: str, resource_type: str) -> bool:
        return (
            (self.level is None or self.level == level)
            and (self.entity_id is None or self.entity_id == entity_id)
            and (self.resource_type is None or self.resource_type == resource_type)
        )


def parse_types(raw: str | None, all_tenants: bool) -> frozenset[str] | None:
    """``types``: comma-separated message types, or None for every type the scope offers."""
    if raw is None or not raw.strip():
        return None
    types = frozenset(t.strip() for t in raw.split(",") if t.strip())
    unknown = sorted(types - set(MESSAGE_TYPES))
    if unknown:
        raise ApiError(
            400,
            "invalid_types",
            f"unknown types {', '.join(unknown)}; types is a comma-separated list of "
            + ", ".join(MESSAGE_TYPES),
        )
    if all_tenants and "usage_updated" in types:
        raise ApiError(
            400,
            "invalid_types",
            "scope=all offers violations and alerts only, not usage_updated",
        )
    return types


def parse_filters(query: Mapping[str, str]) -> Filters:
    """The subscription from the query string, or ``ApiError(400)`` (answered before the
    upgrade). ``entity_id`` alone (or ``tenant_id``) subscribes to a whole tenant, every
    level; ``level`` narrows to that level (with ``entity_id``, to one entity, which for a
    project or user needs ``tenant_id``); ``resource_type`` narrows to one resource; ``types``
    to some message types. ``scope=all`` subscribes to the violations and alerts of every
    tenant (no ``entity_id`` or ``tenant_id``; ``level`` and ``resource_type`` still narrow)."""
    level = query.get("level") or None
    entity_id = query.get("entity_id") or None
    tenant_id = query.get("tenant_id") or None
    resource_type = query.get("resource_type") or None
    scope = query.get("scope") or "tenant"
    if scope not in LIVE_SCOPES:
        raise ApiError(400, "invalid_scope", f"scope must be one of {', '.join(LIVE_SCOPES)}")
    if level is not None and level not in LIVE_LEVELS:
        raise ApiError(400, "invalid_level", f"level must be one of {', '.join(LIVE_LEVELS)}")
    if resource_type is not None and resource_type not in RESOURCE_TYPES:
        raise ApiError(400, "invalid_resource_type", f"unknown resource_type {resource_type!r}")
    types = parse_types(query.get("types"), scope == "all")
    if scope == "all":
        if entity_id is not None or tenant_id is not None:
            raise ApiError(
                400, "invalid_scope", "scope=all takes no entity_id or tenant_id (every tenant)"
            )
        return Filters(None, level, None, resource_type, types)
    if level in (None, "tenant") and tenant_id is None:
        tenant_id = entity_id
        if level is None:
            entity_id = None  # the whole tenant
    if tenant_id is None:
        if entity_id is None:
            raise ApiError(400, "missing_entity_id", "tenant_id or entity_id is required")
        raise ApiError(400, "missing_tenant_id", f"tenant_id is required for level {level}")
    if level == "tenant" and entity_id not in (None, tenant_id):
        raise ApiError(400, "invalid_entity", "tenant_id and entity_id differ")
    if tenant_id == "system":
        raise ApiError(400, "invalid_entity", "the live feed serves tenants, not system")
    if level == "tenant":
        entity_id = tenant_id
    return Filters(tenant_id, level, entity_id, resource_type, types)


# --- usage snapshots (published by the tenant's owner) ----------------------------------------


def usage_rows(state: q.TenantState) -> Iterator[Row]:
    """Every (entity, resource) of the tenant with a quota or usage, as the utilization view
    computes it (windowed usage in its current window, reservations in force)."""
    ekeys = sorted(set(state.quotas) | set(state.usage))
    for ekey in ekeys:
        level, entity_id = q.split_entity_key(ekey)
        if level not in LIVE_LEVELS:
            continue
        for row in q.utilization_view(state, level, entity_id):
            yield (
                level,
                entity_id,
                row["resource_type"],
                row["used"],
                row["limit"],
                row["reserved"],
            )


class UsageDiff:
    """The rows last published per tenant, so a snapshot carries only what changed.

    Bounded to ``max_tenants`` (least recently published dropped first): a tenant that was
    dropped publishes all its rows again next time, which is correct, only larger."""

    def __init__(self, max_tenants: int = 1000) -> None:
        self.max_tenants = max_tenants
        self._last: dict[str, dict[tuple[str, str, str], tuple[int, int | None, int]]] = {}

    def changed(self, tenant: str, rows: Iterator[Row]) -> list[Row]:
        before = self._last.pop(tenant, {})
        now: dict[tuple[str, str, str], tuple[int, int | None, int]] = {}
        out: list[Row] = []
        for row in rows:
            key, value = row[:3], row[3:]
            now[key] = value
            if before.get(key) != value:
                out.append(row)
        # a row that disappeared (quota deleted, usage released to nothing) reads as zero
        for key in before.keys() - now.keys():
            out.append((*key, 0, None, 0))
        self._last[tenant] = now
        while len(self._last) > self.max_tenants:
            del self._last[next(iter(self._last))]
        return out

    def forget(self, tenant: str) -> None:
        self._last.pop(tenant, None)


def snapshot_body(tenant: str, watermark_us: int, rows: list[Row]) -> dict[str, Any]:
    """The internal live record of one tenant (not part of the contract)."""
    return {"tenant_id": tenant, "as_of_us": watermark_us, "rows": [list(r) for r in rows]}


def _number(micros: int | None) -> float | int | None:
    """Micro-units in contract units: an int when whole (as the HTTP views render them)."""
    if micros is None:
        return None
    whole, frac = divmod(micros, 1_000_000)
    return whole if frac == 0 else micros / 1_000_000


def usage_messages(body: Mapping[str, Any], filters: Filters) -> Iterator[dict[str, Any]]:
    """The ``usage_updated`` messages of one snapshot record that ``filters`` wants."""
    if not filters.wants("usage_updated"):
        return
    tenant = body["tenant_id"]
    as_of_us = int(body["as_of_us"])
    as_of = format_time_us(as_of_us) if as_of_us else None
    for level, entity_id, resource, used, limit, reserved in body["rows"]:
        if not filters.matches(level, entity_id, resource):
            continue
        utilization = utilization_pct(used, limit) if limit is not None else None
        yield {
            "type": "usage_updated",
            "data": {
                "tenant_id": tenant,
                "level": level,
                "entity_id": entity_id,
                "resource_type": resource,
                "used": _number(used),
                "limit": _number(limit),
                "reserved": _number(reserved),
                "utilization": None if utilization is None else round(float(utilization), 3),
                "as_of": as_of,
            },
        }


# --- violations and alerts (from the public output topics) ------------------------------------


def violation_message(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """``quota_exceeded`` / ``violation_resolved`` with the CloudEvent's data unchanged."""
    kind = {
        "quota.violation": "quota_exceeded",
        "quota.violation_resolved": "violation_resolved",
    }.get(str(event.get("type")))
    data = event.get("data")
    if kind is None or not isinstance(data, dict):
        return None
    return {"type": kind, "data": data}


def alert_message(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """``cost_alert`` for the projection workers' budget alerts (kind ``cost``), else
    ``alert``, with the CloudEvent's data unchanged."""
    data = event.get("data")
    if event.get("type") != "quota.alert" or not isinstance(data, dict):
        return None
    return {"type": "cost_alert" if data.get("kind") == "cost" else "alert", "data": data}


def message_entity(message: Mapping[str, Any]) -> tuple[str, str, str]:
    data = message["data"]
    return str(data.get("level")), str(data.get("entity_id")), str(data.get("resource_type"))


def lagging_message(missed: int) -> dict[str, Any]:
    return {
        "type": "lagging",
        "data": {
            "missed": missed,
            "message": "the client read too slowly and is disconnected; reconnect and read "
            "/api/v1/quotas/utilization for the current figures",
        },
    }


# --- one client's queue -------------------------------------------------------------------------


class Subscriber:
    """One WebSocket client's bounded queue.

    ``offer`` never blocks and never grows the queue past ``max_pending``: a ``usage_updated``
    replaces the pending one of the same entity and resource (coalesced); anything else is
    queued. A client whose queue is full is marked lagging: what was pending is dropped
    (counted in ``missed``), it gets a ``lagging`` notice and is closed. The sender drains the
    queue with ``take``; a send that blocks holds up this client only."""

    _seq = itertools.count()

    def __init__(
        self,
        filters: Filters,
        max_pending: int,
        on_lagging: Callable[[], None] | None = None,
    ) -> None:
        self.filters = filters
        self.max_pending = max_pending
        self.on_lagging = on_lagging
        self.pending: dict[Hashable, dict[str, Any]] = {}
        self.lagging = False
        self.missed = 0
        self.coalesced = 0
        self.wake: Any = None
        """An ``asyncio.Event`` set when there is something to send (set by the server)."""

    def offer(self, message: dict[str, Any]) -> None:
        if self.lagging:
            self.missed += 1
            return
        key: Hashable
        if message["type"] == "usage_updated":
            key = ("usage", *message_entity(message))
            if self.pending.pop(key, None) is not None:
                self.coalesced += 1
        else:
            key = next(self._seq)
        if len(self.pending) >= self.max_pending:
            self.lagging = True
            self.missed += len(self.pending) + 1
            self.pending.clear()
            if self.on_lagging is not None:
                self.on_lagging()
        else:
            self.pending[key] = message
        if self.wake is not None:
            self.wake.set()

    def take(self) -> list[dict[str, Any]]:
        out = list(self.pending.values())
        self.pending.clear()
        if self.wake is not None:
            self.wake.clear()
        return out
