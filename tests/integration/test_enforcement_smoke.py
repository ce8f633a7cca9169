"""End to end through one real worker: usage, a hard-limit episode, its resolution, the API."""

from __future__ import annotations

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
