"""``/healthz`` and ``/metrics`` of the delivery worker (``NOVAQUOTA_DELIVERY_WEB_PORT``)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from novaquota.streams.delivery.worker import DeliveryWorker

__all__ = ["build_app"]


def build_app(worker: DeliveryWorker) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        body = worker.health()
        return web.json_response(body, status=200 if body["status"] == "running" else 503)

    async def metrics(request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(worker.metrics.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
