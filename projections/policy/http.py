"""HTTP views of the policy worker (contract section 6, default port 6068).

Policies span tenants, so every view needs the ``admin`` action; authentication is the other
servers' (``streams.auth``)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from novaquota.projections.policy.worker import PolicyWorker
from novaquota.streams.auth import Access, middleware
from novaquota.streams.errors import ApiError
from novaquota.streams.http_errors import api_error_response, error_middleware

__all__ = ["build_app"]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
        status=status,
        content_type="application/json",
    )


def build_app(worker: PolicyWorker, access: Access) -> web.Application:
    async def healthz(_request: web.Request) -> web.StreamResponse:
        return _json({"status": "ok"})

    async def readyz(_request: web.Request) -> web.StreamResponse:
        ready = worker.status.ready
        return _json({"ready": ready}, 200 if ready else 503)

    async def policies(request: web.Request) -> web.StreamResponse:
        try:
            access(request, None, "admin")
        except ApiError as exc:
            return api_error_response(exc)
        return _json(worker.overview())

    async def policy(request: web.Request) -> web.StreamResponse:
        try:
            access(request, None, "admin")
        except ApiError as exc:
            return api_error_response(exc)
        name = request.match_info["name"]
        view = worker.feed.engine.describe(name)
        if view is None:
            return _json(
                {"error": {"code": "not_found", "message": f"no policy named {name!r}"}}, 404
            )
        tenant = request.query.get("tenant_id")
        if tenant is not None:  # one tenant's rule states and actions
            for part in ("rules", "actions"):
                view[part] = [r for r in view[part] if r["tenant_id"] == tenant]
        return _json(view)

    async def actions(request: web.Request) -> web.StreamResponse:
        try:
            access(request, None, "admin")
        except ApiError as exc:
            return api_error_response(exc)
        tenant = request.query.get("tenant_id")
        name = request.query.get("policy")
        rows = [
            a
            for a in worker.sent
            if (tenant is None or a["tenant_id"] == tenant)
            and (name is None or a["policy"] == name)
        ]
        return _json({"actions": rows})

    async def status(request: web.Request) -> web.StreamResponse:
        try:
            access(request, None, "admin")
        except ApiError as exc:
            return api_error_response(exc)
        return _json(worker.status_body())

    async def metrics(_request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(worker.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app = web.Application(middlewares=[error_middleware, middleware(access)])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/policies", policies)
    app.router.add_get("/api/v1/policies/actions", actions)
    app.router.add_get("/api/v1/policies/status", status)
    app.router.add_get("/api/v1/policies/{name}", policy)
    return app
