"""HTTP API response bodies of the state views of both servers (contract section 6).

These models describe the JSON the views already return (``streams.web``, ``streams.checks``,
``projections.http``); they exist so the OpenAPI document types every response and so tests can
check real answers against them. Amounts are JSON numbers in contract units (``float`` here:
a JSON integer is a number too). Field names are what clients read today: never rename one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from novaquota.schemas.api import GrantView
from novaquota.schemas.common import (
    EnforcementAction,
    Id,
    LimitType,
    ResourceType,
    Status,
    TenantId,
    Window,
)

__all__ = [
    "AnalyticsResponse",
    "AsOf",
    "AuditCause",
    "AuditPage",
    "AuditRecordView",
    "CommandAccepted",
    "CommandStatus",
    "CostResponse",
    "DeadLetterRecord",
    "DeadLetters",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "HierarchyProject",
    "HierarchyResponse",
    "HistoryResponse",
    "Index",
    "InternalSystem",
    "InternalUsage",
    "OpenApiDocumentBody",
    "OperationsOverview",
    "OverviewResponse",
    "PricingResponse",
    "ProjectionStatus",
    "QuotaFields",
    "QuotaRow",
    "QuotaSetRequest",
    "QuotasPage",
    "Readiness",
    "ReleasedGrant",
    "ReservationRequest",
    "ReservationsList",
    "ScheduledReservation",
    "TemplateApplyRequest",
    "TemplateDefinition",
    "TemplateRecommendationResponse",
    "TemplateView",
    "TemplatesList",
    "TenantRow",
    "TenantsPage",
    "UiConfig",
    "UtilizationResponse",
    "UtilizationRow",
    "WhoAmI",
    "WorkerMember",
]

Number = float
_DATE_TIME: dict[str, Any] = {"format": "date-time"}
Level = Literal["system", "tenant", "project", "user"]


class _View(BaseModel):
    """A response body: tolerant of fields added later (additive changes are not breaking)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class ErrorDetail(_View):
    code: str = Field(description="machine-readable, e.g. invalid_request, not_found")
    message: str = Field(description="for people")


class ErrorBody(_View):
    """Every answer that is not a success (contract section 6)."""

    error: ErrorDetail


class AsOf(_View):
    """What a state read reflects: the newest event time and the input offsets."""

    event_time: str | None = None
    offsets: dict[str, int] = Field(default_factory=dict)
    system: dict[str, Any] | None = Field(
        default=None, description="checks only: age of the system snapshot"
    )


# --- enforcement workers (6066) -------------------------------------------------------------------


class UtilizationRow(_View):
    resource_type: str
    limit: Number | None
    burst_limit: Number | None
    used: Number
    reserved: Number
    available: Number | None
    utilization: Number | None = Field(description="used / limit * 100; null for a zero limit")
    limit_type: str | None
    status: str | None
    window: str | None
    open_violations: list[str]


class UtilizationResponse(_View):
    tenant_id: str
    level: Level
    entity_id: str
    resources: list[UtilizationRow]
    as_of: AsOf


class QuotaRow(_View):
    tenant_id: str
    level: Level
    entity_id: str
    resource_type: str
    limit_type: str
    limit: Number
    burst_limit: Number | None
    burst_seconds: int | None
    grace_seconds: int | None
    window: str | None
    status: str
    enforcement_action: str
    set_at: str
    cause_event_id: str
    used: Number
    reserved: Number
    utilization: Number | None


class QuotasPage(_View):
    tenant_id: str
    quotas: list[QuotaRow]
    total: int
    next_page_token: str | None = Field(description="pass as page_token for the next page")
    as_of: AsOf


class HierarchyProject(_View):
    project_id: str
    users: list[str] = Field(
        description="users holding live resources (instances or gauges) in this project"
    )


class HierarchyResponse(_View):
    """``GET /api/v1/quotas/hierarchy``: which project each user of a tenant holds resources
    in, read from the owner's state (its live instances and gauges)."""

    tenant_id: str
    projects: list[HierarchyProject] = Field(
        description="every project with a quota, usage or a live resource, by id"
    )
    unassigned_users: list[str] = Field(
        description="users with a quota, usage or live resource but none held in a project"
    )
    truncated: bool = Field(
        description="true when the tenant has more instances than one answer scans (the "
        "pairs of the ones past the limit are missing)"
    )
    as_of: AsOf


class ReservationRequest(BaseModel):
    """``POST /api/v1/quotas/reservations``: becomes a ``reservation.created`` command, which
    validates it (a bad one answers 400)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    tenant_id: TenantId
    level: Level = "tenant"
    entity_id: Id | None = Field(default=None, description="default: the tenant")
    resource_type: ResourceType
    amount: Number | str = Field(description="in the resource's unit; a decimal string is exact")
    start: str = Field(description="RFC 3339 with an offset", json_schema_extra=_DATE_TIME)
    end: str = Field(description="RFC 3339 with an offset", json_schema_extra=_DATE_TIME)
    purpose: str = ""
    reservation_id: Id | None = Field(default=None, description="default: a new uuid")


class ScheduledReservation(_View):
    reservation_id: str
    level: Level
    entity_id: str
    resource_type: str
    amount: Number
    start: str
    end: str
    purpose: str
    actor: str
    cause_event_id: str
    created_at_us: int


class ReservationsList(_View):
    tenant_id: str
    scheduled: list[ScheduledReservation]
    grants: list[GrantView]
    as_of: AsOf


class CommandAccepted(_View):
    """202: the command is published; it takes effect when the tenant's agent applies it."""

    command_id: str
    reservation_id: str


# --- quota and template management (streams.manage) --------------------------------------


class QuotaFields(BaseModel):
    """A quota's fields besides its entity: ``quota.set`` data (contract section 4), validated
    by the worker's own model before anything is published (a bad one answers 400)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    tenant_id: TenantId | None = Field(
        default=None, description="or in the query; required for a project or user"
    )
    limit: Number = Field(ge=0, description="in the resource's unit")
    limit_type: LimitType = "hard"
    burst_limit: Number | None = Field(default=None, ge=0, description="at least limit")
    burst_seconds: int | None = Field(default=None, ge=0)
    grace_seconds: int | None = Field(default=None, ge=0, description="soft limits only")
    window: Window | None = Field(default=None, description="api_requests and cost only")
    status: Status = "active"
    enforcement_action: EnforcementAction = "deny"


class QuotaSetRequest(QuotaFields):
    """``POST /api/v1/quotas``: the whole ``quota.set``."""

    level: Level = "tenant"
    entity_id: Id | None = Field(default=None, description="default: the tenant")
    resource_type: ResourceType


class TemplateApplyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    tenant_id: TenantId | None = Field(default=None, description="or in the query")
    level: Level = "tenant"
    entity_id: Id | None = Field(default=None, description="default: the tenant")


class TemplateQuota(QuotaFields):
    resource_type: ResourceType


class TemplateDefinition(BaseModel):
    """``POST /api/v1/quotas/templates``: ``template.defined`` data (admin only)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: Id
    description: str = ""
    quotas: list[TemplateQuota] = Field(min_length=1)
    monthly_cost: Number = Field(default=0, ge=0)


class TemplateView(_View):
    name: str
    description: str
    quotas: list[dict[str, Any]]
    monthly_cost: Number
    builtin: bool


class TemplatesList(_View):
    templates: list[TemplateView]


class CommandStatus(_View):
    """A management command: the 202/200 answer of a change and ``GET /api/v1/commands/{id}``."""

    command_id: str
    status: Literal["pending", "applied", "rejected"]
    type: str | None = Field(default=None, description="the command's type (answers of changes)")
    tenant_id: str | None = None
    quotas: list[QuotaRow] | None = Field(
        default=None, description="applied: the entity's quotas now (when the query names it)"
    )
    template: TemplateView | None = Field(default=None, description="applied template.defined")
    reason: str | None = Field(default=None, description="rejected: the dead-letter reason")
    message: str | None = None
    as_of: AsOf | None = None


class WhoAmI(_View):
    """The caller's principal (``GET /api/v1/auth/whoami``)."""

    subject: str = Field(description="as the audit topic records it: token:<name>, jwt:<sub>")
    role: Literal["admin", "tenant-admin", "viewer", "service"]
    tenant_id: str | None = Field(description="the one tenant it acts for; null for an admin")
    actions: list[Literal["read", "check", "write", "admin"]] = Field(
        description="what the role may do (streams.auth.ALLOWED)"
    )


class ReleasedGrant(_View):
    released: GrantView


class Health(_View):
    """Liveness of either worker."""

    status: str
    crashed: bool | None = None
    crash_reason: str | None = None
    broker: dict[str, Any] | None = None


class Readiness(_View):
    """Readiness: the enforcement worker reports partitions and lag, the projection worker its
    positions (``ProjectionStatus`` fields)."""

    ready: bool


class UiConfig(_View):
    """``/ui/config.json``: where the dashboard reaches the enforcement API and its WebSocket."""

    api_url: str
    live_url: str


class Index(_View):
    """Faust's production index at ``/``."""

    status: str


class InternalUsage(_View):
    """Debug dump of the tenants on this worker's partitions (tests, benchmarks)."""

    partitions: list[int]
    rebalancing: bool
    recovered: bool
    tenants: dict[str, Any]


class InternalSystem(_View):
    """The system state for the other workers' checks (internal)."""

    state: dict[str, Any] | None
    at: Number


class OpenApiDocumentBody(_View):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any] = Field(default_factory=dict)


# --- projection workers (6067) --------------------------------------------------------------------


class _Entity(_View):
    tenant_id: str
    level: Level
    entity_id: str


class HistoryPoint(_View):
    time: str
    used: Number | None
    peak: Number | None
    limit: Number | None
    utilization: Number | None
    peak_utilization: Number | None


class HistorySummary(_View):
    mean: Number | None
    peak: Number | None
    p95: Number | None
    total: Number | None
    efficiency: Number | None
    steps_with_limit: int


class HistorySeries(_View):
    resource_type: str
    unit: str
    points: list[HistoryPoint]
    summary: HistorySummary


class HistoryResponse(_Entity):
    start: str
    end: str
    step: Literal["minute", "hour", "day"]
    series: list[HistorySeries]
    as_of: AsOf


class CostBudget(_View):
    monthly_usd: Number | None
    thresholds: list[Number]
    utilization: Number | None
    projected_utilization: Number | None


class CostSummary(_View):
    month: str
    currency: str
    month_to_date: Number | None
    projected_month: Number | None
    hourly_rate: Number | None
    by_resource: dict[str, Number | None]
    budget: CostBudget | None


class Recommendation(_View):
    kind: str
    resource_type: str
    message: str


class CostResponse(CostSummary):
    recommendations: list[Recommendation]
    as_of: AsOf


class ResourceAnalytics(_View):
    unit: str
    limit: Number | None
    mean: Number | None
    peak: Number | None
    p95: Number | None
    trend: dict[str, Any] | None
    forecast: dict[str, Any] | None
    time_to_exhaustion: dict[str, Any] | None
    anomalies: list[dict[str, Any]]
    efficiency: Number | None
    errors: list[str]


class AnalyticsResponse(_Entity):
    start: str
    end: str
    resources: dict[str, ResourceAnalytics]
    efficiency: Number | None
    cost: CostSummary
    recommendations: list[Recommendation]
    analytics_available: bool
    as_of: AsOf


class OverviewQuota(_View):
    resource_type: str
    limit: Number | None
    used: Number | None
    utilization: Number | None
    status: Literal["ok", "warning", "critical", "exceeded"]
    limit_type: str
    window: str | None


class OpenViolations(_View):
    count: int
    items: list[dict[str, Any]]


class OverviewResponse(_Entity):
    counts_by_status: dict[str, int]
    quotas: list[OverviewQuota]
    overall_utilization: dict[str, Number | None]
    cost_this_month: Number | None
    projected_monthly_cost: Number | None
    currency: str
    open_violations: OpenViolations
    as_of: AsOf


class TierRecommendation(_View):
    tier: str
    monthly_cost: Number | None
    reason: str


class TemplateRecommendationResponse(_Entity):
    current_template: str | None
    peaks: dict[str, Number | None]
    period_days: int
    recommendation: TierRecommendation
    as_of: AsOf


class PricingResponse(_View):
    currency: str
    prices: dict[str, dict[str, Any]]


class ProjectionStatus(_View):
    ready: bool
    folded: int
    rejected: int
    batches: int
    emitted: int
    watermark: str | None
    positions: dict[str, int]
    behind_start_targets: dict[str, int]
    group_id: str


# --- dashboard (projection workers, 6067) --------------------------------------------------------


class TenantRow(_View):
    tenant_id: TenantId
    utilization: Number | None = Field(
        description="the highest used / limit x 100 over the tenant-level quotas in force "
        "(reservations not included); null without a quota, or with zero limits only"
    )
    resource_type: str | None = Field(description="the resource of that highest utilization")
    resources: int = Field(description="tenant-level quotas in force")
    open_violations: int = Field(description="violation episodes still open, every level")
    cost_month_to_date: Number | None = Field(
        description="in the pricing catalogue's currency, this UTC month up to the watermark"
    )


class TenantsPage(_View):
    """``GET /api/v1/tenants``: an admin sees every tenant; any other role its own only."""

    tenants: list[TenantRow]
    total: int = Field(description="tenants matching the filter, over every page")
    next_page_token: str | None = Field(description="opaque; null on the last page")
    as_of: AsOf


class DeadLetterRecord(_View):
    time: str = Field(
        description="when it was dead-lettered (the record's timestamp)",
        json_schema_extra=_DATE_TIME,
    )
    reason: str = Field(description="error.reason")
    message: str = Field(description="error.message")
    source: str | None = Field(description="the CloudEvent source of the original, if readable")
    type: str | None = Field(description="the CloudEvent type of the original, if readable")
    tenant_id: str | None = Field(description="data.tenant_id of the original, if readable")
    topic: str | None = Field(default=None, description="error.topic: where it was read")


class DeadLetters(_View):
    """The dead-letter topic over the last hour (bounded: see ``recent``)."""

    total: int = Field(description="records dead-lettered in the last hour")
    by_reason: dict[str, int]
    recent: list[DeadLetterRecord] = Field(description="the newest first, at most 20")


class WorkerMember(_View):
    member_id: str
    client_id: str
    host: str
    partitions: list[int] = Field(description="input partitions assigned (resource events)")
    lag: int | None = Field(
        description="Σ (high watermark - committed offset) over its assigned input partitions; "
        "null before the first sample"
    )
    events_per_second: Number | None = Field(
        description="growth of those committed offsets between the last two samples, per second; "
        "null until two samples exist"
    )


class OperationsOverview(_View):
    """``GET /api/v1/operations/overview`` (admin)."""

    open_violations_by_kind: dict[str, int] = Field(description="open episodes, every tenant")
    dead_letters: DeadLetters
    workers: list[WorkerMember] = Field(description="the enforcement consumer group's members")
    workers_sampled_at: str | None = Field(
        default=None, description="when the group was last sampled", json_schema_extra=_DATE_TIME
    )
    workers_error: str | None = Field(
        default=None, description="why the last sample failed, if it did"
    )
    as_of: AsOf


class AuditCause(_View):
    source: str | None = None
    id: str | None = None
    type: str | None = None


class AuditRecordView(_View):
    """One record of the audit topic (contract section 5, "Audit")."""

    id: str | None = Field(description="the record's CloudEvent id")
    type: str | None = Field(description="audit.command_applied, audit.correction, ...")
    source: str | None = None
    time: str = Field(description="its event time", json_schema_extra=_DATE_TIME)
    actor: str | None = Field(description="token:<name>, jwt:<sub>, inventory:<system>, ...")
    cause: AuditCause | None = Field(description="the input that caused it")
    tenant_id: str
    details: dict[str, Any] = Field(
        description="action, subject, before, after, and reason where there is one"
    )
    offset: int = Field(description="its offset in the audit topic (on partition `partition`)")


class AuditPage(_View):
    """``GET /api/v1/audit``: a tenant's audit records, the newest written first."""

    tenant_id: str
    records: list[AuditRecordView]
    next_page_token: str | None = Field(
        description="opaque; null when the log holds no older matching record. A page can be "
        "shorter than page_size with a token when the request's scan budget ran out"
    )
    scanned: int = Field(description="records of the tenant's partition read for this page")
    partition: int = Field(description="the tenant's partition of the audit topic")
