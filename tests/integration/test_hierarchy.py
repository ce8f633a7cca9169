"""``GET /api/v1/quotas/hierarchy`` through real workers on the real broker: which project each
user holds resources in, read from the owner's state, from either worker (one forwards)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Stack
from tests.support.events import command, vm_created, vm_deleted

pytestmark = pytest.mark.integration


def user_quota(tenant: str, user: str) -> dict[str, Any]:
    data = {"level": "user", "entity_id": user, "tenant_id": tenant, "resource_type": "cpu"}
    return command("quota.set", {**data, "limit": 8})


def test_users_under_the_projects_they_hold_resources_in(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    stack.start_worker()
    stack.wait_split()
    stack.produce("quota-commands", [user_quota("hx", "lonely")])
    stack.produce(
        "resource-events",
        [
            vm_created("hx", "vm-1", cpu=1, project_id="web", user_id="alice"),
            vm_created("hx", "vm-2", cpu=1, project_id="web", user_id="bob"),
            vm_created("hx", "vm-3", cpu=1, project_id="api", user_id="bob"),
            vm_created("hx", "vm-4", cpu=1, project_id="old", user_id="carol"),
            vm_created("hx", "vm-5", cpu=1, user_id="erin"),  # no project named
            vm_created("hy", "vm-1", cpu=1, project_id="other", user_id="zed"),
        ],
    )
    # carol's one instance is released: with no quota, usage or resource left, neither she
    # nor project old is known to the tenant any more
    stack.produce("resource-events", [vm_deleted("hx", "vm-4")])
    expected = {
        "tenant_id": "hx",
        "projects": [
            {"project_id": "api", "users": ["bob"]},
            {"project_id": "web", "users": ["alice", "bob"]},
        ],
        "unassigned_users": ["erin", "lonely"],
        "truncated": False,
    }

    def hierarchy(worker: int, query: str = "tenant_id=hx") -> tuple[int, Any]:
        return stack.get(f"/api/v1/quotas/hierarchy?{query}", worker)

    def settled(worker: int) -> dict[str, Any] | None:
        status, body = hierarchy(worker)
        if status != 200:
            return None
        body.pop("as_of")
        return body if body == expected else None

    for worker in (0, 1):  # the owner answers, the other forwards
        stack.wait_for(lambda w=worker: settled(w), timeout=60)
    status, body = hierarchy(1, "entity_id=hy")
    assert status == 200 and body["projects"] == [{"project_id": "other", "users": ["zed"]}]
    assert body["as_of"]["event_time"] is not None

    # bad input is a 400; another tenant's token a 404, whichever worker is asked
    for query, code in [
        ("", "missing_entity_id"),
        ("tenant_id=hx&level=project", "invalid_level"),
        ("tenant_id=system", "invalid_entity"),
    ]:
        status, body = hierarchy(0, query)
        assert (status, body["error"]["code"]) == (400, code), query
    other = stack.workers[0].credentials.token("hy-viewer", "viewer", "hy")
    for worker in (0, 1):
        w = stack.workers[worker]
        stack.wait_for(
            lambda w=w: (
                w.request("GET", "/api/v1/quotas/hierarchy?tenant_id=hy", token=other)[0] == 200
            )
        )
        status, body = w.request("GET", "/api/v1/quotas/hierarchy?tenant_id=hx", token=other)
        assert (status, body["error"]["code"]) == (404, "not_found")
