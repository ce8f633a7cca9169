"""HTTP API of the projection worker (contract section 6, default port 6067).

Authentication and authorization are the enforcement workers' (``streams.auth``): the same
middleware answers 401 without credentials, and a view about another tenant answers 404."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from novaquota.projections import views
from novaquota.projections.audit import parse_query
from novaquota.projections.exceptions import QueryError
from novaquota.projections.operations import open_violations_by_kind
from novaquota.projections.tenants import tenants_page
from novaquota.projections.ui import add_ui_routes
from novaquota.projections.worker import ProjectionWorker
from novaquota.streams.auth import Access, add_whoami_route, authorize, middleware
from novaquota.streams.cors import cors_middleware
from novaquota.streams.errors import ApiError
from novaquota.streams.http_errors import api_error_response, error_middleware
from novaquota.streams.openapi import add_document_routes

__all__ = ["build_app"]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
    )


def _error(exc: QueryError) -> web.Response:
    return _json({"error": {"code": exc.code, "message": exc.message}}, exc.status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(worker: ProjectionWorker, access: Access) -> web.Application:
    def positions() -> dict[str, int]:
        return {f"{t}:{p}": off for (t, p), off in sorted(worker.positions.items())}

    def entity(request: web.Request, entity_id: str | None) -> tuple[str, str, str]:
        if not entity_id:
            raise QueryError("missing_entity", "entity_id is required")
        key = views.entity_key(
            entity_id, request.query.get("level"), request.query.get("tenant_id")
        )
        access(request, key[0], "read")
        return key

    def guarded(fn: Callable[[web.Request], dict[str, Any]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return _json(fn(request))
            except QueryError as exc:
                return _error(exc)
            except ApiError as exc:
                return api_error_response(exc)

        return handler

    def tenant_of(request: web.Request) -> str:
        tenant = request.query.get("tenant_id")
        if not tenant:
            raise QueryError("missing_tenant_id", "tenant_id is required")
        access(request, tenant, "read")
        return tenant

    async def audit(request: web.Request) -> web.StreamResponse:
        """A tenant's audit records, newest written first, filtered and paged
        (``projections.audit``)."""
        try:
            tenant = tenant_of(request)
            body = await worker.audit.page(parse_query(request.query, tenant))
            return _json(body)
        except QueryError as exc:
            return _error(exc)
        except ApiError as exc:
            return api_error_response(exc)

    async def replay_report(request: web.Request) -> web.StreamResponse:
        """``novaquota replay --until T --tenant ID --format html|json``, run by this worker."""
        try:
            tenant = tenant_of(request)
            until = views.parse_time(request.query.get("until"), "until")
            if until is None:
                raise QueryError("missing_until", "until is required (RFC 3339 or epoch seconds)")
            fmt = request.query.get("format") or "html"
            if fmt not in ("html", "json"):
                raise QueryError("invalid_format", "format: html or json")
            data = await worker.replays.report(tenant, until, fmt)
        except QueryError as exc:
            return _error(exc)
        except ApiError as exc:
            return api_error_response(exc)
        return web.Response(
            body=data,
            content_type="text/html" if fmt == "html" else "application/json",
            charset="utf-8",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    def history(request: web.Request) -> dict[str, Any]:
        q = request.query
        return views.history(
            worker.state,
            entity(request, request.match_info["entity_id"]),
            resource_type=q.get("resource_type") or None,
            start=q.get("start"),
            end=q.get("end"),
            step=q.get("step"),
            positions=positions(),
        )

    def analytics(request: web.Request) -> dict[str, Any]:
        q = request.query
        return views.analytics(
            worker.state,
            entity(request, request.match_info["entity_id"]),
            worker.catalogue,
            start=q.get("start"),
            end=q.get("end"),
            horizon_hours=worker.psettings.forecast_horizon_hours,
            positions=positions(),
        )

    def overview(request: web.Request) -> dict[str, Any]:
        return views.overview(
            worker.state,
            entity(request, request.query.get("entity_id")),
            worker.catalogue,
            positions(),
        )

    def recommendation(request: web.Request) -> dict[str, Any]:
        days = request.query.get("days", "30")
        if not days.isdigit() or not 1 <= int(days) <= 366:
            raise QueryError("invalid_days", "days: an integer 1-366")
        return views.template_recommendation(
            worker.state,
            entity(request, request.query.get("entity_id")),
            days=int(days),
            positions=positions(),
        )

    def cost(request: web.Request) -> dict[str, Any]:
        key = entity(request, request.match_info["entity_id"])
        body = views.cost_view(worker.state, key, worker.catalogue)
        body["recommendations"] = views.recommendations(worker.state, key, worker.catalogue)
        body["as_of"] = {"event_time": views.format_us(worker.state.watermark)}
        return body

    def tenants(request: web.Request) -> dict[str, Any]:
        """Every tenant for an admin; a tenant-scoped principal gets its own row only (or
        none), never another tenant's."""
        principal = access.principal(request)
        authorize(principal, "read", principal.tenant)
        q = request.query
        body = tenants_page(
            worker.state,
            worker.catalogue,
            only=principal.tenant,
            page_size=q.get("page_size"),
            page_token=q.get("page_token") or None,
            sort=q.get("sort") or None,
            q=q.get("q"),
        )
        body["as_of"] = views.as_of(worker.state, positions())
        return body

    def operations_overview(request: web.Request) -> dict[str, Any]:
        """Admin only: every tenant's figures (another role: 404, as for any data that spans
        tenants)."""
        access(request, None, "admin")
        sampler = worker.sampler
        sampled = sampler.sample.at if sampler.sample is not None else None
        return {
            "open_violations_by_kind": open_violations_by_kind(worker.state),
            "dead_letters": worker.dead_letters.view(int(time.time() * 1000)),
            "workers": sampler.view(),
            "workers_sampled_at": views.format_us(int(sampled * 1e6)) if sampled else None,
            "workers_error": sampler.error,
            "as_of": views.as_of(worker.state, positions()),
        }

    def pricing(request: web.Request) -> dict[str, Any]:
        return worker.catalogue.describe()

    def status(request: web.Request) -> dict[str, Any]:
        return status_body(worker)

    async def healthz(request: web.Request) -> web.StreamResponse:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.StreamResponse:
        ready = worker.caught_up()
        return _json({"ready": ready, **status_body(worker)}, 200 if ready else 503)

    async def metrics(request: web.Request) -> web.StreamResponse:
        body = generate_latest(worker.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    max_body = worker.settings.max_body_bytes
    app = web.Application(
        middlewares=[
            cors_middleware(worker.settings.cors_origin_set),
            error_middleware,
            middleware(access, max_body),
        ],
        client_max_size=max_body,
    )
    add_document_routes(app.router)
    add_whoami_route(app.router, access)
    app.router.add_get("/api/v1/quotas/usage/{entity_id}/history", guarded(history))
    app.router.add_get("/api/v1/quotas/analytics/{entity_id}", guarded(analytics))
    app.router.add_get("/api/v1/quotas/overview", guarded(overview))
    app.router.add_get("/api/v1/quotas/templates/recommendation", guarded(recommendation))
    app.router.add_get("/api/v1/quotas/cost/{entity_id}", guarded(cost))
    app.router.add_get("/api/v1/pricing", guarded(pricing))
    app.router.add_get("/api/v1/projections/status", guarded(status))
    app.router.add_get("/api/v1/tenants", guarded(tenants))
    app.router.add_get("/api/v1/operations/overview", guarded(operations_overview))
    app.router.add_get("/api/v1/audit", audit)
    app.router.add_get("/api/v1/replay/report", replay_report)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    add_ui_routes(app.router, worker.settings)
    return app


def status_body(worker: ProjectionWorker) -> dict[str, Any]:
    st = worker.status
    behind = {
        f"{t}:{p}": max(0, end - worker.positions.get((t, p), 0))
        for (t, p), end in sorted(worker.targets.items())
    }
    return {
        "ready": st.ready,
        "folded": st.folded,
        "rejected": st.rejected,
        "batches": st.batches,
        "emitted": st.emitted,
        "watermark": views.format_us(worker.state.watermark) if worker.state.watermark else None,
        "positions": {f"{t}:{p}": off for (t, p), off in sorted(worker.positions.items())},
        "behind_start_targets": behind,
        "group_id": worker.group_id,
    }
