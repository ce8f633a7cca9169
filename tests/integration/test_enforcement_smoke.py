"""End to end through one real worker: usage, a hard-limit episode, its resolution, the API."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import Stack
from tests.support.events import command, vm_created, vm_deleted

pytestmark = pytest.mark.integration


def test_over_limit_episode_opens_once_and_resolves(stack: Stack) -> None:
    stack.produce(
        "quota-commands",
        [
            command(
                "quota.set",
                {
                    "level": "tenant",
                    "entity_id": "acme",
                    "tenant_id": "acme",
                    "resource_type": "cpu",
                    "limit": 4,
                },
                t=0,
            )
        ],
    )
    stack.wait_for(lambda: stack.get("/api/v1/quotas?entity_id=acme")[1]["quotas"])
    stack.produce(
        "resource-events",
        [
            vm_created("acme", "a", cpu=2, t=10),
            vm_created("acme", "b", cpu=2, t=20),  # exactly at the limit: no violation
            vm_created("acme", "c", cpu=1, t=30),  # over: one episode
            vm_created("acme", "d", cpu=1, t=40),  # still over: no repeat
            vm_deleted("acme", "c", t=50),
            vm_deleted("acme", "d", t=60),  # back to the limit: resolved
        ],
    )
    out = stack.wait_for(
        lambda: (
            [
                e
                for e in stack.outputs("quota-violations", idle=1)
                if e["data"]["kind"] == "over_limit"
            ]
            if len(stack.outputs("quota-violations", idle=1)) >= 2
            else None
        )
    )
    types = [e["type"] for e in out]
    assert types == ["quota.violation", "quota.violation_resolved"]
    opened, resolved = out
    assert opened["data"]["violation_id"] == resolved["data"]["violation_id"]
    assert opened["data"]["usage"] == 5
    assert opened["data"]["limit"] == 4
    status, body = stack.get("/api/v1/quotas/utilization?entity_id=acme")
    assert status == 200
    cpu = next(r for r in body["resources"] if r["resource_type"] == "cpu")
    assert cpu["used"] == 4
    assert cpu["utilization"] == 100.0


def test_system_quota_sums_all_tenants(stack: Stack) -> None:
    """System usage spans tenants on different partitions (DESIGN: per-partition totals)."""
    stack.produce(
        "quota-commands",
        [
            command(
                "quota.set",
                {"level": "system", "entity_id": "system", "resource_type": "cpu", "limit": 10},
                t=0,
            )
        ],
    )
    tenants = [f"sys-{i}" for i in range(6)]  # spread over the 4 partitions
    stack.produce(
        "resource-events",
        [vm_created(t, f"{t}-vm", cpu=2, t=10 + i) for i, t in enumerate(tenants)],
    )

    def opened() -> list[dict]:
        return [
            e
            for e in stack.outputs("quota-violations", idle=1)
            if e["data"]["tenant_id"] == "system"
        ]

    out = stack.wait_for(opened, timeout=90)
    assert [e["type"] for e in out] == ["quota.violation"]
    data = out[0]["data"]
    assert (data["level"], data["kind"], data["limit"], data["usage"]) == (
        "system",
        "over_limit",
        10,
        12,
    )
    status, body = stack.get("/api/v1/quotas/utilization?level=system&entity_id=system")
    assert status == 200
    cpu = next(r for r in body["resources"] if r["resource_type"] == "cpu")
    assert cpu["used"] == 12
    # back under the limit: resolved once
    stack.produce("resource-events", [vm_deleted(tenants[0], f"{tenants[0]}-vm", t=100)])
    out = stack.wait_for(lambda: len(opened()) >= 2 and opened(), timeout=90)
    assert [e["type"] for e in out] == ["quota.violation", "quota.violation_resolved"]


def test_custom_template_budget_rate_limit_and_quota_listing(stack: Stack) -> None:
    """template.defined then template.applied; budget.set and rate_limit.set are validated and
    audited; the quota listing filters and pages."""
    stack.produce(
        "quota-commands",
        [
            command(
                "template.defined",
                {
                    "name": "lab",
                    "description": "a small lab",
                    "quotas": [
                        {"resource_type": "cpu", "limit": 6, "burst_limit": 8},
                        {"resource_type": "gpu", "limit": 1},
                        {"resource_type": "storage", "limit": 50, "limit_type": "soft"},
                    ],
                    "monthly_cost": 42,
                },
                t=0,
            )
        ],
        key=lambda ev: b"system",
    )
    # the template must have reached every worker's global table before it is applied
    time.sleep(3)
    stack.produce(
        "quota-commands",
        [
            command(
                "template.applied",
                {"template": "lab", "level": "tenant", "entity_id": "lab1", "tenant_id": "lab1"},
                t=10,
            ),
            command(
                "budget.set",
                {"level": "tenant", "entity_id": "lab1", "tenant_id": "lab1", "monthly_usd": 500},
                t=11,
            ),
            command(
                "rate_limit.set",
                {
                    "level": "tenant",
                    "entity_id": "lab1",
                    "tenant_id": "lab1",
                    "rate_per_second": 2.5,
                    "burst": 10,
                },
                t=12,
            ),
        ],
    )
    body = stack.wait_for(
        lambda: (b := stack.get("/api/v1/quotas?entity_id=lab1")[1]) and b.get("total") == 3 and b
    )
    by_res = {r["resource_type"]: r for r in body["quotas"]}
    assert (by_res["cpu"]["limit"], by_res["cpu"]["burst_limit"]) == (6, 8)
    assert by_res["storage"]["limit_type"] == "soft"
    status, page = stack.get("/api/v1/quotas?entity_id=lab1&page_size=2")
    assert status == 200 and len(page["quotas"]) == 2 and page["next_page_token"] == "2"
    status, page = stack.get("/api/v1/quotas?entity_id=lab1&page_size=2&page_token=2")
    assert len(page["quotas"]) == 1 and page["next_page_token"] is None
    status, only = stack.get("/api/v1/quotas?entity_id=lab1&resource_type=gpu")
    assert [r["resource_type"] for r in only["quotas"]] == ["gpu"]
    status, bad = stack.get("/api/v1/quotas?entity_id=lab1&page_size=0")
    assert status == 400 and bad["error"]["code"] == "invalid_page"

    def audits() -> list[dict]:
        return [e for e in stack.outputs("audit", idle=1) if e["data"]["tenant_id"] == "lab1"]

    records = stack.wait_for(lambda: len(audits()) >= 5 and audits())
    actions = sorted(r["data"]["details"]["action"] for r in records)
    assert actions == [
        "audit.budget_set",
        "audit.quota_set",
        "audit.quota_set",
        "audit.quota_set",
        "audit.rate_limit_set",
    ]
    budget = next(r for r in records if r["data"]["details"]["action"] == "audit.budget_set")
    assert budget["data"]["actor"] == "tests"
    assert budget["data"]["details"]["after"]["monthly_usd"] == 500
    rate = next(r for r in records if r["data"]["details"]["action"] == "audit.rate_limit_set")
    assert rate["data"]["details"]["after"]["rate_per_second"] == 2.5
