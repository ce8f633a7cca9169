"""A seeded, deterministic workload: tenants of every tier, quotas at all four levels, and a
realistic mix of resource events (VM churn, volumes, snapshots, network samples, API bursts).

The same seed gives the same events, byte for byte. Used by ``novaquota bench``,
``novaquota simulate`` and the tests.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["Workload", "WorkloadSpec"]

TIERS = ("free", "developer", "startup", "growth", "enterprise")
TIER_WEIGHTS = (40, 30, 15, 10, 5)
CONSOLE = "novacron/console"


@dataclass(frozen=True)
class WorkloadSpec:
    tenants: int = 1000
    projects_per_tenant: int = 2
    users_per_project: int = 2
    seed: int = 7
    start: datetime = datetime(2026, 11, 1, tzinfo=UTC)
    events_per_second: float = 1000.0
    """Event-time density: how far ``time`` advances per event on average."""


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Workload:
    spec: WorkloadSpec
    rng: random.Random = field(init=False)
    seq: int = 0
    time_us: int = field(init=False)
    live_vms: dict[str, list[tuple[str, str | None, str | None]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.spec.seed)
        self.time_us = int(self.spec.start.timestamp() * 1_000_000)

    def tenant(self, i: int) -> str:
        return f"tenant-{i:06d}"

    def _event(self, type_: str, data: dict[str, Any], source: str) -> dict[str, Any]:
        self.seq += 1
        return {
            "specversion": "1.0",
            "id": f"w{self.spec.seed}-{self.seq}",
            "source": source,
            "type": type_,
            "time": _iso(self.time_us),
            "data": data,
        }

    def tier_of(self, i: int) -> str:
        return random.Random(self.spec.seed * 1_000_003 + i).choices(TIERS, TIER_WEIGHTS)[0]

    def setup_commands(self) -> Iterator[dict[str, Any]]:
        """Quotas at all four levels: a tier per tenant, project and user quotas, system."""
        s = self.spec
        yield self._event(
            "quota.set",
            {
                "actor": "bench",
                "level": "system",
                "entity_id": "system",
                "resource_type": "cpu",
                "limit": 10_000_000,
            },
            CONSOLE,
        )
        for i in range(s.tenants):
            t = self.tenant(i)
            yield self._event(
                "template.applied",
                {
                    "actor": "bench",
                    "template": self.tier_of(i),
                    "level": "tenant",
                    "entity_id": t,
                    "tenant_id": t,
                },
                CONSOLE,
            )
            for p in range(s.projects_per_tenant):
                yield self._event(
                    "quota.set",
                    {
                        "actor": "bench",
                        "level": "project",
                        "entity_id": f"p{p}",
                        "tenant_id": t,
                        "resource_type": "cpu",
                        "limit": 16,
                        "burst_limit": 24,
                    },
                    CONSOLE,
                )
                for u in range(s.users_per_project):
                    yield self._event(
                        "quota.set",
                        {
                            "actor": "bench",
                            "level": "user",
                            "entity_id": f"p{p}-u{u}",
                            "tenant_id": t,
                            "resource_type": "instances",
                            "limit": 8,
                        },
                        CONSOLE,
                    )

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        """n resource events with a realistic mix; time advances with the configured rate."""
        s = self.spec
        rng = self.rng
        step = 1_000_000 / s.events_per_second
        for _ in range(n):
            self.time_us += max(1, int(rng.expovariate(1 / step)))
            ti = int(rng.paretovariate(1.2)) % s.tenants  # a few tenants are much busier
            t = self.tenant(ti)
            p = rng.randrange(s.projects_per_tenant)
            u = rng.randrange(s.users_per_project)
            scope = {"tenant_id": t, "project_id": f"p{p}", "user_id": f"p{p}-u{u}"}
            r = rng.random()
            vms = self.live_vms.setdefault(t, [])
            if r < 0.40 or (r < 0.55 and not vms):
                vm = f"vm-{self.seq}"
                vms.append((vm, scope["project_id"], scope["user_id"]))
                cpu = rng.choice((1, 2, 4, 8))
                yield self._event(
                    "vm.created",
                    {**scope, "vm_id": vm, "cpu": cpu, "memory": cpu * 2048},
                    f"nova/compute/host-{rng.randrange(64)}",
                )
            elif r < 0.55:
                vm, pj, us = vms.pop(rng.randrange(len(vms)))
                yield self._event(
                    "vm.deleted",
                    {"tenant_id": t, "project_id": pj, "user_id": us, "vm_id": vm},
                    f"nova/compute/host-{rng.randrange(64)}",
                )
            elif r < 0.65 and vms:
                vm, pj, us = rng.choice(vms)
                cpu = rng.choice((1, 2, 4, 8, 16))
                yield self._event(
                    "vm.resized",
                    {
                        "tenant_id": t,
                        "project_id": pj,
                        "user_id": us,
                        "vm_id": vm,
                        "cpu": cpu,
                        "memory": cpu * 2048,
                    },
                    f"nova/compute/host-{rng.randrange(64)}",
                )
            elif r < 0.75:
                yield self._event(
                    "volume.created",
                    {**scope, "volume_id": f"vol-{self.seq}", "size_gb": rng.choice((10, 50))},
                    "cinder/volume-1",
                )
            elif r < 0.80:
                yield self._event(
                    "snapshot.created",
                    {**scope, "snapshot_id": f"snap-{self.seq}", "size_gb": 5},
                    "cinder/volume-1",
                )
            elif r < 0.90:
                yield self._event(
                    "network.sampled",
                    {
                        **scope,
                        "interface_id": f"eth-{t}-{p}",
                        "bandwidth_in": round(rng.uniform(1, 900), 2),
                        "bandwidth_out": round(rng.uniform(1, 900), 2),
                        "connections": rng.randrange(1, 5000),
                    },
                    "neutron/agent-1",
                )
            else:
                yield self._event(
                    "api.requests",
                    {**scope, "count": rng.randrange(1, 200)},
                    f"gateway/edge-{rng.randrange(4)}",
                )
