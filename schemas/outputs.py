"""``data`` of what the system writes (contract section 5 and the audit topic).

These are our own records, so they are strict (``extra="forbid"``): a typo in the stream that
builds them fails a test instead of publishing a field nobody reads. Amounts are exact decimals.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field

from novaquota.schemas.common import (
    AlertKind,
    EnforcementAction,
    Id,
    Level,
    LimitType,
    ResourceType,
    Severity,
    Timestamp,
    ViolationKind,
)

__all__ = [
    "AUDIT_MODELS",
    "OUTPUT_MODELS",
    "AuditCommandApplied",
    "AuditCommandRejected",
    "AuditCorrection",
    "AuditRecord",
    "AuditReservationExpired",
    "AuditReservationGranted",
    "AuditReservationReleased",
    "AuditTenantPurged",
    "Cause",
    "Output",
    "QuotaAlert",
    "QuotaViolation",
    "QuotaViolationResolved",
]

#: An exact, finite decimal (usage, limits, percentages); never a float.
Number = Annotated[Decimal, Field(allow_inf_nan=False)]


class Output(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    TYPE: ClassVar[str] = ""
    TOPIC: ClassVar[str] = ""


class QuotaViolation(Output):
    """Opens a violation episode; ``violation_id`` is deterministic (replays re-derive it)."""

    TYPE: ClassVar[str] = "quota.violation"
    TOPIC: ClassVar[str] = "quota-violations"

    violation_id: Id
    tenant_id: Id
    level: Level
    entity_id: Id
    resource_type: ResourceType
    kind: ViolationKind
    limit_type: LimitType
    limit: Number
    burst_limit: Number | None = None
    usage: Number
    detected_at: Timestamp
    cause_event_id: str
    enforcement_action: EnforcementAction
    severity: Severity
    window_start: Timestamp | None = None


class QuotaViolationResolved(QuotaViolation):
    """Closes the episode of the same ``violation_id``; ``usage`` is the usage that ended it."""

    TYPE: ClassVar[str] = "quota.violation_resolved"
    resolved_at: Timestamp
    resolved_cause_event_id: str | None = None


class QuotaAlert(Output):
    """An early warning (threshold crossings, burst, soft limit, cost, forecast, anomaly)."""

    TYPE: ClassVar[str] = "quota.alert"
    TOPIC: ClassVar[str] = "quota-alerts"

    alert_id: Id
    tenant_id: Id
    level: Level
    entity_id: Id
    resource_type: ResourceType
    kind: AlertKind
    threshold: Number | None = None
    utilization: Number | None
    """Percent of the limit; null for a zero limit ("none of this resource", contract section 5),
    finite otherwise. Always present, so a reader can tell "no percentage" from a missing field."""
    severity: Severity
    message: str
    detected_at: Timestamp | None = None
    cause_event_id: str | None = None


class Cause(BaseModel):
    """The input that caused an audited change: its CloudEvent (source, id, type)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    id: str
    type: str


class AuditRecord(Output):
    """Base of every ``audit.*`` record: who, why, for which tenant, and what exactly."""

    TOPIC: ClassVar[str] = "audit"

    actor: Id
    cause: Cause
    tenant_id: Id
    details: dict[str, Any] = {}


class AuditCommandApplied(AuditRecord):
    """An accepted command took effect; ``details`` holds the command's data."""

    TYPE: ClassVar[str] = "audit.command_applied"


class AuditCommandRejected(AuditRecord):
    """A well-formed command that the state refused (e.g. unknown template); ``details.reason``."""

    TYPE: ClassVar[str] = "audit.command_rejected"


class AuditCorrection(AuditRecord):
    """An automatic adjustment (inventory reconciliation): instance, before and after."""

    TYPE: ClassVar[str] = "audit.correction"


class AuditReservationGranted(AuditRecord):
    TYPE: ClassVar[str] = "audit.reservation_granted"


class AuditReservationReleased(AuditRecord):
    """Converted into usage by its allocation event, or cancelled."""

    TYPE: ClassVar[str] = "audit.reservation_released"


class AuditReservationExpired(AuditRecord):
    """The TTL passed (owner's wall clock) before the allocation event arrived."""

    TYPE: ClassVar[str] = "audit.reservation_expired"


class AuditTenantPurged(AuditRecord):
    """``tenant.deleted`` released everything and purged the tenant's state."""

    TYPE: ClassVar[str] = "audit.tenant_purged"


AUDIT_MODELS: Final[dict[str, type[AuditRecord]]] = {
    model.TYPE: model
    for model in (
        AuditCommandApplied,
        AuditCommandRejected,
        AuditCorrection,
        AuditReservationGranted,
        AuditReservationReleased,
        AuditReservationExpired,
        AuditTenantPurged,
    )
}

OUTPUT_MODELS: Final[dict[str, type[Output]]] = {
    QuotaViolation.TYPE: QuotaViolation,
    QuotaViolationResolved.TYPE: QuotaViolationResolved,
    QuotaAlert.TYPE: QuotaAlert,
    **AUDIT_MODELS,
}
