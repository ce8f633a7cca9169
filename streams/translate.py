"""Decoded CloudEvents -> inputs of the pure core (and core outputs -> CloudEvents).

Pure functions: the agents call them between decoding and ``streams.quota.apply``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from novaquota.schemas import commands as cmd
from novaquota.schemas import resource_events as rev
from novaquota.schemas.allocation import instance_key, instance_key_for, is_release, resources_of
from novaquota.schemas.amounts import from_micros, to_micros
from novaquota.schemas.codec import Decoded, encode
from novaquota.schemas.common import datetime_to_us
from novaquota.schemas.templates import BUILTIN_TEMPLATES, expand_template
from novaquota.streams import quota as q

__all__ = [
    "OUTPUT_SOURCE",
    "UnknownTemplateError",
    "encode_output",
    "output_topic",
    "to_inputs",
]

OUTPUT_SOURCE = "novaquota/enforcement"


class UnknownTemplateError(ValueError):
    """``template.applied`` names a template that no one defined."""


def _scope(data: rev.ResourceEvent) -> q.Scope:
    return q.Scope(data.tenant_id, data.project_id, data.user_id)


def _micros(value: Decimal | None) -> int | None:
    return None if value is None else to_micros(value)


def _quota_set(data: cmd.QuotaSet, d: Decoded) -> q.QuotaSet:
    return q.QuotaSet(
        level=data.level,
        entity_id=data.entity_id,
        tenant_id=data.tenant_id,
        resource_type=data.resource_type,
        limit=to_micros(data.limit),
        limit_type=data.limit_type,
        burst_limit=_micros(data.burst_limit),
        burst_seconds=data.burst_seconds,
        grace_seconds=data.grace_seconds,
        window=data.window,
        status=data.status,
        enforcement_action=data.enforcement_action,
        actor=data.actor,
        time_us=d.time_us,
        source=d.source,
        event_id=d.id,
    )


def to_inputs(
    d: Decoded, templates: Callable[[str], cmd.TemplateSpec | None] | None = None
) -> list[q.Input]:
    """The core inputs one decoded message stands for (a template expands into several).

    ``templates`` looks up custom templates by name (built-in tiers are always known).
    Raises ``UnknownTemplateError`` for a template nobody defined.
    """
    data: Any = d.data
    common: dict[str, Any] = {"time_us": d.time_us, "source": d.source, "event_id": d.id}
    if d.kind == "resource":
        t = d.type
        if t == "network.sampled":
            return [
                q.GaugeSample(
                    scope=_scope(data),
                    interface_id=data.interface_id,
                    resources=resources_of(d),
                    **common,
                )
            ]
        if t == "api.requests":
            return [
                q.Consumption(
                    scope=_scope(data),
                    resource_type="api_requests",
                    amount=to_micros(data.count),
                    **common,
                )
            ]
        if t == "inventory.reported":
            items = [
                (
                    instance_key_for(i.kind, i.resource_id),
                    q.Scope(i.tenant_id, i.project_id, i.user_id),
                    {k: to_micros(v) for k, v in i.resources.items()},
                )
                for i in data.instances
            ]
            return [
                q.Inventory(
                    tenant_id=data.tenant_id,
                    source_system=data.source_system,
                    as_of_us=datetime_to_us(data.as_of),
                    instances=items,
                    **common,
                )
            ]
        return [
            q.Allocation(
                scope=_scope(data),
                instance_key=instance_key(d),
                resources=resources_of(d),
                release=is_release(d),
                **common,
            )
        ]
    # --- commands ---
    if isinstance(data, cmd.QuotaSet):
        return [_quota_set(data, d)]
    if isinstance(data, cmd.QuotaDeleted):
        return [
            q.QuotaDeleted(
                level=data.level,
                entity_id=data.entity_id,
                tenant_id=data.tenant_id,
                resource_type=data.resource_type,
                actor=data.actor,
                **common,
            )
        ]
    if isinstance(data, cmd.TemplateApplied):
        spec = BUILTIN_TEMPLATES.get(data.template)
        if spec is None and templates is not None:
            spec = templates(data.template)
        if spec is None:
            raise UnknownTemplateError(
                f"data.template: no template named {data.template!r}; built-in tiers are "
                f"{', '.join(sorted(BUILTIN_TEMPLATES))}; define others with template.defined"
            )
        return [
            _quota_set(qs, d)
            for qs in expand_template(spec, data.level, data.entity_id, data.tenant_id, data.actor)
        ]
    if isinstance(data, cmd.ReservationCreated):
        return [
            q.ReservationCreated(
                reservation_id=data.reservation_id,
                level=data.level,
                entity_id=data.entity_id,
                tenant_id=data.tenant_id,
                resource_type=data.resource_type,
                amount=to_micros(data.amount),
                start_us=datetime_to_us(data.start),
                end_us=datetime_to_us(data.end),
                purpose=data.purpose,
                actor=data.actor,
                **common,
            )
        ]
    if isinstance(data, cmd.ReservationCancelled):
        return [
            q.ReservationCancelled(
                reservation_id=data.reservation_id,
                tenant_id=data.tenant_id or "",
                actor=data.actor,
                **common,
            )
        ]
    if isinstance(data, cmd.RateLimitSet):
        return [
            q.RateLimitSet(
                level=data.level,
                entity_id=data.entity_id,
                tenant_id=data.tenant_id,
                rate_per_second_micros=to_micros(data.rate_per_second),
                burst_micros=to_micros(data.burst),
                actor=data.actor,
                **common,
            )
        ]
    if isinstance(data, cmd.BudgetSet):
        return [
            q.BudgetSet(
                level=data.level,
                entity_id=data.entity_id,
                tenant_id=data.tenant_id,
                monthly_usd_micros=to_micros(data.monthly_usd),
                thresholds=tuple(int(t) for t in data.thresholds),
                actor=data.actor,
                **common,
            )
        ]
    if isinstance(data, cmd.TenantDeleted):
        return [q.TenantDeleted(tenant_id=data.tenant_id, actor=data.actor, **common)]
    # template.defined is stored by the agent (a global table), not by the tenant core.
    return []


# --- outputs ---------------------------------------------------------------------------------


def _num(micros: int | None) -> Decimal | None:
    return None if micros is None else from_micros(micros)


def _percent(value: float | None) -> Decimal | None:
    """A percentage as an exact decimal of 3 places; None (JSON null) stays None: a zero limit
    has no utilization (contract section 5)."""
    return None if value is None else Decimal(str(round(value, 3)))


def output_topic(out: q.Output) -> str:
    """The contract topic suffix of a core output."""
    if isinstance(out, q.ViolationOpened | q.ViolationResolved):
        return "quota-violations"
    if isinstance(out, q.Alert):
        return "quota-alerts"
    return "audit"


def _violation_data(v: q.ViolationOpened | q.ViolationResolved) -> dict[str, Any]:
    data: dict[str, Any] = {
        "violation_id": v.violation_id,
        "tenant_id": v.tenant_id,
        "level": v.level,
        "entity_id": v.entity_id,
        "resource_type": v.resource_type,
        "kind": v.kind,
        "limit_type": v.limit_type,
        "limit": _num(v.limit),
        "burst_limit": _num(v.burst_limit),
        "usage": _num(v.usage),
        "detected_at": _iso(v.detected_at_us),
        "cause_event_id": v.cause_event_id,
        "enforcement_action": v.enforcement_action,
        "severity": v.severity,
    }
    if isinstance(v, q.ViolationResolved):
        data["resolved_at"] = _iso(v.resolved_at_us)
        data["resolved_cause_event_id"] = v.cause_event_id or None
        # the episode's cause stays the one that opened it
        data["cause_event_id"] = v.opened_cause_event_id or v.cause_event_id
    return data


def _iso(time_us: int) -> str:
    from novaquota.schemas.common import format_time_us

    return format_time_us(time_us)


_AMOUNT_KEYS = frozenset({"limit", "burst_limit", "amount", "used", "reserved"})


def _human(value: Any, key: str = "") -> Any:
    """Audit details in the contract's units: micro-units become exact decimals, ``*_us``
    times become RFC 3339, so a reader never sees the core's internal integers."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            k = str(k)
            if k.endswith("_micros") and isinstance(v, int):
                out[k.removesuffix("_micros")] = from_micros(v)
            elif k.endswith("_us") and isinstance(v, int):
                out[k.removesuffix("_us")] = _iso(v)
            elif k in ("resources", "usage", "totals"):
                out[k] = _micro_leaves(v)
            elif k in _AMOUNT_KEYS and isinstance(v, int):
                out[k] = from_micros(v)
            else:
                out[k] = _human(v, k)
        return out
    if isinstance(value, list | tuple):
        return [_human(v, key) for v in value]
    return value


def _micro_leaves(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _micro_leaves(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return from_micros(value)
    return value


def _audit_value(subject: str, value: Any) -> Any:
    if subject.startswith("usage/") and isinstance(value, int):
        return from_micros(value)  # a usage correction: before/after are amounts
    return _human(value)


def encode_output(out: q.Output, *, cause_type: str, cause_source: str) -> tuple[str, bytes]:
    """(topic suffix, structured CloudEvent bytes) for one core output."""
    topic = output_topic(out)
    if isinstance(out, q.ViolationOpened | q.ViolationResolved):
        body = encode(
            out.event_type,
            _violation_data(out),
            source=OUTPUT_SOURCE,
            id=out.event_id,
            time_us=out.resolved_at_us
            if isinstance(out, q.ViolationResolved)
            else out.detected_at_us,
            subject=f"{out.level}/{out.entity_id}/{out.resource_type}",
        )
        return topic, body
    if isinstance(out, q.Alert):
        data = {
            "alert_id": out.alert_id,
            "tenant_id": out.tenant_id,
            "level": out.level,
            "entity_id": out.entity_id,
            "resource_type": out.resource_type,
            "kind": out.kind,
            "threshold": out.threshold,
            "utilization": _percent(out.utilization),
            "severity": out.severity,
            "message": out.message,
            "detected_at": _iso(out.time_us),
            "cause_event_id": out.cause_event_id or None,
        }
        body = encode(
            "quota.alert",
            data,
            source=OUTPUT_SOURCE,
            id=out.alert_id,
            time_us=out.time_us,
            subject=f"{out.level}/{out.entity_id}/{out.resource_type}",
        )
        return topic, body
    assert isinstance(out, q.Audit)
    audit_type = _AUDIT_TYPES.get(out.action, "audit.command_applied")
    audit: dict[str, Any] = {
        "actor": out.actor or "unknown",
        "cause": {"source": cause_source, "id": out.cause_event_id, "type": cause_type},
        "tenant_id": out.tenant_id,
        "details": {
            "action": out.action,
            "subject": out.subject,
            "before": _audit_value(out.subject, out.before),
            "after": _audit_value(out.subject, out.after),
            **({"reason": out.reason} if out.reason else {}),
        },
    }
    body = encode(audit_type, audit, source=OUTPUT_SOURCE, id=out.audit_id, time_us=out.time_us)
    return topic, body


_AUDIT_TYPES: dict[str, str] = {
    "audit.correction": "audit.correction",
    "audit.tenant_purged": "audit.tenant_purged",
    "audit.reservation_granted": "audit.reservation_granted",
    "audit.reservation_released": "audit.reservation_released",
    "audit.reservation_expired": "audit.reservation_expired",
    "audit.command_rejected": "audit.command_rejected",
}


def with_tenant(decoded: Decoded, tenant: str) -> Decoded:
    """A command that may omit its tenant (``reservation.cancelled``) takes the message key's;
    the worker and the audit replay route the same way."""
    if decoded.tenant_id is not None:
        return decoded
    data = decoded.data.model_copy(update={"tenant_id": tenant})
    return Decoded(
        envelope=decoded.envelope,
        data=data,
        type=decoded.type,
        time_us=decoded.time_us,
        kind=decoded.kind,
    )
