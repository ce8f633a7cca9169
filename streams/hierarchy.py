"""Which project each user of a tenant belongs to (``GET /api/v1/quotas/hierarchy``).

The state has no membership registry: quotas and usage are kept per entity (tenant, project,
user), each on its own. What pairs a user with a project is a resource the user holds in it:
every resource event names its ``project_id`` and ``user_id``, and the owner keeps both on each
live instance row (``InstanceState.scope``) and each reported gauge (``TenantState.gauges``).
So a user is listed under every project in which it holds a live instance or gauge now; a user
known to the tenant (a quota, usage, a live resource) that holds nothing in a project is
*unassigned*. Past membership (released instances) and windowed consumption (``api_requests``,
counted without instance rows) do not pair a user with a project.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from novaquota.streams import quota as q
from novaquota.streams.quota.state import G_PROJECT, G_USER
from novaquota.streams.store.records import instance_key
from novaquota.streams.store.tenant_store import Base

__all__ = ["MAX_INSTANCES", "Membership", "read_instances"]

MAX_INSTANCES = 100_000
"""Instance rows one answer reads at most (``truncated`` beyond)."""
CHUNK = 2_000
"""Instance rows read between two yields to the event loop, which also runs the agents."""


class Membership:
    """Accumulates (project, user) pairs and the entities known to one tenant."""

    def __init__(self) -> None:
        self.projects: dict[str, set[str]] = {}
        self.users: set[str] = set()

    def entity(self, level: str, entity_id: str) -> None:
        if level == "project":
            self.projects.setdefault(entity_id, set())
        elif level == "user":
            self.users.add(entity_id)

    def holds(self, project: str | None, user: str | None) -> None:
        if project is not None:
            members = self.projects.setdefault(project, set())
            if user is not None:
                members.add(user)
        if user is not None:
            self.users.add(user)

    def state(self, state: q.TenantState) -> None:
        """Entities with a quota or usage, and the pairs of the tenant's gauges."""
        for ekey in (*state.quotas, *state.usage):
            self.entity(*q.split_entity_key(ekey))
        for gauge in state.gauges.values():
            self.holds(gauge[G_PROJECT], gauge[G_USER])

    def instances(self, instances: Iterable[q.InstanceState]) -> None:
        for inst in instances:
            if inst.live:
                self.holds(inst.scope.project_id, inst.scope.user_id)

    def body(self, tenant: str) -> dict[str, Any]:
        assigned = set().union(*self.projects.values()) if self.projects else set()
        return {
            "tenant_id": tenant,
            "projects": [
                {"project_id": p, "users": sorted(users)}
                for p, users in sorted(self.projects.items())
            ],
            "unassigned_users": sorted(self.users - assigned),
        }


async def read_instances(
    base: Base,
    partition: int,
    tenant: str,
    members: Membership,
    *,
    limit: int = MAX_INSTANCES,
    chunk: int = CHUNK,
) -> bool:
    """Feed the tenant's committed instance rows to ``members``, ``chunk`` rows at a time with
    a yield to the event loop in between (each chunk a scan of its own, from after the last
    key read); whether rows were left unread past ``limit``."""
    from novaquota.streams.enforce import InstanceRows

    prefix = instance_key(tenant, "")
    start, read = b"", 0
    while True:
        rows: list[q.InstanceState] = []
        last = b""
        for key, row in base.scan(partition, prefix, start):
            if read >= limit:
                members.instances(rows)
                return True
            rows.append(InstanceRows.parse(row)[1])
            last, read = key, read + 1
            if len(rows) >= chunk:
                break
        members.instances(rows)
        if len(rows) < chunk:
            return False
        start = last + b"\x00"
        await asyncio.sleep(0)
