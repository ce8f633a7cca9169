"""Every HTTP route of both servers, as data: the OpenAPI document is generated from this list.

A route names its server (``enforcement``: the Faust workers, port 6066; ``projections``: the
projection workers, port 6067), its query-parameter model, body model and one response model per
status, and the ``streams.auth`` action it needs (``None``: public). Handlers stay where they are
(``streams.web``, ``streams.checks``, ``projections.http``); ``tests/unit/test_api_routes.py``
fails when a handler has no entry here or an entry has no handler.

To add a route: write its pydantic models (``schemas.api`` / ``schemas.api_views``), then append
one ``Route(...)`` to ``ROUTES`` below. Path parameters (``{name}``) are documented as strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from novaquota.schemas import api_views as v
from novaquota.schemas.api import BatchCheckRequest, CheckRequest, CheckResponse
from novaquota.schemas.common import ResourceType
from novaquota.streams.auth import Action

__all__ = [
    "HTML",
    "ROUTES",
    "SERVERS",
    "SWITCHING",
    "TEXT",
    "BatchCheckAnswer",
    "Route",
    "Server",
    "routes_of",
]

Server = Literal["enforcement", "projections"]
BOTH: Final[tuple[Server, ...]] = ("enforcement", "projections")
ENFORCEMENT: Final[tuple[Server, ...]] = ("enforcement",)
PROJECTIONS: Final[tuple[Server, ...]] = ("projections",)

#: Server name -> (default port, the setting that moves it, what it serves).
SERVERS: Final[dict[Server, tuple[int, str, str]]] = {
    "enforcement": (6066, "NOVAQUOTA_WEB_PORT", "enforcement workers: checks, quota state"),
    "projections": (
        6067,
        "NOVAQUOTA_PROJECTIONS_WEB_PORT",
        "projection workers: history, analytics, cost",
    ),
}

TEXT: Final = "text/plain"
SWITCHING: Final = "websocket"
"""101: the connection becomes a WebSocket; no body."""
HTML: Final = "text/html"
ASSET: Final = "text/javascript"
"""The dashboard's files: scripts (text/javascript), styles (text/css), text."""

Body = type[BaseModel] | str
"""A JSON response model, or the media type of a non-JSON body."""


@dataclass(frozen=True)
class Route:
    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    servers: tuple[Server, ...]
    summary: str
    responses: Mapping[int, Body]
    """Success answers; ``errors`` adds the error statuses with ``ErrorBody``."""
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    action: Action | None = None
    """What ``streams.auth.authorize`` must allow; ``None``: answered without credentials."""
    errors: tuple[int, ...] = (400, 404)
    tag: str = "quotas"
    internal: bool = False
    """Between workers or for tests: documented so the route list is complete, hidden in /docs."""


def routes_of(server: Server) -> list[Route]:
    return [r for r in ROUTES if server in r.servers]


# --- query parameter models (documentation of what the views read from the query string) ------


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EntityQuery(_Query):
    entity_id: str = Field(min_length=1, description="the entity (for level=tenant: the tenant id)")
    level: v.Level | None = Field(default=None, description="default: tenant")
    tenant_id: str | None = Field(default=None, description="the tenant of a project or user")


class QuotasQuery(EntityQuery):
    resource_type: str | None = Field(default=None, description="filter")
    status: str | None = Field(default=None, description="filter: active or suspended")
    page_size: int | None = Field(default=None, ge=1, le=1000, description="default 100")
    page_token: str | None = Field(
        default=None, pattern="^[0-9]+$", description="next_page_token of the previous page"
    )


class SimpleCheckQuery(_Query):
    entity_id: str = Field(min_length=1, description="the tenant")
    resource_type: ResourceType
    amount: str = Field(
        pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$", description="in the resource's unit"
    )


class TenantQuery(_Query):
    tenant_id: str = Field(min_length=1)


class HierarchyQuery(_Query):
    tenant_id: str | None = Field(default=None, min_length=1, description="the tenant")
    entity_id: str | None = Field(default=None, min_length=1, description="alias of tenant_id")


class ReservationsQuery(TenantQuery):
    level: v.Level | None = Field(default=None, description="only this entity's reservations")
    entity_id: str | None = None


class ScopeQuery(_Query):
    """For views whose entity is in the path."""

    level: v.Level | None = Field(default=None, description="default: tenant")
    tenant_id: str | None = Field(default=None, description="the tenant of a project or user")


_TIME = "RFC 3339 with an offset (2026-11-02T00:00:00Z) or epoch seconds"


class PeriodQuery(ScopeQuery):
    start: str | None = Field(default=None, description=_TIME)
    end: str | None = Field(default=None, description=_TIME)


class HistoryQuery(PeriodQuery):
    resource_type: str | None = Field(default=None, description="default: every resource")
    step: Literal["minute", "hour", "day"] | None = Field(default=None, description="default hour")


class RecommendationQuery(EntityQuery):
    days: int | None = Field(default=None, ge=1, le=366, description="default 30")


class WaitQuery(_Query):
    wait: str | None = Field(
        default=None,
        pattern=r"^[0-9]+(\.[0-9]+)?(ms|s)?$",
        description="block until applied or rejected: 5s, 500ms; at most 30s",
    )


class ChangeQuery(WaitQuery):
    tenant_id: str | None = Field(default=None, description="if not in the body")


class CommandQuery(WaitQuery):
    """What the 202's ``Location`` carries: where the command's status is kept."""

    tenant_id: str | None = Field(default=None, description="none: a template.defined")
    level: v.Level | None = None
    entity_id: str | None = None
    resource_type: str | None = None
    template: str | None = None
    source: str | None = Field(default=None, description="default novaquota/api")


class LiveQuery(_Query):
    entity_id: str | None = Field(default=None, description="the tenant, or with level the entity")
    tenant_id: str | None = Field(default=None, description="the tenant of a project or user")
    level: Literal["tenant", "project", "user"] | None = Field(
        default=None, description="narrow to one level (with entity_id: one entity)"
    )
    resource_type: ResourceType | None = Field(default=None, description="narrow to one resource")
    scope: Literal["tenant", "all"] | None = Field(
        default=None,
        description="tenant (default): one tenant; all: the violations and alerts of every "
        "tenant (admin only; no entity_id or tenant_id; usage_updated is not offered)",
    )
    types: str | None = Field(
        default=None,
        pattern=r"^[a-z_]+(\s*,\s*[a-z_]+)*$",
        description="comma-separated message types to receive (usage_updated, quota_exceeded, "
        "violation_resolved, alert, cost_alert); default: every type the scope offers",
    )


class TenantsQuery(_Query):
    page_size: int | None = Field(default=None, ge=1, le=200, description="default 50")
    page_token: str | None = Field(
        default=None, description="next_page_token of the previous page (opaque)"
    )
    sort: Literal["utilization", "tenant_id"] | None = Field(
        default=None, description="default utilization: the highest first (then tenant_id)"
    )
    q: str | None = Field(default=None, max_length=256, description="tenant id prefix")


class AuditQuery(TenantQuery):
    actor: str | None = Field(default=None, max_length=256, description="exactly this actor")
    type: str | None = Field(default=None, description="exactly this type: audit.command_applied")
    since: str | None = Field(default=None, description=f"event time at or after: {_TIME}")
    until: str | None = Field(default=None, description=f"event time at or before: {_TIME}")
    page_size: int | None = Field(default=None, ge=1, le=200, description="default 50")
    page_token: str | None = Field(
        default=None, description="next_page_token of the previous page (opaque)"
    )


class ReplayReportQuery(TenantQuery):
    until: str = Field(description=f"the report's 'as of': {_TIME}")
    format: Literal["html", "json"] | None = Field(default=None, description="default html")


class BatchCheckAnswer(BaseModel):
    """``POST /api/v1/quotas/check:batch``: one entry per check, in order; a check with bad
    input gets its own error entry."""

    model_config = ConfigDict(extra="allow", frozen=True)

    results: list[CheckResponse | v.ErrorBody]


# --- the routes ----------------------------------------------------------------------------------

_STATE_ERRORS = (400, 404, 503)
_CHANGE_ERRORS = (400, 403, 404, 503)
_CHANGED: Final[Mapping[int, Body]] = {200: v.CommandStatus, 202: v.CommandStatus}
"""200 once applied or rejected (with ``?wait=``), else 202 pending with a ``Location``."""

ROUTES: Final[tuple[Route, ...]] = (
    # enforcement workers: checks and reservations (streams.checks)
    Route("POST", "/api/v1/quotas/check", ENFORCEMENT,
          "May this scope take these resources now? Optionally hold them (reserve).",
          {200: CheckResponse}, body=CheckRequest, action="check", errors=_STATE_ERRORS),
    Route("GET", "/api/v1/quotas/check", ENFORCEMENT,
          "The simple form: one tenant-level check of one resource",
          {200: CheckResponse}, query=SimpleCheckQuery, action="check", errors=_STATE_ERRORS),
    Route("POST", "/api/v1/quotas/check:batch", ENFORCEMENT,
          "Up to 100 checks in one request, answered in order",
          {200: BatchCheckAnswer}, body=BatchCheckRequest, action="check",
          errors=_STATE_ERRORS),
    Route("GET", "/api/v1/quotas/reservations", ENFORCEMENT,
          "Scheduled reservations and live admission grants of a tenant",
          {200: v.ReservationsList}, query=ReservationsQuery, action="read",
          errors=_STATE_ERRORS),
    Route("POST", "/api/v1/quotas/reservations", ENFORCEMENT,
          "Create a scheduled reservation (publishes reservation.created)",
          {202: v.CommandAccepted}, body=v.ReservationRequest, action="write",
          errors=_STATE_ERRORS),
    Route("DELETE", "/api/v1/quotas/reservations/{reservation_id}", ENFORCEMENT,
          "Release an admission grant (200) or cancel a scheduled reservation (202)",
          {200: v.ReleasedGrant, 202: v.CommandAccepted}, query=TenantQuery, action="write",
          errors=_STATE_ERRORS),
    # enforcement workers: state views (streams.web)
    Route("GET", "/api/v1/quotas", ENFORCEMENT,
          "Quotas with usage (a tenant's, all levels, or one entity's), paged",
          {200: v.QuotasPage}, query=QuotasQuery, action="read", errors=_STATE_ERRORS),
    Route("GET", "/api/v1/quotas/utilization", ENFORCEMENT,
          "Per resource: limit, used, reserved, available, utilization %",
          {200: v.UtilizationResponse}, query=EntityQuery, action="read",
          errors=_STATE_ERRORS),
    Route("GET", "/api/v1/quotas/hierarchy", ENFORCEMENT,
          "A tenant's projects with the users holding resources in each, and the users in none",
          {200: v.HierarchyResponse}, query=HierarchyQuery, action="read",
          errors=_STATE_ERRORS),
    # enforcement workers: quota and template management (streams.manage)
    Route("POST", "/api/v1/quotas", ENFORCEMENT,
          "Create or replace a quota (publishes quota.set)",
          _CHANGED, body=v.QuotaSetRequest, query=ChangeQuery, action="write",
          errors=_CHANGE_ERRORS),
    Route("PUT", "/api/v1/quotas/{level}/{entity_id}/{resource_type}", ENFORCEMENT,
          "Create or replace the quota the path names (publishes quota.set)",
          _CHANGED, body=v.QuotaFields, query=ChangeQuery, action="write",
          errors=_CHANGE_ERRORS),
    Route("DELETE", "/api/v1/quotas/{level}/{entity_id}/{resource_type}", ENFORCEMENT,
          "Remove the quota the path names (publishes quota.deleted)",
          _CHANGED, query=ChangeQuery, action="write", errors=_CHANGE_ERRORS),
    Route("GET", "/api/v1/quotas/templates", ENFORCEMENT,
          "The built-in tiers and the custom templates",
          {200: v.TemplatesList}, action="read", errors=()),
    Route("POST", "/api/v1/quotas/templates", ENFORCEMENT,
          "Define a custom template (publishes template.defined; admin)",
          _CHANGED, body=v.TemplateDefinition, query=WaitQuery, action="admin",
          errors=_CHANGE_ERRORS),
    Route("POST", "/api/v1/quotas/templates/{name}/apply", ENFORCEMENT,
          "Apply a template to an entity (publishes template.applied)",
          _CHANGED, body=v.TemplateApplyRequest, query=ChangeQuery, action="write",
          errors=_CHANGE_ERRORS),
    Route("POST", "/quotas/templates/{name}/apply", ENFORCEMENT,
          "The seed's path of POST /api/v1/quotas/templates/{name}/apply",
          _CHANGED, body=v.TemplateApplyRequest, query=ChangeQuery, action="write",
          errors=_CHANGE_ERRORS),
    Route("GET", "/api/v1/commands/{command_id}", ENFORCEMENT,
          "A command's status: pending (202), applied or rejected (200)",
          _CHANGED, query=CommandQuery, action="read", errors=_STATE_ERRORS),
    Route("GET", "/api/v1/quotas/live", ENFORCEMENT,
          "WebSocket: usage_updated, quota_exceeded, violation_resolved, alert, cost_alert and "
          "lagging messages about one tenant, or (scope=all, admin) the violations and alerts "
          "of every tenant (contract section 6)",
          {101: SWITCHING}, query=LiveQuery, action="read", errors=_STATE_ERRORS, tag="live"),
    Route("GET", "/", ENFORCEMENT, "Faust's index", {200: v.Index}, action="read", errors=(),
          tag="operations"),
    Route("GET", "/internal/usage", ENFORCEMENT,
          "Usage of the tenants on this worker's partitions (tests, benchmarks)",
          {200: v.InternalUsage}, action="admin", errors=(), tag="internal", internal=True),
    Route("GET", "/internal/system", ENFORCEMENT,
          "The system state, for the other workers' checks",
          {200: v.InternalSystem}, action="admin", errors=(), tag="internal", internal=True),
    # projection workers (projections.http)
    Route("GET", "/api/v1/quotas/usage/{entity_id}/history", PROJECTIONS,
          "Usage time series at a step (minute, hour, day)",
          {200: v.HistoryResponse}, query=HistoryQuery, action="read", tag="analytics"),
    Route("GET", "/api/v1/quotas/analytics/{entity_id}", PROJECTIONS,
          "Trends, forecasts with intervals, time to exhaustion, anomalies, efficiency, cost",
          {200: v.AnalyticsResponse}, query=PeriodQuery, action="read", tag="analytics"),
    Route("GET", "/api/v1/quotas/overview", PROJECTIONS,
          "Quota counts by status, overall utilization, cost, open violations",
          {200: v.OverviewResponse}, query=EntityQuery, action="read", tag="analytics"),
    Route("GET", "/api/v1/quotas/templates/recommendation", PROJECTIONS,
          "The built-in tier that fits the observed peaks",
          {200: v.TemplateRecommendationResponse}, query=RecommendationQuery, action="read",
          tag="analytics"),
    Route("GET", "/api/v1/quotas/cost/{entity_id}", PROJECTIONS,
          "Cost: month to date, projected, by resource, budget, recommendations",
          {200: v.CostResponse}, query=ScopeQuery, action="read", tag="analytics"),
    Route("GET", "/api/v1/pricing", PROJECTIONS, "The pricing catalogue in force",
          {200: v.PricingResponse}, action="read", errors=(), tag="analytics"),
    Route("GET", "/api/v1/tenants", PROJECTIONS,
          "Tenants by highest utilization, paged (a tenant-scoped token sees its own only)",
          {200: v.TenantsPage}, query=TenantsQuery, action="read", errors=(400,),
          tag="dashboard"),
    Route("GET", "/api/v1/operations/overview", PROJECTIONS,
          "Open violations by kind, dead letters of the last hour, the enforcement workers' "
          "partitions, lag and rate (admin)",
          {200: v.OperationsOverview}, action="admin", errors=(404,), tag="dashboard"),
    Route("GET", "/api/v1/audit", PROJECTIONS,
          "A tenant's audit records, newest first, filtered by actor, type and time, paged",
          {200: v.AuditPage}, query=AuditQuery, action="read", errors=_STATE_ERRORS,
          tag="audit"),
    Route("GET", "/api/v1/replay/report", PROJECTIONS,
          "The replay report of a tenant as of a time (novaquota replay --until T --tenant ID)",
          {200: HTML}, query=ReplayReportQuery, action="read", errors=(400, 404, 503, 504),
          tag="audit"),
    Route("GET", "/api/v1/projections/status", PROJECTIONS,
          "Positions and progress of the projection worker",
          {200: v.ProjectionStatus}, action="read", errors=(), tag="operations"),
    # the dashboard (projections.ui): a static shell, open; its figures come from the routes
    # above, called by the page with the user's token
    Route("GET", "/ui/", PROJECTIONS, "The dashboard (an HTML page; no data in it)",
          {200: HTML}, errors=(), tag="dashboard"),
    Route("GET", "/ui/config.json", PROJECTIONS,
          "Where the dashboard finds the enforcement API (NOVAQUOTA_UI_API_URL); no secrets",
          {200: v.UiConfig}, errors=(), tag="dashboard"),
    Route("GET", "/ui/{path}", PROJECTIONS,
          "The dashboard's scripts, styles and vendored chart library",
          {200: ASSET}, errors=(404,), tag="dashboard"),
    # both servers
    Route("GET", "/healthz", BOTH, "Liveness", {200: v.Health, 503: v.Health}, errors=(),
          tag="operations"),
    Route("GET", "/readyz", BOTH, "Readiness (partitions, recovery, lag; or caught up)",
          {200: v.Readiness, 503: v.Readiness}, errors=(), tag="operations"),
    Route("GET", "/metrics", BOTH, "Prometheus metrics (text exposition)", {200: TEXT},
          errors=(), tag="operations"),
    Route("GET", "/api/v1/auth/whoami", BOTH, "The caller's principal: subject, role, tenant",
          {200: v.WhoAmI}, action="read", errors=(), tag="operations"),
    Route("GET", "/api/v1/openapi.json", BOTH, "This document (the same on both ports)",
          {200: v.OpenApiDocumentBody}, errors=(), tag="operations"),
    Route("GET", "/docs", BOTH, "This document as a readable HTML page", {200: HTML},
          errors=(), tag="operations"),
)  # fmt: skip
