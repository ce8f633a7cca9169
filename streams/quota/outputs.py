"""Outputs of the decision function; the glue wraps each in a CloudEvent (or a dead letter).

| output | topic | CloudEvent type | CloudEvent id |
|---|---|---|---|
| ViolationOpened | quota-violations | quota.violation | ``violation_id`` |
| ViolationResolved | quota-violations | quota.violation_resolved | ``event_id`` |
| Alert | quota-alerts | quota.alert | ``alert_id`` |
| Audit | audit | ``action`` (``audit.*``) | ``audit_id`` |
| Rejected | dead-letter | (original bytes, header error.reason = ``reason``) | — |

Times are ``*_us`` ints; the glue renders them as RFC 3339. Amounts are int micro-units.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .ids import det_id

__all__ = ["Alert", "Audit", "Output", "Rejected", "ViolationOpened", "ViolationResolved"]


class _Dictable:
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class ViolationOpened(_Dictable):
    event_type: ClassVar[str] = "quota.violation"
    violation_id: str
    tenant_id: str
    level: str
    entity_id: str
    resource_type: str
    kind: str
    limit_type: str
    limit: int
    burst_limit: int | None
    usage: int
    """Usage evaluated against the limit: used + reserved-in-window (or the window's count)."""
    reserved: int
    detected_at_us: int
    cause_event_id: str
    enforcement_action: str
    severity: str
    window: str | None = None
    window_end_us: int | None = None

    @property
    def event_id(self) -> str:
        return self.violation_id


@dataclass(frozen=True, slots=True, kw_only=True)
class ViolationResolved(_Dictable):
    event_type: ClassVar[str] = "quota.violation_resolved"
    violation_id: str
    tenant_id: str
    level: str
    entity_id: str
    resource_type: str
    kind: str
    limit_type: str
    limit: int
    burst_limit: int | None
    usage: int
    reserved: int
    detected_at_us: int
    resolved_at_us: int
    cause_event_id: str
    """The input that ended the episode ("" when a window close or expiry did)."""
    enforcement_action: str
    severity: str
    reason: str
    opened_cause_event_id: str = ""
    """The episode's own cause (the ``cause_event_id`` of the ``ViolationOpened``)."""

    @property
    def event_id(self) -> str:
        return det_id("resolved", self.violation_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert(_Dictable):
    event_type: ClassVar[str] = "quota.alert"
    alert_id: str
    tenant_id: str
    level: str
    entity_id: str
    resource_type: str
    kind: str
    threshold: int | None
    utilization: float | None
    """Percent of the limit; None for a zero limit (no percentage describes usage against it)."""
    severity: str
    message: str
    usage: int
    limit: int
    time_us: int
    cause_event_id: str

    @property
    def event_id(self) -> str:
        return self.alert_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Audit(_Dictable):
    event_type: ClassVar[str] = "audit"
    audit_id: str
    tenant_id: str
    action: str
    """The CloudEvent type, e.g. ``audit.quota_set`` or ``audit.correction``."""
    actor: str
    cause_event_id: str
    time_us: int
    subject: str
    before: Any
    after: Any
    reason: str = ""

    @property
    def event_id(self) -> str:
        return self.audit_id


@dataclass(frozen=True, slots=True)
class Rejected(_Dictable):
    """The input had no effect; the glue dead-letters it with ``reason``."""

    event_type: ClassVar[str] = "dead-letter"
    reason: str
    message: str


Output = ViolationOpened | ViolationResolved | Alert | Audit | Rejected
