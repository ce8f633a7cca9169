"""Quota and template management over HTTP, and command status, through real workers (§6)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from novaquota.streams.agents import home_partition
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT = "wait=20s"


def call(
    stack: Stack,
    method: str,
    path: str,
    body: Any = None,
    worker: int = 0,
    token: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one request, with the test admin's token by default."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    w = stack.workers[worker]
    req = urllib.request.Request(
        w.url + path,
        data=data,
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {token or w.credentials.admin_token}",
        },
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def commands_published(stack: Stack) -> list[dict[str, Any]]:
    return stack.outputs("quota-commands", idle=2)


def quotas_of(stack: Stack, query: str, worker: int = 0) -> list[dict[str, Any]]:
    status, body = stack.get(f"/api/v1/quotas?{query}", worker)
    assert status == 200, body
    return body["quotas"]


def limits(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], Any]:
    return {(r["level"], r["entity_id"], r["resource_type"]): r["limit"] for r in rows}


def test_bad_bodies_are_400_and_publish_nothing(stack: Stack) -> None:
    bad: list[tuple[str, str, Any, str]] = [
        ("POST", "/api/v1/quotas", b"{not json", "invalid_json"),
        ("POST", "/api/v1/quotas", [1, 2], "invalid_request"),
        (
            "POST",
            "/api/v1/quotas",
            {"tenant_id": "acme", "resource_type": "cpu"},
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/quotas",
            {"tenant_id": "acme", "resource_type": "cpu", "limit": 10, "burst_limit": 5},
            "invalid_request",
        ),
        ("POST", "/api/v1/quotas", {"level": "project", "entity_id": "web"}, "missing_tenant_id"),
        ("PUT", "/api/v1/quotas/tenant/acme/cpu", {"limit": -1}, "invalid_request"),
        (
            "PUT",
            "/api/v1/quotas/tenant/acme/cpu",
            {"limit": 1, "resource_type": "gpu"},
            "invalid_request",
        ),
        ("PUT", "/api/v1/quotas/galaxy/acme/cpu", {"limit": 1}, "invalid_level"),
        ("PUT", "/api/v1/quotas/tenant/acme/cpu?wait=99s", {"limit": 1}, "invalid_wait"),
        ("PUT", "/api/v1/quotas/tenant/acme/api_requests", {"limit": 1}, "invalid_request"),
        ("DELETE", "/api/v1/quotas/project/web/cpu", None, "missing_tenant_id"),
        (
            "POST",
            "/api/v1/quotas/templates",
            {"name": "free", "quotas": [{"resource_type": "cpu", "limit": 1}]},
            "invalid_request",
        ),
        ("POST", "/api/v1/quotas/templates", {"name": "gold", "quotas": []}, "invalid_request"),
        (
            "POST",
            "/api/v1/quotas/templates/free/apply",
            {"level": "user", "entity_id": "al"},
            "missing_tenant_id",
        ),
    ]
    for method, path, body, code in bad:
        status, _headers, answer = call(stack, method, path, body)
        assert (status, answer["error"]["code"]) == (400, code), (method, path, answer)
        assert answer["error"]["message"]
    status, answer = stack.get("/api/v1/commands/x?tenant_id=acme&wait=soon")
    assert (status, answer["error"]["code"]) == (400, "invalid_wait")
    assert commands_published(stack) == []


def test_set_change_delete_and_status(stack: Stack) -> None:
    # a command nobody published is pending, also after waiting
    unknown = str(uuid.uuid4())
    assert stack.get(f"/api/v1/commands/{unknown}?tenant_id=acme")[0] == 202
    status, body = stack.get(f"/api/v1/commands/{unknown}?tenant_id=acme&wait=300ms")
    assert (status, body["status"]) == (202, "pending")
    assert stack.get(f"/api/v1/commands/{unknown}?tenant_id=acme&wait=1h")[0] == 400

    # set: 202 with a command id and where to ask
    status, headers, created = call(
        stack, "POST", "/api/v1/quotas", {"tenant_id": "acme", "resource_type": "cpu", "limit": 10}
    )
    assert status == 202 and created["status"] == "pending"
    command_id = created["command_id"]
    assert str(uuid.UUID(command_id)) == command_id
    location = headers["Location"]
    assert location.startswith(f"/api/v1/commands/{command_id}?tenant_id=acme")
    status, applied = stack.workers[0].get(f"{location}&{WAIT}", timeout=60)
    assert (status, applied["status"]) == (200, "applied")
    assert [(q["resource_type"], q["limit"]) for q in applied["quotas"]] == [("cpu", 10)]

    # change it, and set a project's, waiting for each
    status, _h, changed = call(
        stack, "PUT", f"/api/v1/quotas/tenant/acme/cpu?{WAIT}", {"limit": 8, "burst_limit": 12}
    )
    assert (status, changed["status"]) == (200, "applied")
    assert [(q["limit"], q["burst_limit"]) for q in changed["quotas"]] == [(8, 12)]
    status, _h, project = call(
        stack, "PUT", f"/api/v1/quotas/project/web/cpu?tenant_id=acme&{WAIT}", {"limit": 4}
    )
    assert (status, project["status"]) == (200, "applied")
    assert limits(quotas_of(stack, "tenant_id=acme")) == {
        ("tenant", "acme", "cpu"): 8,
        ("project", "web", "cpu"): 4,
    }

    # delete the project's
    status, _h, deleted = call(
        stack, "DELETE", f"/api/v1/quotas/project/web/cpu?tenant_id=acme&{WAIT}"
    )
    assert (status, deleted["status"], deleted["quotas"]) == (200, "applied", [])
    assert limits(quotas_of(stack, "tenant_id=acme")) == {("tenant", "acme", "cpu"): 8}

    # every command came from the API with a fresh id, and the audit names the actor
    published = commands_published(stack)
    assert [c["type"] for c in published] == [
        "quota.set",
        "quota.set",
        "quota.set",
        "quota.deleted",
    ]
    assert {c["source"] for c in published} == {"novaquota/api"}
    assert len({c["id"] for c in published}) == 4
    audits = [a for a in stack.outputs("audit", idle=2) if a["data"]["tenant_id"] == "acme"]
    assert audits and {a["data"]["actor"] for a in audits} == {"token:test-admin"}


def test_a_tenant_admin_manages_its_projects_but_cannot_raise_its_tenant(stack: Stack) -> None:
    status, _h, body = call(stack, "PUT", f"/api/v1/quotas/tenant/acme/cpu?{WAIT}", {"limit": 8})
    assert (status, body["status"]) == (200, "applied")
    admin = stack.workers[0].credentials.token("acme-admin", "tenant-admin", "acme")
    # the worker reads the changed token file within a second
    mine = "/api/v1/quotas?tenant_id=acme"
    stack.wait_for(lambda: stack.workers[0].request("GET", mine, token=admin)[0] == 200)

    raise_it = call(stack, "PUT", "/api/v1/quotas/tenant/acme/cpu", {"limit": 9}, token=admin)
    assert (raise_it[0], raise_it[2]["error"]["code"]) == (403, "forbidden")
    remove_it = call(stack, "DELETE", "/api/v1/quotas/tenant/acme/cpu", token=admin)
    assert remove_it[0] == 403
    other = call(stack, "PUT", "/api/v1/quotas/tenant/umbrella/cpu", {"limit": 1}, token=admin)
    assert other[0] == 404
    status, _h, lower = call(
        stack, "PUT", f"/api/v1/quotas/tenant/acme/cpu?{WAIT}", {"limit": 6}, token=admin
    )
    assert (status, lower["status"]) == (200, "applied")
    status, _h, project = call(
        stack,
        "PUT",
        f"/api/v1/quotas/project/web/cpu?tenant_id=acme&{WAIT}",
        {"limit": 4},
        token=admin,
    )
    assert (status, project["status"]) == (200, "applied")
    assert limits(quotas_of(stack, "tenant_id=acme")) == {
        ("tenant", "acme", "cpu"): 6,
        ("project", "web", "cpu"): 4,
    }
    # nothing was published for the refused changes
    assert [c["data"].get("limit") for c in commands_published(stack)] == [8, 6, 4]


def test_templates_apply_define_and_rejection(stack: Stack) -> None:
    # an unknown template: published, then rejected by the worker with the dead-letter reason
    status, headers, rejected = call(
        stack, "POST", f"/api/v1/quotas/templates/platinum/apply?{WAIT}", {"tenant_id": "acme"}
    )
    assert (status, rejected["status"], rejected["reason"]) == (200, "rejected", "invalid_field")
    assert "platinum" in rejected["message"]
    status, again = stack.get(headers["Location"])
    assert (status, again["status"], again["reason"]) == (200, "rejected", "invalid_field")

    # a built-in tier through the seed's path
    status, _h, free = call(
        stack, "POST", f"/quotas/templates/free/apply?{WAIT}", {"entity_id": "acme"}
    )
    assert (status, free["status"]) == (200, "applied")
    assert {q["resource_type"]: q["limit"] for q in free["quotas"]} == {
        "cpu": 2,
        "memory": 4096,
        "storage": 10,
        "instances": 3,
    }

    # define a custom template, list it, apply it to a project
    gold = {
        "name": "gold",
        "description": "Gold",
        "quotas": [{"resource_type": "cpu", "limit": 64, "burst_limit": 80}],
        "monthly_cost": 49.5,
    }
    status, headers, defined = call(stack, "POST", f"/api/v1/quotas/templates?{WAIT}", gold)
    assert (status, defined["status"]) == (200, "applied"), defined
    assert headers["Location"] == f"/api/v1/commands/{defined['command_id']}?template=gold"
    assert defined["template"]["quotas"][0]["limit"] == 64
    status, listed = stack.get("/api/v1/quotas/templates")
    names = [(t["name"], t["builtin"]) for t in listed["templates"]]
    assert names == [
        ("free", True),
        ("developer", True),
        ("startup", True),
        ("growth", True),
        ("enterprise", True),
        ("gold", False),
    ]
    assert listed["templates"][-1]["monthly_cost"] == 49.5
    status, _h, applied = call(
        stack,
        "POST",
        f"/api/v1/quotas/templates/gold/apply?{WAIT}",
        {"tenant_id": "acme", "level": "project", "entity_id": "web"},
    )
    assert (status, applied["status"]) == (200, "applied")
    assert limits(quotas_of(stack, "tenant_id=acme&level=project&entity_id=web")) == {
        ("project", "web", "cpu"): 64
    }


def test_reservations_accept_the_seed_field_names(stack: Stack) -> None:
    body = {
        "tenant_id": "acme",
        "resource_type": "cpu",
        "amount": 4,
        "start_time": "2026-12-01T00:00:00Z",
        "end_time": "2026-12-02T00:00:00Z",
    }
    status, _h, answer = call(stack, "POST", "/api/v1/quotas/reservations", body)
    assert status == 202 and answer["command_id"]
    [published] = commands_published(stack)
    assert published["data"]["start"].startswith("2026-12-01T00:00:00")
    assert published["data"]["end"].startswith("2026-12-02T00:00:00")


def test_a_worker_forwards_to_the_tenants_owner(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    stack.start_worker()

    def split() -> tuple[list[int], list[int]] | None:
        parts = [stack.get("/internal/usage", w)[1]["partitions"] for w in (0, 1)]
        return (
            (parts[0], parts[1])
            if all(parts) and sorted(parts[0] + parts[1]) == [0, 1, 2, 3]
            else None
        )

    _ours, theirs = stack.wait_for(split)
    tenant = next(t for t in (f"t{i}" for i in range(100)) if home_partition(t, 4) in theirs)

    # asked of worker 0, answered by worker 1 (the owner): wait, Location and status
    status, headers, applied = call(
        stack, "PUT", f"/api/v1/quotas/tenant/{tenant}/cpu?{WAIT}", {"limit": 7}, worker=0
    )
    assert (status, applied["status"], applied["tenant_id"]) == (200, "applied", tenant)
    assert headers["Location"].startswith(
        f"/api/v1/commands/{applied['command_id']}?tenant_id={tenant}"
    )
    for worker in (0, 1):
        status, body = stack.get(headers["Location"], worker)
        assert (status, body["status"]) == (200, "applied")
        assert [q["limit"] for q in body["quotas"]] == [7]
    assert limits(quotas_of(stack, f"tenant_id={tenant}", worker=0)) == {
        ("tenant", tenant, "cpu"): 7
    }
