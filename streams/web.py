"""Faust web views: entity usage, quotas and open violations; health, readiness, metrics.

Every worker answers for every tenant: a request for a tenant this worker does not own is
forwarded to the owner of the tenant's partition (Faust's router, the same mechanism as
``@app.table_route``); during a rebalance that answers 503 and clients retry.
Every request but health, readiness and metrics is authenticated (``streams.auth.middleware``);
the views authorize the principal for the tenant they read, so another tenant's answers 404.
A forwarded request carries the caller's own credentials, and the owner checks them again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from faust import web
from faust.exceptions import SameNode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from novaquota.schemas.amounts import from_micros
from novaquota.schemas.common import format_time_us
from novaquota.streams import observe
from novaquota.streams import quota as q
from novaquota.streams.app import tables_recovered
from novaquota.streams.auth import add_whoami_route, middleware
from novaquota.streams.errors import ApiError
from novaquota.streams.openapi import add_document_routes

if TYPE_CHECKING:
    from novaquota.streams.app import QuotaApp

__all__ = ["ApiError", "quota_rows", "register"]

log = logging.getLogger(__name__)

LEVELS = ("tenant", "project", "user", "system")


def _num(micros: int | None) -> float | int | None:
    """Micro-units as a JSON number in contract units: an int when whole, else the float
    nearest the exact decimal (what ``float(Decimal)`` gives, without the Decimal)."""
    if micros is None:
        return None
    whole, frac = divmod(micros, 1_000_000)
    return whole if frac == 0 else micros / 1_000_000


def _entity(request: web.Request) -> tuple[str, str, str]:
    """(tenant_id, level, entity_id) from the query, as the contract spells it."""
    query = request.query
    entity_id = query.get("entity_id") or ""
    level = query.get("level") or "tenant"
    if level not in LEVELS:
        raise ApiError(400, "invalid_level", f"level must be one of {', '.join(LEVELS)}")
    tenant_id = query.get("tenant_id") or ""
    if level == "tenant":
        entity_id = entity_id or tenant_id
        if tenant_id and tenant_id != entity_id:
            raise ApiError(400, "invalid_entity", "tenant_id and entity_id differ")
        tenant_id = entity_id
    elif level == "system":
        tenant_id = entity_id = "system"
    if not entity_id:
        raise ApiError(400, "missing_entity_id", "entity_id is required")
    if not tenant_id:
        raise ApiError(400, "missing_tenant_id", f"tenant_id is required for level {level}")
    return tenant_id, level, entity_id


def quota_rows(
    state: q.TenantState,
    tenant: str,
    level: str,
    entity: str,
    resource_type: str | None = None,
    status: str | None = None,
) -> list[dict[str, Any]]:
    """Quotas with usage as the API shows them: every level's at tenant level, else one
    entity's; optionally one resource type or status."""
    rows = []
    for ekey, per in sorted(state.quotas.items()):
        lvl, eid = q.split_entity_key(ekey)
        if level != "tenant" and (lvl, eid) != (level, entity):
            continue
        for res in sorted(per):
            quota = q.quota_of(state, lvl, eid, res)
            if quota is None or (resource_type and res != resource_type):
                continue
            if status and quota.status != status:
                continue
            used = q.usage_of(state, lvl, eid, res)
            d = quota.to_dict()
            for k in ("limit", "burst_limit"):
                d[k] = _num(d.get(k))
            d["set_at"] = format_time_us(d.pop("set_at_us"))
            d["used"] = _num(used)
            d["reserved"] = _num(q.reserved_of(state, lvl, eid, res))
            d["utilization"] = round(used * 100 / quota.limit, 3) if quota.limit else None
            d["tenant_id"] = tenant
            rows.append(d)
    return rows


def register(qa: QuotaApp) -> None:
    app = qa.app
    # Before the server starts: aiohttp freezes its middlewares then.
    web_app = app.web.web_app  # type: ignore[attr-defined]  # the aiohttp driver's Application
    web_app.middlewares.append(middleware(qa.access, qa.settings.max_body_bytes))

    def json_response(
        body: Any, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        return app.web.bytes(
            orjson.dumps(body), content_type="application/json", status=status, headers=headers
        )

    from novaquota.streams import checks

    checks.register(qa, json_response)
    from novaquota.streams import manage

    manage.register(qa, json_response)
    add_document_routes(web_app.router)
    add_whoami_route(web_app.router, qa.access)

    def error(view: web.View, exc: ApiError) -> web.Response:
        return json_response(exc.body(), status=exc.status, headers=exc.headers())

    async def routed(
        view: web.View,
        request: web.Request,
        answer: Callable[..., dict[str, Any]],
    ) -> web.Response:
        try:
            tenant_id, level, entity_id = _entity(request)
            qa.access(request, tenant_id, "read")
        except ApiError as exc:
            return error(view, exc)
        try:
            return await app.router.route_req(qa.state.name, tenant_id, view.web, request)
        except SameNode:
            pass
        rec, _exists = qa.store.committed_record(tenant_id)
        state = rec.state
        as_of = {
            "event_time": format_time_us(state.watermark_us) if state.watermark_us else None,
            "offsets": rec.guard,
        }
        try:
            body = answer(tenant_id, level, entity_id, state, as_of, request.query)
        except ApiError as exc:
            return error(view, exc)
        return view.json(body)

    def utilization(
        tenant: str,
        level: str,
        entity: str,
        state: q.TenantState,
        as_of: dict[str, Any],
        query: Mapping[str, str],
    ) -> dict[str, Any]:
        rows = []
        for row in q.utilization_view(state, level, entity):
            util = row["utilization"]
            rows.append(
                {
                    "resource_type": row["resource_type"],
                    "limit": _num(row["limit"]),
                    "burst_limit": _num(row["burst_limit"]),
                    "used": _num(row["used"]),
                    "reserved": _num(row["reserved"]),
                    "available": _num(row["available"]),
                    "utilization": None if util is None else round(float(util), 3),
                    "limit_type": row["limit_type"],
                    "status": row["status"],
                    "window": row["window"],
                    "open_violations": row.get("open_violations", []),
                }
            )
        return {
            "tenant_id": tenant,
            "level": level,
            "entity_id": entity,
            "resources": rows,
            "as_of": as_of,
        }

    def quotas(
        tenant: str,
        level: str,
        entity: str,
        state: q.TenantState,
        as_of: dict[str, Any],
        query: Mapping[str, str],
    ) -> dict[str, Any]:
        """The tenant's quotas (all levels for a tenant, else one entity's) with usage;
        filters ``resource_type`` and ``status``; pages of ``page_size`` (1-1000, default
        100) continued with the returned ``next_page_token``."""
        try:
            size = int(query.get("page_size") or 100)
            start = int(query.get("page_token") or 0)
        except ValueError:
            raise ApiError(400, "invalid_page", "page_size and page_token are integers") from None
        if not 1 <= size <= 1000 or start < 0:
            raise ApiError(400, "invalid_page", "page_size must be 1-1000, page_token >= 0")
        rows = quota_rows(
            state, tenant, level, entity, query.get("resource_type"), query.get("status")
        )
        page = rows[start : start + size]
        more = start + size < len(rows)
        return {
            "tenant_id": tenant,
            "quotas": page,
            "total": len(rows),
            "next_page_token": str(start + size) if more else None,
            "as_of": as_of,
        }

    @app.page("/api/v1/quotas/utilization")
    async def utilization_view(self: web.View, request: web.Request) -> web.Response:
        return await routed(self, request, utilization)

    @app.page("/api/v1/quotas")
    async def quotas_view(self: web.View, request: web.Request) -> web.Response:
        return await routed(self, request, quotas)

    @app.page("/api/v1/quotas/hierarchy")
    async def hierarchy_view(self: web.View, request: web.Request) -> web.Response:
        """The tenant's projects with the users holding resources in each
        (``streams.hierarchy``), from the owner's committed state."""
        from novaquota.streams.hierarchy import Membership, read_instances

        try:
            if (request.query.get("level") or "tenant") != "tenant":
                raise ApiError(400, "invalid_level", "the hierarchy is read for a tenant")
            tenant_id, _level, _entity_id = _entity(request)
            if tenant_id == "system":
                raise ApiError(400, "invalid_entity", "system is not a tenant")
            qa.access(request, tenant_id, "read")
        except ApiError as exc:
            return error(self, exc)
        try:
            return await app.router.route_req(qa.state.name, tenant_id, self.web, request)
        except SameNode:
            pass
        rec, _exists = qa.store.committed_record(tenant_id)
        members = Membership()
        members.state(rec.tenant)
        try:
            partition = qa.store.partition_of(tenant_id)
            truncated = await read_instances(qa.store.base, partition, tenant_id, members)
        except Exception:  # partitions moved while reading: the caller retries
            log.exception("reading the instances of %s for the hierarchy failed", tenant_id)
            return error(self, ApiError(503, "unavailable", "the tenant's state moved; retry"))
        state = rec.state
        as_of = {
            "event_time": format_time_us(state.watermark_us) if state.watermark_us else None,
            "offsets": rec.guard,
        }
        return self.json({**members.body(tenant_id), "truncated": truncated, "as_of": as_of})

    @app.page("/healthz")
    async def healthz(self: web.View, request: web.Request) -> web.Response:
        ok, body = await observe.health(qa)
        return self.json(body, status=200 if ok else 503)

    @app.page("/readyz")
    async def readyz(self: web.View, request: web.Request) -> web.Response:
        ready, body = await observe.readiness(qa)
        return self.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    async def metrics(self: web.View, request: web.Request) -> web.Response:
        body = generate_latest(qa.metrics.registry)
        return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/internal/usage")
    async def internal_usage(self: web.View, request: web.Request) -> web.Response:
        """Read-only debug dump of the tenants on this worker's active partitions (tests):
        usage per entity (exact decimal strings), open episodes, quota count, watermark.
        A peer with the internal secret or an admin (the middleware checks)."""
        from novaquota.streams.enforce import SYSTEM, TenantRecord

        topic = qa.resource_events.get_topic_name()
        parts = sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)
        tenants: dict[str, Any] = {}
        for p in parts:
            for tenant, raw in qa.store.records(p):
                if tenant == SYSTEM:  # not a tenant
                    continue
                st = TenantRecord.from_bytes(raw).tenant
                tenants[tenant] = {
                    "partition": p,
                    "watermark_us": st.watermark_us,
                    "quotas": sum(len(per) for per in st.quotas.values()),
                    "usage": {
                        ek: {res: str(from_micros(a)) for res, a in per.items()}
                        for ek, per in st.usage.items()
                    },
                    "open": {
                        qk.replace("\x1f", "/"): {k: ep[0] for k, ep in per.items()}
                        for qk, per in st.episodes.items()
                        if per
                    },
                }
        body = {
            "partitions": parts,
            "rebalancing": bool(app.rebalancing),
            "recovered": tables_recovered(app),
            "tenants": tenants,
        }
        return self.json(body)
