"""The HTTP API of the projection worker over a folded in-memory state (no broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from novaquota.projections.config import ProjectionSettings
from novaquota.projections.cost import load_catalogue
from novaquota.projections.folds import FoldParams, fold_batch
from novaquota.projections.http import build_app
from novaquota.projections.metrics import ProjectionMetrics
from novaquota.projections.store import MemoryStore
from novaquota.projections.worker import ProjectionWorker
from novaquota.streams.auth import Access, anonymous
from novaquota.streams.settings import Settings
from tests.unit.test_projections_folds import cmd, vm


def worker() -> ProjectionWorker:
    w = ProjectionWorker(
        Settings(topic_prefix="unit."),
        ProjectionSettings(emit=False),
        store=MemoryStore(),
        metrics=ProjectionMetrics(),
        catalogue=load_catalogue(data={"prices": {"cpu": 1.0, "memory": 0}}),
    )
    fold_batch(
        w.state,
        [
            cmd(
                "quota.set",
                {"level": "tenant", "entity_id": "t1", "resource_type": "cpu", "limit": 4},
            ),
            cmd("budget.set", {"level": "tenant", "entity_id": "t1", "monthly_usd": 100}),
            vm("vm.created", "v1", 0, 2, project_id="p1"),
            vm("vm.deleted", "v1", 90, project_id="p1"),
            vm("vm.created", "v2", 120, 3, project_id="p1"),
        ],
        FoldParams(),
    )
    return w


async def _get(paths: list[str]) -> list[tuple[int, Any]]:
    client = TestClient(TestServer(build_app(worker(), Access(anonymous))))
    await client.start_server()
    try:
        out = []
        for p in paths:
            resp = await client.get(p)
            body = await resp.json() if "json" in resp.content_type else await resp.text()
            out.append((resp.status, body))
        return out
    finally:
        await client.close()


def get(*paths: str) -> list[tuple[int, Any]]:
    return asyncio.run(_get(list(paths)))


def test_history_hourly_time_weighted_with_utilization() -> None:
    [(status, body)] = get(
        "/api/v1/quotas/usage/t1/history?resource_type=cpu&step=hour"
        "&start=2026-11-02T00:00:00Z&end=2026-11-02T03:00:00Z"
    )
    assert status == 200
    points = body["series"][0]["points"]
    assert [p["used"] for p in points] == [2.0, 1.0, 3.0]  # v1 for 1.5 h, v2 from 02:00
    assert [p["utilization"] for p in points] == [50.0, 25.0, 75.0]
    assert points[1]["peak"] == 2.0
    assert body["series"][0]["summary"]["efficiency"] == 0.5
    assert body["as_of"]["event_time"] == "2026-11-02T02:00:00Z"


def test_project_level_and_errors() -> None:
    ok, missing, bad_step, bad_time, too_many = get(
        "/api/v1/quotas/usage/p1/history?level=project&tenant_id=t1&resource_type=cpu&step=hour"
        "&start=2026-11-02T00:00:00Z&end=2026-11-02T01:00:00Z",
        "/api/v1/quotas/usage/p1/history?level=project",
        "/api/v1/quotas/usage/t1/history?step=week",
        "/api/v1/quotas/usage/t1/history?start=yesterday",
        "/api/v1/quotas/usage/t1/history?step=minute&start=2020-01-01T00:00:00Z",
    )
    assert ok[0] == 200 and ok[1]["series"][0]["points"][0]["used"] == 2.0
    for status, body in (missing, bad_step, bad_time, too_many):
        assert status == 400 and set(body["error"]) == {"code", "message"}
    assert missing[1]["error"]["code"] == "missing_tenant"
    assert too_many[1]["error"]["code"] == "too_many_points"


def test_overview_cost_and_recommendation() -> None:
    (s1, ov), (s2, cost), (s3, rec), (s4, an) = get(
        "/api/v1/quotas/overview?entity_id=t1",
        "/api/v1/quotas/cost/t1",
        "/api/v1/quotas/templates/recommendation?entity_id=t1",
        "/api/v1/quotas/analytics/t1?start=2026-11-01T00:00:00Z",
    )
    assert s1 == s2 == s3 == s4 == 200
    assert ov["counts_by_status"]["ok"] == 1
    assert ov["quotas"][0]["used"] == 3.0
    assert ov["cost_this_month"] == pytest.approx(1.5 * 2, abs=1e-3)  # up to the watermark
    assert cost["budget"]["monthly_usd"] == 100
    assert cost["projected_month"] > cost["month_to_date"]
    assert rec["peaks"]["cpu"] == 3.0 and rec["recommendation"]["tier"]
    assert "cpu" in an["resources"] and an["cost"]["month_to_date"] == ov["cost_this_month"]


def test_health_readiness_and_metrics() -> None:
    (h, _), (r, body), (m, text) = get("/healthz", "/readyz", "/metrics")
    assert h == 200
    assert r == 503 and body["ready"] is False  # never started: not caught up
    assert m == 200 and "projection_ready" in text
